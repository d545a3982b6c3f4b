"""The smoothing stage: LM on a whole sequence (or window) with the smoothness penalties
lambda_v |D1 q|^2 + lambda_a |D2 q|^2, through the shared kernel (:mod:`.lm`).

The normal matrix is block-pentadiagonal in time (n x n blocks: each frame's J'J on the
diagonal, the penalties' scalar bands coupling each coordinate with itself at t +- 1, 2).
Pairing frames makes it block tridiagonal with 2n x 2n blocks, solved exactly by a
block-Cholesky (Thomas) ``lax.scan`` or by block cyclic reduction (``_banded``); no dense
(T n) x (T n) matrix is formed. Bounds by the kernel's active set: a blocked coordinate of a
frame has its row, column and couplings replaced by the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._banded import banded_solve
from .lm import LMOps, lm_start, lm_while
from .problem import (
    CONVERGED,
    MAX_ITERS,
    IKOptions,
    IKParams,
    IKProblem,
    bounds,
    frame_inputs,
    residual_and_markers,
)
from .problem import frame_terms as _frame_terms


def bands(valid, lam_v, lam_a, dtype):
    """Bands of L = lam_v D1'D1 + lam_a D2'D2 restricted to valid frames (lambdas traced).

    diag[t] = L[t,t]; off1[t] = L[t,t+1]; off2[t] = L[t,t+2] (0 past the end). Shapes: (T,).
    """
    v = valid.astype(dtype)
    T = v.shape[0]
    diag = jnp.zeros(T, dtype)
    off1 = jnp.zeros(T, dtype)
    off2 = jnp.zeros(T, dtype)
    if T > 1:
        r = lam_v * v[:-1] * v[1:]  # rows (t, t+1)
        diag = diag.at[:-1].add(r).at[1:].add(r)
        off1 = off1.at[:-1].add(-r)
    if T > 2:
        a = lam_a * v[:-2] * v[1:-1] * v[2:]  # rows (t-1, t, t+1), t = 1..T-2
        diag = diag.at[:-2].add(a).at[1:-1].add(4 * a).at[2:].add(a)
        off1 = off1.at[:-2].add(-2 * a).at[1:-1].add(-2 * a)
        off2 = off2.at[:-2].add(a)
    return diag, off1, off2


def band_matvec(diag, off1, off2, q):
    """(L kron I) q for q (T, n)."""
    out = diag[:, None] * q
    out = out.at[:-1].add(off1[:-1, None] * q[1:]).at[1:].add(off1[:-1, None] * q[:-1])
    out = out.at[:-2].add(off2[:-2, None] * q[2:]).at[2:].add(off2[:-2, None] * q[:-2])
    return out


def _shift(a, k):
    """a[t + k] (zeros past the end). Shape: a's."""
    return jnp.concatenate([a[k:], jnp.zeros_like(a[:k])], 0)


