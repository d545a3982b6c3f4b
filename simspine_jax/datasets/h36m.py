"""Human3.6M in VideoPose3D's preprocessed files, as lifting samples of our 37 keypoints.

Files (made by VideoPose3D's ``data/prepare_data_h36m.py`` and ``prepare_data_2d_h36m_*.py``):

* ``data_3d_h36m.npz``: ``positions_3d`` = {subject: {action: (T, 32, 3)}}, world frame
  (z up), metres, 50 Hz;
* ``data_2d_h36m_<name>.npz`` (``gt``, ``cpn_ft_h36m_dbb``, ``detectron_ft_h36m``, ...):
  ``positions_2d`` = {subject: {action: [camera 0..3: (T, 17 or 32, 2)]}}, pixels, and
  ``metadata`` (``layout_name``, ``num_joints``, ``keypoints_symmetry``). Both are pickled
  dicts inside the ``.npz`` (``allow_pickle``: load only files you trust).

Cameras: :mod:`.cameras` (the public Human3.6M calibration), ``X_cam = R X_world + t``.

Keypoints: Human3.6M has 15 of our 37 (:data:`H36M_TO_SIMSPINE`). The 12 limb joints
(shoulders, elbows, wrists, hips, knees, ankles) are the points SimSpine itself takes from
Human3.6M; ``Hip`` (Human3.6M's pelvis centre), ``Neck`` (its "thorax", the base of the neck)
and ``Head`` (its head top) are the same anatomical points as Halpe's up to the marker
placement. Human3.6M's "spine" (mid-back) and "neck/nose" joints have no SimSpine
counterpart and are left out. The 22 others get confidence 0 and ``valid_3d`` 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..keypoints import SIMSPINE37
from ._data import LiftingData, concatenate, sample_step, split_subjects
from .cameras import H36M_SUBJECTS, h36m_cameras, world_to_camera
from .simspine import canonical_action

__all__ = ["H36M17_NAMES", "H36M32_TO_17", "H36M_TO_SIMSPINE", "load_h36m"]

SOURCE_HZ = 50.0

# VideoPose3D's 17-joint layout (its Human3.6M skeleton after remove_static_joints)
H36M17_NAMES: tuple[str, ...] = (
    "Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax",
    "Neck/Nose", "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)  # fmt: skip
# the 32-joint index of each of the 17 (the 15 static joints dropped)
H36M32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
# Human3.6M joint (17-layout name) -> SimSpine keypoint
H36M_TO_SIMSPINE: dict[str, str] = {
    "Hip": "Hip",
    "RHip": "RHip",
    "RKnee": "RKnee",
    "RFoot": "RAnkle",
    "LHip": "LHip",
    "LKnee": "LKnee",
    "LFoot": "LAnkle",
    "Thorax": "Neck",
    "Head": "Head",
    "LShoulder": "LShoulder",
    "LElbow": "LElbow",
    "LWrist": "LWrist",
    "RShoulder": "RShoulder",
    "RElbow": "RElbow",
    "RWrist": "RWrist",
}


def _gather(n_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """For each SIMSPINE37 keypoint its joint in a 17- or 32-joint array (0 where absent),
    and the mask of present keypoints."""
    src = np.zeros(len(SIMSPINE37), np.int64)
    mask = np.zeros(len(SIMSPINE37), np.float32)
    for j17, name in enumerate(H36M17_NAMES):
        if name in H36M_TO_SIMSPINE:
            k = SIMSPINE37.index(H36M_TO_SIMSPINE[name])
            src[k] = j17 if n_joints == 17 else H36M32_TO_17[j17]
            mask[k] = 1.0
    return src, mask


def _load_dict(path: Path, key: str) -> dict:
    p = str(path)
    if not path.is_file():
        raise InputError("file not found", path=p)
    try:
        with np.load(p, allow_pickle=True) as z:
            files = list(z.files)
            arr = z[key] if key in files else None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read: {e}", path=p) from None
    if arr is None:
        raise InputError(f"missing array (has {', '.join(files)})", path=p, field=key)
    value = arr.item() if arr.dtype == object and arr.shape == () else None
    if not isinstance(value, dict):
        raise InputError("expected a pickled {subject: {action: ...}} dict", path=p, field=key)
    return value


def load_h36m(
    root,
    split: str = "train",
    *,
    sample_hz: float | None = None,
    subjects=None,
    keypoints: str = "gt",
) -> LiftingData:
    """Human3.6M lifting samples from ``root/data_3d_h36m.npz`` and
    ``root/data_2d_h36m_<keypoints>.npz`` (VideoPose3D's files; ``keypoints`` = ``"gt"`` or a
    detector's name such as ``"cpn_ft_h36m_dbb"``).

    2D and 3D of a sequence are cut to the shorter of the two (VideoPose3D's rule: mocap can
    be a few frames longer than the video). ``sample_hz``: kept frame rate (None: all 50 Hz
    frames). Keypoints Human3.6M lacks get confidence 0 and ``valid_3d`` 0.
    """
    root = Path(root)
    p3, p2 = root / "data_3d_h36m.npz", root / f"data_2d_h36m_{keypoints}.npz"
    pos3 = _load_dict(p3, "positions_3d")
    pos2 = _load_dict(p2, "positions_2d")
    subjects = split_subjects(split, subjects)
    for s in subjects:
        if s not in H36M_SUBJECTS:
            raise InputError(
                f"unknown subject {s!r}; Human3.6M's are {', '.join(H36M_SUBJECTS)}",
                field="subjects",
            )
        for path, d in ((p3, pos3), (p2, pos2)):
            if s not in d:
                raise InputError(f"subject {s} not in the file", path=str(path), field=s)
    step = sample_step(SOURCE_HZ, sample_hz)
    src3, mask = _gather(32)
    parts = []
    for subject in subjects:
        cams = h36m_cameras(subject)
        for action in sorted(pos3[subject]):
            X = np.asarray(pos3[subject][action], np.float64)
            if X.ndim != 3 or X.shape[1:] != (32, 3):
                raise InputError(
                    f"expected (T, 32, 3) metres, got {X.shape}", path=str(p3),
                    field=f"{subject}/{action}",
                )  # fmt: skip
            if action not in pos2[subject]:
                raise InputError(
                    "action missing from the 2D file", path=str(p2), field=f"{subject}/{action}"
                )
            views = pos2[subject][action]
            if len(views) != len(cams):
                raise InputError(
                    f"expected {len(cams)} cameras, got {len(views)}", path=str(p2),
                    field=f"{subject}/{action}",
                )  # fmt: skip
            for k, (uv_all, cam) in enumerate(zip(views, cams, strict=True)):
                uv_all = np.asarray(uv_all, np.float64)
                if uv_all.ndim != 3 or uv_all.shape[1] not in (17, 32) or uv_all.shape[2] < 2:
                    raise InputError(
                        f"expected (T, 17 or 32, 2) pixels, got {uv_all.shape}", path=str(p2),
                        field=f"{subject}/{action}/camera {k}",
                    )  # fmt: skip
                T = min(len(X), len(uv_all))
                frames = np.arange(0, T, step)
                src2, _ = _gather(uv_all.shape[1])
                uv = uv_all[frames][:, src2, :2]
                X_cam = world_to_camera(X[frames][:, src3], cam.R, cam.t)
                n = len(frames)
                parts.append(
                    LiftingData(
                        keypoints_2d=uv * mask[None, :, None],
                        confidence=np.tile(mask, (n, 1)),
                        keypoints_3d=X_cam * mask[None, :, None],
                        image_size=np.tile(cam.size, (n, 1)),
                        subject=np.full(n, subject),
                        action=np.full(n, canonical_action(action)),
                        camera=np.full(n, k),
                        frame=frames,
                        camera_R=np.tile(cam.R, (n, 1, 1)),
                        camera_t=np.tile(cam.t, (n, 1)),
                        valid_3d=np.tile(mask, (n, 1)),
                        sequence=np.full(n, action),
                    )
                )
    if not parts:
        raise InputError(f"no sequences for subjects {list(subjects)}", path=str(p3))
    return concatenate(parts)
