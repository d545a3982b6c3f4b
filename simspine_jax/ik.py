"""Inverse kinematics: whole-sequence batched Levenberg-Marquardt with smoothness penalties.

Problem (per sequence, over the independent coordinates q_t; couplers by reparametrisation,
locked coordinates held at their defaults)::

    min_q  sum_t [ sum_m w_m |z_mt - zhat_m(q_t)|^2 + sum_k c_k (qfull_t[k] - target_k)^2 ]
           + lambda_v |D1 q|^2 + lambda_a |D2 q|^2

D1/D2 are first/second differences between consecutive frames (raw per-frame differences, in
radians or metres). ``lambda = 0`` is exactly OpenSim's per-frame weighted least squares.

Algorithm (see README "IK solver"):

1. Robust start: the root joint's coordinates are fitted alone on the first frame from a grid
   of 64 orientations (vmapped), the best is kept; all other coordinates start at defaults.
2. Per-frame stage: frames are cut into chunks of ``chunk`` frames; a ``lax.scan`` over chunks
   warm-starts each chunk from the last solved frame of the previous one, and all frames of a
   chunk are solved in parallel by Levenberg-Marquardt with a per-frame accept/reject step
   (Marquardt scaling). Convergence per frame: accepted step with max|dq| < ``tol_step``, or
   actual or predicted (Gauss-Newton model) relative cost decrease < ``tol_cost``, or
   ``max_iters``.
3. Smoothing stage (only if a lambda > 0): Gauss-Newton/LM on the whole sequence. The normal
   matrix is block-pentadiagonal in time (n_dof x n_dof blocks); pairs of frames make it block
   tridiagonal (2n x 2n) and it is solved exactly by a block-Cholesky (Thomas) ``lax.scan``.
   No dense (T n) x (T n) matrix is formed. A global LM damping with accept/reject keeps the
   total cost decreasing.

Coordinate limits: clamped coordinates are kept inside their ranges by projecting every trial
step onto the box (projected LM); the accept test uses the projected point.
Missing markers (NaN) get weight 0 in their frame. A frame with fewer than ``min_markers``
observed markers is reported (status FEW_MARKERS); with lambda = 0 its coordinates are NaN,
with smoothing they are filled by the smoothness prior and flagged.

Memory per frame (float64, SimSpine model: n=40 coordinates, M=37 markers): the marker
Jacobian (3M x n = 35 kB) and normal block (n x n = 13 kB) dominate; about 0.1 MB per frame
while a chunk is in flight, and O(T n^2) for the smoothing stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .fk import _fk_one, _full_one, marker_jacobian_one
from .model import KinematicTree

CONVERGED, MAX_ITERS, FEW_MARKERS = 0, 1, 2
# rad (about 2.9 deg) or m per mm of marker noise: above this a coordinate is weakly observed
WEAK_SENSITIVITY = 0.05
STATUS_NAMES = ("converged", "max_iters", "too_few_markers")


@dataclass(frozen=True)
class IKOptions:
    """Solver settings (all static: a change recompiles)."""

    smooth_vel: float = 0.0  # lambda_v on |q_{t+1} - q_t|^2 (per frame, rad or m)
    smooth_acc: float = 0.0  # lambda_a on |q_{t+1} - 2 q_t + q_{t-1}|^2
    max_iters: int = 60  # LM iterations per frame (per-frame stage)
    max_iters_smooth: int = 30  # global iterations (smoothing stage)
    tol_step: float = 1e-7  # converged when an accepted step has max|dq| below this,
    tol_cost: float = 1e-6  # or the actual or predicted relative cost decrease is below this
    mu_init: float = 1e-3  # initial Marquardt damping
    chunk: int = 64  # frames solved in parallel per warm-start step (smaller chunks carry a
    # flipped weakly observed arm from frame to frame: 64 found the better minimum, measured)
    min_markers: int = 3  # fewer observed markers in a frame -> FEW_MARKERS


class IKProblem(NamedTuple):
    """Per-sequence data (a pytree). Shapes: markers (T, M, 3) NaN = missing; frame_valid (T,);
    marker_weight (M,); coord_index (K,) static-int leaf; coord_weight (K,); coord_target (K,)."""

    markers: jax.Array
    frame_valid: jax.Array
    marker_weight: jax.Array
    coord_index: jax.Array
    coord_weight: jax.Array
    coord_target: jax.Array


class IKResult(NamedTuple):
    """Shapes: q (T, n_indep); q_full (T, n_coord); marker_error (T, M) metres (NaN where the
    marker is missing); rms_error (T,), max_error (T,) over weighted observed markers;
    cost (T,) weighted per-frame cost incl. coordinate tasks; status (T,) see STATUS_NAMES;
    iterations (T,); sensitivity (T, n_indep): sqrt(diag((J^T W J)^-1)), the standard deviation
    of each coordinate (rad or m) per millimetre of isotropic marker noise (inf = not observed);
    above WEAK_SENSITIVITY a coordinate counts as weakly observed; model_markers (T, M, 3)
    the model's marker positions at the solution."""

    q: jax.Array
    q_full: jax.Array
    marker_error: jax.Array
    rms_error: jax.Array
    max_error: jax.Array
    cost: jax.Array
    status: jax.Array
    iterations: jax.Array
    sensitivity: jax.Array
    model_markers: jax.Array


