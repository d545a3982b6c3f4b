"""Loaders of the SimSpine release (dfki-av/simspine): its HDF5, its MMPose-style annotation
files and its per-subject TRC/MOT folders.

Formats, as the release's own code writes them (``src/simspine/serialize_dataset.py``,
``tools/preprocess_simspine.py``, ``docs/dataset.md``):

* ``simspine.h5``: ``metadata/markers_names`` (37 byte strings, the release's order, not
  ours: matched by name), ``metadata/kinematic_axes`` (62 .mot column names); per subject
  ``S1`` ... a group ``calibration`` with ``names`` (V,), ``K`` (V, 3, 3), ``dist`` (V, 4|5)
  OpenCV (k1, k2, p1, p2[, k3]), ``R`` (V, 3, 3), ``t`` (V, 3), ``size`` (V, 2) from the
  Pose2Sim calibration ``Calib_<S>.toml``, and per action a group with ``markers``
  (T, 37, 3) (the TRC's numbers: metres, OpenSim frame, y up), ``kinematics`` (T, 62) (the
  IK .mot's numbers: degrees for rotations, metres for translations) and ``timestamps`` (T,).
* ``annotations/simspine_{train,test}.npz`` (MMPose's Human3.6M layout): ``imgname``
  (``S1/S1_<action>.<camera>/S1_<action>.<camera>_000123.jpg``), ``center``, ``scale``,
  ``part`` (N, K, 3) 2D px + visibility, ``S`` (N, K, 4) camera-frame metres + visibility,
  ``S_world`` (N, K, 4) world metres (z up), ``angles`` (N, 62), ``metadata`` (a pickled dict
  with ``joint_names``; the release ships the 15 spine keypoints).
* folders: ``cameras/Calib_<S>.toml``, ``positions/<S>/<S>_<action>.trc``,
  ``kinematics/<S>/<S>_<action>/<S>_<action>.mot``.

Frames and cameras: the calibration's world is Pose2Sim's (z up); the TRC is OpenSim's
(y up) with ``X_world = (z, x, y)_trc`` (the release projects ``markers[..., [2, 0, 1]]``).
We report ``camera_R = R_cal @ P`` with that permutation ``P`` and ``camera_t = t_cal``, so
``X_cam = camera_R @ X_trc + camera_t`` in OpenSim's frame, and 2D keypoints by OpenCV's
projection (:func:`simspine_jax.io.calibration.project_points`) of the same points, as the
release does. (The release's preprocessing computes its camera-frame ``S`` as
``R (X - t)``; that differs from the frame of its own 2D projection ``R X + t`` by a constant
shift per camera. We load the HDF5 and the folders with ``R X + t``; the annotation ``.npz``
keeps the release's ``S``, whose camera transform we recover exactly from ``S`` and
``S_world``. Root-relative metrics are the same either way.)
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..keypoints import SIMSPINE37
from ._data import LiftingData, concatenate, sample_step, split_subjects
from .cameras import CAMERA_IDS

__all__ = ["canonical_action", "load_simspine", "load_simspine_trc"]

SOURCE_HZ = 50.0  # Human3.6M's frame rate, which SimSpine keeps
# OpenSim frame (y up) -> Pose2Sim world (z up): X_world = (z, x, y)
_TRC_TO_WORLD = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_ACTION_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}


def canonical_action(sequence: str) -> str:
    """Human3.6M action of a sequence name: take number and separators dropped, aliases
    unified (``"Directions 1"``, ``"Directions_1"`` -> ``"Directions"``,
    ``"TakingPhoto"`` -> ``"Photo"``, ``"WalkingDog"`` -> ``"WalkDog"``)."""
    base = re.sub(r"[ _.-]*\d+$", "", sequence.strip())
    return _ACTION_ALIASES.get(base, base)


@functools.cache
def _independent_layout() -> tuple[tuple[str, ...], np.ndarray]:
    """The default model's independent coordinate names and which are rotational."""
    from .. import default_model_path, load_model

    tree = load_model(default_model_path())
    motion = {c["name"]: c["motion_type"] for c in tree.meta["coordinates"]}
    names = tuple(tree.independent_names)
    return names, np.array([motion[n] == "rotational" for n in names])