def banded_ops(tree, prob: IKProblem, z, w, cw, band, pad, method: str) -> LMOps:
    """Kernel ops of the whole-sequence problem. H: per-frame J'J blocks (T, n, n)."""
    diag, off1, off2 = band
    ci, ct = prob.coord_index, prob.coord_target
    terms = jax.vmap(lambda q, z, w, cw, ct: _frame_terms(tree, q, z, w, ci, cw, ct))

    def evaluate(q):
        x, _, r, J = terms(q, z, w, cw, ct)  # (T, R), (T, R, n)
        Lq = band_matvec(diag, off1, off2, q)
        cost = jnp.sum(r**2) + jnp.sum(q * Lq)
        H = jnp.einsum("tri,trj->tij", J, J)
        g = jnp.einsum("tri,tr->ti", J, r) + Lq
        return cost, H, g, x

    def solve(H, g, mu, free):
        T, n = g.shape
        f = free.astype(g.dtype)
        eye = jnp.eye(n, dtype=g.dtype)
        A = H + (diag + pad)[:, None, None] * eye
        dA = jnp.diagonal(A, axis1=1, axis2=2)
        A = A * (f[:, :, None] * f[:, None, :])
        A = A + (mu * (dA + 1e-9) * f + (1.0 - f))[:, :, None] * eye  # Marquardt; frozen: I
        c1 = off1[:, None] * f * _shift(f, 1)  # couplings of (t, t+1), per coordinate
        c2 = off2[:, None] * f * _shift(f, 2)  # (t, t+2)
        P = T // 2
        A2 = A.reshape(P, 2, n, n)
        c1p, c2p = c1.reshape(P, 2, n), c2.reshape(P, 2, n)
        Bd = jnp.zeros((P, 2 * n, 2 * n), g.dtype)
        Bd = Bd.at[:, :n, :n].set(A2[:, 0]).at[:, n:, n:].set(A2[:, 1])
        Bd = (
            Bd.at[:, :n, n:]
            .set(c1p[:, 0, :, None] * eye)
            .at[:, n:, :n]
            .set(c1p[:, 0, :, None] * eye)
        )
        Cu = jnp.zeros((P, 2 * n, 2 * n), g.dtype)  # rows (2k, 2k+1), cols (2k+2, 2k+3)
        Cu = Cu.at[:, :n, :n].set(c2p[:, 0, :, None] * eye)  # (2k, 2k+2)
        Cu = Cu.at[:, n:, :n].set(c1p[:, 1, :, None] * eye)  # (2k+1, 2k+2)
        Cu = Cu.at[:, n:, n:].set(c2p[:, 1, :, None] * eye)  # (2k+1, 2k+3)
        Al = jnp.concatenate([jnp.zeros_like(Cu[:1]), jnp.swapaxes(Cu[:-1], 1, 2)], 0)
        rhs = (g * f).reshape(P, 2 * n)
        d = -banded_solve(Al, Bd, Cu, rhs, method=method).reshape(T, n)
        return jnp.where(prob.frame_valid[:, None], d * f, 0.0)

    def matvec(H, d):
        return jnp.einsum("tij,tj->ti", H, d) + band_matvec(diag, off1, off2, d)

    return LMOps(evaluate=evaluate, solve=solve, matvec=matvec)


def smooth_stage(
    tree,
    opts: IKOptions,
    params: IKParams,
    prob: IKProblem,
    q_init,
    ok,
):
    """LM on the whole sequence from ``q_init`` (T, n). Frames not ``ok`` (too few markers)
    are filled by the smoothness prior. Returns q, iterations, status (CONVERGED or MAX_ITERS,
    a scalar), J'J blocks (T, n, n) incl. coordinate-task rows, and model markers (T, M, 3)."""
    lo, hi = bounds(tree)
    z, w, _ = frame_inputs(prob.markers, prob.marker_weight[None, :])
    w = jnp.where(ok[:, None], w, 0.0)  # frames without enough markers: smoothness only
    cw = jnp.where(ok[:, None], prob.coord_weight[None, :], 0.0)
    band = bands(prob.frame_valid, params.smooth_vel, params.smooth_acc, q_init.dtype)
    pad = (~prob.frame_valid).astype(q_init.dtype)  # padding frames: pinned by an identity
    ops = banded_ops(tree, prob, z, w, cw, band, pad, opts.banded)
    T, n = q_init.shape
    s = lm_start(
        jnp.clip(q_init, lo, hi),
        H0=jnp.zeros((T, n, n), q_init.dtype),
        aux0=jnp.zeros(prob.markers.shape, q_init.dtype),
        mu=params.mu_init,
    )
    cap = opts.max_iters_smooth
    s = lm_while(ops, s, lo, hi, params.tol_cost, 0.0, cap, cap + 1)
    status = jnp.where(s.done & ~s.stalled, CONVERGED, MAX_ITERS)
    return s.q, s.it, status, s.H, s.aux


CONTINUITY_CUTS = (0.5, 0.25)  # fractions of a step kept in turn while its cost is over the guard
CONTINUITY_MIN_RMS = 1e-4  # m: below this median residual the continuity pass is skipped
CONTINUITY_NEWTON = 3  # Newton steps on each frame's nu per sweep (see band_step)


