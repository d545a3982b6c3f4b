"""OpenPose-style 2D keypoints: one JSON per frame per camera (OpenPose, Pose2Sim, SpinePose).

Each file holds ``{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...]}, ...]}``
(pixels, confidence in [0, 1]; OpenPose writes an undetected keypoint as ``0, 0, 0``).

**Layout** (Pose2Sim's): ``POSE_DIR/<camera folder>/*.json``, one folder per camera. The
frame number of a file is the last integer in its name (``cam01.0042.json``,
``cam01_000000000042_keypoints.json`` -> 42).

**Cameras are matched to the calibration** (:func:`match_camera_dirs`) by, in this order:

1. name: the folder name without a trailing ``_json`` (and a leading ``pose_``) equals the
   calibration camera's name (case-insensitive);
2. number: the last integer in the folder name equals the last integer in the camera's name
   (``cam1_json`` <-> ``cam_01``), when these numbers are unique on both sides;
3. order: the i-th folder (natural sort) is the i-th camera of the calibration (Pose2Sim's own
   rule), when there are as many folders as cameras.

**Frame offsets**: ``frame_offsets[c]`` shifts camera ``c``: its file number ``n`` is common
frame ``n - offset``. The common frames run from the first to the last frame any camera has;
a frame a camera lacks is missing (NaN, confidence 0) in that camera.

**Several people** (:func:`select_person`): in a frame where every camera sees at most one
person, that person is taken. Otherwise every combination of one person per camera is scored
and the lowest score wins. The score is the mean reprojection error (px) of the combination's
confidence-weighted DLT (cross-view consistency: people mixed across cameras do not
triangulate), plus, when the previous frame's chosen keypoints triangulate (at least 3
keypoints), the mean distance (px) of the combination's keypoints to that skeleton's
reprojection (tracking: of two consistent people, the one who was followed). Then a *gate*
(while more than two views hold a person): the view whose removal leaves the other views most
consistent is compared with the reprojection of their DLT; a median distance above ``gate_px``
empties that view for the frame (the subject is out of view and a bystander is in it) and the
gate runs again on the rest. More than ``max_combinations``
combinations: per camera, the person nearest the previous skeleton (else the most confident).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, SimSpineWarning
from .calibration import Camera, undistort_pixels

__all__ = [
    "Keypoints2D",
    "match_camera_dirs",
    "read_openpose_camera",
    "read_openpose_frame",
    "read_pose_dir",
    "select_person",
]


@dataclass(frozen=True)
class Keypoints2D:
    """Synchronised 2D keypoints of one subject in ``C`` cameras.

    ``uv`` (T, C, K, 2) px, NaN where missing; ``confidence`` (T, C, K), 0 where missing;
    ``frames`` (T,) common frame numbers; ``report`` notes from reading (skipped cameras,
    person choices).
    """

    camera_names: tuple[str, ...]
    marker_names: tuple[str, ...]
    frames: np.ndarray
    uv: np.ndarray
    confidence: np.ndarray
    report: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_arrays(
        cls,
        uv,
        confidence,
        *,
        camera_names: Sequence[str] | None = None,
        marker_names: Sequence[str] | None = None,
        frames=None,
    ) -> Keypoints2D:
        """Keypoints from Python arrays: ``uv`` (T, C, K, 2), ``confidence`` (T, C, K)."""
        uv = np.asarray(uv, dtype=np.float64)
        conf = np.asarray(confidence, dtype=np.float64)
        if uv.ndim != 4 or uv.shape[-1] != 2:
            raise InputError(f"uv must have shape (T, C, K, 2), got {uv.shape}", field="uv")
        if conf.shape != uv.shape[:-1]:
            raise InputError(
                f"confidence must have shape {uv.shape[:-1]}, got {conf.shape}",
                field="confidence",
            )
        T, C, K, _ = uv.shape
        cams = (
            tuple(camera_names)
            if camera_names is not None
            else tuple(f"cam{i + 1}" for i in range(C))
        )
        names = (
            tuple(marker_names) if marker_names is not None else tuple(f"kp{i}" for i in range(K))
        )
        if len(cams) != C or len(names) != K:
            raise InputError("camera_names / marker_names do not match the array shape")
        fr = np.arange(T) if frames is None else np.asarray(frames, dtype=np.int64)
        if fr.shape != (T,):
            raise InputError(f"frames must have shape ({T},)", field="frames")
        conf = np.where(np.isfinite(conf) & np.all(np.isfinite(uv), -1), conf, 0.0)
        return cls(cams, names, fr, uv, conf)


# ----------------------------------------------------------------------------- files
def _last_int(s: str) -> int | None:
    nums = re.findall(r"\d+", s)
    return int(nums[-1]) if nums else None


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def read_openpose_frame(path: str | os.PathLike[str], n_keypoints: int) -> np.ndarray:
    """People of one OpenPose JSON file. Shape: (P, n_keypoints, 3) = x, y, confidence.

    A person whose ``pose_keypoints_2d`` is an empty list is left out; any other length than
    ``3 * n_keypoints`` is an error naming the file (usually the wrong skeleton)."""
    p = str(path)
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=p) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", path=p, line=e.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise InputError("no 'people' list", path=p, field="people")
    out = []
    for i, person in enumerate(data["people"]):
        kp = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if isinstance(kp, list) and not kp:
            continue  # a person without body keypoints (e.g. only a face or hands detected)
        if not isinstance(kp, list) or len(kp) != 3 * n_keypoints:
            n = len(kp) if isinstance(kp, list) else "no"
            raise InputError(
                f"person {i} has {n} values, expected {3 * n_keypoints} "
                f"({n_keypoints} keypoints x 3); wrong --skeleton?",
                path=p,
                field="pose_keypoints_2d",
            )
        try:
            out.append(np.asarray(kp, dtype=np.float64).reshape(n_keypoints, 3))
        except (TypeError, ValueError):
            raise InputError(
                f"person {i} has a non-numeric value", path=p, field="pose_keypoints_2d"
            ) from None
    return np.stack(out) if out else np.zeros((0, n_keypoints, 3))


def read_openpose_camera(
    folder: str | os.PathLike[str], n_keypoints: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame numbers (F,) and people ``(P_f, n_keypoints, 3)`` of every JSON in a folder."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError("camera folder not found", path=str(d))
    files = sorted(
        (f for f in d.iterdir() if f.suffix == ".json"), key=lambda f: _natural_key(f.name)
    )
    if not files:
        raise InputError("no .json files in the camera folder", path=str(d))
    nums = [_last_int(f.stem) for f in files]
    if any(n is None for n in nums) or len(set(nums)) != len(nums):
        nums = list(range(len(files)))  # no usable numbers: file order
    return np.asarray(nums, dtype=np.int64), [read_openpose_frame(f, n_keypoints) for f in files]


def _dir_key(name: str) -> str:
    k = name.lower()
    k = k[: -len("_json")] if k.endswith("_json") else k
    return k[len("pose_") :] if k.startswith("pose_") else k


def match_camera_dirs(
    pose_dir: str | os.PathLike[str], camera_names: Sequence[str]
) -> tuple[list[Path], str]:
    """The folder of each calibration camera (in calibration order) and the rule used
    (``'name'``, ``'number'`` or ``'order'``; see the module doc)."""
    root = Path(pose_dir)
    if not root.is_dir():
        raise InputError("pose folder not found", path=str(root))
    dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and any(f.suffix == ".json" for f in d.iterdir())),
        key=lambda d: _natural_key(d.name),
    )
    if not dirs:
        raise InputError("no camera folders with .json files", path=str(root))
    by_key = {_dir_key(d.name): d for d in dirs}
    if all(n.lower() in by_key for n in camera_names):
        return [by_key[n.lower()] for n in camera_names], "name"
    dn = [_last_int(_dir_key(d.name)) for d in dirs]
    cn = [_last_int(n) for n in camera_names]
    if (
        None not in dn
        and None not in cn
        and len(set(dn)) == len(dn)
        and len(set(cn)) == len(cn)
        and set(cn) <= set(dn)
    ):
        return [dirs[dn.index(n)] for n in cn], "number"
    if len(dirs) == len(camera_names):
        return dirs, "order"
    missing = [n for n in camera_names if n.lower() not in by_key]
    raise InputError(
        f"cannot match calibration cameras {list(camera_names)} to camera folders "
        f"{[d.name for d in dirs]} by name, number or order (no folder for {missing})",
        path=str(root),
    )


# ----------------------------------------------------------------------------- person choice
def _undistort_all(cameras: Sequence[Camera], uv: np.ndarray, axis: int) -> np.ndarray:
    """Normalized coordinates of pixels ``uv`` whose camera axis is ``axis``."""
    uv = np.moveaxis(np.nan_to_num(uv), axis, 0)
    xn = np.stack([undistort_pixels(uv[i], c.K, c.dist) for i, c in enumerate(cameras)])
    return np.moveaxis(xn, 0, axis)


def _dlt_px(cameras: Sequence[Camera], uv: np.ndarray, w: np.ndarray) -> np.ndarray:
    """:func:`_dlt_np` from pixels uv (C, K, 2). Shape: (K, 3)."""
    return _dlt_np(cameras, _undistort_all(cameras, uv, 0), w)


def _dlt_np(cameras: Sequence[Camera], xn: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Confidence-weighted DLT per keypoint from normalized coordinates xn (C, K, 2) and
    weights w (C, K). Shape: (K, 3)."""
    C, K = w.shape
    P = np.stack([np.concatenate([c.R, c.t[:, None]], 1) for c in cameras])  # (C, 3, 4)
    ax = xn[..., 0:1] * P[:, None, 2, :] - P[:, None, 0, :]  # (C, K, 4)
    ay = xn[..., 1:2] * P[:, None, 2, :] - P[:, None, 1, :]
    A = np.concatenate([ax * w[..., None], ay * w[..., None]], 0).transpose(1, 0, 2)  # (K, 2C, 4)
    M, b = A[..., :3], -A[..., 3]
    H = M.transpose(0, 2, 1) @ M + 1e-12 * np.eye(3)
    X = np.linalg.solve(H, (M.transpose(0, 2, 1) @ b[..., None]))[..., 0]
    X[(w > 0).sum(0) < 2] = np.nan
    return X


