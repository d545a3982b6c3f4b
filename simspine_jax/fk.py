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
def eval_functions(
    tree: KinematicTree, fidx: np.ndarray, X: jax.Array, *, with_derivative: bool = False
):
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
    val = y + dx * (b + dx * (c + dx * d))
    if with_derivative:
        return val, b + dx * (2.0 * c + 3.0 * dx * d)
    return val


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
    q_indep = jnp.asarray(q_indep, tree.dtype)
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


# ----------------------------------------------------------------------------- small products
def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """3x3 @ 3x3 over leading axes, as multiply + reduce (no dot_general: for tiny matrices it
    is as fast on CPU, and nested vmaps of batched dots hit an XLA CPU layout bug)."""
    return _sum3(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _mv(a: jax.Array, v: jax.Array) -> jax.Array:
    """3x3 @ 3-vector over leading axes."""
    return _sum3(a * v[..., None, :], axis=-1)


def _sum3(x: jax.Array, axis: int) -> jax.Array:
    """Sum of a product over its length-3 ``axis``. Shape: ``x.shape`` without ``axis``.

    Below float64 the sum is written out as two adds, with no reduce: on CPU, jaxlib 0.10.2
    hands multiply + reduce_sum to YNNPACK fusions, and in float32 these return wrong values
    past about 32k output elements when an operand broadcast over the batch is added to the
    sum (FK was 0.6 m off from frame 352 of a 500-frame trial; tests/test_fk_float32.py).
    float64 keeps the reduce, so the validated float64 program is unchanged: its fusions agree
    with the written-out float32 path to float32 precision, and it was no faster written out.
    """
    if x.dtype == jnp.float64:
        return jnp.sum(x, axis=axis)
    assert x.shape[axis] == 3
    x0, x1, x2 = (jax.lax.index_in_dim(x, k, axis, keepdims=False) for k in range(3))
    return x0 + x1 + x2


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
def _joint_pieces(tree: KinematicTree, q_full: jax.Array, with_derivative: bool = False):
    """Axis values and rotations of every joint. Shapes: v (n_body, 6), R1..R3 (n_body, 3, 3)."""
    topo = tree.topology
    n_body = tree.n_body
    fidx = topo.axis_func.reshape(-1)
    inp = topo.func_input[fidx]
    X = jnp.where(jnp.asarray(inp >= 0), q_full[np.maximum(inp, 0)], 0.0)
    out = eval_functions(tree, fidx, X, with_derivative=with_derivative)
    v, dv = out if with_derivative else (out, None)
    v = v.reshape(n_body, 6)
    ax = tree.joint_axes
    R1 = axis_angle_matrix(ax[:, 0], v[:, 0])
    R2 = axis_angle_matrix(ax[:, 1], v[:, 1])
    R3 = axis_angle_matrix(ax[:, 2], v[:, 2])
    p_fm = _sum3(v[:, 3:6, None] * ax[:, 3:6], axis=1)
    return v, dv, R1, R2, R3, p_fm


def local_transforms(tree: KinematicTree, q_full: jax.Array):
    """Transforms parent body -> child body for all bodies (body 0, ground, gets identity).

    Shape: (n_coord,) -> R (n_body, 3, 3), p (n_body, 3).
    """
    _, _, R1, R2, R3, p_fm = _joint_pieces(tree, q_full)
    return _local_from_pieces(tree, R1, R2, R3, p_fm)


def body_local_transform(tree: KinematicTree, q_full: jax.Array, b: int):
    """Transform parent body -> body ``b`` (a static index) alone: its joint's pieces only.
    Shapes: (n_coord,) -> R (3, 3), p (3,)."""
    topo = tree.topology
    fidx = np.asarray(topo.axis_func)[b]
    inp = np.asarray(topo.func_input)[fidx]
    X = jnp.where(jnp.asarray(inp >= 0), q_full[np.maximum(inp, 0)], 0.0)
    v = eval_functions(tree, fidx, X)
    ax = tree.joint_axes[b]
    R_fm = axis_angle_matrix(ax[0], v[0]) @ axis_angle_matrix(ax[1], v[1])
    R_fm = R_fm @ axis_angle_matrix(ax[2], v[2])
    p_fm = jnp.sum(v[3:6, None] * ax[3:6], axis=0)
    R_pm = tree.joint_R_pf[b] @ R_fm
    p_pm = tree.joint_p_pf[b] + tree.joint_R_pf[b] @ p_fm
    return R_pm @ tree.joint_R_cm[b], p_pm + R_pm @ tree.joint_p_cm[b]


def _local_from_pieces(tree: KinematicTree, R1, R2, R3, p_fm):
    """X_parent_child = X_parent_F * X_F_M(q) * X_M_child. Shapes: (n_body, 3, 3), (n_body, 3)."""
    R_fm = _mm(_mm(R1, R2), R3)
    R_pm = _mm(tree.joint_R_pf, R_fm)
    p_pm = tree.joint_p_pf + _mv(tree.joint_R_pf, p_fm)
    R = _mm(R_pm, tree.joint_R_cm)
    p = p_pm + _mv(R_pm, tree.joint_p_cm)
    assert R.shape == (tree.n_body, 3, 3) and p.shape == (tree.n_body, 3)
    return R, p


def _compose(tree: KinematicTree, R_loc: jax.Array, p_loc: jax.Array):
    """World transforms by composing depth by depth. Shape: (n_body, 3, 3), (n_body, 3).

    Each depth's transforms are a new array computed from the previous depth's (gathers of
    static indices, fused into the products); the depths are concatenated and put in body
    order by one gather at the end. No scatter into a growing array per depth: on CPU an FK +
    Jacobian pass of SimSpine (12 depths) went from 49 to 43 us per frame (8 frames a call)."""
    plan, order = tree.topology.level_plan
    R_d, p_d = R_loc[:1], p_loc[:1]  # ground (index 0) keeps its identity local transform
    Rs, ps = [R_d], [p_d]
    for idx, pos in plan:
        Rp, pp = R_d[pos], p_d[pos]
        R_d = _mm(Rp, R_loc[idx])
        p_d = pp + _mv(Rp, p_loc[idx])
        Rs.append(R_d)
        ps.append(p_d)
    return jnp.concatenate(Rs)[order], jnp.concatenate(ps)[order]


def _fk_one(tree: KinematicTree, q_full: jax.Array) -> FKResult:
    R_loc, p_loc = local_transforms(tree, q_full)
    R_w, p_w = _compose(tree, R_loc, p_loc)
    mb = tree.topology.marker_body
    markers = p_w[mb] + _mv(R_w[mb], tree.marker_offset)
    return FKResult(R_w, p_w, markers)


def marker_jacobian_one(tree: KinematicTree, q_indep: jax.Array):
    """Marker positions and their analytic (geometric) Jacobian for one frame.

    For a rotation axis k of joint b, d x_m / d v = omega_k x (x_m - o_M) with omega_k the
    axis in world (after the preceding body-fixed rotations) and o_M the joint's child-frame
    origin; for a translation axis it is the axis in world. Chain rule through the transform
    functions (f') and the coupler map G = d q_full / d q_indep.
    Shape: (n_indep,) -> markers (M, 3), J (M, 3, n_indep), q_full (n_coord,), G (n_coord, n_indep).
    """
    topo = tree.topology
    q_full, G = _full_and_map(tree, jnp.asarray(q_indep, tree.dtype))
    v, dv, R1, R2, R3, p_fm = _joint_pieces(tree, q_full, with_derivative=True)
    R_w, p_w = _compose(tree, *_local_from_pieces(tree, R1, R2, R3, p_fm))
    par = np.maximum(topo.body_parent, 0)
    R_GF = _mm(R_w[par], tree.joint_R_pf)  # (n_body, 3, 3)
    o_F = p_w[par] + _mv(R_w[par], tree.joint_p_pf)
    ax = tree.joint_axes
    w0 = _mv(R_GF, ax[:, 0])
    w1 = _mv(_mm(R_GF, R1), ax[:, 1])
    w2 = _mv(_mm(_mm(R_GF, R1), R2), ax[:, 2])
    tr = _sum3(R_GF[:, None, :, :] * ax[:, 3:6, None, :], axis=-1)  # (n_body, 3, 3)
    o_M = o_F + _mv(R_GF, p_fm)
    mb = topo.marker_body
    x = p_w[mb] + _mv(R_w[mb], tree.marker_offset)  # (M, 3)
    # only (marker, axis) pairs where a coordinate-driven axis moves the marker are nonzero
    # (about a quarter for SimSpine): compute those entries alone, then sum them into their
    # (marker, independent coordinate) slot with one sorted segment sum; a coupled axis adds
    # into its source's column times the coupler slope G[row_coord, row_col]
    ent = topo.jacobian_entries
    act = topo.active_axes
    axis_dir = jnp.concatenate([jnp.stack([w0, w1, w2], axis=1), tr], axis=1)  # (n_body, 6, 3)
    d = axis_dir.reshape(-1, 3)[act]  # (R, 3) world direction of each driven axis
    fac = G[ent["row_coord"], ent["row_col"]] * ent["row_has_col"] * dv[act]  # (R,)
    de = d[ent["ent_row"]]
    lever = x[ent["ent_marker"]] - o_M[ent["ent_body"]]  # (E, 3)
    Je = jnp.where(ent["ent_rot"][:, None], jnp.cross(de, lever), de) * fac[ent["ent_row"], None]
    n_m, n_i = x.shape[0], tree.n_indep
    J = jax.ops.segment_sum(Je, ent["dst"], num_segments=n_m * n_i, indices_are_sorted=True)
    J = jnp.moveaxis(J.reshape(n_m, n_i, 3), 1, 2)
    return x, J, q_full, G


def _full_and_map(tree: KinematicTree, q_indep: jax.Array):
    """q_full and G = d q_full / d q_indep. Shapes: (n_coord,), (n_coord, n_indep)."""
    topo = tree.topology
    n_i = tree.n_indep
    q = tree.coord_default.astype(q_indep.dtype).at[topo.indep_coord].set(q_indep)
    G = jnp.zeros((tree.n_coord, n_i), q_indep.dtype)
    G = G.at[topo.indep_coord, np.arange(n_i)].set(1.0)
    if len(topo.dep_coord):
        src = topo.func_input[topo.dep_func]
        val, der = eval_functions(tree, topo.dep_func, q[src], with_derivative=True)
        q = q.at[topo.dep_coord].set(val)
        G = G.at[topo.dep_coord].set(der[:, None] * G[src])
    return q, G


FK_BLOCK = 1024  # frames per block for large batches (keeps the per-level updates in cache)


def _fk_batched(tree: KinematicTree, q: jax.Array, full: bool) -> FKResult:
    batch = q.shape[:-1]
    flat = q.reshape((-1, q.shape[-1]))
    n = flat.shape[0]

    def block(x):
        if not full:
            x = jax.vmap(_full_one, in_axes=(None, 0))(tree, x)
        return jax.vmap(_fk_one, in_axes=(None, 0))(tree, x)

    if n > 4 * FK_BLOCK:
        # many frames: a sequential map over blocks is 2-2.5x faster than one huge vmap,
        # whose level-by-level scatters rewrite batch-sized arrays (measured, bench_fk.py)
        nb = -(-n // FK_BLOCK)
        padded = jnp.concatenate([flat, jnp.zeros((nb * FK_BLOCK - n, flat.shape[1]), flat.dtype)])
        out = jax.lax.map(block, padded.reshape(nb, FK_BLOCK, -1))
        out = jax.tree_util.tree_map(lambda a: a.reshape((nb * FK_BLOCK,) + a.shape[2:])[:n], out)
    else:
        out = block(flat)
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
    q = jnp.asarray(q, tree.dtype)
    return _fk_batched(tree, q, full).markers