# ----------------------------------------------------------------------------- residuals
def _bounds(tree: KinematicTree):
    topo = tree.topology
    idx = topo.indep_coord
    rng = tree.coord_range[idx]
    clamped = jnp.asarray(topo.coord_clamped[idx])
    lo = jnp.where(clamped, rng[:, 0], -jnp.inf)
    hi = jnp.where(clamped, rng[:, 1], jnp.inf)
    return lo, hi


def _residual(tree: KinematicTree, q, z, w, ci, cw, ct):
    """Weighted residual of one frame. Shape: (3M + K,). w already holds the NaN mask.

    OpenSim (Simbody's assembler) minimises sum_m w_m |e_m|^2 / W + sum_k c_k (q_k - v_k)^2
    with W the summed weight of the markers observed in the frame; we minimise W times that
    (same minimiser), so coordinate-task weights are scaled by W here.
    """
    qf = _full_one(tree, q)
    zhat = _fk_one(tree, qf).markers
    rm = (zhat - z) * jnp.sqrt(w)[:, None]
    rc = jnp.sqrt(cw * jnp.sum(w)) * (qf[ci] - ct)
    return jnp.concatenate([rm.reshape(-1), rc])


def _residual_and_jac(tree: KinematicTree, q, z, w, ci, cw, ct):
    """Residual (3M + K,) and its analytic Jacobian (3M + K, n_indep) for one frame."""
    x, J, qf, G = marker_jacobian_one(tree, q)
    sw = jnp.sqrt(w)
    rm = ((x - z) * sw[:, None]).reshape(-1)
    Jm = (J * sw[:, None, None]).reshape(-1, q.shape[0])
    scw = jnp.sqrt(cw * jnp.sum(w))  # OpenSim's task scale: see _residual
    rc = scw * (qf[ci] - ct)
    Jc = scw[:, None] * G[ci]
    return jnp.concatenate([rm, rc]), jnp.concatenate([Jm, Jc], 0)


def _frame_inputs(z, w):
    """Replace NaN markers by 0 and fold the mask into the weights."""
    obs = jnp.all(jnp.isfinite(z), axis=-1)
    return jnp.where(obs[..., None], z, 0.0), jnp.where(obs, w, 0.0), obs


# ----------------------------------------------------------------------------- per-frame LM
def _damped_solve(H, g, mu, eye):
    """Levenberg step: (H + mu * max(diag H) * I) x = g (Nielsen-style damping relative to
    the largest curvature, so weakly observed directions take short steps)."""
    dH = jnp.diagonal(H, axis1=-2, axis2=-1)
    scale = jnp.max(dH, axis=-1) + 1e-30
    lam = mu * scale
    A = H + (lam[..., None, None] if jnp.ndim(lam) else lam) * eye
    return jnp.linalg.solve(A, g[..., None])[..., 0]


def _lm_frame(tree, opts: IKOptions, q0, z, w, ci, cw, ct, lo, hi, skip=False):
    """Levenberg-Marquardt for one frame (``skip``: a frame not to solve, e.g. padding or too
    few markers, which then costs no iteration). Returns (q, cost, iterations, converged)."""
    res = partial(_residual, tree)
    n = q0.shape[0]
    eye = jnp.eye(n, dtype=q0.dtype)

    def cost_of(q):
        r = res(q, z, w, ci, cw, ct)
        return r @ r

    def body(state):
        q, cost, mu, it, done = state
        r, J = _residual_and_jac(tree, q, z, w, ci, cw, ct)
        H = J.T @ J
        g = J.T @ r
        step = -_damped_solve(H, g, mu, eye)
        q_new = jnp.clip(q + step, lo, hi)
        c_new = cost_of(q_new)
        accept = c_new < cost
        dq = jnp.max(jnp.abs(q_new - q))
        # decrease the Gauss-Newton model still promises (once damping is negligible)
        d = q_new - q
        pred = -(2.0 * g @ d + d @ (H @ d))
        tiny = (mu <= 1e-6) & (pred <= opts.tol_cost * jnp.maximum(cost, 1e-30))
        small = (dq < opts.tol_step) | (cost - c_new <= opts.tol_cost * jnp.maximum(cost, 1e-30))
        done_now = (accept & small) | tiny | (~accept & (mu > 1e10))
        q = jnp.where(accept, q_new, q)
        cost = jnp.where(accept, c_new, cost)
        mu = jnp.where(accept, jnp.maximum(mu * 0.1, 1e-12), mu * 10.0)
        return q, cost, mu, it + 1, done | done_now

    def cond(state):
        return (~state[4]) & (state[3] < opts.max_iters)

    c0 = cost_of(q0)
    init = (q0, c0, jnp.asarray(opts.mu_init, q0.dtype), jnp.asarray(0), jnp.asarray(skip))
    q, cost, _, it, done = jax.lax.while_loop(cond, body, init)
    return q, cost, it, done


