"""The array layout every lifting dataset loader returns (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..errors import InputError
from ..keypoints import SIMSPINE37

TRAIN_SUBJECTS: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS: tuple[str, ...] = ("S9", "S11")
SPLITS: dict[str, tuple[str, ...]] = {"train": TRAIN_SUBJECTS, "test": TEST_SUBJECTS}

N_KEYPOINTS = len(SIMSPINE37)

# field -> (dtype, trailing shape); "K" is the keypoint count, None a free size
_LAYOUT: dict[str, tuple[object, tuple]] = {
    "keypoints_2d": (np.float32, (N_KEYPOINTS, 2)),
    "confidence": (np.float32, (N_KEYPOINTS,)),
    "keypoints_3d": (np.float32, (N_KEYPOINTS, 3)),
    "image_size": (np.float32, (2,)),
    "subject": (str, ()),
    "action": (str, ()),
    "camera": (np.int32, ()),
    "frame": (np.int64, ()),
    "camera_R": (np.float32, (3, 3)),
    "camera_t": (np.float32, (3,)),
    "coordinates": (np.float32, (None,)),
    "valid_3d": (np.float32, (N_KEYPOINTS,)),
    "sequence": (str, ()),
}


@dataclass(frozen=True)
class LiftingData:
    """2D-3D keypoint pairs for lifting, one row per sample (frame x camera), numpy arrays.

    Keypoints are in ``simspine_jax.keypoints.SIMSPINE37`` order.

    * ``keypoints_2d`` (N, 37, 2) pixels; 0 where ``confidence`` is 0.
    * ``confidence`` (N, 37): 1 observed, 0 dropped / missing / outside the image.
    * ``keypoints_3d`` (N, 37, 3) metres in the camera frame (not root-relative).
    * ``image_size`` (N, 2) width, height in pixels.
    * ``subject``, ``action`` (N,) str (``action`` is the Human3.6M action name, without the
      take number); ``camera`` (N,) int (index into the subject's cameras); ``frame`` (N,)
      int (frame of the source sequence at its own rate).
    * ``coordinates`` (N, n_indep) or None: the default model's independent coordinates
      (``tree.independent_names`` order, radians and metres) where known (synthetic, .mot).
    * ``camera_R`` (N, 3, 3), ``camera_t`` (N, 3): ``X_cam = R @ X_world + t``. "World" is
      the frame the source gives 3D positions in: the OpenSim model's ground frame (y up) for
      synthetic and SimSpine data (so ``R @ FK(coordinates) + t`` is ``keypoints_3d``),
      Human3.6M's world frame (z up) for the Human3.6M files.
    * ``valid_3d`` (N, 37) or None (all valid): 1 where the source has this 3D keypoint
      (Human3.6M has 15 of the 37).
    * ``sequence`` (N,) str or None: the source sequence (e.g. ``"Directions 1"``) where
      one action has several takes.
    """

    keypoints_2d: np.ndarray
    confidence: np.ndarray
    keypoints_3d: np.ndarray
    image_size: np.ndarray
    subject: np.ndarray
    action: np.ndarray
    camera: np.ndarray
    frame: np.ndarray
    camera_R: np.ndarray
    camera_t: np.ndarray
    coordinates: np.ndarray | None = None
    valid_3d: np.ndarray | None = None
    sequence: np.ndarray | None = None

    def __post_init__(self):
        n = None
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.name in ("coordinates", "valid_3d", "sequence"):
                    continue
                raise InputError("is required", field=f.name)
            dtype, tail = _LAYOUT[f.name]
            arr = np.asarray(value).astype(dtype, copy=False)
            if n is None:
                n = arr.shape[0] if arr.ndim else -1
            ok = arr.ndim == 1 + len(tail) and arr.shape[0] == n
            ok = ok and all(s is None or s == a for s, a in zip(tail, arr.shape[1:], strict=True))
            if not ok:
                want = ", ".join(["N", *("n" if s is None else str(s) for s in tail)])
                raise InputError(
                    f"expected shape ({want}) with N={n}, got {arr.shape}", field=f.name
                )
            if dtype is str:
                arr = arr.astype(str)
            arr = arr.view()  # read-only view: the caller's array keeps its flags
            arr.setflags(write=False)
            object.__setattr__(self, f.name, arr)

    def __len__(self) -> int:
        return int(self.keypoints_2d.shape[0])

    def subset(self, mask) -> LiftingData:
        """Rows selected by a boolean mask (N,) or an index array, in that order."""
        mask = np.asarray(mask)
        if mask.dtype == bool and mask.shape != (len(self),):
            raise InputError(f"mask of shape {mask.shape} for {len(self)} samples", field="mask")
        kw = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kw[f.name] = None if value is None else value[mask]
        return LiftingData(**kw)

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric fields present (no strings, no None). Shapes as in the class doc."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) is not None and _LAYOUT[f.name][0] is not str
        }


def concatenate(parts: list[LiftingData]) -> LiftingData:
    """Rows of several datasets, in order. Optional fields survive only if all have them
    (``valid_3d`` missing in a part means all valid; ``sequence`` falls back to ``action``)."""
    if not parts:
        raise InputError("no samples to concatenate")
    kw = {}
    for f in fields(LiftingData):
        values = [getattr(p, f.name) for p in parts]
        if all(v is not None for v in values):
            kw[f.name] = np.concatenate(values, 0)
        elif f.name == "valid_3d" and any(v is not None for v in values):
            kw[f.name] = np.concatenate(
                [np.ones((len(p), N_KEYPOINTS), np.float32) if v is None else v
                 for p, v in zip(parts, values, strict=True)], 0)  # fmt: skip
        elif f.name == "sequence" and any(v is not None for v in values):
            kw[f.name] = np.concatenate(
                [p.action if v is None else v for p, v in zip(parts, values, strict=True)], 0
            )
        else:
            kw[f.name] = None
    return LiftingData(**kw)


def sample_step(source_hz: float, sample_hz: float | None) -> int:
    """Keep every ``step``-th frame of a ``source_hz`` sequence to sample at ``sample_hz``
    (None: every frame). Raises for a rate above the source's."""
    if sample_hz is None:
        return 1
    if not sample_hz > 0:
        raise InputError(f"sample_hz must be > 0, got {sample_hz}", field="sample_hz")
    if sample_hz > source_hz * (1 + 1e-9):
        raise InputError(
            f"sample_hz {sample_hz} is above the source rate {source_hz} Hz", field="sample_hz"
        )
    return max(1, int(round(source_hz / sample_hz)))


def split_subjects(split: str, subjects) -> tuple[str, ...]:
    """The subjects of ``split`` ("train" / "test"), or ``subjects`` if given."""
    if subjects is not None:
        return tuple(subjects)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; known: train, test", field="split")
    return SPLITS[split]
