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
2. Per-frame stage, coarse to fine in time: every ``chunk``-th frame is solved in order, each
   warm-started from the previous one (a ``lax.scan``); then the frames halfway between solved
   ones, level by level down to single frames, each from a cubic interpolation of the solved
   frames at -3h, -h, +h, +3h (the mean of the two nearest where the outer ones are missing).
   These are scheduled on ``lanes`` parallel lanes per sequence in rounds of ``round_iters``
   evaluations (one ``while_loop``; a slow frame keeps its lane, with its LM state stored
   between rounds, while finished ones are refilled), so lanes run in lockstep only within a
   round. Each frame runs
   Levenberg-Marquardt with damping relative to the largest curvature, accept/reject, and a
   gain-ratio damping update. Convergence per frame: an accepted step with max|dq| <
   ``tol_step`` or a relative cost decrease (actual, or predicted by the Gauss-Newton model)
   below ``tol_cost``; a weighted RMS marker error below ``tol_marker``; a negligible
   undamped step; or ``max_iters`` (status MAX_ITERS).
3. Smoothing stage (only if a lambda > 0): Gauss-Newton/LM on the whole sequence. The normal
   matrix is block-pentadiagonal in time (n_dof x n_dof blocks); pairs of frames make it block
   tridiagonal (2n x 2n), solved exactly by a block-Cholesky (Thomas) ``lax.scan`` on CPU or
   by block cyclic reduction (log2 T levels, each one batched kernel: parallel on a GPU).
   No dense (T n) x (T n) matrix is formed. A global LM damping with accept/reject keeps the
   total cost decreasing.

Coordinate limits: clamped coordinates are kept inside their ranges by projecting every trial
step onto the box (projected LM); the accept test uses the projected point.
Missing markers (NaN) get weight 0 in their frame. A frame with fewer than ``min_markers``
observed markers is reported (status FEW_MARKERS); with lambda = 0 its coordinates are NaN,
with smoothing they are filled by the smoothness prior and flagged.

Memory per frame (float64, SimSpine model: n=40 coordinates, M=37 markers): the per-frame
stage keeps each frame's LM state, O(T n^2) (the n x n normal block, 13 kB per frame); the
marker Jacobian (3M x n = 35 kB) exists only for the ``lanes`` frames in flight; the
smoothing stage holds O(T n^2) (about 0.1 MB per frame).
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

from ._banded import banded_solve, block_tridiag_solve  # noqa: F401 (public here too)
from .errors import InputError
from .fk import _fk_one, _full_and_map, _full_one, marker_jacobian_one
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
    tol_cost: float = 1e-5  # or the actual or predicted relative cost decrease is below this
    tol_marker: float = 1e-6  # or the weighted RMS marker error is below this (m): 1 um,
    # far below marker precision (1e-7 cost clean frames 1.4x the iterations for nothing visible)
    mu_init: float = 1e-3  # initial Marquardt damping
    chunk: int = 64  # stride (a power of two) of the frames solved first, in order; the
    # frames between are solved coarse to fine in parallel (see _per_frame_stage)
    lanes: int = 0  # frames iterated in parallel per round and sequence; 0: 8 on CPU (where
    # wider lanes only add lockstep waste: 8 measured fastest of 4..128), 64 on accelerators
    round_iters: int = 2  # FK + Jacobian evaluations per round before lanes are reassigned
    # (2 measured 5-10% faster than 1, 3 or 4 on 500-frame trials, 2 cores)
    mu_init_warm: float = 1e-5  # initial damping of frames started from solved neighbours
    # (1e-7 cut noisy iterations 35% but found worse minima: mean cost +4.5%, measured)
    min_markers: int = 3  # fewer observed markers in a frame -> FEW_MARKERS
    banded: str = "auto"  # smoothing-stage solve: "thomas" (block Cholesky scan, sequential
    # in time), "cyclic" (block cyclic reduction, log T depth) or "auto" (cyclic on GPU/TPU)


class IKProblem(NamedTuple):
    """Per-sequence data (a pytree). Shapes: markers (T, M, 3) NaN = missing; frame_valid (T,);
    marker_weight (M,); coord_index (K,) static-int leaf; coord_weight (K,); coord_target (T, K)
    (per frame: constant for default/manual values, from a coordinate file for from_file)."""

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