def _root_coords(tree: KinematicTree) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into q_indep) of the root joint's rotational and translational coordinates."""
    meta = tree.meta
    root_joint = next(j for j in meta["joints"] if j["parent"] == "ground")
    names = list(tree.independent_names)
    rot, trans = [], []
    for c in meta["coordinates"]:
        if c["joint"] == root_joint["name"] and c["name"] in names:
            (trans if c["motion_type"] == "translational" else rot).append(names.index(c["name"]))
    return np.array(rot, np.int64), np.array(trans, np.int64)


def _robust_start(tree, opts, q_default, z, w, ci, cw, ct, lo, hi):
    """Fit the root joint alone from a grid of orientations; returns the best full start."""
    rot, trans = _root_coords(tree)
    free = np.concatenate([rot, trans])
    grid_1d = jnp.deg2rad(jnp.array([-90.0, 0.0, 90.0, 180.0], q_default.dtype))
    grids = jnp.stack(jnp.meshgrid(*([grid_1d] * len(rot)), indexing="ij"), -1).reshape(
        -1, len(rot)
    )
    obs_w = w > 0
    centroid = jnp.sum(jnp.where(obs_w[:, None], z, 0.0), 0) / jnp.maximum(jnp.sum(obs_w), 1)

    def fit(angles):
        q = q_default.at[rot].set(angles)
        zhat = _fk_one(tree, _full_one(tree, q)).markers
        model_c = jnp.sum(jnp.where(obs_w[:, None], zhat, 0.0), 0) / jnp.maximum(jnp.sum(obs_w), 1)
        q = q.at[trans].add(centroid - model_c) if len(trans) == 3 else q

        def rj_root(qr):
            r, J = _residual_and_jac(tree, q.at[free].set(qr), z, w, ci, cw, ct)
            return r, J[:, free]

        qr = q[free]
        sub_lo, sub_hi = lo[free], hi[free]
        mu = jnp.asarray(opts.mu_init, q.dtype)
        cost = jnp.sum(rj_root(qr)[0] ** 2)
        eye = jnp.eye(len(free), dtype=q.dtype)

        def step(carry, _):
            qr, cost, mu = carry
            r, J = rj_root(qr)
            qn = jnp.clip(qr - _damped_solve(J.T @ J, J.T @ r, mu, eye), sub_lo, sub_hi)
            cn = jnp.sum(rj_root(qn)[0] ** 2)
            acc = cn < cost
            return (
                jnp.where(acc, qn, qr),
                jnp.where(acc, cn, cost),
                jnp.where(acc, mu * 0.1, mu * 10),
            ), None

        (qr, cost, _), _ = jax.lax.scan(step, (qr, cost, mu), None, length=12)
        return q.at[free].set(qr), cost

    qs, costs = jax.vmap(fit)(grids)
    # Equivalent Euler-angle solutions fit equally well: among the starts whose cost is within
    # 1e-6 of the best, keep the one with the smallest root angles (wrapped to [-pi, pi)).
    wrapped = (qs[:, rot] + jnp.pi) % (2 * jnp.pi) - jnp.pi
    qs = qs.at[:, rot].set(wrapped)
    best = jnp.min(costs)
    near = costs <= best * (1 + 1e-6) + 1e-10
    size = jnp.where(near, jnp.sum(wrapped**2, axis=1), jnp.inf)
    return qs[jnp.argmin(size)]


