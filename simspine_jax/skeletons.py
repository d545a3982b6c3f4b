"""2D keypoint layouts by name: which index of a detector's output is which marker.

A :class:`Skeleton` says how many keypoints a detector writes per person (``n_keypoints``, the
length of OpenPose's ``pose_keypoints_2d`` divided by 3) and which of them become markers,
under the marker names Pose2Sim's OpenSim marker sets use. The layouts and the chosen subsets
follow Pose2Sim's ``skeletons.py`` (0.10.x): a keypoint Pose2Sim leaves out (e.g. the eyes and
ears of BODY_25B) is left out here too, so a TRC we write has the markers Pose2Sim's IK setups
expect. ``SIMSPINE37`` (alias ``SPINEPOSE``, the output of the ``spinepose`` package) keeps all
37 keypoints in :data:`simspine_jax.keypoints.SIMSPINE37` order, which is the order of
``spinepose/metainfo.py`` (spinepose 2.1.0: ``nose, left_eye, ..., spine_01, ..., neck_03``
under our names ``Nose, LEye, ..., Spine_01, ..., Neck_03``).

Pure Python + numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .keypoints import SIMSPINE37

__all__ = ["SKELETONS", "Skeleton", "get_skeleton", "skeleton_names"]


@dataclass(frozen=True)
class Skeleton:
    """One detector layout. ``marker_index[i]`` is the detector's index of ``marker_names[i]``."""

    name: str
    n_keypoints: int  # keypoints per person in the detector's output
    marker_names: tuple[str, ...]
    marker_index: tuple[int, ...]

    def __post_init__(self):
        if len(self.marker_names) != len(self.marker_index):
            raise ValueError(f"skeleton {self.name}: names and indices differ in length")
        if len(set(self.marker_names)) != len(self.marker_names):
            raise ValueError(f"skeleton {self.name}: duplicate marker name")
        if any(not 0 <= i < self.n_keypoints for i in self.marker_index):
            raise ValueError(f"skeleton {self.name}: index outside 0..{self.n_keypoints - 1}")

    @property
    def n_markers(self) -> int:
        return len(self.marker_names)

    def select(self, keypoints: np.ndarray) -> np.ndarray:
        """The marker keypoints of ``(..., n_keypoints, D)`` detector output, in marker order.

        Shape: (..., n_markers, D).
        """
        keypoints = np.asarray(keypoints)
        if keypoints.shape[-2] != self.n_keypoints:
            raise InputError(
                f"{self.name} has {self.n_keypoints} keypoints per person, "
                f"the data has {keypoints.shape[-2]}"
            )
        return keypoints[..., list(self.marker_index), :]


def _sk(name: str, n: int, pairs: tuple[tuple[int, str], ...]) -> Skeleton:
    return Skeleton(name, n, tuple(p[1] for p in pairs), tuple(p[0] for p in pairs))


# the 17 COCO body keypoints' first 17 slots, shared by COCO_17, HALPE_* and BODY_25B
_COCO_LIMBS = (
    (0, "Nose"),
    (5, "LShoulder"),
    (6, "RShoulder"),
    (7, "LElbow"),
    (8, "RElbow"),
    (9, "LWrist"),
    (10, "RWrist"),
    (11, "LHip"),
    (12, "RHip"),
    (13, "LKnee"),
    (14, "RKnee"),
    (15, "LAnkle"),
    (16, "RAnkle"),
)
_HALPE_BODY = (
    *_COCO_LIMBS,
    (18, "Neck"),
    (19, "Hip"),
    (20, "LBigToe"),
    (21, "RBigToe"),
    (22, "LSmallToe"),
    (23, "RSmallToe"),
    (24, "LHeel"),
    (25, "RHeel"),
)
_BODY25B_BODY = (
    *_COCO_LIMBS,
    (17, "Neck"),
    (18, "Head"),
    (19, "LBigToe"),
    (20, "LSmallToe"),
    (21, "LHeel"),
    (22, "RBigToe"),
    (23, "RSmallToe"),
    (24, "RHeel"),
)
# OpenPose BODY_25 / COCO-18 / MPII order (right side first)
_OPENPOSE_UPPER = (
    (0, "Nose"),
    (1, "Neck"),
    (2, "RShoulder"),
    (3, "RElbow"),
    (4, "RWrist"),
    (5, "LShoulder"),
    (6, "LElbow"),
    (7, "LWrist"),
)

