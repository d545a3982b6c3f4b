"""Forward kinematics: coordinates -> body transforms and marker positions, in pure JAX.

Kernels are written for one frame and ``vmap``-ped over any leading batch axes. All local joint
transforms are computed in one batched call, then composed level by level over the tree depth
(one gather + one scatter per level); there is no Python loop over frames or bodies.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .model import KinematicTree


class FKResult(NamedTuple):
    """Shapes: R_world (*batch, n_body, 3, 3), p_world (*batch, n_body, 3),
    markers (*batch, n_marker, 3). Body 0 is ground."""

    R_world: jax.Array
    p_world: jax.Array
    markers: jax.Array


# ----------------------------------------------------------------------------- functions
def eval_functions(tree: KinematicTree, fidx: np.ndarray, X: jax.Array) -> jax.Array:
    """Evaluate transform functions ``fidx`` (static) at ``X``. Shape: (len(fidx),).

    SimmSpline rule: cubic inside [x0, x_last], linear with the end slope outside; pure
    polynomials use their single segment everywhere.
    """
    topo = tree.topology
    x = tree.func_x[fidx]  # (F, K)
    n = topo.func_nknot[fidx]
    poly = topo.func_poly[fidx]
    k = jnp.sum(x <= X[:, None], axis=1) - 1
    k = jnp.clip(k, 0, jnp.asarray(n - 1))
    rows = jnp.arange(len(fidx))
    xk = x[rows, k]
    x0 = x[:, 0]
    xl = x[rows, jnp.asarray(n - 1)]
    inside = ((X >= x0) & (X <= xl)) | jnp.asarray(poly)
    dx = X - xk
    b = tree.func_b[fidx][rows, k]
    c = jnp.where(inside, tree.func_c[fidx][rows, k], 0.0)
    d = jnp.where(inside, tree.func_d[fidx][rows, k], 0.0)
    y = tree.func_y[fidx][rows, k]
    return y + dx * (b + dx * (c + dx * d))


# ----------------------------------------------------------------------------- coordinates
def _full_one(tree: KinematicTree, q_indep: jax.Array) -> jax.Array:
    topo = tree.topology
    q = tree.coord_default.astype(q_indep.dtype).at[topo.indep_coord].set(q_indep)
    if len(topo.dep_coord):
        xin = q[topo.func_input[topo.dep_func]]
        q = q.at[topo.dep_coord].set(eval_functions(tree, topo.dep_func, xin))
    return q


def _check_last(q: jax.Array, n: int, what: str) -> None:
    if q.ndim < 1 or q.shape[-1] != n:
        raise InputError(f"expected {what} with last axis {n}, got shape {tuple(q.shape)}")


def full_coordinates(tree: KinematicTree, q_indep: jax.Array) -> jax.Array:
    """Independent -> full OpenSim coordinate vector (couplers applied, locked at default).

    Shape: (*batch, n_indep) -> (*batch, n_coord).
    """
    q_indep = jnp.asarray(q_indep)
    _check_last(q_indep, tree.n_indep, "independent coordinates")
    f = _full_one
    for _ in range(q_indep.ndim - 1):
        f = jax.vmap(f, in_axes=(None, 0))
    return f(tree, q_indep)


def independent_coordinates(tree: KinematicTree, q_full: jax.Array) -> jax.Array:
    """Full -> independent coordinates (a gather). Shape: (*batch, n_coord) -> (*batch, n_indep)."""
    q_full = jnp.asarray(q_full)
    _check_last(q_full, tree.n_coord, "full coordinates")
    return q_full[..., tree.topology.indep_coord]


# ----------------------------------------------------------------------------- rotations
def axis_angle_matrix(axis: jax.Array, angle: jax.Array) -> jax.Array:
    """Rodrigues rotation about unit ``axis``. Shape: (*, 3), (*,) -> (*, 3, 3)."""
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    s, c = jnp.sin(angle), jnp.cos(angle)
    t = 1.0 - c
    return jnp.stack(
        [
            jnp.stack([t * x * x + c, t * x * y - s * z, t * x * z + s * y], -1),
            jnp.stack([t * x * y + s * z, t * y * y + c, t * y * z - s * x], -1),
            jnp.stack([t * x * z - s * y, t * y * z + s * x, t * z * z + c], -1),
        ],
        -2,
    )


# ----------------------------------------------------------------------------- FK kernels
def local_transforms(tree: KinematicTree, q_full: jax.Array):
    """Transforms parent body -> child body for all bodies (body 0, ground, gets identity).

    Shape: (n_coord,) -> R (n_body, 3, 3), p (n_body, 3).
    """
    topo = tree.topology
    n_body = tree.n_body
    fidx = topo.axis_func.reshape(-1)
    inp = topo.func_input[fidx]
    X = jnp.where(jnp.asarray(inp >= 0), q_full[np.maximum(inp, 0)], 0.0)
    v = eval_functions(tree, fidx, X).reshape(n_body, 6)
    ax = tree.joint_axes
    R_fm = (
        axis_angle_matrix(ax[:, 0], v[:, 0])
        @ axis_angle_matrix(ax[:, 1], v[:, 1])
        @ axis_angle_matrix(ax[:, 2], v[:, 2])
    )
    p_fm = jnp.einsum("bk,bki->bi", v[:, 3:6], ax[:, 3:6])
    # X_parent_child = X_parent_F * X_F_M(q) * X_M_child
    R_pm = tree.joint_R_pf @ R_fm
    p_pm = tree.joint_p_pf + jnp.einsum("bij,bj->bi", tree.joint_R_pf, p_fm)
    R = R_pm @ tree.joint_R_cm
    p = p_pm + jnp.einsum("bij,bj->bi", R_pm, tree.joint_p_cm)
    assert R.shape == (n_body, 3, 3) and p.shape == (n_body, 3)
    return R, p


def _compose(tree: KinematicTree, R_loc: jax.Array, p_loc: jax.Array):
    """World transforms by composing level by level. Shape: (n_body, 3, 3), (n_body, 3)."""
    R_w, p_w = R_loc, p_loc  # ground (index 0) keeps its identity local transform
    for idx, par in tree.topology.levels:
        Rp, pp = R_w[par], p_w[par]
        R_w = R_w.at[idx].set(Rp @ R_loc[idx])
        p_w = p_w.at[idx].set(pp + jnp.einsum("bij,bj->bi", Rp, p_loc[idx]))
    return R_w, p_w


def _fk_one(tree: KinematicTree, q_full: jax.Array) -> FKResult:
    R_loc, p_loc = local_transforms(tree, q_full)
    R_w, p_w = _compose(tree, R_loc, p_loc)
    mb = tree.topology.marker_body
    markers = p_w[mb] + jnp.einsum("mij,mj->mi", R_w[mb], tree.marker_offset)
    return FKResult(R_w, p_w, markers)


def _fk_batched(tree: KinematicTree, q: jax.Array, full: bool) -> FKResult:
    batch = q.shape[:-1]
    flat = q.reshape((-1, q.shape[-1]))
    if not full:
        flat = jax.vmap(_full_one, in_axes=(None, 0))(tree, flat)
    out = jax.vmap(_fk_one, in_axes=(None, 0))(tree, flat)
    return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), out)


@partial(jax.jit, static_argnames=("full",))
def _fk_jit(tree, q, full):
    return _fk_batched(tree, q, full)


def forward_kinematics(tree: KinematicTree, q, *, full: bool = False) -> FKResult:
    """Body transforms and marker positions for coordinates ``q``.

    ``q`` holds independent coordinates (``full=False``, couplers applied, locked coordinates at
    their defaults) or the full OpenSim coordinate vector in OpenSim's order (``full=True``,
    used as given). Radians and metres. Any leading batch axes.
    Shape: (*batch, n_indep | n_coord) -> FKResult with leading (*batch,).
    """
    q = jnp.asarray(q, dtype=tree.dtype)
    _check_last(q, tree.n_coord if full else tree.n_indep, "full" if full else "independent")
    return _fk_jit(tree, q, full)


def marker_positions(tree: KinematicTree, q, *, full: bool = False) -> jax.Array:
    """Marker positions only (traceable, for use inside jit/grad). Shape: (*batch, n_marker, 3)."""
    q = jnp.asarray(q)
    return _fk_batched(tree, q, full).markers