def _reproj(cameras: Sequence[Camera], X: np.ndarray) -> np.ndarray:
    """Pixels (C, K, 2) of points X (K, 3); NaN behind a camera."""
    out = []
    for c in cameras:
        Xc = X @ c.R.T + c.t
        uv = c.project(X)
        uv[Xc[:, 2] <= 0] = np.nan
        out.append(uv)
    return np.stack(out)


def _mean_px(a: np.ndarray, b: np.ndarray) -> float:
    e = np.linalg.norm(a - b, axis=-1)
    e = e[np.isfinite(e)]
    return float(e.mean()) if e.size else np.inf


def _gate(cameras: Sequence[Camera], kp: np.ndarray, w: np.ndarray, gate_px: float) -> int:
    """Empty (NaN) the views of one frame whose person disagrees with the others; returns
    how many. ``kp`` (C, K, 5) = x, y, confidence, normalized x, y; ``w`` (C, K) weights.

    While more than two views hold a person: each such view c is left out in turn (the C
    leave-one-out DLTs in one call); the view whose removal leaves the most consistent others
    (smallest mean reprojection error) is the suspect, and it is emptied if its own median
    distance to that triangulation exceeds ``gate_px``; otherwise the frame is done.
    """
    C, K = w.shape
    active = w.sum(1) > 0
    dropped = 0
    eye = np.eye(C, dtype=bool)
    while active.sum() > 2:
        w_act = np.where(active[:, None], w, 0.0)
        w_loo = np.where(eye[:, :, None], 0.0, w_act[None])  # (C left out, C, K)
        xn = np.broadcast_to(kp[None, :, :, 3:], (C, C, K, 2)).transpose(1, 0, 2, 3)
        X = _dlt_np(cameras, xn.reshape(C, C * K, 2), w_loo.transpose(1, 0, 2).reshape(C, -1))
        proj = _reproj(cameras, X).reshape(C, C, K, 2)  # (camera, left out, K, 2)
        e = np.linalg.norm(proj - kp[:, None, :, :2], axis=-1)  # (camera, left out, K)
        use = (w_act[:, None, :] > 0) & np.isfinite(e)
        inner = use & ~eye[:, :, None]  # the other views' own errors
        n_in = inner.sum((0, 2))
        consistency = np.where(inner, e, 0).sum((0, 2)) / np.maximum(n_in, 1)
        consistency[~active | (n_in == 0)] = np.inf
        c = int(np.argmin(consistency))
        own = e[c, c][use[c, c]]
        if not (own.size and np.median(own) > gate_px):
            break
        kp[c] = np.nan
        active[c] = False
        dropped += 1
    return dropped


