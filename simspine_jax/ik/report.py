"""Errors, costs and sensitivities at a solution, from the solver's own J'J and markers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..fk import _full_and_map
from .problem import FEW_MARKERS, IKProblem, IKResult, frame_inputs, task_scale


def report(tree, prob: IKProblem, q, status, iterations, H, x, smooth_status) -> IKResult:
    """The :class:`IKResult` of a solution ``q`` (T, n). ``H`` (T, n, n) and ``x`` (T, M, 3):
    the solver's Gauss-Newton matrix J'J (coordinate-task rows included) and model markers at
    ``q`` (so no FK pass is needed here)."""
    z, w, obs = frame_inputs(prob.markers, prob.marker_weight[None, :])
    ci, cw, ct = prob.coord_index, prob.coord_weight, prob.coord_target

    def tasks(q, w, ct):
        qf, G = _full_and_map(tree, q)
        scw = task_scale(w, cw)
        Jc = scw[:, None] * G[ci]
        return qf, scw * (qf[ci] - ct), Jc.T @ Jc

    qf, rc, Hc = jax.vmap(tasks)(q, w, ct)
    H = H - Hc  # marker rows only: the sensitivity leaves coordinate tasks out
    rm = ((x - z) * jnp.sqrt(w)[..., None]).reshape(q.shape[0], -1)
    cost = jnp.sum(rm**2, 1) + jnp.sum(rc**2, 1)
    err = jnp.linalg.norm(x - z, axis=-1)
    used = obs & (prob.marker_weight[None, :] > 0)
    err_out = jnp.where(obs, err, jnp.nan)
    nused = jnp.maximum(jnp.sum(used, 1), 1)
    rms = jnp.sqrt(jnp.sum(jnp.where(used, err**2, 0.0), 1) / nused)
    mx = jnp.max(jnp.where(used, err, 0.0), 1)
    # sensitivity of each coordinate to marker noise: sqrt(diag((J'WJ)^-1)) (marker part only)
    n = q.shape[1]
    dH = jnp.diagonal(H, axis1=1, axis2=2)
    observed = dH > 1e-12 * jnp.max(dH, axis=1, keepdims=True)
    # unobserved coordinates get a unit diagonal so the rest can be inverted (Cholesky)
    eye = jnp.eye(n, dtype=q.dtype)
    Hr = H + jnp.where(observed, 1e-12 * jnp.max(dH, 1, keepdims=True), 1.0)[:, :, None] * eye
    wmean = jnp.sum(w, 1) / jnp.maximum(jnp.sum(w > 0, 1), 1)
    # diag(Hr^-1) = column sums of squares of L^-1 (Hr = L L'): one triangular solve
    L = jnp.linalg.cholesky(Hr)
    eye_b = jnp.broadcast_to(eye, H.shape)
    inv_diag = jnp.sum(jax.scipy.linalg.solve_triangular(L, eye_b, lower=True) ** 2, axis=1)
    sens = jnp.where(observed, 1e-3 * jnp.sqrt(jnp.abs(inv_diag) * wmean[:, None]), jnp.inf)
    bad = status == FEW_MARKERS
    return IKResult(
        q=q,
        q_full=qf,
        marker_error=err_out,
        rms_error=jnp.where(bad, jnp.nan, rms),
        max_error=jnp.where(bad, jnp.nan, mx),
        cost=cost,
        status=status,
        iterations=iterations,
        sensitivity=sens,
        model_markers=x,
        smooth_status=jnp.broadcast_to(smooth_status, status.shape),
    )