SKELETONS: dict[str, Skeleton] = {
    s.name: s
    for s in (
        _sk("BODY_25B", 25, _BODY25B_BODY),
        _sk(
            "BODY_25",
            25,
            (
                *_OPENPOSE_UPPER,
                (8, "CHip"),
                (9, "RHip"),
                (10, "RKnee"),
                (11, "RAnkle"),
                (12, "LHip"),
                (13, "LKnee"),
                (14, "LAnkle"),
                (19, "LBigToe"),
                (20, "LSmallToe"),
                (21, "LHeel"),
                (22, "RBigToe"),
                (23, "RSmallToe"),
                (24, "RHeel"),
            ),
        ),
        _sk(
            "BODY_135",
            135,
            (
                *_BODY25B_BODY,
                (27, "LThumb"),
                (30, "LIndex"),
                (42, "LPinky"),
                (48, "RThumb"),
                (51, "RIndex"),
                (63, "RPinky"),
            ),
        ),
        _sk("HALPE_26", 26, (*_COCO_LIMBS, (17, "Head"), *_HALPE_BODY[13:])),
        _sk(
            "HALPE_68",
            68,
            (
                *_HALPE_BODY,
                (28, "LThumb"),
                (31, "LIndex"),
                (43, "LPinky"),
                (49, "RThumb"),
                (52, "RIndex"),
                (64, "RPinky"),
            ),
        ),
        _sk(
            "HALPE_136",
            136,
            (
                *_HALPE_BODY,
                (96, "LThumb"),
                (99, "LIndex"),
                (111, "LPinky"),
                (117, "RThumb"),
                (120, "RIndex"),
                (132, "RPinky"),
            ),
        ),
        _sk("COCO_17", 17, _COCO_LIMBS),
        _sk(
            "COCO",
            18,
            (
                *_OPENPOSE_UPPER,
                (8, "RHip"),
                (9, "RKnee"),
                (10, "RAnkle"),
                (11, "LHip"),
                (12, "LKnee"),
                (13, "LAnkle"),
            ),
        ),
        _sk(
            "MPII",
            15,
            (
                *_OPENPOSE_UPPER,
                (8, "RHip"),
                (9, "RKnee"),
                (10, "RAnkle"),
                (11, "LHip"),
                (12, "LKnee"),
                (13, "LAnkle"),
                (14, "CHip"),
            ),
        ),
        _sk(
            "BLAZEPOSE",
            33,
            (
                (0, "Nose"),
                (2, "LEye"),
                (5, "REye"),
                (11, "LShoulder"),
                (12, "RShoulder"),
                (13, "LElbow"),
                (14, "RElbow"),
                (15, "LWrist"),
                (16, "RWrist"),
                (17, "LPinky"),
                (18, "RPinky"),
                (19, "LIndex"),
                (20, "RIndex"),
                (21, "LThumb"),
                (22, "RThumb"),
                (23, "LHip"),
                (24, "RHip"),
                (25, "LKnee"),
                (26, "RKnee"),
                (27, "LAnkle"),
                (28, "RAnkle"),
                (29, "LHeel"),
                (30, "RHeel"),
                (31, "LBigToe"),
                (32, "RBigToe"),
            ),
        ),
        Skeleton("SIMSPINE37", 37, SIMSPINE37, tuple(range(37))),
    )
}
_ALIASES = {"SPINEPOSE": "SIMSPINE37", "HALPE26": "HALPE_26", "BODY25": "BODY_25"}


def skeleton_names() -> tuple[str, ...]:
    """Names :func:`get_skeleton` accepts (aliases not included)."""
    return tuple(SKELETONS)


def get_skeleton(name: str | Skeleton) -> Skeleton:
    """The skeleton of that name (case-insensitive; ``SPINEPOSE`` means ``SIMSPINE37``)."""
    if isinstance(name, Skeleton):
        return name
    key = str(name).strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in SKELETONS:
        raise InputError(
            f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)} (and SPINEPOSE)",
            field="skeleton",
        )
    return SKELETONS[key]