def select_person(
    people: np.ndarray,
    cameras: Sequence[Camera],
    *,
    likelihood_threshold: float = 0.3,
    gate_px: float = 100.0,
    max_combinations: int = 4096,
) -> tuple[np.ndarray, dict]:
    """Choose one person per camera and frame (the rule is in the module doc).

    ``people`` (T, C, P, K, 3) candidates (x, y, confidence; NaN rows where a camera has fewer
    than P people), in marker order. Returns the chosen keypoints (T, C, K, 3) (NaN, confidence
    0 where a camera has no person) and a report: frames with one person per view, frames
    decided with a previous 3D skeleton (tracked) or without (searched), by the confidence
    fallback, and views left empty by the gate.
    """
    T, C, P, K, _ = people.shape
    present = np.isfinite(people[..., 2]).any(-1)  # (T, C, P)
    n_people = present.sum(-1)  # (T, C)
    # x, y, confidence, then the undistorted normalized x, y (computed once for all)
    people = np.concatenate([people[..., :3], _undistort_all(cameras, people[..., :2], 1)], -1)
    chosen = np.full((T, C, K, 5), np.nan)
    single = np.all(n_people <= 1, axis=1)  # (T,)
    first = np.argmax(present, axis=-1)  # (T, C): the only person where single
    chosen[single] = people[np.arange(T)[:, None], np.arange(C)[None, :], first][single]
    chosen[n_people == 0] = np.nan
    stats = dict(single=int(single.sum()), tracked=0, searched=0, fallback=0, no_person_views=0)

    def weights(kp):  # (..., C, K, 3) -> (..., C, K)
        c = np.nan_to_num(kp[..., 2])
        return np.where(c >= likelihood_threshold, c, 0.0)

    for f in np.flatnonzero(~single):
        prev3d = None
        if f > 0:
            X = _dlt_np(cameras, chosen[f - 1, ..., 3:], weights(chosen[f - 1]))
            if np.isfinite(X).all(-1).sum() >= 3:
                prev3d = _reproj(cameras, X)  # (C, K, 2)
        options = [np.flatnonzero(present[f, c]) if present[f, c].any() else [-1] for c in range(C)]
        n_comb = int(np.prod([len(o) for o in options]))
        if n_comb > max_combinations:
            for c in range(C):
                if not present[f, c].any():
                    continue
                if prev3d is not None:
                    d = np.linalg.norm(people[f, c, :, :, :2] - prev3d[c], axis=-1)
                    score = np.nanmean(np.where(weights(people[f, c]) > 0, d, np.nan), -1)
                else:
                    score = -np.nan_to_num(people[f, c, :, :, 2]).mean(-1)
                chosen[f, c] = people[
                    f, c, int(np.nanargmin(np.where(present[f, c], score, np.inf)))
                ]
            stats["fallback"] += 1
        else:
            combos = np.array(list(itertools.product(*options)))  # (n, C)
            kp = people[f, np.arange(C)[None, :], np.maximum(combos, 0)]  # (n, C, K, 3)
            kp[combos < 0] = np.nan
            w = weights(kp)
            # all combinations in one DLT: their keypoints side by side
            flat_uv = kp[..., :2].transpose(1, 0, 2, 3).reshape(C, -1, 2)
            flat_xn = kp[..., 3:].transpose(1, 0, 2, 3).reshape(C, -1, 2)
            flat_w = w.transpose(1, 0, 2).reshape(C, -1)
            proj = _reproj(cameras, _dlt_np(cameras, flat_xn, flat_w))
            err = np.linalg.norm(proj - flat_uv, axis=-1).reshape(C, len(combos), K)
            used = (flat_w > 0).reshape(C, len(combos), K) & np.isfinite(err)
            score = np.where(used, err, 0).sum((0, 2)) / np.maximum(used.sum((0, 2)), 1)
            if prev3d is not None:
                d = np.linalg.norm(kp[..., :2] - prev3d[None], axis=-1)  # (n, C, K)
                ok = (w > 0) & np.isfinite(d)
                score = score + np.where(ok, d, 0).sum((1, 2)) / np.maximum(ok.sum((1, 2)), 1)
            score[used.sum((0, 2)) == 0] = np.inf
            chosen[f] = kp[int(np.argmin(score))]
            stats["tracked" if prev3d is not None else "searched"] += 1
        # gate: views whose person is far from the other views' triangulation are emptied
        stats["no_person_views"] += _gate(cameras, chosen[f], weights(chosen[f]), gate_px)
    chosen = chosen[..., :3]
    chosen[..., 2] = np.nan_to_num(chosen[..., 2])
    return chosen, stats