def continuity_stage(tree, opts: IKOptions, params: IKParams, prob: IKProblem, q_pf, ok, pf=None):
    """The continuity pass at lambda = 0 (see ``IKOptions.continuity``): from the per-frame
    minima ``q_pf`` (T, n; gaps filled), ``max_iters_continuity`` red-black sweeps in which
    each frame moves toward its neighbours as far as its Gauss-Newton model lets its cost stay
    within ``continuity_guard`` of its per-frame minimum's (:func:`_continuity_sweeps`): the
    jump between frames is reduced in the directions the markers leave free, within a stated
    cost. Each step is checked on the actual cost and cut where the model erred, so every
    frame stays within the bound; a frame found over it after the sweeps (a safety net: by
    construction none is, but for rounding) returns to its minimum. Skipped on data the
    per-frame minima fit (median weighted RMS residual < 0.1 mm: noise-free markers).

    ``pf``: the per-frame stage's (cost (T,), J'J (T, n, n), model markers (T, M, 3)) at
    ``q_pf`` where the caller has them (else one FK + Jacobian pass computes them). Returns
    what :func:`smooth_stage` returns (status CONVERGED: a fixed number of sweeps; iterations:
    the sweeps, one FK + Jacobian pass per frame each). Model markers are those of the
    result; J'J (for the report's sensitivities) is evaluated at the sweeps' result, and for a
    frame returned to its minimum it is the minimum's own."""
    z, w, _ = frame_inputs(prob.markers, prob.marker_weight[None, :])
    w = jnp.where(ok[:, None], w, 0.0)
    ci, cw, ct = prob.coord_index, prob.coord_weight, prob.coord_target
    used = prob.marker_weight > 0
    wbar = jnp.sum(prob.marker_weight) / jnp.maximum(jnp.sum(used), 1)
    terms = jax.vmap(lambda q, z, w, ct: _frame_terms(tree, q, z, w, ci, cw, ct))

    def terms_at(q):
        x, _, r, J = terms(q, z, w, ct)
        return jnp.sum(r**2, axis=1), jnp.einsum("tri,trj->tij", J, J), x

    c_min, H_pf, x_pf = terms_at(q_pf) if pf is None else pf
    c_min = jnp.where(ok, c_min, 0.0)
    # data the per-frame minima fit (median weighted RMS residual below CONTINUITY_MIN_RMS):
    # their minima are determined and continuous already; the pass is skipped
    rms = jnp.sqrt(c_min / jnp.maximum(jnp.sum(w, axis=1), 1e-300))
    fitted = jnp.nanmedian(jnp.where(ok, rms, jnp.nan)) < CONTINUITY_MIN_RMS
    skip = fitted | ~jnp.any(ok)
    limit = (1.0 + params.continuity_guard) * c_min

    def run():
        q_c = _continuity_sweeps(
            tree, prob, q_pf, ok, z, w, limit, params.continuity * wbar, opts.max_iters_continuity
        )
        c, H, x = terms_at(q_c)
        back = c > limit
        q = jnp.where(back[:, None], q_pf, q_c)
        H = jnp.where(back[:, None, None], H_pf, H)
        x = jnp.where(back[:, None, None], x_pf, x)
        return q, H, x

    q, H, x = jax.lax.cond(skip, lambda: (q_pf, H_pf, x_pf), run)
    it = jnp.where(skip, 0, opts.max_iters_continuity)
    return q, it, jnp.asarray(CONVERGED, jnp.int32), H, x