def coordinates_from_columns(labels, values, in_degrees: bool, where: dict) -> np.ndarray | None:
    """The default model's independent coordinates (radians, metres) from .mot columns,
    or None if one is missing. Shapes: values (T, C) -> (T, n_indep)."""
    names, rot = _independent_layout()
    pos = {str(lab): i for i, lab in enumerate(labels)}
    if any(n not in pos for n in names):
        return None
    q = np.asarray(values, np.float64)[:, [pos[n] for n in names]]
    if not np.all(np.isfinite(q)):
        raise InputError("non-finite joint angle", **where)
    if in_degrees:
        q[:, rot] = np.deg2rad(q[:, rot])
    return q


def _keypoint_columns(names, where: dict, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each SIMSPINE37 keypoint its column in ``names`` (-1 if absent), and a mask.
    ``strict``: other names are an error (else ignored)."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    unknown = [n for n in names if n not in SIMSPINE37]
    if not any(n in SIMSPINE37 for n in names):
        raise InputError("none of the SimSpine keypoint names is here", **where)
    if unknown and strict:
        raise InputError(f"unknown keypoint names {unknown[:5]}", **where)
    col = np.array([names.index(k) if k in names else -1 for k in SIMSPINE37])
    return col, (col >= 0).astype(np.float32)


def _cameras_from_arrays(K, dist, R, t, size, names) -> list[dict]:
    cams = []
    for v in range(len(K)):
        d = np.zeros(5)
        d[: len(dist[v])] = dist[v]
        name = names[v].decode() if isinstance(names[v], bytes) else str(names[v])
        cams.append(
            dict(name=name, K=np.asarray(K[v], float), dist=d, R=np.asarray(R[v], float),
                 t=np.asarray(t[v], float).reshape(3), size=np.asarray(size[v], float))
        )  # fmt: skip
    return cams


def _camera_index(name: str, position: int) -> int:
    """Index of a camera: its place among Human3.6M's cameras if it is one, else its
    position in the calibration."""
    for k, cid in enumerate(CAMERA_IDS):
        if cid in name:
            return k
    return position


def _rows(subject, sequence, frames, markers, present, coords, cameras, where) -> LiftingData:
    """Samples of one sequence seen by every camera: ``markers`` (T, 37, 3) in OpenSim's
    frame, ``present`` (37,) the keypoints the source has (NaN positions count as missing in
    their frame), ``frames`` (T,), ``coords`` (T, n) or None."""
    from ..io.calibration import project_points

    T = len(frames)
    present = (present[None] > 0) & np.all(np.isfinite(markers), axis=-1)  # (T, 37)
    X = np.where(present[..., None], markers, 0.0)
    parts = []
    for position, cam in enumerate(cameras):
        R = cam["R"] @ _TRC_TO_WORLD
        X_cam = X @ R.T + cam["t"]
        depth = np.median(X_cam[..., 2][present]) if present.any() else 1.0
        if not 0.1 < depth < 100:
            raise InputError(
                f"camera {cam['name']}: keypoints not 0.1-100 m in front of it (depth "
                f"median {depth:.3g}); markers must be in metres, in the "
                "calibration's world",
                **where,
            )
        uv = project_points(X @ _TRC_TO_WORLD.T, cam["K"], cam["dist"], cam["R"], cam["t"])
        w, h = cam["size"]
        conf = (
            (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
            & (X_cam[..., 2] > 0) & present
        ).astype(np.float32)  # fmt: skip
        parts.append(
            LiftingData(
                keypoints_2d=np.where(conf[..., None] > 0, uv, 0.0),
                confidence=conf,
                keypoints_3d=X_cam,
                image_size=np.tile([w, h], (T, 1)),
                subject=np.full(T, subject),
                action=np.full(T, canonical_action(sequence)),
                camera=np.full(T, _camera_index(cam["name"], position)),
                frame=frames,
                camera_R=np.tile(R, (T, 1, 1)),
                camera_t=np.tile(cam["t"], (T, 1)),
                coordinates=coords,
                valid_3d=present,
                sequence=np.full(T, sequence),
            )
        )
    return concatenate(parts)


def _frame_step(timestamps, sample_hz, where) -> tuple[np.ndarray, int]:
    t = np.asarray(timestamps, np.float64)
    if len(t) >= 2:
        dt = np.median(np.diff(t))
        if not dt > 0:
            raise InputError("timestamps do not increase", **where)
        rate = 1.0 / dt
    else:
        rate = SOURCE_HZ
    step = sample_step(rate, sample_hz)
    return np.arange(0, len(t), step), step


# ----------------------------------------------------------------------------- HDF5
def _find(root, names: tuple[str, ...]) -> Path | None:
    root = Path(root)
    if root.is_file():
        return root
    for n in names:
        for p in (root / n, root / "serialized" / n, root / "data" / "simspine" / n):
            if p.is_file():
                return p
    return None


def load_simspine(
    root, split: str = "train", *, sample_hz: float | None = None, subjects=None
) -> LiftingData:
    """SimSpine from ``simspine.h5`` or from ``annotations/simspine_{split}.npz``.

    ``root``: either file, or a folder holding one of them (also under ``serialized/`` or
    ``annotations/``); the HDF5 is preferred. ``sample_hz``: kept frame rate (None: all).
    """
    h5 = _find(root, ("simspine.h5",))
    if h5 is not None and h5.suffix in (".h5", ".hdf5"):
        return _load_h5(h5, split, sample_hz, subjects)
    npz = _find(root, (f"simspine_{split}.npz", f"annotations/simspine_{split}.npz"))
    if npz is not None and npz.suffix == ".npz":
        return _load_annotations(npz, split, sample_hz, subjects)
    raise InputError(
        f"no simspine.h5 or annotations/simspine_{split}.npz here", path=str(root), field="root"
    )


def _load_h5(path: Path, split, sample_hz, subjects) -> LiftingData:
    import h5py

    p = str(path)
    subjects = split_subjects(split, subjects)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise InputError(f"cannot read HDF5: {e}", path=p) from None
    with f:
        for key in ("metadata/markers_names", "metadata/kinematic_axes"):
            if key not in f:
                raise InputError("missing dataset", path=p, field=key)
        col, present = _keypoint_columns(f["metadata/markers_names"][:], dict(path=p))
        axes = [
            a.decode() if isinstance(a, bytes) else str(a) for a in f["metadata/kinematic_axes"]
        ]
        missing = [s for s in subjects if s not in f]
        if missing:
            known = sorted(k for k in f if k != "metadata")
            raise InputError(
                f"subjects {missing} not in the file (it has {', '.join(known)})",
                path=p,
                field="subjects",
            )
        parts = []
        for subject in subjects:
            g = f[subject]
            if "calibration" not in g:
                raise InputError("missing group", path=p, field=f"{subject}/calibration")
            cal = g["calibration"]
            arrays = {}
            for key, tail in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,)), ("size", (2,))):
                if key not in cal:
                    raise InputError(
                        "missing dataset", path=p, field=f"{subject}/calibration/{key}"
                    )
                a = np.asarray(cal[key][:], np.float64)
                a = a.reshape(len(a), *tail) if a.size == len(a) * int(np.prod(tail)) else a
                if a.shape[1:] != tail:
                    raise InputError(
                        f"expected shape (V, {', '.join(map(str, tail))}), got {a.shape}",
                        path=p,
                        field=f"{subject}/calibration/{key}",
                    )
                arrays[key] = a
            for key in ("dist", "names"):
                if key not in cal:
                    raise InputError(
                        "missing dataset", path=p, field=f"{subject}/calibration/{key}"
                    )
            cams = _cameras_from_arrays(
                arrays["K"], np.asarray(cal["dist"][:], float), arrays["R"], arrays["t"],
                arrays["size"], cal["names"][:],
            )  # fmt: skip
            for seq in sorted(k for k in g if k != "calibration"):
                a = g[seq]
                field = f"{subject}/{seq}"
                for key in ("markers", "timestamps"):
                    if key not in a:
                        raise InputError("missing dataset", path=p, field=f"{field}/{key}")
                m = a["markers"]
                n_names = len(f["metadata/markers_names"])
                if m.ndim != 3 or m.shape[1:] != (n_names, 3):
                    raise InputError(
                        f"expected (T, {n_names}, 3), got {m.shape}",
                        path=p,
                        field=f"{field}/markers",
                    )
                frames, _ = _frame_step(a["timestamps"][:], sample_hz, dict(path=p, field=field))
                markers = np.asarray(m[:], np.float64)[frames][:, np.maximum(col, 0)]
                coords = None
                if "kinematics" in a:
                    kin = np.asarray(a["kinematics"][:], np.float64)
                    if kin.ndim != 2 or kin.shape[1] != len(axes) or len(kin) < len(m):
                        raise InputError(
                            f"expected (T={len(m)}, {len(axes)}), got {kin.shape}",
                            path=p,
                            field=f"{field}/kinematics",
                        )
                    coords = coordinates_from_columns(
                        axes, kin[frames], True, dict(path=p, field=f"{field}/kinematics")
                    )
                parts.append(
                    _rows(subject, seq, frames, markers, present, coords, cams,
                          dict(path=p, field=field))
                )  # fmt: skip
    if not parts:
        raise InputError(f"no sequences for subjects {list(subjects)}", path=p)
    return concatenate(parts)


