"""Per-frame IK as a differentiable layer (implicit function theorem)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..model import KinematicTree
from .lm import lm_scan, lm_start
from .per_frame import frame_ops
from .problem import bounds, residual


def ik_layer(
    tree: KinematicTree,
    markers: jax.Array,
    q_init: jax.Array,
    marker_weight: jax.Array | None = None,
    iterations: int = 8,
    tol_cost: float = 0.0,
) -> jax.Array:
    """Per-frame IK (lambda = 0) as a differentiable layer: markers -> coordinates.

    Runs at most ``iterations`` evaluations of the shared LM kernel (bounds by its active set,
    stop test ``tol_cost``, default 0: every evaluation is used, since the implicit gradient is
    only as exact as the optimum) per frame from ``q_init`` (e.g. the :func:`solve_ik` solution, or
    the previous training step's) and differentiates the result by the implicit function
    theorem at the optimum (``jax.lax.custom_root``): d q*/d z = -H^-1 d(grad_q C)/dz with H the
    exact Hessian of the frame cost. Gradients flow to ``markers`` (and to the tree's geometry
    leaves); no iteration is unrolled, so memory does not grow with ``iterations``. Unobserved
    coordinates get a 1e-9 ridge in the tangent solve. At a solution on a limit the implicit
    gradient is that of the unconstrained optimum (a known limitation).
    Shapes: markers (*batch, M, 3) (finite), q_init (*batch, n_indep) -> (*batch, n_indep).
    """
    w = jnp.ones(markers.shape[-2], markers.dtype) if marker_weight is None else marker_weight
    ci = jnp.zeros(0, jnp.int32)
    e = jnp.zeros(0, markers.dtype)
    n = q_init.shape[-1]
    eye = jnp.eye(n, dtype=markers.dtype)
    lo, hi = bounds(tree)

    def one(z, q0):
        def grad_cost(q):
            return jax.grad(lambda qq: jnp.sum(residual(tree, qq, z, w, ci, e, e) ** 2))(q)

        def solve(_, x0):
            s = lm_start(
                jnp.clip(x0, lo, hi),
                H0=jnp.zeros((n, n), x0.dtype),
                aux0=jnp.zeros(z.shape, x0.dtype),
                mu=1e-3,
            )
            ops = frame_ops(tree, z, w, ci, e, e)
            return lm_scan(ops, s, lo, hi, jnp.asarray(tol_cost, x0.dtype), 0.0, iterations + 1).q

        def tangent_solve(g, y):
            H = jax.jacfwd(g)(y)
            return jnp.linalg.solve(H + 1e-9 * jnp.max(jnp.abs(jnp.diag(H))) * eye, y)

        return jax.lax.custom_root(grad_cost, jax.lax.stop_gradient(q0), solve, tangent_solve)

    f = one
    for _ in range(markers.ndim - 2):
        f = jax.vmap(f)
    return f(markers, q_init)