def _per_frame_stage(tree, opts: IKOptions, prob: IKProblem, q_start):
    """Chunked warm-started per-frame LM. Shapes: (T, n) in and out (T divisible by chunk)."""
    lo, hi = _bounds(tree)
    T = prob.markers.shape[0]
    C = opts.chunk
    z, w, obs = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    ok = prob.frame_valid & (jnp.sum(obs & (prob.marker_weight > 0), axis=1) >= opts.min_markers)
    zc = z.reshape(T // C, C, *z.shape[1:])
    wc = w.reshape(T // C, C, -1)
    okc = ok.reshape(T // C, C)
    solve = jax.vmap(
        lambda q0, zz, ww, okk: _lm_frame(
            tree,
            opts,
            q0,
            zz,
            ww,
            prob.coord_index,
            prob.coord_weight,
            prob.coord_target,
            lo,
            hi,
            ~okk,
        ),
        in_axes=(None, 0, 0, 0),
    )

    def chunk_step(q_prev, xs):
        zz, ww, okk = xs
        q, cost, it, done = solve(q_prev, zz, ww, okk)
        # warm start for the next chunk: the last solved frame of this one
        last = jnp.max(jnp.where(okk, jnp.arange(C), -1))
        q_next = jnp.where(last >= 0, q[jnp.maximum(last, 0)], q_prev)
        return q_next, (q, cost, it, done)

    _, (q, cost, it, done) = jax.lax.scan(chunk_step, q_start, (zc, wc, okc))
    q = q.reshape(T, -1)
    status = jnp.where(ok.reshape(T), jnp.where(done.reshape(T), CONVERGED, MAX_ITERS), FEW_MARKERS)
    return q, it.reshape(T), status, ok


# ----------------------------------------------------------------------------- smoothing
def _bands(valid, lam_v, lam_a, dtype):
    """Bands of L = lam_v D1'D1 + lam_a D2'D2 restricted to valid frames. Shapes: (T,) each.

    diag[t] = L[t,t]; off1[t] = L[t,t+1]; off2[t] = L[t,t+2] (0 past the end).
    """
    v = valid.astype(dtype)
    T = v.shape[0]
    diag = jnp.zeros(T, dtype)
    off1 = jnp.zeros(T, dtype)
    off2 = jnp.zeros(T, dtype)
    if lam_v > 0 and T > 1:
        r = lam_v * v[:-1] * v[1:]  # rows (t, t+1)
        diag = diag.at[:-1].add(r).at[1:].add(r)
        off1 = off1.at[:-1].add(-r)
    if lam_a > 0 and T > 2:
        a = lam_a * v[:-2] * v[1:-1] * v[2:]  # rows (t-1, t, t+1), t = 1..T-2
        diag = diag.at[:-2].add(a).at[1:-1].add(4 * a).at[2:].add(a)
        off1 = off1.at[:-2].add(-2 * a).at[1:-1].add(-2 * a)
        off2 = off2.at[:-2].add(a)
    return diag, off1, off2


def _band_matvec(diag, off1, off2, q):
    """(L kron I) q for q (T, n)."""
    out = diag[:, None] * q
    out = out.at[:-1].add(off1[:-1, None] * q[1:]).at[1:].add(off1[:-1, None] * q[:-1])
    out = out.at[:-2].add(off2[:-2, None] * q[2:]).at[2:].add(off2[:-2, None] * q[:-2])
    return out


def block_tridiag_solve(A, B, C, d):
    """Solve a block-tridiagonal SPD system by block Cholesky/Thomas in a ``lax.scan``.

    Row i: A_i x_{i-1} + B_i x_i + C_i x_{i+1} = d_i (A_0, C_{N-1} ignored).
    Shapes: A, B, C (N, m, m); d (N, m) -> x (N, m).
    """

    def fwd(carry, xs):
        Cp, dp = carry
        Ai, Bi, Ci, di = xs
        S = Bi - Ai @ Cp
        cf = jax.scipy.linalg.cho_factor(S)
        Cn = jax.scipy.linalg.cho_solve(cf, Ci)
        dn = jax.scipy.linalg.cho_solve(cf, di - Ai @ dp)
        return (Cn, dn), (Cn, dn)

    m = B.shape[-1]
    zero_c = jnp.zeros((m, m), B.dtype)
    zero_d = jnp.zeros((m,), B.dtype)
    A = A.at[0].set(zero_c)
    C = C.at[-1].set(zero_c)
    _, (Cs, ds) = jax.lax.scan(fwd, (zero_c, zero_d), (A, B, C, d))

    def bwd(x_next, xs):
        Ci, di = xs
        x = di - Ci @ x_next
        return x, x

    _, xs = jax.lax.scan(bwd, zero_d, (Cs, ds), reverse=True)
    return xs


def _smooth_stage(tree, opts: IKOptions, prob: IKProblem, q_init, ok):
    """Global LM on the whole sequence with the block-banded normal matrix."""
    lo, hi = _bounds(tree)
    T, n = q_init.shape
    z, w, _ = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    w = jnp.where(ok[:, None], w, 0.0)  # frames without enough markers: smoothness only
    cw = jnp.where(ok[:, None], prob.coord_weight[None, :], 0.0)
    diag, off1, off2 = _bands(prob.frame_valid, opts.smooth_vel, opts.smooth_acc, q_init.dtype)
    res = jax.vmap(partial(_residual, tree), in_axes=(0, 0, 0, None, 0, None))
    res_jac = jax.vmap(partial(_residual_and_jac, tree), in_axes=(0, 0, 0, None, 0, None))
    ci, ct = prob.coord_index, prob.coord_target
    eye = jnp.eye(n, dtype=q_init.dtype)
    # frames beyond the sequence (padding) are pinned by an identity block
    pad = (~prob.frame_valid).astype(q_init.dtype)

    def total_cost(q):
        r = res(q, z, w, ci, cw, ct)
        return jnp.sum(r**2) + jnp.sum(q * _band_matvec(diag, off1, off2, q))

    def body(state):
        q, cost, mu, it, done = state
        r, J = res_jac(q, z, w, ci, cw, ct)  # (T, R), (T, R, n)
        H = jnp.einsum("tri,trj->tij", J, J)
        g = jnp.einsum("tri,tr->ti", J, r) + _band_matvec(diag, off1, off2, q)
        Hd = H + (diag + pad)[:, None, None] * eye
        Hd = Hd + mu * (jnp.diagonal(Hd, axis1=1, axis2=2)[:, :, None] * eye + 1e-9 * eye)
        # pair frames (2k, 2k+1) -> block tridiagonal with (2n x 2n) blocks
        P = T // 2
        Hd2 = Hd.reshape(P, 2, n, n)
        o1 = off1.reshape(P, 2)
        o2 = off2.reshape(P, 2)
        Bd = jnp.zeros((P, 2 * n, 2 * n), q.dtype)
        Bd = Bd.at[:, :n, :n].set(Hd2[:, 0]).at[:, n:, n:].set(Hd2[:, 1])
        Bd = Bd.at[:, :n, n:].set(o1[:, 0, None, None] * eye)
        Bd = Bd.at[:, n:, :n].set(o1[:, 0, None, None] * eye)
        # super block: rows (2k, 2k+1), cols (2k+2, 2k+3)
        Cu = jnp.zeros((P, 2 * n, 2 * n), q.dtype)
        Cu = Cu.at[:, :n, :n].set(o2[:, 0, None, None] * eye)  # (2k, 2k+2)
        Cu = Cu.at[:, n:, :n].set(o1[:, 1, None, None] * eye)  # (2k+1, 2k+2)
        Cu = Cu.at[:, n:, n:].set(o2[:, 1, None, None] * eye)  # (2k+1, 2k+3)
        Al = jnp.concatenate([jnp.zeros_like(Cu[:1]), jnp.swapaxes(Cu[:-1], 1, 2)], 0)
        step = -block_tridiag_solve(Al, Bd, Cu, g.reshape(P, 2 * n)).reshape(T, n)
        step = jnp.where(prob.frame_valid[:, None], step, 0.0)
        q_new = jnp.clip(q + step, lo, hi)
        c_new = total_cost(q_new)
        accept = c_new < cost
        dq = jnp.max(jnp.abs(q_new - q))
        small = (dq < opts.tol_step) | (cost - c_new <= opts.tol_cost * cost)
        q = jnp.where(accept, q_new, q)
        cost = jnp.where(accept, c_new, cost)
        mu = jnp.where(accept, jnp.maximum(mu * 0.1, 1e-12), mu * 10.0)
        return q, cost, mu, it + 1, (accept & small) | (mu > 1e10)

    def cond(state):
        return (~state[4]) & (state[3] < opts.max_iters_smooth)

    init = (q_init, total_cost(q_init), jnp.asarray(opts.mu_init, q_init.dtype), 0, False)
    init = jax.tree_util.tree_map(jnp.asarray, init)
    q, cost, _, it, done = jax.lax.while_loop(cond, body, init)
    return q, it, done


# ----------------------------------------------------------------------------- reporting
def _report(tree, prob: IKProblem, q, opts_status, iterations):
    z, w, obs = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    qf = jax.vmap(_full_one, in_axes=(None, 0))(tree, q)
    zhat = jax.vmap(_fk_one, in_axes=(None, 0))(tree, qf).markers
    err = jnp.linalg.norm(zhat - z, axis=-1)
    used = obs & (prob.marker_weight[None, :] > 0)
    err_out = jnp.where(obs, err, jnp.nan)
    nused = jnp.maximum(jnp.sum(used, 1), 1)
    rms = jnp.sqrt(jnp.sum(jnp.where(used, err**2, 0.0), 1) / nused)
    mx = jnp.max(jnp.where(used, err, 0.0), 1)
    r = jax.vmap(partial(_residual, tree), in_axes=(0, 0, 0, None, None, None))(
        q, z, w, prob.coord_index, prob.coord_weight, prob.coord_target
    )
    cost = jnp.sum(r**2, 1)
    # sensitivity of each coordinate to marker noise: sqrt(diag((J'WJ)^-1)) (marker part only)
    _, J = jax.vmap(partial(_residual_and_jac, tree), in_axes=(0, 0, 0, None, None, None))(
        q, z, w, prob.coord_index, jnp.zeros_like(prob.coord_weight), prob.coord_target
    )
    H = jnp.einsum("tri,trj->tij", J, J)
    n = q.shape[1]
    dH = jnp.diagonal(H, axis1=1, axis2=2)
    observed = dH > 1e-12 * jnp.max(dH, axis=1, keepdims=True)
    # unobserved coordinates get a unit diagonal so the rest can be inverted (Cholesky)
    Hr = H + (jnp.where(observed, 1e-12 * jnp.max(dH, 1, keepdims=True), 1.0))[:, :, None] * (
        jnp.eye(n, dtype=q.dtype)
    )
    wmean = jnp.sum(w, 1) / jnp.maximum(jnp.sum(w > 0, 1), 1)
    eye_b = jnp.broadcast_to(jnp.eye(n, dtype=q.dtype), H.shape)
    inv_diag = jnp.diagonal(
        jax.vmap(lambda A, B: jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A), B))(
            Hr, eye_b
        ),
        axis1=1,
        axis2=2,
    )
    sens = jnp.where(observed, 1e-3 * jnp.sqrt(jnp.abs(inv_diag) * wmean[:, None]), jnp.inf)
    bad = opts_status == FEW_MARKERS
    return IKResult(
        q=q,
        q_full=qf,
        marker_error=err_out,
        rms_error=jnp.where(bad, jnp.nan, rms),
        max_error=jnp.where(bad, jnp.nan, mx),
        cost=cost,
        status=opts_status,
        iterations=iterations,
        sensitivity=sens,
        model_markers=zhat,
    )


# ----------------------------------------------------------------------------- public
def _solve_one(tree: KinematicTree, prob: IKProblem, opts: IKOptions) -> IKResult:
    z, w, _ = _frame_inputs(prob.markers[0], prob.marker_weight)
    q_default = tree.coord_default[tree.topology.indep_coord].astype(prob.markers.dtype)
    lo, hi = _bounds(tree)
    q_default = jnp.clip(q_default, lo, hi)
    # robust start on the first frame that has enough markers
    obs_count = jnp.sum(jnp.all(jnp.isfinite(prob.markers), -1) & (prob.marker_weight > 0), 1)
    first = jnp.argmax(prob.frame_valid & (obs_count >= opts.min_markers))
    z0, w0, _ = _frame_inputs(prob.markers[first], prob.marker_weight)
    q_start = _robust_start(
        tree,
        opts,
        q_default,
        z0,
        w0,
        prob.coord_index,
        prob.coord_weight,
        prob.coord_target,
        lo,
        hi,
    )
    del z, w
    q, it, status, ok = _per_frame_stage(tree, opts, prob, q_start)
    if opts.smooth_vel > 0 or opts.smooth_acc > 0:
        # fill frames that could not be solved from their neighbours before smoothing
        q = jnp.where(ok[:, None], q, q_start[None, :])
        q, it_s, _ = _smooth_stage(tree, opts, prob, q, ok)
        it = it + it_s
    else:
        q = jnp.where(ok[:, None], q, jnp.nan)
    return _report(tree, prob, q, status, it)


_solve_padded = jax.jit(_solve_one, static_argnames=("opts",))


def bucket_length(T: int, chunk: int) -> int:
    """Padded length for a sequence of T frames: a multiple of 2*chunk, rounded up to the next
    of 1, 1.25, 1.5, 1.75 x a power of two (so few distinct shapes compile)."""
    unit = 2 * chunk
    units = max(-(-T // unit), -(-64 // unit))  # at least 64 frames: fewer shapes to compile
    if units <= 4:
        return units * unit
    p = 1 << (units.bit_length() - 1)
    for f in (1.0, 1.25, 1.5, 1.75, 2.0):
        if units <= int(p * f):
            return int(p * f) * unit
    return units * unit


def make_problem(
    tree: KinematicTree,
    markers,
    marker_weight=None,
    coord_tasks: tuple | None = None,
    length: int | None = None,
    as_numpy: bool = False,
) -> IKProblem:
    """Build a (padded) IK problem. ``markers`` (T, M, 3) in the tree's marker order, metres,
    NaN where missing; ``coord_tasks`` = (coord_index (K,), weight (K,), target (K,)) over
    the full coordinate vector."""
    markers = np.asarray(markers, np.float64)
    if markers.ndim != 3 or markers.shape[1:] != (tree.n_marker, 3):
        raise InputError(
            f"markers must have shape (T, {tree.n_marker}, 3) in the model's marker order, "
            f"got {markers.shape}"
        )
    T = markers.shape[0]
    if T == 0:
        raise InputError("no frames to solve")
    L = T if length is None else length
    if L < T:
        raise InputError(f"padded length {L} shorter than the sequence ({T})")
    pad = np.full((L - T, tree.n_marker, 3), np.nan)
    mk = np.concatenate([markers, pad], 0)
    valid = np.arange(L) < T
    w = np.ones(tree.n_marker) if marker_weight is None else np.asarray(marker_weight, float)
    if coord_tasks is None:
        ci, cw, ct = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    else:
        ci, cw, ct = (np.asarray(a) for a in coord_tasks)
    dt = np.dtype(tree.dtype)
    xp = np if as_numpy else jnp
    return IKProblem(
        markers=xp.asarray(mk, dt),
        frame_valid=xp.asarray(valid),
        marker_weight=xp.asarray(w, dt),
        coord_index=xp.asarray(ci, np.int32),
        coord_weight=xp.asarray(cw, dt),
        coord_target=xp.asarray(ct, dt),
    )


def _check_dtype(tree: KinematicTree) -> None:
    # float32 IK is not validated: with x64 on, float64 constants leak into the float32
    # program; with x64 off the reported marker errors were wrong (bench_ik, 138 mm RMS)
    if tree.dtype != jnp.float64:
        raise InputError(
            f"IK needs a float64 tree (got {tree.dtype}): enable it with "
            "jax.config.update('jax_enable_x64', True) before loading the model; float32 IK "
            "is not validated yet"
        )


def _resolve(options: IKOptions) -> IKOptions:
    if options.chunk < 1:
        raise InputError(f"chunk must be >= 1, got {options.chunk}", field="chunk")
    return options


def solve_ik(
    tree: KinematicTree,
    markers,
    marker_weight=None,
    coord_tasks=None,
    options: IKOptions = IKOptions(),
) -> IKResult:
    """Solve IK for one sequence. ``markers`` (T, M, 3) metres, NaN = missing.

    Returns an :class:`IKResult` cut back to T frames.
    """
    _check_dtype(tree)
    options = _resolve(options)
    T = int(np.shape(markers)[0]) if np.ndim(markers) == 3 else 0
    L = bucket_length(max(T, 1), options.chunk)
    prob = make_problem(tree, markers, marker_weight, coord_tasks, length=L)
    out = _solve_padded(tree, prob, options)
    return jax.tree_util.tree_map(lambda a: a[:T], out)


def solve_ik_batch(
    tree: KinematicTree,
    sequences: list,
    marker_weight=None,
    coord_tasks=None,
    options: IKOptions = IKOptions(),
    cache_dir: str | None = None,
) -> list[IKResult]:
    """Solve many sequences of different lengths in one compiled call (padding + masks).

    ``cache_dir``: keep the traced solver there (``jax.export``, keyed by model structure,
    options, shapes, dtype and the solver's source), so a new process skips tracing and, with
    JAX's persistent compilation cache, compilation too (used by the CLI)."""
    if not sequences:
        return []
    _check_dtype(tree)
    options = _resolve(options)
    L = bucket_length(max(int(np.shape(s)[0]) for s in sequences), options.chunk)
    probs = [
        make_problem(tree, s, marker_weight, coord_tasks, length=L, as_numpy=True)
        for s in sequences
    ]
    # stack and slice in numpy: jnp ops on many small shapes would each compile
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *probs)
    if cache_dir is None:
        out = _solve_batch_jit(tree, stacked, options)
    else:
        out = _solve_batch_exported(tree, stacked, options, Path(cache_dir))
    out = jax.tree_util.tree_map(np.asarray, out)
    lengths = [int(np.shape(s)[0]) for s in sequences]
    return [
        jax.tree_util.tree_map(lambda a, i=i, T=T: a[i, :T], out) for i, T in enumerate(lengths)
    ]


@partial(jax.jit, static_argnames=("opts",))
def _solve_batch_jit(tree, probs, opts):
    return jax.vmap(lambda p: _solve_one(tree, p, opts))(probs)


def _solve_batch_exported(tree, probs, opts, cache_dir: Path) -> IKResult:
    """:func:`_solve_batch_jit` through a serialized ``jax.export`` artefact on disk."""
    from jax import export

    tree_leaves, topology = tree.tree_flatten()
    prob_leaves = tuple(jnp.asarray(a) for a in probs)
    src = hashlib.sha256()
    for mod in ("ik.py", "fk.py", "model.py"):
        src.update((Path(__file__).parent / mod).read_bytes())
    sig = [(a.shape, str(a.dtype)) for a in tree_leaves + prob_leaves]
    key = hashlib.sha256(
        repr((topology.digest, opts, sig, jax.__version__, src.hexdigest())).encode()
    ).hexdigest()[:32]
    path = cache_dir / f"ik_{key}.jaxexport"
    exp = None
    if path.exists():
        try:
            exp = export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # a stale or partial artefact: rebuild it
            exp = None
    if exp is None:

        def flat(tl, pl):
            t = KinematicTree.tree_unflatten(topology, tl)
            return tuple(jax.vmap(lambda p: _solve_one(t, p, opts))(IKProblem(*pl)))

        exp = export.export(jax.jit(flat))(tree_leaves, prob_leaves)
        from .io import atomic_open

        with atomic_open(path, "wb") as f:
            f.write(exp.serialize())
    return IKResult(*exp.call(tree_leaves, prob_leaves))


# ----------------------------------------------------------------------------- differentiable
def ik_layer(
    tree: KinematicTree,
    markers: jax.Array,
    q_init: jax.Array,
    marker_weight: jax.Array | None = None,
    iterations: int = 8,
) -> jax.Array:
    """Per-frame IK (lambda = 0) as a differentiable layer: markers -> coordinates.

    Runs ``iterations`` Levenberg-Marquardt steps per frame from ``q_init`` (e.g. the
    :func:`solve_ik` solution, or the previous training step's) and differentiates the result by
    the implicit function theorem at the optimum (``jax.lax.custom_root``): d q*/d z =
    -H^-1 d(grad_q C)/dz with H the exact Hessian of the frame cost. Gradients flow to
    ``markers`` (and to the tree's geometry leaves). No iteration is unrolled, so memory does
    not grow with ``iterations``. Unobserved coordinates get a 1e-9 ridge in the tangent solve.
    Steps are projected onto clamped ranges as in :func:`solve_ik`; at a solution on a bound
    the implicit gradient is that of the unconstrained optimum (a known limitation).
    Shapes: markers (*batch, M, 3) (finite), q_init (*batch, n_indep) -> (*batch, n_indep).
    """
    w = jnp.ones(markers.shape[-2], markers.dtype) if marker_weight is None else marker_weight
    ci = jnp.zeros(0, jnp.int32)
    e = jnp.zeros(0, markers.dtype)
    n = q_init.shape[-1]
    eye = jnp.eye(n, dtype=markers.dtype)
    lo, hi = _bounds(tree)

    def one(z, q0):
        def grad_cost(q):
            return jax.grad(lambda qq: jnp.sum(_residual(tree, qq, z, w, ci, e, e) ** 2))(q)

        def solve(_, x0):
            def step(carry, _):
                q, mu, cost = carry
                r, J = _residual_and_jac(tree, q, z, w, ci, e, e)
                qn = jnp.clip(q - _damped_solve(J.T @ J, J.T @ r, mu, eye), lo, hi)
                rn = _residual(tree, qn, z, w, ci, e, e)
                cn = rn @ rn
                acc = cn < cost
                return (
                    jnp.where(acc, qn, q),
                    jnp.where(acc, mu * 0.1, mu * 10),
                    jnp.where(acc, cn, cost),
                ), None

            r0 = _residual(tree, x0, z, w, ci, e, e)
            init = (x0, jnp.asarray(1e-3, x0.dtype), r0 @ r0)
            (q, _, _), _ = jax.lax.scan(step, init, None, length=iterations)
            return q

        def tangent_solve(g, y):
            H = jax.jacfwd(g)(y)
            return jnp.linalg.solve(H + 1e-9 * jnp.max(jnp.abs(jnp.diag(H))) * eye, y)

        return jax.lax.custom_root(grad_cost, jax.lax.stop_gradient(q0), solve, tangent_solve)

    f = one
    for _ in range(markers.ndim - 2):
        f = jax.vmap(f)
    return f(markers, q_init)