# ----------------------------------------------------------------------------- annotations
def _rigid_fit(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation with ``B = A @ R.T + t`` per sample (Kabsch).
    Shapes: (N, K, 3) x2 -> (N, 3, 3), (N, 3)."""
    mu_a, mu_b = A.mean(1, keepdims=True), B.mean(1, keepdims=True)
    H = np.swapaxes(A - mu_a, 1, 2) @ (B - mu_b)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))
    D = np.concatenate([np.ones((len(A), 2)), d[:, None]], 1)
    R = np.swapaxes(Vt, 1, 2) @ (D[:, :, None] * np.swapaxes(U, 1, 2))
    t = mu_b[:, 0] - np.einsum("nij,nj->ni", R, mu_a[:, 0])
    return R, t


# file name of an image: S1_<action>.<camera>_000123.jpg
_IMGNAME = re.compile(r"^(S\d+)_(.+)\.([^.]+)_(\d+)\.\w+$")


def _load_annotations(path: Path, split, sample_hz, subjects) -> LiftingData:
    p = str(path)
    subjects = split_subjects(split, subjects)
    try:
        z = np.load(p, allow_pickle=True)  # 'metadata' is a pickled dict (MMPose's layout)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read annotation file: {e}", path=p) from None
    with z:
        for key in ("imgname", "part", "S", "S_world", "metadata"):
            if key not in z.files:
                raise InputError("missing array", path=p, field=key)
        meta = z["metadata"].item()
        if not isinstance(meta, dict) or "joint_names" not in meta:
            raise InputError("metadata has no joint_names", path=p, field="metadata")
        col, present = _keypoint_columns(list(meta["joint_names"]), dict(path=p, field="metadata"))
        names = [str(n) for n in z["imgname"]]
        part, S, S_world = z["part"], z["S"], z["S_world"]
        K = len(meta["joint_names"])
        for key, a, c in (("part", part, 3), ("S", S, 4), ("S_world", S_world, 4)):
            if a.ndim != 3 or a.shape[0] != len(names) or a.shape[1] != K or a.shape[2] < c - 1:
                raise InputError(
                    f"expected ({len(names)}, {K}, {c}), got {a.shape}", path=p, field=key
                )
        angles = z["angles"] if "angles" in z.files else None
    parsed = [_IMGNAME.match(n.replace("\\", "/").rsplit("/", 1)[-1]) for n in names]
    bad = [i for i, m in enumerate(parsed) if m is None]
    if bad:
        raise InputError(
            f"image name {names[bad[0]]!r} is not S<n>/S<n>_<action>.<camera>/..._<frame>.jpg",
            path=p,
            frame=bad[0],
            field="imgname",
        )
    subject = np.array([m.group(1) for m in parsed])
    have = set(subject.tolist())
    missing = [s for s in subjects if s not in have]
    if missing:
        raise InputError(
            f"subjects {missing} not in the file (it has {', '.join(sorted(have))})",
            path=p,
            field="subjects",
        )
    frame = np.array([int(m.group(4)) for m in parsed])
    step = sample_step(SOURCE_HZ, sample_hz)
    keep = np.isin(subject, subjects) & (frame % step == 0)
    idx = np.nonzero(keep)[0]
    seq = np.array([parsed[i].group(2) for i in idx])
    cam_name = [parsed[i].group(3) for i in idx]
    order = {n: k for k, n in enumerate(sorted(set(cam_name)))}
    camera = np.array([_camera_index(n, order[n]) for n in cam_name])
    sel = np.maximum(col, 0)
    uv = np.asarray(part[idx][:, sel, :2], np.float64)
    vis = (
        np.asarray(part[idx][:, sel, 2], np.float64) if part.shape[2] > 2 else np.ones(uv.shape[:2])
    )
    conf = ((vis > 0) & (present[None] > 0)).astype(np.float32)
    X_cam = np.asarray(S[idx][:, sel, :3], np.float64)
    # the file's camera transform, exact up to rounding: S = R_w S_world + t (all K columns)
    R_w, t = _rigid_fit(
        np.asarray(S_world[idx][..., :3], np.float64), np.asarray(S[idx][..., :3], np.float64)
    )
    R = R_w @ _TRC_TO_WORLD  # OpenSim frame -> camera, as for the HDF5
    size = np.array([(1000.0, 1002.0) if n in (CAMERA_IDS[0], CAMERA_IDS[3]) else (1000.0, 1000.0)
                     for n in cam_name])  # fmt: skip
    coords = None
    if angles is not None and "param_names" in meta:
        axes = [str(a) for a in meta["param_names"]]
        if angles.ndim != 2 or angles.shape != (len(names), len(axes)):
            raise InputError(
                f"expected ({len(names)}, {len(axes)}), got {angles.shape}", path=p, field="angles"
            )
        where = dict(path=p, field="angles")
        coords = coordinates_from_columns(axes, angles[idx], True, where)
    return LiftingData(
        keypoints_2d=np.where(conf[..., None] > 0, uv, 0.0),
        confidence=conf,
        keypoints_3d=np.where(present[None, :, None] > 0, X_cam, 0.0),
        image_size=size,
        subject=subject[idx],
        action=np.array([canonical_action(s) for s in seq]),
        camera=camera,
        frame=frame[idx],
        camera_R=R,
        camera_t=t,
        coordinates=coords,
        valid_3d=np.tile(present, (len(idx), 1)),
        sequence=seq,
    )


# ----------------------------------------------------------------------------- TRC/MOT folders
def _one(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pat in patterns:
        hits = sorted(root.glob(pat))
        if hits:
            return hits[0]
    return None


def load_simspine_trc(
    root, split: str = "train", *, sample_hz: float | None = None, subjects=None
) -> LiftingData:
    """SimSpine from its per-subject folders (``docs/dataset.md``): ``cameras/Calib_<S>.toml``,
    ``positions/<S>/<S>_<action>.trc`` and, where present,
    ``kinematics/<S>/<S>_<action>/<S>_<action>.mot`` (joint angles -> ``coordinates``, matched
    to the TRC frames by time). TRC markers other than the 37 keypoints are ignored; missing
    samples (empty TRC cells) get confidence 0. ``sample_hz``: kept frame rate (None: all).
    """
    from ..io import read_storage, read_trc
    from ..io.calibration import read_calibration

    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder", path=str(root), field="root")
    subjects = split_subjects(split, subjects)
    parts = []
    for subject in subjects:
        calib = _one(root, (f"cameras/Calib_{subject}.toml", f"**/Calib_{subject}.toml"))
        if calib is None:
            raise InputError(
                f"no calibration cameras/Calib_{subject}.toml for subject {subject}",
                path=str(root),
                field="subjects",
            )
        cams = [
            dict(name=c.name, K=c.K, dist=c.dist, R=c.R, t=c.t, size=np.asarray(c.size, float))
            for c in read_calibration(calib)
        ]
        base = root / "positions" / subject
        trcs = sorted(base.glob(f"{subject}_*.trc")) if base.is_dir() else []
        trcs = trcs or sorted(root.glob(f"**/{subject}_*.trc"))
        if not trcs:
            raise InputError(
                f"no {subject}_<action>.trc files for subject {subject}",
                path=str(root),
                field="subjects",
            )
        for trc_path in trcs:
            seq = trc_path.stem[len(subject) + 1 :]
            trc = read_trc(trc_path)
            where = dict(path=str(trc_path))
            col, present = _keypoint_columns(trc.marker_names, where, strict=False)
            frames, _ = _frame_step(trc.time, sample_hz, where)
            markers = trc.positions[frames][:, np.maximum(col, 0)]
            coords = None
            mot_path = _one(
                root,
                (f"kinematics/{subject}/{subject}_{seq}/{subject}_{seq}.mot",
                 f"**/{subject}_{seq}.mot"),
            )  # fmt: skip
            if mot_path is not None:
                mot = read_storage(mot_path)
                mwhere = dict(path=str(mot_path))
                q = coordinates_from_columns(
                    mot.labels, mot.values, mot.in_degrees is not False, mwhere
                )
                if q is not None and len(mot.time):
                    t = trc.time[frames]
                    k = np.clip(np.searchsorted(mot.time, t), 1, len(mot.time) - 1)
                    k = np.where(np.abs(mot.time[k - 1] - t) < np.abs(mot.time[k] - t), k - 1, k)
                    if len(mot.time) == 1:
                        k = np.zeros_like(k)
                    tol = 0.5 / max(trc.data_rate, 1e-9)  # half a frame
                    coords = q[k] if np.all(np.abs(mot.time[k] - t) <= tol) else None
            parts.append(_rows(subject, seq, frames, markers, present, coords, cams, where))
    return concatenate(parts)