def band_step(H, g, c, e, limit, nu_max):
    """The step d toward q + e that the Gauss-Newton model of one frame (cost c, gradient
    J'r = g, J'J = H) allows within ``limit``: d = -(H + nu)^-1 (g - nu e), nu the largest
    (at most ``nu_max``) whose model cost c + 2 g'd + d'Hd is at most ``limit``; where even
    the model's minimum is over it, that minimum (nu ~ 0).

    Written as d = d_min + nu y, d_min = -H^-1 g the model's minimum, y = (H + nu)^-1 u,
    u = e - d_min: the model's cost over its minimum is psi^2 = nu^2 y'Hy, which rises with
    nu; nu solves psi(nu)^2 = limit - cost(d_min) by Newton steps on 1/psi in t = 1/nu (linear
    in t for one curvature, concave for several, so iterates from the large-nu side stay
    there: the model's cost of the step slightly over the limit, never far below it). Each
    evaluation factors H + nu once; the factorisations run one after another (independent
    batched LAPACK calls in one program deadlocked jaxlib 0.10's CPU runtime on 2 cores).
    Evaluations: 0 the model's minimum (nu = 1e-14 x the largest curvature), 1 nu_max, then
    ``CONTINUITY_NEWTON`` Newton steps; once nu_max is inside, nu stays there. Against the
    exact nu (bisected on an eigendecomposition) on the frames of a 5 mm trial, the step is
    within 2.5 % of the exact one and its model cost at most 1.09x the room; with one or two
    Newton steps 3.1x and 1.35x (tests/test_ik_continuity.py). An eigendecomposition per
    frame gave the same paths (median jumps within 0.2-0.9 deg) at ~1.3x the sweeps' time."""
    tiny = jnp.finfo(H.dtype).tiny
    eye = jnp.eye(H.shape[0], dtype=H.dtype)
    top = jnp.maximum(jnp.max(jnp.diagonal(H)), tiny)
    H = H + (1e-12 * top) * eye
    nu_hi = jnp.clip(nu_max, 1e-14 * top, 1e8 * top)
    t_max = 1e14 / top
    cho_factor, cho_solve = jax.scipy.linalg.cho_factor, jax.scipy.linalg.cho_solve

    def evaluate(i, carry):
        d_min, room, t, move, done = carry
        nu = 1.0 / t
        C = cho_factor(H + nu * eye)
        first = i == 0
        x = cho_solve(C, jnp.where(first, g, e - d_min))
        d_min = jnp.where(first, -x, d_min)
        room = jnp.where(first, limit - (c - g @ x), room)
        Hx = H @ x
        p2 = nu * nu * (x @ Hx)  # psi^2
        dp2 = 2.0 * nu * (Hx @ cho_solve(C, Hx))  # d(psi^2)/d(nu)
        psi = jnp.sqrt(jnp.maximum(p2, tiny))
        h = 1.0 / psi - 1.0 / jnp.sqrt(jnp.maximum(room, tiny))
        dh_dt = 0.5 * nu * nu * dp2 / (psi * p2 + tiny)
        t_new = jnp.clip(t - h / jnp.maximum(dh_dt, tiny), 1.0 / nu_hi, t_max)
        done = done | ((i == 1) & (p2 <= room))
        t_next = jnp.where(first, 1.0 / nu_hi, jnp.where(done, t, t_new))
        move = jnp.where(first, move, nu * x)  # the step's move from the model's minimum
        return d_min, room, t_next, move, done

    zero = jnp.zeros_like(g)
    carry = (zero, c, t_max, zero, jnp.asarray(False))
    d_min, room, _, move, _ = jax.lax.fori_loop(0, 2 + CONTINUITY_NEWTON, evaluate, carry)
    # the last evaluated nu's move (the last Newton update is not evaluated)
    return d_min + jnp.where(room > 0, move, 0.0)


def _pull_target(q, okf, idx):
    """Where the continuity pass pulls frames ``idx``: the mean of the two neighbours where
    both are valid; beside a gap or a trial end, the straight line through the two valid
    frames on the other side (2 q_(t-1) - q_(t-2)), or the one neighbour where the next is
    missing too. (Pulling an end frame to its one neighbour biases it toward standing still:
    a 2-DOF trial of 1 mm noise moved its last frame 0.12 deg from OpenSim's answer.)
    Returns (targets (len(idx), n), number of valid neighbours (len(idx),))."""
    T = q.shape[0]

    def at(j):
        inside = (j >= 0) & (j < T)
        jj = jnp.clip(j, 0, T - 1)
        return q[jj], jnp.where(inside, okf[jj], 0.0)

    (ql, hl), (qr, hr) = at(idx - 1), at(idx + 1)
    (ql2, hl2), (qr2, hr2) = at(idx - 2), at(idx + 2)
    left = jnp.where((hl2 > 0)[:, None], 2.0 * ql - ql2, ql)
    right = jnp.where((hr2 > 0)[:, None], 2.0 * qr - qr2, qr)
    both = (hl > 0) & (hr > 0)
    one = jnp.where((hl > 0)[:, None], left, right)
    return jnp.where(both[:, None], 0.5 * (ql + qr), one), hl + hr