def _frame_terms(tree: KinematicTree, q, z, w, ci, cw, ct):
    """One FK + Jacobian pass for one frame: model markers x (M, 3), full coordinates (n_coord,),
    residual (3M + K,) and its analytic Jacobian (3M + K, n_indep); marker rows first."""
    x, J, qf, G = marker_jacobian_one(tree, q)
    sw = jnp.sqrt(w)
    rm = ((x - z) * sw[:, None]).reshape(-1)
    Jm = (J * sw[:, None, None]).reshape(-1, q.shape[0])
    scw = jnp.sqrt(cw * jnp.sum(w))  # OpenSim's task scale: see _residual
    rc = scw * (qf[ci] - ct)
    Jc = scw[:, None] * G[ci]
    return x, qf, jnp.concatenate([rm, rc]), jnp.concatenate([Jm, Jc], 0)


def _residual_and_jac(tree: KinematicTree, q, z, w, ci, cw, ct):
    """Residual (3M + K,) and its analytic Jacobian (3M + K, n_indep) for one frame."""
    return _frame_terms(tree, q, z, w, ci, cw, ct)[2:]


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
    # SPD: Cholesky (a failed one gives NaN, a step the accept test then rejects)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A), g[..., None])[..., 0]


class _LMState(NamedTuple):
    """Per-frame Levenberg-Marquardt state (a pytree; vmapped over frames, and kept for every
    frame of a sequence between the per-frame stage's rounds)."""

    q: jax.Array  # (n,)
    cost: jax.Array  # ()
    H: jax.Array  # (n, n) Gauss-Newton matrix J'J at q
    g: jax.Array  # (n,) gradient J'r at q
    x: jax.Array  # (M, 3) model marker positions at q
    mu: jax.Array  # () Marquardt damping
    it: jax.Array  # () iterations done
    done: jax.Array  # () converged (or a frame not to solve)
    fresh: jax.Array  # () q is a new start: cost, H and g are not evaluated yet


def _fresh_state(q0, n_marker: int, mu, skip) -> _LMState:
    """A frame about to start at ``q0``: :func:`_lm_run`'s first evaluation is ``q0`` itself
    (cost, J'J, J'r and markers are set there). ``skip``: a frame not to solve."""
    n, dt = q0.shape[-1], q0.dtype
    return _LMState(
        q=q0,
        cost=jnp.zeros((), dt),
        H=jnp.zeros((n, n), dt),
        g=jnp.zeros(n, dt),
        x=jnp.zeros((n_marker, 3), dt),
        mu=jnp.asarray(mu, dt),
        it=jnp.asarray(0, jnp.int32),
        done=jnp.asarray(skip),
        fresh=jnp.asarray(True),
    )


