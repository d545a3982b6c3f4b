"""Robust multi-view triangulation of 2D keypoints, batched in JAX over frames x keypoints.

For every point (one keypoint in one frame, seen by ``C`` calibrated cameras):

1. **Views**: a view counts if its confidence is at least ``likelihood_threshold`` and its
   pixel coordinates are finite. Fewer than ``min_views`` such views: the point is NaN
   (flag :data:`FEW_VIEWS`).
2. **Undistortion**: pixels -> normalized image coordinates through ``K^-1`` and the
   iterative inverse of the Brown-Conrady distortion
   (:func:`simspine_jax.io.calibration.undistort_normalized`).
3. **Confidence-weighted DLT**: rows ``c * (x P_3 - P_1)``, ``c * (y P_3 - P_2)`` of each view
   (``P = [R | t]``, ``c`` the confidence, as Pose2Sim weights them), solved in the
   inhomogeneous form (``X_4 = 1``) by 3x3 normal equations.
4. **Huber refinement**: ``gn_iters`` Gauss-Newton / IRLS steps on the confidence-weighted,
   Huber-penalised reprojection error in *distorted pixels* (the full camera model), with
   Huber threshold ``huber_px``: a view whose residual is ``e > huber_px`` weighs
   ``huber_px / e`` (the robust triangulation of the SimSpine paper).
5. **Outlier views**: while the largest (``prune_on="mean"``: the mean) reprojection error
   among the kept views exceeds ``max_reprojection_px`` and more than ``min_views`` views are
   kept, every kept view is tried out (all ``C`` candidates at once, a DLT on the remaining
   views each) and the view whose removal leaves the smallest mean error is dropped; the point
   is then refined on the views left (step 4) (flag :data:`PRUNED`). Only the points that need
   a round are gathered and solved (in blocks of 2048), so clean data costs one solve per point.
6. **Acceptance**: the point is kept if the mean reprojection error of its kept views is at
   most ``max_reprojection_px`` (Pose2Sim's rule), else it is NaN (flag :data:`HIGH_ERROR`).

A view where the point lies behind the camera counts as an error of 1e9 px.

Everything is one ``jax.jit`` program per camera count and chunk size; thresholds are traced
values (a new threshold does not recompile), iteration counts and ``min_views`` are static.
Long recordings are cut into fixed-size chunks (the last one padded) so one compile serves any
length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .io.calibration import Camera, cameras_arrays, distort_normalized, undistort_normalized

__all__ = [
    "FEW_VIEWS",
    "HIGH_ERROR",
    "PRUNED",
    "TriangulationResult",
    "dlt_triangulate",
    "project",
    "triangulate",
    "triangulate_recording",
]

FEW_VIEWS = 1  # fewer than min_views views above the likelihood threshold: NaN
PRUNED = 2  # at least one view removed as an outlier
HIGH_ERROR = 4  # mean reprojection error still above max_reprojection_px: NaN

_BEHIND_PX = 1e9  # reprojection error of a view the point lies behind


class TriangulationResult(NamedTuple):
    """Triangulated points and per-point diagnostics (NumPy arrays).

    ``points`` (T, K, 3) world units, NaN where rejected; ``reprojection_px`` (T, K) mean error
    of the kept views (NaN where too few views); ``n_views`` (T, K) views kept (0 where
    rejected); ``views`` (T, K, C) which views were kept; ``flags`` (T, K) bit set of
    :data:`FEW_VIEWS`, :data:`PRUNED`, :data:`HIGH_ERROR`.
    """

    points: np.ndarray
    reprojection_px: np.ndarray
    n_views: np.ndarray
    views: np.ndarray
    flags: np.ndarray


class _Cams(NamedTuple):
    K: jax.Array  # (C, 3, 3)
    dist: jax.Array  # (C, 6): k1, k2, p1, p2, k3, tangential factor (or (C, 5), OpenCV)
    R: jax.Array  # (C, 3, 3)
    t: jax.Array  # (C, 3)


def _cams(cameras: Sequence[Camera] | dict, dtype) -> _Cams:
    a = cameras_arrays(cameras) if not isinstance(cameras, dict) else cameras
    return _Cams(*(jnp.asarray(np.asarray(a[k]), dtype=dtype) for k in ("K", "dist", "R", "t")))


# ----------------------------------------------------------------------------- camera model
def _project_one(X, K, dist, R, t):
    """Pixel (2,) and depth () of world point X (3,) in one camera."""
    Xc = R @ X + t
    z = Xc[2]
    zs = jnp.where(jnp.abs(z) > 1e-12, z, 1e-12)  # keep the Jacobian finite at z = 0
    xd = distort_normalized(Xc[:2] / zs, dist)
    uv = jnp.stack([K[0, 0] * xd[0] + K[0, 1] * xd[1] + K[0, 2], K[1, 1] * xd[1] + K[1, 2]])
    return uv, z


def project(cameras: Sequence[Camera] | dict, X) -> jax.Array:
    """Pixel coordinates of world points ``(..., 3)`` in every camera (JAX).

    Shape: (..., C, 2).
    """
    X = jnp.asarray(X)
    cams = _cams(cameras, X.dtype if jnp.issubdtype(X.dtype, jnp.floating) else None)
    per_cam = jax.vmap(_project_one, (None, 0, 0, 0, 0))
    flat = X.reshape(-1, 3)
    uv = jax.vmap(lambda x: per_cam(x, *cams)[0])(flat)
    return uv.reshape(X.shape[:-1] + uv.shape[-2:])


def _normalize(uv, cams: _Cams, n_undistort: int):
    """Undistorted normalized coordinates of pixels (N, C, 2). Shape: (N, C, 2)."""
    K = cams.K
    y = (uv[..., 1] - K[:, 1, 2]) / K[:, 1, 1]
    x = (uv[..., 0] - K[:, 0, 2] - K[:, 0, 1] * y) / K[:, 0, 0]
    return undistort_normalized(jnp.stack([x, y], -1), cams.dist, n_undistort)


# ----------------------------------------------------------------------------- per-point kernel
def _solve3(H, b):
    """x = H^-1 b for a 3x3 H by cofactors (elementwise: no LAPACK call per point on CPU)."""
    r0, r1, r2 = H[0], H[1], H[2]
    c0, c1, c2 = jnp.cross(r1, r2), jnp.cross(r2, r0), jnp.cross(r0, r1)
    det = r0 @ c0
    return (b[0] * c0 + b[1] * c1 + b[2] * c2) / det


def _dlt(w, xn, cams: _Cams):
    """Inhomogeneous confidence-weighted DLT from normalized coords xn (C, 2), weights w (C,)."""
    P = jnp.concatenate([cams.R, cams.t[:, :, None]], axis=2)  # (C, 3, 4)
    ax = xn[:, 0:1] * P[:, 2, :] - P[:, 0, :]
    ay = xn[:, 1:2] * P[:, 2, :] - P[:, 1, :]
    A = jnp.concatenate([ax * w[:, None], ay * w[:, None]], axis=0)  # (2C, 4)
    M, b = A[:, :3], -A[:, 3]
    H = M.T @ M
    H = H + (1e-12 * jnp.trace(H) + 1e-30) * jnp.eye(3, dtype=H.dtype)
    return _solve3(H, M.T @ b)


def _errors(X, uv, cams: _Cams):
    """Reprojection error (C,) px of X; views behind the camera get _BEHIND_PX."""
    uvp, z = jax.vmap(_project_one, (None, 0, 0, 0, 0))(X, *cams)
    e = jnp.linalg.norm(uvp - uv, axis=-1)
    return jnp.where(z > 0, e, _BEHIND_PX)


def _refine(X, w, uv, cams: _Cams, huber_px, n_iter: int):
    """Gauss-Newton / IRLS on sum_c w_c huber(|proj_c(X) - uv_c|), ``n_iter`` steps."""
    jac = jax.vmap(jax.jacfwd(lambda X, K, d, R, t: _project_one(X, K, d, R, t)[0]))

    def step(_, X):
        uvp, z = jax.vmap(_project_one, (None, 0, 0, 0, 0))(X, *cams)
        J = jac(jnp.broadcast_to(X, (uv.shape[0], 3)), *cams)  # (C, 2, 3)
        r = uvp - uv
        e = jnp.linalg.norm(r, axis=-1)
        hub = jnp.where(e <= huber_px, 1.0, huber_px / jnp.maximum(e, 1e-12))
        W = jnp.where(z > 0, w * hub, 0.0)
        H = jnp.einsum("c,cij,cik->jk", W, J, J)
        g = jnp.einsum("c,cij,ci->j", W, J, r)
        H = H + (1e-9 * jnp.trace(H) + 1e-30) * jnp.eye(3, dtype=H.dtype)
        dX = _solve3(H, g)
        X_new = X - dX
        return jnp.where(jnp.all(jnp.isfinite(X_new)), X_new, X)

    return jax.lax.fori_loop(0, n_iter, step, X)


def _solve(mask, conf, xn, uv, cams, huber_px, n_iter):
    w = jnp.where(mask, conf, 0.0)
    X = _dlt(w, xn, cams)
    if n_iter:
        X = _refine(X, w, uv, cams, huber_px, n_iter)
    return X, _errors(X, uv, cams)


def _drop_worst_view(mask, X, e, conf, xn, uv, cams, huber_px, n_iter):
    """One pruning step for one point: a DLT with each kept view left out (all C at once);
    the candidate with the smallest mean error over its views is refined and kept."""
    C = uv.shape[0]
    cand = mask[None, :] & ~jnp.eye(C, dtype=bool)  # (C, C): row c = mask without view c
    _, ec = jax.vmap(lambda m: _solve(m, conf, xn, uv, cams, huber_px, 0))(cand)
    score = jnp.where(cand, ec, 0.0).sum(1) / jnp.maximum(mask.sum() - 1, 1)
    c = jnp.argmin(jnp.where(mask, score, jnp.inf))
    Xc, ec = _solve(cand[c], conf, xn, uv, cams, huber_px, n_iter)
    return cand[c], Xc, ec


def _finish(mask, X, e, valid, thr_px, min_views):
    """Acceptance and flags of one point."""
    n = mask.sum()
    mean_e = jnp.where(mask, e, 0.0).sum() / jnp.maximum(n, 1)
    few = valid.sum() < min_views
    high = ~few & (mean_e > thr_px)
    ok = ~few & ~high
    flags = (
        jnp.where(few, FEW_VIEWS, 0)
        + jnp.where(jnp.any(mask != valid) & ~few, PRUNED, 0)
        + jnp.where(high, HIGH_ERROR, 0)
    )
    return (
        jnp.where(ok, X, jnp.nan),
        jnp.where(few, jnp.nan, mean_e),
        jnp.where(ok, n, 0).astype(jnp.int32),
        mask & ok,
        flags.astype(jnp.int32),
    )


_PRUNE_BLOCK = 2048  # points pruned together; only blocks holding points that need it run


def _prune(mask, X, e, conf, xn, uv, cams, thr_px, huber_px, by_mean, *, min_views, n_iter):
    """Outlier-view pruning of all N points: ``C - min_views`` rounds; in each, the points
    whose largest (``by_mean``: mean) kept-view error exceeds ``thr_px`` (and that keep more
    than ``min_views`` views) are gathered to the front and processed in blocks, so the cost
    follows the number of such points, not N."""
    N, C = mask.shape
    block = min(N, _PRUNE_BLOCK)
    n_blocks = -(-N // block)
    step = jax.vmap(partial(_drop_worst_view, n_iter=n_iter), (0, 0, 0, 0, 0, 0, None, None))
    for _ in range(C - min_views):
        kept = jnp.where(mask, e, 0.0)
        err = jnp.where(by_mean, kept.sum(1) / jnp.maximum(mask.sum(1), 1), kept.max(1))
        need = (err > thr_px) & (mask.sum(1) > min_views)
        order = jnp.argsort(~need, stable=True)  # points that need it first
        pad = n_blocks * block - N
        order = jnp.concatenate([order, jnp.full((pad,), N, order.dtype)])  # N: dropped
        n_need = need.sum()

        def body(state, order=order, need=need):
            b, mask, X, e = state
            ids = jax.lax.dynamic_slice(order, (b * block,), (block,))
            take = need.at[ids].get(mode="fill", fill_value=False)
            m, x, ee = step(mask[ids], X[ids], e[ids], conf[ids], xn[ids], uv[ids], cams, huber_px)
            m = jnp.where(take[:, None], m, mask[ids])
            x = jnp.where(take[:, None], x, X[ids])
            ee = jnp.where(take[:, None], ee, e[ids])
            return (
                b + 1,
                mask.at[ids].set(m, mode="drop"),
                X.at[ids].set(x, mode="drop"),
                e.at[ids].set(ee, mode="drop"),
            )

        _, mask, X, e = jax.lax.while_loop(
            lambda s, n_need=n_need: s[0] * block < n_need, body, (0, mask, X, e)
        )
    return mask, X, e


@partial(jax.jit, static_argnames=("min_views", "n_iter", "n_undistort", "robust"))
def _triangulate_flat(
    cams, uv, conf, lik_thr, thr_px, huber_px, by_mean, *, min_views, n_iter, n_undistort, robust
):
    """Points (N, C, 2) px, conf (N, C) -> per-point results (N, ...)."""
    valid = (conf >= lik_thr) & jnp.all(jnp.isfinite(uv), -1) & jnp.isfinite(conf)
    centre = cams.K[:, :2, 2]
    uv = jnp.where(valid[..., None], uv, centre)  # masked views: finite, weight 0
    conf = jnp.where(valid, conf, 0.0)
    xn = _normalize(uv, cams, n_undistort)
    solve = jax.vmap(partial(_solve, n_iter=n_iter), (0, 0, 0, 0, None, None))
    X, e = solve(valid, conf, xn, uv, cams, huber_px)
    mask = valid
    if robust and uv.shape[1] > min_views:
        mask, X, e = _prune(
            mask,
            X,
            e,
            conf,
            xn,
            uv,
            cams,
            thr_px,
            huber_px,
            by_mean,
            min_views=min_views,
            n_iter=n_iter,
        )
    finish = jax.vmap(_finish, (0, 0, 0, 0, None, None))
    return finish(mask, X, e, valid, thr_px, min_views)


def _check_inputs(cams: _Cams, uv, conf, min_views):
    C = cams.K.shape[0]
    if uv.ndim != 4 or uv.shape[1] != C or uv.shape[-1] != 2:
        raise InputError(f"uv must have shape (T, {C}, K, 2) for {C} cameras, got {uv.shape}")
    if conf.shape != uv.shape[:-1]:
        raise InputError(f"confidence must have shape {uv.shape[:-1]}, got {conf.shape}")
    if min_views < 2:
        raise InputError("min_views must be at least 2", field="min_views")
    if C < 2:
        raise InputError(f"triangulation needs at least 2 cameras, got {C}")


def triangulate(
    cameras: Sequence[Camera] | dict,
    uv,
    confidence,
    *,
    likelihood_threshold: float = 0.3,
    min_views: int = 2,
    max_reprojection_px: float = 15.0,
    huber_px: float = 3.0,
    gn_iters: int = 5,
    robust: bool = True,
    prune_on: str = "max",
    n_undistort: int = 20,
    chunk: int = 65536,
    dtype=None,
) -> TriangulationResult:
    """Triangulate 2D keypoints of ``C`` calibrated cameras (see the module doc for the steps).

    ``uv`` (T, C, K, 2) pixels (NaN where missing), ``confidence`` (T, C, K). ``robust=False``
    skips the outlier-view pruning (DLT + Huber refinement only). ``prune_on="mean"`` prunes
    while the *mean* error of the kept views exceeds the threshold (Pose2Sim's rule; keeps more
    views) instead of the largest (default: any view off by more than the threshold goes).
    Defaults follow Pose2Sim's Config.toml (likelihood 0.3, 2 views, 15 px). Returns a
    :class:`TriangulationResult`.
    """
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    cams = _cams(cameras, dtype)
    uv = np.asarray(uv, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64)
    _check_inputs(cams, uv, conf, min_views)
    if prune_on not in ("max", "mean"):
        raise InputError(f"prune_on must be 'max' or 'mean', got {prune_on!r}", field="prune_on")
    T, C, Kp, _ = uv.shape
    flat_uv = uv.transpose(0, 2, 1, 3).reshape(T * Kp, C, 2)
    flat_c = conf.transpose(0, 2, 1).reshape(T * Kp, C)
    outs = _run_chunks(
        lambda u, c: _triangulate_flat(
            cams,
            u,
            c,
            jnp.asarray(likelihood_threshold, dtype),
            jnp.asarray(max_reprojection_px, dtype),
            jnp.asarray(huber_px, dtype),
            jnp.asarray(prune_on == "mean"),
            min_views=int(min_views),
            n_iter=int(gn_iters),
            n_undistort=int(n_undistort),
            robust=bool(robust),
        ),
        flat_uv,
        flat_c,
        chunk,
        dtype,
    )
    X, err, n, views, flags = outs
    return TriangulationResult(
        X.reshape(T, Kp, 3),
        err.reshape(T, Kp),
        n.reshape(T, Kp),
        views.reshape(T, Kp, C),
        flags.reshape(T, Kp),
    )


def dlt_triangulate(
    cameras: Sequence[Camera] | dict,
    uv,
    confidence,
    *,
    likelihood_threshold: float = 0.3,
    n_undistort: int = 20,
    chunk: int = 65536,
    dtype=None,
) -> TriangulationResult:
    """Plain confidence-weighted DLT on all views above the threshold (the baseline):
    no refinement, no outlier pruning, no error threshold (NaN only with fewer than 2 views)."""
    return triangulate(
        cameras,
        uv,
        confidence,
        likelihood_threshold=likelihood_threshold,
        min_views=2,
        max_reprojection_px=np.inf,
        gn_iters=0,
        robust=False,
        n_undistort=n_undistort,
        chunk=chunk,
        dtype=dtype,
    )


def _run_chunks(fn, uv: np.ndarray, conf: np.ndarray, chunk: int, dtype):
    """Apply the jitted ``fn`` to fixed-size chunks (the last padded): one compile per size."""
    N = uv.shape[0]
    size = int(min(chunk, max(N, 1)))
    # round small inputs up to a power of two so nearby sizes share a compile
    size = 1 << (size - 1).bit_length() if size < chunk else size
    outs = []
    for s in range(0, max(N, 1), size):
        u = uv[s : s + size]
        c = conf[s : s + size]
        m = u.shape[0]
        if m < size:
            u = np.concatenate([u, np.full((size - m,) + u.shape[1:], np.nan)])
            c = np.concatenate([c, np.zeros((size - m,) + c.shape[1:])])
        res = fn(jnp.asarray(u, dtype), jnp.asarray(c, dtype))
        outs.append([np.asarray(r)[:m] for r in res])
    return [np.concatenate([o[i] for o in outs]) for i in range(5)]


# ----------------------------------------------------------------------------- files
def _keypoint_report(res: TriangulationResult, names: Sequence[str]) -> dict:
    """Per keypoint: coverage, reprojection px, views kept, flag counts (JSON-ready)."""
    out = {}
    T = res.points.shape[0]
    for k, name in enumerate(names):
        ok = np.isfinite(res.points[:, k, 0])
        err = res.reprojection_px[:, k][ok]
        fl = res.flags[:, k]
        out[name] = dict(
            frames_triangulated=int(ok.sum()),
            coverage=round(float(ok.sum()) / max(T, 1), 4),
            reprojection_px_median=_r(np.median(err)) if err.size else None,
            reprojection_px_mean=_r(np.mean(err)) if err.size else None,
            reprojection_px_max=_r(np.max(err)) if err.size else None,
            views_kept_mean=_r(np.mean(res.n_views[:, k][ok])) if ok.any() else None,
            frames_few_views=int(((fl & FEW_VIEWS) > 0).sum()),
            frames_views_pruned=int(((fl & PRUNED) > 0).sum()),
            frames_error_above_max=int(((fl & HIGH_ERROR) > 0).sum()),
        )
    return out


def _r(x) -> float:
    return round(float(x), 4)


def triangulate_recording(
    calib: str | os.PathLike[str],
    pose_dir: str | os.PathLike[str],
    skeleton: str,
    out_trc: str | os.PathLike[str],
    *,
    rate_hz: float = 30.0,
    likelihood_threshold: float = 0.3,
    min_views: int = 2,
    max_reprojection_px: float = 15.0,
    huber_px: float = 3.0,
    prune_on: str = "max",
    max_gap: int = 10,
    cutoff_hz: float | None = 6.0,
    filter_order: int = 4,
    up: str = "z",
    frame_offsets=None,
    report_path: str | os.PathLike[str] | None = None,
) -> dict:
    """Calibration TOML + Pose2Sim ``pose`` folder -> OpenSim TRC (metres, Y-up) + report.

    Steps: :func:`~simspine_jax.io.calibration.load_calibration` (TOML, or Qualisys
    ``.qca.txt``),
    :func:`~simspine_jax.io.openpose.read_pose_dir` (cameras matched by name, number or order;
    one subject chosen), :func:`triangulate`, then :func:`simspine_jax.filtering.fill_gaps`
    (gaps up to ``max_gap`` frames), :func:`~simspine_jax.filtering.butterworth_filtfilt`
    (``cutoff_hz`` None: no filter; ``filter_order`` is scipy's ``butter`` order, Pose2Sim's
    order 4 is 2 here), :func:`~simspine_jax.filtering.to_opensim_axes` (``up`` is the
    calibration world's up axis; ``"y"`` leaves it). Time is ``frame / rate_hz``. The report
    (JSON, ``OUT.triangulation.json`` unless ``report_path``) holds the settings, cameras,
    person choice, per-keypoint reprojection error, views kept, flags and gaps.
    """
    import json
    import time as _time
    from pathlib import Path

    from . import filtering
    from .io.calibration import load_calibration
    from .io.openpose import read_pose_dir
    from .io.trc import write_trc
    from .skeletons import get_skeleton

    if not (np.isfinite(rate_hz) and rate_hz > 0):
        raise InputError(f"rate must be a positive number, got {rate_hz!r}", field="rate")
    sk = get_skeleton(skeleton)
    cameras = load_calibration(calib)
    kp = read_pose_dir(
        pose_dir,
        cameras,
        sk,
        frame_offsets=frame_offsets,
        likelihood_threshold=likelihood_threshold,
    )
    t0 = _time.perf_counter()
    res = triangulate(
        cameras,
        kp.uv,
        kp.confidence,
        likelihood_threshold=likelihood_threshold,
        min_views=min_views,
        max_reprojection_px=max_reprojection_px,
        huber_px=huber_px,
        prune_on=prune_on,
    )
    t_tri = _time.perf_counter() - t0
    pos, gaps = filtering.fill_gaps(res.points, max_gap, points=True)
    summary: dict = dict(
        calib=str(calib),
        pose_dir=str(pose_dir),
        skeleton=sk.name,
        out=str(out_trc),
        frames=int(pos.shape[0]),
        first_frame=int(kp.frames[0]),
        markers=sk.n_markers,
        rate_hz=float(rate_hz),
        settings=dict(
            likelihood_threshold=likelihood_threshold,
            min_views=min_views,
            max_reprojection_px=max_reprojection_px,
            huber_px=huber_px,
            prune_on=prune_on,
            max_gap=max_gap,
            cutoff_hz=cutoff_hz,
            filter_order=filter_order,
            up=up,
        ),
        cameras=list(kp.camera_names),
        reading=kp.report,
        triangulation_seconds=round(t_tri, 3),
        coverage=_r(np.isfinite(res.points[..., 0]).mean()),
        reprojection_px_median=(
            _r(np.nanmedian(res.reprojection_px[np.isfinite(res.points[..., 0])]))
            if np.isfinite(res.points).any()
            else None
        ),
        keypoints=_keypoint_report(res, sk.marker_names),
        gaps=gaps.to_dict(sk.marker_names),
    )
    if cutoff_hz is not None:
        pos, frep = filtering.butterworth_filtfilt(
            pos, rate_hz, cutoff_hz, filter_order, axis=0, return_report=True
        )
        names = [f"{m}.{xyz}" for m in sk.marker_names for xyz in "XYZ"]
        summary["filter"] = frep.to_dict(names)
    pos = filtering.to_opensim_axes(pos, up)
    time = kp.frames.astype(np.float64) / rate_hz
    write_trc(out_trc, sk.marker_names, time, pos, units="m", data_rate=rate_hz)
    rp = Path(report_path) if report_path else Path(out_trc).with_suffix(".triangulation.json")
    from .io import atomic_write_text

    atomic_write_text(rp, json.dumps(summary, indent=1) + "\n")
    summary["report"] = str(rp)
    return summary