def _continuity_sweeps(tree, prob: IKProblem, q, ok, z, w, limit, nu_max, n_sweeps: int):
    """Red-black Gauss-Seidel sweeps (even frames, then odd ones given the updated even ones)
    of one band-constrained step per frame (:func:`band_step`). With its neighbours held,
    frame t takes the Gauss-Newton step of its cost plus nu |q_t - qbar|^2 (qbar its
    neighbours' mean, or beside a gap or an end the line through two frames on the other
    side: :func:`_pull_target`), nu the largest (at most ``nu_max`` x its number of valid
    neighbours) whose model cost is within ``limit[t]``. A weakly observed coordinate moves to
    the target (its curvature is small against nu), a well-observed one stays (moving it
    would spend the bound); where even the model's minimum is over the bound, the step goes
    to that minimum. A step whose actual cost is over the bound (the model's error) is cut
    to half, then a quarter; one still over is kept only if it lowers the cost. Per sweep one
    FK + Jacobian pass, one FK pass (more where a cut is needed) and a few n x n Cholesky
    factorisations per frame. Shapes: q (T, n); limit (T,)."""
    lo, hi = bounds(tree)
    T, n = q.shape
    ci, cw, ct = prob.coord_index, prob.coord_weight, prob.coord_target

    def step(q, z, w, ct, target, k, lim):
        _, _, r, J = _frame_terms(tree, q, z, w, ci, cw, ct)
        c = r @ r
        d = band_step(J.T @ J, J.T @ r, c, target - q, lim, nu_max * k)
        return jnp.clip(q + d, lo, hi), c

    def cost(q, z, w, ct):
        r = jax.vmap(lambda q, z, w, ct: residual_and_markers(tree, q, z, w, ci, cw, ct)[0])
        return jnp.sum(r(q, z, w, ct) ** 2, axis=1)

    okf = ok.astype(q.dtype)
    assert T % 2 == 0, T  # padded lengths are multiples of 2 * chunk
    half = 2 * jnp.arange(T // 2)

    def half_sweep(k, q):
        # frames of parity k % 2, given the others (one traced body for both halves: the
        # FK + Jacobian pass is the bulk of the compiled program)
        idx = k % 2 + half
        qi, zi, wi, cti, lim = q[idx], z[idx], w[idx], ct[idx], limit[idx]
        target, nb = _pull_target(q, okf, idx)
        qn, c0 = jax.vmap(step)(qi, zi, wi, cti, target, nb, lim)
        # the model's error: a step whose actual cost is over the bound is cut to half, then
        # a quarter (evaluated only when some frame is over: one FK pass each); one still
        # over is kept only if it lowers the cost (a frame starting over its bound)
        cn = cost(qn, zi, wi, cti)
        for f in CONTINUITY_CUTS:

            def cut(qn, cn, f=f):
                over = cn > lim
                qa = jnp.where(over[:, None], qi + f * (qn - qi), qn)
                return qa, jnp.where(over, cost(qa, zi, wi, cti), cn)

            qn, cn = jax.lax.cond(jnp.any(cn > lim), cut, lambda qn, cn: (qn, cn), qn, cn)
        upd = ok[idx] & (nb > 0) & ((cn <= lim) | (cn < c0))
        return q.at[idx].set(jnp.where(upd[:, None], qn, q[idx]))

    return jax.lax.fori_loop(0, 2 * n_sweeps, half_sweep, q)