# ----------------------------------------------------------------------------- whole folder
def read_pose_dir(
    pose_dir: str | os.PathLike[str],
    cameras: Sequence[Camera],
    skeleton,
    *,
    frame_offsets: Mapping[str, int] | Sequence[int] | None = None,
    likelihood_threshold: float = 0.3,
    gate_px: float = 100.0,
) -> Keypoints2D:
    """Read a Pose2Sim ``pose`` folder for the calibration's cameras, pick the subject.

    ``skeleton`` a :class:`~simspine_jax.skeletons.Skeleton` or its name. A camera with JSON
    files but no person in any of them is kept (all missing) and named in
    ``report['cameras_without_detections']`` with a warning.
    """
    from ..skeletons import get_skeleton

    sk = get_skeleton(skeleton)
    names = [c.name for c in cameras]
    dirs, rule = match_camera_dirs(pose_dir, names)
    if frame_offsets is None:
        offsets = [0] * len(cameras)
    elif isinstance(frame_offsets, Mapping):
        unknown = set(frame_offsets) - set(names)
        if unknown:
            raise InputError(
                f"frame offsets for unknown cameras {sorted(unknown)}", field="frame_offsets"
            )
        offsets = [int(frame_offsets.get(n, 0)) for n in names]
    else:
        offsets = [int(o) for o in frame_offsets]
        if len(offsets) != len(cameras):
            raise InputError(
                f"{len(offsets)} frame offsets for {len(cameras)} cameras", field="frame_offsets"
            )
    per_cam = [read_openpose_camera(d, sk.n_keypoints) for d in dirs]
    frames_c = [nums - off for (nums, _), off in zip(per_cam, offsets, strict=True)]
    f0 = min(int(f.min()) for f in frames_c)
    f1 = max(int(f.max()) for f in frames_c)
    T, C, K = f1 - f0 + 1, len(cameras), sk.n_markers
    P = max(max((len(p) for p in people), default=0) for _, people in per_cam)
    P = max(P, 1)
    cand = np.full((T, C, P, K, 3), np.nan)
    for c, ((_, people), fr) in enumerate(zip(per_cam, frames_c, strict=True)):
        for f, pp in zip(fr, people, strict=True):
            if len(pp):
                cand[f - f0, c, : len(pp)] = sk.select(pp)
    empty = [names[c] for c in range(C) if not np.isfinite(cand[:, c, :, :, 2]).any()]
    if empty:
        warnings.warn(
            f"{pose_dir}: no person detected in camera(s) {', '.join(empty)}; they are skipped",
            SimSpineWarning,
            stacklevel=2,
        )
    chosen, stats = select_person(
        cand, cameras, likelihood_threshold=likelihood_threshold, gate_px=gate_px
    )
    uv = chosen[..., :2].copy()
    conf = chosen[..., 2]
    uv[conf <= 0] = np.nan
    report = dict(
        camera_dirs={n: str(d) for n, d in zip(names, dirs, strict=True)},
        camera_match=rule,
        frame_offsets=dict(zip(names, offsets, strict=True)),
        cameras_without_detections=empty,
        person_choice=stats,
        max_people_per_view=int(P),
    )
    return Keypoints2D(tuple(names), sk.marker_names, np.arange(f0, f1 + 1), uv, conf, report)
