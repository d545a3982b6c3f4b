"""One Levenberg-Marquardt kernel with bound constraints, shared by every IK stage.

The robust start, the per-frame stage, the smoothing stage and :func:`~simspine_jax.ik.ik_layer`
all iterate :func:`lm_iterate`; they differ only in their :class:`LMOps` (how a point is
evaluated and how the damped normal equations are solved: dense per frame, block-banded over a
sequence). State is a pytree (:class:`LMState`); tolerances are traced values.

Bounds by an active set. At a point q with gradient g = J'r (descent is -g), a coordinate on its
lower limit with g > 0, or on its upper limit with g < 0, is *blocked*: the step would leave the
box there. Blocked coordinates are frozen (their rows and columns of the normal matrix replaced
by the identity, their gradient by 0) and the damped step is solved on the free ones; a free
coordinate that crosses a limit during the step is clipped onto it, and the active set is
recomputed at every point. So a solution may sit exactly on a limit (OpenSim's interior-point
optimiser stays slightly inside).

Stop tests, all on points actually reached (an accepted step, or a start's own evaluation):

* stationary: the decrease the Gauss-Newton model still promises on the free coordinates,
  g_F' (H_FF + ridge)^-1 g_F (a projected-gradient measure in the metric of the normal
  matrix; the ridge follows the residual: "Weakly observed directions" below), is at most
  ``tol_cost`` x cost;
* fitted: the cost is at most ``fit_cost`` (a weighted RMS marker error of ``tol_marker``);
* stalled (reported apart): a rejected step with the damping past ``MU_MAX``.

Weakly observed directions. At a point with weighted RMS marker residual rho (cost / sum of
weights), a direction of curvature c (relative to the largest, C) has an uncertainty of about
rho / sqrt(c C): forearm pronation seen from a wrist marker, arm rotation from elbow and wrist
are such directions, and on noisy data their per-frame minimum is wherever the noise puts it.
Two terms follow the residual: the stationarity test's ridge is rho^2 / (THETA_RIDGE^2 C)
(directions more uncertain than 0.1 rad or m are not chased), the damping floor rho^2 /
(THETA_FLOOR^2 C) (directions more uncertain than 1 rad or m stay near their warm start, their
solved neighbours' value, as OpenSim's sequential IK leaves them near the previous frame's),
each clipped to [exact-data value, value at marker noise]. On exact data both vanish and the
solver converges to the exact fit. Measured on a 5 mm, 300-frame SimSpine37 trial (uniform
weights) against OpenSim 4.6, fixed ridge 1e-10 and floor 1e-12 gave 95.7 % of frames within
2 % of OpenSim's cost, worst frame 2.45x, 23.6 iterations per frame, pronation jumping across
its range between frames; ridge 1e-4 and floor 1e-6 gave 100 %, worst 1.016x, 12.7
iterations, but left noise-free frames 0.16 deg off the truth (hence the scaling).

The damping mu is relative to the largest curvature; the gain ratio rho = actual / predicted
decrease of the step actually taken (after clipping) updates it: rho > 3/4 cuts it tenfold,
rho < 1/4 doubles it, a rejection multiplies it by nu, which starts at 4 and doubles with each
further rejection in a row (Nielsen's rule: a run of rejections after the damping had fallen to
its floor took ten evaluations to climb back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

MU_MAX = 1e10  # past this, a rejected step means no progress is possible: stalled
MU_MIN = 1e-12  # damping floor (relative) on exact data; see "Weakly observed directions"
MU_FLOOR_MAX = 1e-6  # the floor's ceiling, at marker noise
THETA_FLOOR = 1.0  # rad or m: an uncertainty above this keeps a direction near its start
NU_START = 4.0  # damping factor of a first rejection; doubles on each further one (Nielsen)
PROMISE_RIDGE = 1e-10  # relative ridge of the stationarity test's solve on exact data
PROMISE_RIDGE_MAX = 1e-4  # the ridge at marker noise
THETA_RIDGE = 0.1  # rad or m: a direction this uncertain is not chased by the stop test


class LMState(NamedTuple):
    """State of one LM problem (vmapped over frames, or one whole sequence)."""

    q: jax.Array  # point reached, shape of the unknowns
    cost: jax.Array  # () cost at q
    H: Any  # Gauss-Newton matrix at q (a pytree: dense (n, n) or banded blocks)
    g: jax.Array  # J'r at q, shape of q
    aux: Any  # whatever the evaluation returns besides (e.g. model markers)
    mu: jax.Array  # () relative damping
    it: jax.Array  # () iterations done (a start's own evaluation is not one)
    done: jax.Array  # () stopped: converged, stalled, or not to be solved
    fresh: jax.Array  # () q is a start not evaluated yet
    stalled: jax.Array  # () stopped by the damping ceiling, not by a stop test
    radius: jax.Array  # () largest step per coordinate (rad or m) the next trial may take
    nu: jax.Array  # () factor on the damping at the next rejection (doubles while rejecting)


class LMOps(NamedTuple):
    """The problem-specific parts of the kernel (static callables).

    evaluate(q) -> (cost, H, g, aux): one FK + Jacobian pass.
    solve(H, g, mu, free) -> d: the damped step on the free coordinates (0 elsewhere).
    matvec(H, d) -> H d.
    """

    evaluate: Callable
    solve: Callable
    matvec: Callable


def free_set(q, g, lo, hi):
    """Coordinates a descent step may move: all but those on a limit with -g pointing out."""
    return ~(((q <= lo) & (g > 0)) | ((q >= hi) & (g < 0)))


def lm_start(q0, *, H0=None, aux0=None, mu=1e-3, skip=False, radius=jnp.inf):
    """A problem about to start at ``q0`` (its first :func:`lm_iterate` evaluates ``q0``).

    ``H0``/``aux0`` give the shapes of the matrix and auxiliary outputs (zeros are used)."""
    dt = q0.dtype
    return LMState(
        q=q0,
        cost=jnp.zeros((), dt),
        H=jax.tree_util.tree_map(jnp.zeros_like, H0),
        g=jnp.zeros_like(q0),
        aux=jax.tree_util.tree_map(jnp.zeros_like, aux0),
        mu=jnp.asarray(mu, dt),
        it=jnp.asarray(0, jnp.int32),
        done=jnp.asarray(skip),
        fresh=jnp.asarray(True),
        stalled=jnp.asarray(False),
        radius=jnp.asarray(radius, dt),
        nu=jnp.asarray(NU_START, dt),
    )


def promise(ops: LMOps, H, g, free, ridge=PROMISE_RIDGE):
    """The decrease the Gauss-Newton model (relative ridge ``ridge``) promises on the free set."""
    d = ops.solve(H, g, jnp.asarray(ridge, g.dtype), free)
    return -jnp.vdot(g, d)


def noise_scaled(cost, H, weight_sum, theta, low, high):
    """(rho^2 / C) / theta^2 clipped to [low, high]: rho^2 = cost / weight_sum, C the largest
    curvature (diagonal of H). ``low`` where ``weight_sum`` is None (no residual scale known)."""
    if weight_sum is None:
        return jnp.asarray(low, cost.dtype)
    cmax = jnp.max(jnp.diagonal(H, axis1=-2, axis2=-1))
    rel = cost / (jnp.maximum(weight_sum, 1e-300) * theta**2 * jnp.maximum(cmax, 1e-300))
    return jnp.clip(rel, low, high)


RADIUS_SOLVES = 3  # damping increases tried to bring a step inside the radius


def _radius_step(ops: LMOps, s: LMState, free):
    """The damped step, with the damping raised until no coordinate moves more than the step
    radius (the trust-region form of LM): a larger damping shortens the weakly curved
    directions most and leaves well-observed ones near the Gauss-Newton step. A coordinate
    whose curvature is far below the damping moves as g / damping, so raising the damping by
    the overshoot max|d| / radius brings it inside; after RADIUS_SOLVES such raises a step
    still outside is scaled onto the radius. Returns the step, the damping used, and whether
    the radius bound it."""

    def outside(c):
        d, _, k = c
        return (k < RADIUS_SOLVES) & (jnp.max(jnp.abs(d)) > s.radius)

    def raise_damping(c):
        d, mu, k = c
        mu = mu * jnp.max(jnp.abs(d)) / s.radius
        return ops.solve(s.H, s.g, mu, free), mu, k + 1

    # a while_loop: under vmap its body runs only while some lane's step is outside the
    # radius (a fori_loop of conds ran all RADIUS_SOLVES solves on every lane: vmap turns a
    # cond into a select of both branches)
    d0 = ops.solve(s.H, s.g, s.mu, free)
    d, mu, _ = jax.lax.while_loop(outside, raise_damping, (d0, s.mu, jnp.asarray(0, jnp.int32)))
    big = jnp.max(jnp.abs(d))
    d = d * jnp.minimum(1.0, s.radius / jnp.maximum(big, 1e-300))
    return d, mu, jnp.max(jnp.abs(d0)) > s.radius


ONTO_LIMIT_PASSES = 3  # re-solves after fixing coordinates that a step carried past a limit


def _onto_limits(ops: LMOps, s: LMState, d, free, mu, lo, hi):
    """A step that carries free coordinates past their limits: those are fixed on the limit
    and the others solved again given that move, H_FF d_F = -(g_F + H_FC d_C), so the step is
    the damped Gauss-Newton step of the new active set rather than a clipped one (clipping
    alone made the smoothing stage, where thousands of coordinates meet limits one by one,
    converge 3x slower). The re-solved step can carry further coordinates past theirs: up to
    ONTO_LIMIT_PASSES passes, each fixing the new ones (one pass left the smoothing stage
    crawling with coordinates leaving and re-hitting limits on alternate iterations); what is
    still outside after that is clipped. The step radius still bounds the result."""

    def outside(d, fixed):
        return free & ~fixed & ((s.q + d < lo) | (s.q + d > hi))

    def cond(c):
        d, fixed, k = c
        return (k < ONTO_LIMIT_PASSES) & jnp.any(outside(d, fixed))

    def body(c):
        d, fixed, k = c
        fixed = fixed | outside(d, fixed)
        d_fix = jnp.where(fixed, jnp.clip(s.q + d, lo, hi) - s.q, 0.0)
        g2 = s.g + ops.matvec(s.H, d_fix)
        d2 = ops.solve(s.H, g2, mu, free & ~fixed) + d_fix
        big = jnp.max(jnp.abs(d2))
        return d2 * jnp.minimum(1.0, s.radius / jnp.maximum(big, 1e-300)), fixed, k + 1

    return jax.lax.while_loop(cond, body, (d, jnp.zeros_like(free), jnp.asarray(0, jnp.int32)))[0]


def lm_iterate(ops: LMOps, s: LMState, lo, hi, tol_cost, fit_cost, weight_sum=None) -> LMState:
    """One evaluation: a fresh start evaluates its point; otherwise a damped step on the free
    coordinates is tried and accepted if it lowers the cost. Stop tests as in the module doc."""
    free = free_set(s.q, s.g, lo, hi)
    d, mu_used, capped = _radius_step(ops, s, free)
    d = _onto_limits(ops, s, d, free, mu_used, lo, hi)
    q_try = jnp.where(s.fresh, s.q, jnp.clip(s.q + d, lo, hi))
    c_new, H_new, g_new, aux_new = ops.evaluate(q_try)
    accept = s.fresh | ((c_new < s.cost) & jnp.isfinite(c_new))
    dc = q_try - s.q
    # the model decrease of the step taken
    pred = -(2.0 * jnp.vdot(s.g, dc) + jnp.vdot(dc, ops.matvec(s.H, dc)))
    rho = (s.cost - c_new) / jnp.maximum(pred, 1e-300)
    shrink = jnp.where(pred > 0, jnp.where(rho > 0.75, 0.1, jnp.where(rho > 0.25, 1.0, 2.0)), 1.0)
    nu = jnp.where(accept, NU_START, 2.0 * s.nu)
    nu = jnp.where(s.fresh, s.nu, nu)
    # the step radius (max-norm) doubles after a capped step the model predicted well
    grow = accept & capped & (rho > 0.75) & (pred > 0)
    radius = jnp.where(grow, 2.0 * s.radius, s.radius)
    # a rejected step: the next one moves no coordinate more than half as far
    big = jnp.max(jnp.abs(dc))
    radius = jnp.where(accept | (big <= 0), radius, jnp.minimum(radius, 0.5 * big))
    radius = jnp.where(s.fresh, s.radius, radius)

    def pick(a, b):
        return jax.tree_util.tree_map(lambda x, y: jnp.where(accept, x, y), a, b)

    q, cost, H, g, aux = pick((q_try, c_new, H_new, g_new, aux_new), (s.q, s.cost, s.H, s.g, s.aux))
    floor = noise_scaled(cost, H, weight_sum, THETA_FLOOR, MU_MIN, MU_FLOOR_MAX)
    mu = jnp.where(accept, jnp.maximum(mu_used * shrink, floor), mu_used * s.nu)
    mu = jnp.where(s.fresh, s.mu, mu)
    ridge = noise_scaled(cost, H, weight_sum, THETA_RIDGE, PROMISE_RIDGE, PROMISE_RIDGE_MAX)
    left = promise(ops, H, g, free_set(q, g, lo, hi), ridge)
    stationary = left <= tol_cost * cost
    converged = accept & (stationary | (cost <= fit_cost))
    stalled = ~accept & (mu > MU_MAX)
    return LMState(
        q=q,
        cost=cost,
        H=H,
        g=g,
        aux=aux,
        mu=mu,
        it=s.it + jnp.where(s.fresh, 0, 1).astype(jnp.int32),
        done=s.done | converged | stalled,
        fresh=jnp.zeros_like(s.fresh),
        stalled=s.stalled | stalled,
        radius=radius,
        nu=nu,
    )


def lm_while(
    ops, s, lo, hi, tol_cost, fit_cost, max_iters: int, cap: int, weight_sum=None
) -> LMState:
    """At most ``cap`` evaluations (and ``max_iters`` iterations in all): a ``while_loop``."""

    def cond(c):
        s, k = c
        return (~s.done) & (s.it < max_iters) & (k < cap)

    def body(c):
        s, k = c
        return lm_iterate(ops, s, lo, hi, tol_cost, fit_cost, weight_sum), k + 1

    return jax.lax.while_loop(cond, body, (s, jnp.asarray(0, jnp.int32)))[0]


def lm_scan(ops, s, lo, hi, tol_cost, fit_cost, n: int, weight_sum=None) -> LMState:
    """Exactly ``n`` evaluations (a ``scan``: fixed cost, e.g. under vmap or for unrolled
    differentiation); a stopped problem is left as it is."""

    def step(s, _):
        new = lm_iterate(ops, s, lo, hi, tol_cost, fit_cost, weight_sum)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(s.done, a, b), s, new), None

    return jax.lax.scan(step, s, None, length=n)[0]


# ----------------------------------------------------------------------------- dense ops
def dense_solve(H, g, mu, free):
    """(H_FF + mu max(diag H_FF) I) d_F = -g_F, d = 0 off the free set F (Cholesky; a failed
    factorisation gives NaN, a step the accept test rejects). Shapes: H (n, n), g (n,)."""
    f = free.astype(H.dtype)
    dH = jnp.diagonal(H) * f
    lam = mu * (jnp.max(dH) + 1e-300)
    A = H * (f[:, None] * f[None, :]) + jnp.diag(1.0 - f + lam * f)
    c = jax.scipy.linalg.cho_factor(A)
    return -jax.scipy.linalg.cho_solve(c, g * f) * f


def dense_matvec(H, d):
    return H @ d


def dense_ops(evaluate: Callable) -> LMOps:
    """Ops of a dense problem whose ``evaluate(q)`` returns (r, J, aux)."""

    def ev(q):
        r, J, aux = evaluate(q)
        return r @ r, J.T @ J, J.T @ r, aux

    return LMOps(evaluate=ev, solve=dense_solve, matvec=dense_matvec)