def _lm_run(tree, opts: IKOptions, s: _LMState, z, w, ci, cw, ct, lo, hi, cap) -> _LMState:
    """At most ``cap`` more FK + Jacobian evaluations on one frame (a fresh frame's first is
    its start point, not an iteration); stops at convergence or max_iters."""
    eye = jnp.eye(s.q.shape[0], dtype=s.q.dtype)
    fit = opts.tol_marker**2 * jnp.sum(w)  # cost of a weighted RMS marker error of tol_marker

    def body(carry):
        s, k = carry
        q, cost, H, g, mu, fresh = s.q, s.cost, s.H, s.g, s.mu, s.fresh
        # a fresh lane evaluates its start point (its H and g are not set: the step is unused)
        q_new = jnp.where(fresh, q, jnp.clip(q - _damped_solve(H, g, mu, eye), lo, hi))
        # residual and Jacobian at the trial point in one pass: kept if the step is accepted
        # (most are), so an iteration costs one FK + Jacobian, not that plus one FK
        x_new, _, r_new, J_new = _frame_terms(tree, q_new, z, w, ci, cw, ct)
        c_new = r_new @ r_new
        accept = (c_new < cost) | fresh
        d = q_new - q
        # decrease the Gauss-Newton model still promises (once damping is negligible)
        pred = -(2.0 * g @ d + d @ (H @ d))
        floor = opts.tol_cost * jnp.maximum(cost, 1e-30)
        tiny = (mu <= 1e-6) & (pred <= floor)
        dq = jnp.max(jnp.abs(d))
        small = (dq < opts.tol_step) | (cost - c_new <= floor)
        # a fit to within tol_marker (weighted RMS) is converged; so is a negligible undamped
        # step (at a zero-residual optimum rounding rejects every step)
        fitted = jnp.minimum(cost, c_new) <= fit
        stationary = ((dq < opts.tol_step) & (mu <= opts.mu_init)) | fitted
        done = (accept & small) | tiny | stationary | (~accept & (mu > 1e10))
        done = jnp.where(fresh, c_new <= fit, done)
        # damping update by the gain ratio rho = actual / predicted decrease: a good model
        # (rho > 3/4) cuts it tenfold, a poor one (rho < 1/4) doubles it, a rejection x4
        rho = (cost - c_new) / jnp.maximum(pred, 1e-300)
        shrink = jnp.where(rho > 0.75, 0.1, jnp.where(rho > 0.25, 1.0, 2.0))
        mu_new = jnp.where(accept, jnp.maximum(mu * shrink, 1e-12), mu * 4.0)
        s = _LMState(
            q=jnp.where(accept, q_new, q),
            cost=jnp.where(accept, c_new, cost),
            H=jnp.where(accept, J_new.T @ J_new, H),
            g=jnp.where(accept, J_new.T @ r_new, g),
            x=jnp.where(accept, x_new, s.x),
            mu=jnp.where(fresh, mu, mu_new),
            it=s.it + jnp.where(fresh, 0, 1),
            done=s.done | done,
            fresh=jnp.zeros_like(fresh),
        )
        return s, k + 1

    def cond(carry):
        s, k = carry
        return (~s.done) & (s.it < opts.max_iters) & (k < cap)

    return jax.lax.while_loop(cond, body, (s, jnp.asarray(0, jnp.int32)))[0]


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

    sub_lo, sub_hi = lo[free], hi[free]
    eye = jnp.eye(len(free), dtype=q_default.dtype)

    def rj_root(q, qr):
        r, J = _residual_and_jac(tree, q.at[free].set(qr), z, w, ci, cw, ct)
        return r, J[:, free]

    def place(angles):
        """Root at the grid orientation, translated so the model's markers share the data's
        centroid; its residual and root Jacobian there."""
        q = q_default.at[rot].set(angles)
        zhat = _fk_one(tree, _full_one(tree, q)).markers
        model_c = jnp.sum(jnp.where(obs_w[:, None], zhat, 0.0), 0) / jnp.maximum(jnp.sum(obs_w), 1)
        q = q.at[trans].add(centroid - model_c) if len(trans) == 3 else q
        r, J = rj_root(q, q[free])
        return q, r, J, jnp.asarray(opts.mu_init, q.dtype)

    def refine(q, r, J, mu, iters):
        """``iters`` LM steps on the root coordinates alone (one FK + Jacobian pass each: the
        trial point's residual and Jacobian are kept when the step is accepted)."""

        def step(carry, _):
            qr, r, J, mu = carry
            qn = jnp.clip(qr - _damped_solve(J.T @ J, J.T @ r, mu, eye), sub_lo, sub_hi)
            rn, Jn = rj_root(q, qn)
            acc = rn @ rn < r @ r
            keep = partial(jnp.where, acc)
            return (keep(qn, qr), keep(rn, r), keep(Jn, J), keep(mu * 0.1, mu * 10)), None

        (qr, r, J, mu), _ = jax.lax.scan(step, (q[free], r, J, mu), None, length=iters)
        return q.at[free].set(qr), r, J, mu

    # every grid start gets 3 steps; the 8 best of them 9 more (2.9x fewer steps than 12 each)
    qs, rs, Js, mus = jax.vmap(lambda a: refine(*place(a), 3))(grids)
    keep = jnp.argsort(jnp.sum(rs**2, 1))[:8]
    qs, rs, _, _ = jax.vmap(lambda *a: refine(*a, 9))(qs[keep], rs[keep], Js[keep], mus[keep])
    costs = jnp.sum(rs**2, 1)
    # Equivalent Euler-angle solutions fit equally well: among the starts whose cost is within
    # 1e-6 of the best, keep the one with the smallest root angles (wrapped to [-pi, pi)).
    wrapped = (qs[:, rot] + jnp.pi) % (2 * jnp.pi) - jnp.pi
    qs = qs.at[:, rot].set(wrapped)
    best = jnp.min(costs)
    near = costs <= best * (1 + 1e-6) + 1e-10
    size = jnp.where(near, jnp.sum(wrapped**2, axis=1), jnp.inf)
    return qs[jnp.argmin(size)]


def _lanes(mask, like):
    """A per-lane mask (W,) shaped to broadcast against ``like`` (W, ...)."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))


def _schedule(T: int, S: int):
    """Static coarse-to-fine order of a T-frame sequence (T a multiple of 2 S, S a power of 2).

    Frame t gets a level (0: every S-th frame, solved in order; level k: odd multiples of
    S / 2^k) and the frames its warm start comes from: ``left``/``right`` (t -/+ h, -1: the
    robust start) and, for a cubic start, ``left2``/``right2`` (t -/+ 3h, -1 where there is
    none). All four are at coarser levels. Shapes: (T,).
    """
    level = np.zeros(T, np.int32)
    left = np.arange(T) - S
    right = left.copy()
    left2 = np.full(T, -1)
    right2 = np.full(T, -1)
    h, k = S // 2, 1
    while h >= 1:
        idx = np.arange(h, T, 2 * h)
        level[idx] = k
        left[idx] = idx - h
        right[idx] = np.where(idx + h < T, idx + h, idx - h)
        both = (idx - 3 * h >= 0) & (idx + 3 * h < T)
        left2[idx] = np.where(both, idx - 3 * h, -1)
        right2[idx] = np.where(both, idx + 3 * h, -1)
        h, k = h // 2, k + 1
    return level, np.maximum(left, -1), np.maximum(right, -1), left2, right2


def _warm_start(q_ext, ok_ext, l1, r1, l2, r2):
    """Start of a frame from solved frames at t -/+ h (l1, r1) and t -/+ 3h (l2, r2; -1: none).
    Cubic interpolation (-1, 9, 9, -1)/16 where all four are solved frames and agree within
    1 rad or m per coordinate; else their mean, or the left one where the two differ by more
    (e.g. an angle wrap). ``q_ext`` (T + 1, n): the last row is the robust start."""
    ql, qr, ql2, qr2 = q_ext[l1], q_ext[r1], q_ext[l2], q_ext[r2]
    d = qr - ql
    linear = jnp.where(jnp.abs(d) < 1.0, ql + 0.5 * d, ql)
    cubic = (9.0 * (ql + qr) - (ql2 + qr2)) / 16.0
    have = (l2 >= 0) & ok_ext[l1] & ok_ext[r1] & ok_ext[l2] & ok_ext[r2]
    near = (jnp.abs(d) < 1.0) & (jnp.abs(ql - ql2) < 1.0) & (jnp.abs(qr2 - qr) < 1.0)
    return jnp.where(have[..., None] & near, cubic, linear)


def _per_frame_stage(tree, opts: IKOptions, prob: IKProblem, q_start, seq_axis=None):
    """Per-frame LM, coarse to fine in time, on a fixed number of lanes. Shapes: (T, n) in
    and out (T a multiple of 2 * chunk, chunk a power of two).

    Order: every ``chunk``-th frame is warm-started from the previous one (the first from the
    robust start); every other frame, once the frames it starts from are finished, from those
    at the next coarser levels: a cubic interpolation of its solved neighbours at -3h, -h, +h
    and +3h (:func:`_warm_start`; the nearest two's mean, or the left one across an angle
    wrap, where the outer ones are missing). Finer levels thus start close to their optimum
    (on noise-free data half of the finest frames need no step at all), and a weakly
    observed coordinate inherits its neighbours' basin.

    Scheduling: one ``while_loop`` of rounds. Each round picks up to ``lanes`` frames that
    are running or ready (coarsest level first, then in time), and runs at most
    ``round_iters`` FK + Jacobian evaluations on them in parallel (a vmapped loop, so lanes
    run in lockstep only within a round; a new frame's first evaluation is its start point).
    Every frame's LM state (q, cost, J'J, J'r, damping) is kept between rounds, so a frame
    resumes where it stopped and the solver's J'J at the solution serves the report. One
    compiled LM kernel serves every level. Returns q, iterations, status, ok (T,), J'J
    (T, n, n) and model markers (T, M, 3).

    ``seq_axis``: the vmap axis name when sequences are vmapped (:func:`_map_sequences`).
    The rounds then continue until every sequence of the batch is finished (a finished one's
    lanes idle), so the loop's condition is not batched: a batched one would make JAX select
    between old and new state, O(T n^2) per sequence, every round (measured: 8 noisy trials
    ran at 666 instead of ~1400 frames/s).
    """
    lo, hi = _bounds(tree)
    T, M = prob.markers.shape[:2]
    W = min(opts.lanes or (8 if jax.default_backend() == "cpu" else 64), T)
    level, left, right, left2, right2 = _schedule(T, opts.chunk)
    key_static = jnp.asarray(level.astype(np.int64) * T + np.arange(T))
    left, right, left2, right2 = (jnp.asarray(a) for a in (left, right, left2, right2))
    z, w, obs = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    ok = prob.frame_valid & (jnp.sum(obs & (prob.marker_weight > 0), axis=1) >= opts.min_markers)
    ci, cw, ct = prob.coord_index, prob.coord_weight, prob.coord_target  # ct (T, K)
    run = jax.vmap(
        lambda s, zz, ww, tt: _lm_run(tree, opts, s, zz, ww, ci, cw, tt, lo, hi, opts.round_iters)
    )
    mu_warm = jnp.asarray(opts.mu_init_warm, q_start.dtype)
    ok_ext = jnp.concatenate([ok, jnp.zeros(1, bool)])  # [-1]: the robust start, not a frame

    def finished(st, started):
        return started & (st.done | (st.it >= opts.max_iters))

    def round_body(carry):
        st, started = carry
        fin = jnp.concatenate([finished(st, started), jnp.ones(1, bool)])  # [-1]: the start
        ready = fin[left] & fin[right] & fin[left2] & fin[right2]
        elig = ~fin[:T] & (started | ready)
        sel = jnp.argsort(jnp.where(elig, key_static, jnp.iinfo(jnp.int64).max))[:W]
        lane = elig[sel]
        new = lane & ~started[sel]
        q_ext = jnp.concatenate([st.q, q_start[None]])
        q0 = _warm_start(q_ext, ok_ext, left[sel], right[sel], left2[sel], right2[sel])
        zz, ww, tt = z[sel], w[sel], ct[sel]
        cur = jax.tree_util.tree_map(lambda a: a[sel], st)
        # a new frame starts fresh from its warm start (its first evaluation is the start
        # point's); a running one resumes from its stored state
        s = cur._replace(
            q=jnp.where(new[:, None], q0, cur.q),
            mu=jnp.where(new, mu_warm, cur.mu),
            it=jnp.where(new, 0, cur.it),
            done=jnp.where(new, ~ok[sel], cur.done) | ~lane,
            fresh=new,
        )
        s = run(s, zz, ww, tt)
        st = jax.tree_util.tree_map(
            lambda a, b, c: a.at[sel].set(jnp.where(_lanes(lane, b), b, c)), st, s, cur
        )
        return st, started.at[sel].set(started[sel] | lane)

    coarse = np.nonzero(level == 0)[0]

    def coarse_step(q_prev, xs):
        zz, ww, tt, okk = xs
        c = _fresh_state(q_prev, M, opts.mu_init, ~okk)
        c = _lm_run(tree, opts, c, zz, ww, ci, cw, tt, lo, hi, opts.max_iters + 1)
        return jnp.where(okk, c.q, q_prev), c

    # the coarse frames, in order (one lane each sequence: they form a chain)
    xs = (z[coarse], w[coarse], ct[coarse], ok[coarse])
    _, cs = jax.lax.scan(coarse_step, q_start, xs)
    # every other frame's state is set when it starts (round_body)
    st0 = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a, (T,) + a.shape), _fresh_state(q_start, M, 0.0, False)
    )
    st0 = jax.tree_util.tree_map(lambda a, c: a.at[coarse].set(c), st0, cs)
    carry = (st0, jnp.zeros(T, bool).at[coarse].set(True))

    def active(c):
        busy = ~jnp.all(finished(*c))
        return busy if seq_axis is None else jax.lax.psum(busy.astype(jnp.int32), seq_axis) > 0

    st, _ = jax.lax.while_loop(active, round_body, carry)
    status = jnp.where(ok, jnp.where(st.done, CONVERGED, MAX_ITERS), FEW_MARKERS)
    return st.q, st.it, status, ok, st.H, st.x


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


def _smooth_stage(tree, opts: IKOptions, prob: IKProblem, q_init, ok):
    """Global LM on the whole sequence with the block-banded normal matrix."""
    lo, hi = _bounds(tree)
    T, n = q_init.shape
    z, w, _ = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    w = jnp.where(ok[:, None], w, 0.0)  # frames without enough markers: smoothness only
    cw = jnp.where(ok[:, None], prob.coord_weight[None, :], 0.0)
    diag, off1, off2 = _bands(prob.frame_valid, opts.smooth_vel, opts.smooth_acc, q_init.dtype)
    res = jax.vmap(partial(_residual, tree), in_axes=(0, 0, 0, None, 0, 0))
    res_jac = jax.vmap(partial(_residual_and_jac, tree), in_axes=(0, 0, 0, None, 0, 0))
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
        step = -banded_solve(Al, Bd, Cu, g.reshape(P, 2 * n), method=opts.banded).reshape(T, n)
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
def _report(tree, prob: IKProblem, q, opts_status, iterations, H=None, x=None):
    """Errors, costs and sensitivities at the solution ``q`` (T, n). ``H`` (T, n, n) and ``x``
    (T, M, 3): the solver's Gauss-Newton matrix J'J (coordinate-task rows included) and model
    markers at ``q``, if it has them (then no FK is needed here); otherwise one FK + Jacobian
    pass per frame computes them."""
    z, w, obs = _frame_inputs(prob.markers, prob.marker_weight[None, :])
    ci, cw, ct = prob.coord_index, prob.coord_weight, prob.coord_target
    nm = z.shape[1]
    if H is None:
        terms = jax.vmap(lambda q, z, w, ct: _frame_terms(tree, q, z, w, ci, cw, ct))
        zhat, qf, r, J = terms(q, z, w, ct)  # one FK + Jacobian pass per frame
        J = J[:, : 3 * nm]  # marker rows only: the sensitivity leaves coordinate tasks out
        H = jnp.einsum("tri,trj->tij", J, J)
    else:

        def tasks(q, w, ct):
            qf, G = _full_and_map(tree, q)
            scw = jnp.sqrt(cw * jnp.sum(w))  # as in _frame_terms
            Jc = scw[:, None] * G[ci]
            return qf, scw * (qf[ci] - ct), Jc.T @ Jc

        qf, rc, Hc = jax.vmap(tasks)(q, w, ct)
        H = H - Hc  # marker rows only, as above
        zhat = x
        rm = ((zhat - z) * jnp.sqrt(w)[..., None]).reshape(q.shape[0], -1)
        r = jnp.concatenate([rm, rc], 1)
    cost = jnp.sum(r**2, 1)
    err = jnp.linalg.norm(zhat - z, axis=-1)
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
    Hr = H + (jnp.where(observed, 1e-12 * jnp.max(dH, 1, keepdims=True), 1.0))[:, :, None] * (
        jnp.eye(n, dtype=q.dtype)
    )
    wmean = jnp.sum(w, 1) / jnp.maximum(jnp.sum(w > 0, 1), 1)
    # diag(Hr^-1) = column sums of squares of L^-1 (Hr = L L'): one triangular solve
    L = jnp.linalg.cholesky(Hr)
    eye_b = jnp.broadcast_to(jnp.eye(n, dtype=q.dtype), H.shape)
    inv_diag = jnp.sum(jax.scipy.linalg.solve_triangular(L, eye_b, lower=True) ** 2, axis=1)
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
def _solve_one(tree: KinematicTree, prob: IKProblem, opts: IKOptions, seq_axis=None) -> IKResult:
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
        prob.coord_target[first],
        lo,
        hi,
    )
    q, it, status, ok, H, x = _per_frame_stage(tree, opts, prob, q_start, seq_axis)
    if opts.smooth_vel > 0 or opts.smooth_acc > 0:
        # fill frames that could not be solved from their neighbours before smoothing
        q = jnp.where(ok[:, None], q, q_start[None, :])
        q, it_s, _ = _smooth_stage(tree, opts, prob, q, ok)
        it = it + it_s
        H = x = None  # q moved: the report evaluates FK and the Jacobian anew
    else:
        q = jnp.where(ok[:, None], q, jnp.nan)
        x = jnp.where(ok[:, None, None], x, jnp.nan)
    return _report(tree, prob, q, status, it, H, x)


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
    NaN where missing; ``coord_tasks`` = (coord_index (K,), weight (K,), target (K,) or
    (T, K)) over the full coordinate vector (target per frame, e.g. from a coordinate file)."""
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
        ci, cw, ct = (np.asarray(a, np.float64 if k else None) for k, a in enumerate(coord_tasks))
    K = len(ci)
    if ct.shape not in ((K,), (T, K)):
        raise InputError(
            f"coordinate-task targets must have shape ({K},) or ({T}, {K}), got {ct.shape}",
            field="coord_tasks",
        )
    ct = np.broadcast_to(ct, (T, K))
    ct = np.concatenate([ct, np.broadcast_to(ct[-1:], (L - T, K))], 0)  # padding: last row
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
    # float32 IK is not validated. The FK bugs that made it wrong are fixed (float64 leaks with
    # x64 on; XLA CPU YNN fusions summing wrongly in float32: tests/test_fk_float32.py), but
    # the stopping tolerances (tol_step, tol_marker) are float64-sized and untested in float32
    if tree.dtype != jnp.float64:
        raise InputError(
            f"IK needs a float64 tree (got {tree.dtype}): enable it with "
            "jax.config.update('jax_enable_x64', True) before loading the model; float32 IK "
            "is not validated yet"
        )


def _resolve(options: IKOptions) -> IKOptions:
    c = options.chunk
    if c < 1 or c & (c - 1):
        raise InputError(f"chunk must be a power of two >= 1, got {c}", field="chunk")
    if options.banded not in ("auto", "thomas", "cyclic"):
        raise InputError(
            f"banded must be auto, thomas or cyclic, got {options.banded!r}", field="banded"
        )
    if options.lanes < 0:
        raise InputError(f"lanes must be >= 0, got {options.lanes}", field="lanes")
    for name in ("round_iters",):
        if getattr(options, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(options, name)}", field=name)
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
    JAX's persistent compilation cache, compilation too (used by the CLI).
    ``coord_tasks``: one (index, weight, target) tuple for every sequence, or a list with one
    tuple per sequence (same index and weight; e.g. per-frame targets from coordinate files)."""
    if not sequences:
        return []
    _check_dtype(tree)
    options = _resolve(options)
    L = bucket_length(max(int(np.shape(s)[0]) for s in sequences), options.chunk)
    tasks = coord_tasks if isinstance(coord_tasks, list) else [coord_tasks] * len(sequences)
    if len(tasks) != len(sequences):
        raise InputError(
            f"{len(tasks)} coordinate-task tuples for {len(sequences)} sequences",
            field="coord_tasks",
        )
    probs = [
        make_problem(tree, s, marker_weight, t, length=L, as_numpy=True)
        for s, t in zip(sequences, tasks, strict=True)
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
    return _map_sequences(lambda p, ax: _solve_one(tree, p, opts, ax), probs)


CPU_SEQUENCE_GROUP = 8  # sequences vmapped together on CPU (the rest in a sequential map)


def _map_sequences(f, probs):
    """``f(prob, axis_name)`` over the leading (sequence) axis: vmapped (axis name "seq") on
    accelerators; on CPU in vmapped groups of CPU_SEQUENCE_GROUP (a ``lax.map`` over groups,
    the remainder vmapped apart), since every group's rounds run until its slowest sequence
    is done (500-frame noisy trials, 2 cores: 1532 frames/s in a batch of 8, 738 in a batch
    of 32 as one vmap)."""
    one = jax.vmap(lambda p: f(p, _SEQ), axis_name=_SEQ)
    n = jax.tree_util.tree_leaves(probs)[0].shape[0]
    G = CPU_SEQUENCE_GROUP
    if n == 1:  # one sequence: no vmap (as solve_ik; a vmap of one cost ~20% here)
        out = f(jax.tree_util.tree_map(lambda a: a[0], probs), None)
        return jax.tree_util.tree_map(lambda a: a[None], out)
    if jax.default_backend() != "cpu" or n <= G:
        return one(probs)
    full = n // G * G
    groups = jax.tree_util.tree_map(lambda a: a[:full].reshape((n // G, G) + a.shape[1:]), probs)
    out = jax.tree_util.tree_map(
        lambda a: a.reshape((full,) + a.shape[2:]), jax.lax.map(one, groups)
    )
    if full == n:
        return out
    rest = one(jax.tree_util.tree_map(lambda a: a[full:], probs))
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, rest)


_SEQ = "seq"


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
            return tuple(_map_sequences(lambda p, ax: _solve_one(t, p, opts, ax), IKProblem(*pl)))

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
