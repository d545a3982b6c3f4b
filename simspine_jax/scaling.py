"""Subject scaling: OpenSim ScaleTool's measurement-based scaling, marker placement, and a
joint fit of segment scales and pose through the differentiable FK.

What OpenSim 4.6 does (opensim-core ``ModelScaler``, ``Measurement``, ``Model::scale`` and each
component's ``extendScale``; ``MarkerPlacer``), and what this module does the same way:

* **Factors** (:func:`measurement_scale_factors`): every body starts at (1, 1, 1); the steps of
  ``scaling_order`` run in turn. ``measurements``: each applied measurement's factor is the mean
  over its marker pairs of experimental / model distance. The model distance is taken at the
  model's default pose (coordinates at their default values, coupled ones from their
  couplers), with the current model markers; the experimental distance is the per-frame
  distance averaged over the frames of ``time_range`` (from the last frame at or before its
  start to the first frame at or after its end, OpenSim's ``MarkerData::findFrameRange``). A
  pair whose marker is missing from the model or the trial, or is NaN in a frame of the range,
  makes the measurement NaN: it is skipped with a warning, as OpenSim does (a setup without
  ``time_range``, which OpenSim refuses, averages the whole trial here). The factor is
  written to the listed axes of each body of the measurement (a later measurement overwrites
  an earlier one). ``manualScale``: the applied ``Scale`` entries overwrite their body's three
  factors.
* **What is scaled** (:func:`scale_tree`, :func:`write_scaled_osim`), with the factors of the
  body a thing is attached to: the translation of every PhysicalOffsetFrame (joint parent and
  child frames, frames on bodies), element-wise in the axes of the frame it is offset from;
  marker locations; the ``scale_factors`` of attached geometry (the tree's ``body_scale``
  leaf); body mass centres (the .osim only); the translational TransformAxis functions of
  CustomJoints by ``|axis| . s_parent`` (s_parent: factors of the body the joint's parent
  frame is on) except a ``LinearFunction`` with coefficients (1, 0), which is a coordinate;
  CoordinateCouplerConstraints whose dependent coordinate is translational (``scale_factor`` by
  the parent body's X factor; OpenSim refuses non-uniform factors there, so do we).
  Unchanged, as in OpenSim: coordinate ranges and defaults (translational ones too), rotation
  axes, joint orientations, coupler functions of rotational coordinates.
  Not done (no effect on kinematics): body masses and inertias (``mass``,
  ``preserve_mass_distribution``), muscle and ligament paths, path points, wrap objects, which
  OpenSim also scales; the written .osim keeps them as in the generic model.
  The tree is exact where frames and markers sit on a body or on an offset frame that is not
  rotated, or factors are uniform per body (Pose2Sim's and the SimSpine models); elsewhere
  OpenSim scales an offset in its parent frame's axes, which the flat tree no longer knows.
  The .osim writer follows OpenSim in every case; export the written .osim for exactness.
* **Marker placement** (:func:`place_markers`, when the setup's MarkerPlacer applies): model
  markers the static trial lacks are deleted; the trial is averaged over the placer's time range
  (NaN samples skipped); IK of that one frame with the placer's IKTaskSet
  (a local Levenberg-Marquardt from the default pose, as OpenSim's assembler starts from it,
  with the weights and coordinate tasks of :mod:`simspine_jax.ik_setup`'s rules); each
  marker whose ``fixed`` is false is moved onto its averaged experimental position in its
  body's frame. As in OpenSim, the model's default pose is not changed. OpenSim's assembler
  stops within its tolerance of the start (a static trial already close to the default pose
  leaves the pose unchanged there); this solve runs to the least-squares optimum, so placed
  markers can differ by that tolerance. ``max_marker_movement`` (OpenSim only warns) is not
  checked.
* **Optimisation** (:func:`fit_scales`): log scale factors of segment groups (by default one
  per measurement: its bodies and axes) and the pose of every frame fitted jointly to a static
  or dynamic trial by Levenberg-Marquardt through :func:`scale_tree` and the FK, with a penalty
  ``reg * |log s|^2`` toward 1.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError, ModelError, SimSpineWarning
from .fk import forward_kinematics, full_coordinates
from .io.scale_setup import Measurement, ScaleSetup
from .model import KinematicTree


class ScalingWarning(SimSpineWarning):
    """A measurement or marker that OpenSim's ScaleTool skips, skipped here too."""


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True, eq=False)
class ScalePlan:
    """Where each body's factors go in a tree (numpy index arrays; static).

    ``parent``: (n_body,) parent of each body, ground (0) for ground itself; ``trans_func``
    (R,) functions of CustomJoint translation axes that scale (not a bare coordinate), with the
    body their joint's parent frame is on (``trans_body``) and ``|axis|`` (``trans_axis``,
    (R, 3)); ``coupler_func`` (C,) coupler functions of translational dependent coordinates and
    ``coupler_body`` their joint's parent body.
    """

    parent: np.ndarray
    trans_func: np.ndarray
    trans_body: np.ndarray
    trans_axis: np.ndarray
    coupler_func: np.ndarray
    coupler_body: np.ndarray

    def _key(self) -> tuple:
        return tuple(
            (a.dtype.str, a.shape, a.tobytes())
            for a in (self.parent, self.trans_func, self.trans_body, self.trans_axis,
                      self.coupler_func, self.coupler_body)
        )  # fmt: skip

    # by content: a static jit argument, so an equal plan (same model) reuses the program
    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        return isinstance(other, ScalePlan) and self._key() == other._key()


def _is_coordinate(tree: KinematicTree, f: int) -> bool:
    """True where function ``f`` is OpenSim's LinearFunction (1, 0) of a coordinate."""
    t = tree.topology
    return bool(
        t.func_input[f] >= 0
        and t.func_nknot[f] == 1
        and not t.func_poly[f]
        and float(tree.func_x[f, 0]) == 0.0
        and float(tree.func_y[f, 0]) == 0.0
        and float(tree.func_b[f, 0]) == 1.0
        and float(tree.func_c[f, 0]) == 0.0
        and float(tree.func_d[f, 0]) == 0.0
    )


def scale_plan(tree: KinematicTree) -> ScalePlan:
    """The static part of :func:`scale_tree` for ``tree`` (needs concrete function values).

    A ``MultiplierFunction`` of scale 1 around LinearFunction (1, 0), which OpenSim would scale,
    reads as a bare coordinate here (the tree no longer knows it was wrapped)."""
    topo = tree.topology
    parent = np.maximum(topo.body_parent, 0)
    bidx = {b: i for i, b in enumerate(tree.body_names)}
    custom = {bidx[j["child"]] for j in tree.meta["joints"] if j["type"] == "CustomJoint"}
    axes = np.asarray(tree.joint_axes, np.float64)
    tf, tb, ta = [], [], []
    for b in sorted(custom):
        for k in range(3, 6):
            f = int(topo.axis_func[b, k])
            if _is_coordinate(tree, f):
                continue
            tf.append(f)
            tb.append(parent[b])
            ta.append(np.abs(axes[b, k]))
    cf, cb = [], []
    coords = tree.meta["coordinates"]
    joint_child = {j["name"]: bidx[j["child"]] for j in tree.meta["joints"]}
    for d, f in zip(topo.dep_coord, topo.dep_func, strict=True):
        c = coords[int(d)]
        if c["motion_type"] == "translational":
            cf.append(int(f))
            cb.append(parent[joint_child[c["joint"]]])
    return ScalePlan(
        parent=parent,
        trans_func=np.asarray(tf, np.int64),
        trans_body=np.asarray(tb, np.int64),
        trans_axis=np.asarray(ta, np.float64).reshape(-1, 3),
        coupler_func=np.asarray(cf, np.int64),
        coupler_body=np.asarray(cb, np.int64),
    )


def factors_array(tree: KinematicTree, factors: Mapping[str, Sequence[float]]) -> np.ndarray:
    """``{body: (sx, sy, sz)}`` as an (n_body, 3) array in the tree's body order (1 elsewhere).

    Unknown bodies and non-positive factors raise :class:`InputError`."""
    out = np.ones((tree.n_body, 3))
    bidx = {b: i for i, b in enumerate(tree.body_names)}
    for b, f in factors.items():
        if b not in bidx or b == "ground":
            raise InputError(f"body '{b}' is not in the model", field=b)
        v = np.broadcast_to(np.asarray(f, np.float64), (3,))
        if not np.all(np.isfinite(v) & (v > 0)):
            raise InputError(f"scale factors must be positive numbers, got {v.tolist()}", field=b)
        out[bidx[b]] = v
    return out


def scale_tree(tree: KinematicTree, factors, plan: ScalePlan | None = None) -> KinematicTree:
    """The tree scaled by per-body factors as OpenSim's ``Model::scale`` scales it.

    ``factors``: (n_body, 3) array in ``tree.body_names`` order (row 0, ground, is ignored) or
    a ``{body: (sx, sy, sz)}`` mapping. Differentiable in ``factors`` and the tree's leaves
    (pass a ``plan`` from :func:`scale_plan` when tracing). Shape: a tree like ``tree``.
    """
    if plan is None:
        plan = scale_plan(tree)
    if isinstance(factors, Mapping):
        factors = factors_array(tree, factors)
    s = jnp.asarray(factors, tree.dtype)
    assert s.shape == (tree.n_body, 3), s.shape
    s = s.at[0].set(1.0)
    s_par = s[plan.parent]  # (n_body, 3): factors of each joint's parent body
    p_pf = tree.joint_p_pf * s_par
    # child frame origin in the child body: p_c = -R_cm^T p_cm; scaled, then inverted back
    p_c = -jnp.einsum("bji,bj->bi", tree.joint_R_cm, tree.joint_p_cm)
    p_cm = -jnp.einsum("bij,bj->bi", tree.joint_R_cm, p_c * s)
    k = jnp.ones(tree.func_y.shape[0], tree.dtype)
    if plan.trans_func.size:
        k = k.at[plan.trans_func].set(
            jnp.sum(jnp.asarray(plan.trans_axis, tree.dtype) * s[plan.trans_body], -1)
        )
    if plan.coupler_func.size:
        k = k.at[plan.coupler_func].set(s[plan.coupler_body, 0])
    mb = tree.topology.marker_body
    leaves = dict(
        joint_p_pf=p_pf,
        joint_p_cm=p_cm,
        func_y=tree.func_y * k[:, None],
        func_b=tree.func_b * k[:, None],
        func_c=tree.func_c * k[:, None],
        func_d=tree.func_d * k[:, None],
        marker_offset=tree.marker_offset * s[mb],
        body_scale=tree.body_scale * s,
    )
    return _replace(tree, **leaves)


def _replace(tree: KinematicTree, **leaves) -> KinematicTree:
    from .model import _LEAF_ARRAYS

    return KinematicTree(tree.topology, *(leaves.get(k, getattr(tree, k)) for k in _LEAF_ARRAYS))


def _check_couplers(tree: KinematicTree, plan: ScalePlan, s: np.ndarray) -> None:
    for b in plan.coupler_body:
        if not (s[b, 0] == s[b, 1] == s[b, 2]):
            raise ModelError(
                f"body '{tree.body_names[b]}' carries a translational coupled coordinate and "
                f"has non-uniform factors {s[b].tolist()}; OpenSim does not scale couplers "
                "non-uniformly either",
                field=tree.body_names[b],
            )


# ----------------------------------------------------------------------------- measurements
def default_pose_markers(tree: KinematicTree) -> np.ndarray:
    """Model marker positions at the default pose (independent coordinates at their default,
    coupled ones from their couplers, as OpenSim's ``initSystem`` assembles them). Shape:
    (n_marker, 3)."""
    q = jnp.asarray(tree.coord_default)[jnp.asarray(tree.topology.indep_coord)]
    return np.asarray(forward_kinematics(tree, q).markers, np.float64)


def frame_range(times: np.ndarray, t0: float, t1: float) -> slice:
    """OpenSim's ``MarkerData::findFrameRange``: from the last frame at or before ``t0`` (else
    the first) to the first frame from there at or after ``t1`` (else the last), inclusive."""
    times = np.asarray(times, np.float64)
    n = times.size
    if t0 > t1:
        raise InputError(f"time range start {t0} is after its end {t1}", field="time_range")
    before = np.nonzero(times <= t0)[0]
    start = int(before[-1]) if before.size else 0
    after = np.nonzero(times[start:] >= t1)[0]
    end = start + int(after[0]) if after.size else n - 1
    return slice(start, end + 1)


@dataclass(frozen=True)
class MeasurementResult:
    """One measurement: its factor (NaN if skipped) and per pair (model, experimental) metres."""

    name: str
    factor: float
    pairs: tuple[tuple[str, str, float, float], ...]
    note: str = ""


def measurement_factor(
    measurement: Measurement,
    model_markers: Mapping[str, np.ndarray],
    trial_names: Sequence[str],
    trial_positions: np.ndarray,
) -> MeasurementResult:
    """One measurement's factor as ``ModelScaler::computeMeasurementScaleFactor`` computes it.

    ``model_markers``: name -> position at the default pose; ``trial_positions`` (T, M, 3)
    metres over the frames of the time range, in ``trial_names`` order."""
    tidx = {n: i for i, n in enumerate(trial_names)}
    pairs = []
    if not measurement.marker_pairs:
        return MeasurementResult(measurement.name, math.nan, (), "no marker pairs")
    total = 0.0
    for a, b in measurement.marker_pairs:
        for n in (a, b):
            if n not in model_markers:
                return MeasurementResult(
                    measurement.name, math.nan, tuple(pairs), f"marker {n} not in the model"
                )
            if n not in tidx:
                return MeasurementResult(
                    measurement.name, math.nan, tuple(pairs), f"marker {n} not in the trial"
                )
        model_len = float(np.linalg.norm(model_markers[a] - model_markers[b]))
        d = trial_positions[:, tidx[a]] - trial_positions[:, tidx[b]]
        exp_len = float(np.mean(np.linalg.norm(d, axis=-1)))
        pairs.append((a, b, model_len, exp_len))
        if not (math.isfinite(exp_len) and model_len > 0):
            note = "NaN in the trial" if not math.isfinite(exp_len) else "model distance 0"
            return MeasurementResult(measurement.name, math.nan, tuple(pairs), note)
        total += exp_len / model_len
    return MeasurementResult(measurement.name, total / len(pairs), tuple(pairs))


@dataclass(frozen=True)
class ScaleFactors:
    """Per-body factors (``factors`` (n_body, 3), tree body order) and how they came about."""

    body_names: tuple[str, ...]
    factors: np.ndarray
    measurements: tuple[MeasurementResult, ...] = ()
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        pairs = zip(self.body_names, self.factors, strict=True)
        return {b: tuple(float(v) for v in f) for b, f in pairs}


def measurement_scale_factors(tree: KinematicTree, setup: ScaleSetup, trial) -> ScaleFactors:
    """Per-body factors from a ScaleTool setup and a static trial (a
    :class:`~simspine_jax.io.TRCData`), as OpenSim's ModelScaler computes them (module doc).

    Skipped measurements, and bodies a measurement or manual scale names that the model lacks
    (OpenSim ignores those too), give a :class:`ScalingWarning`."""
    s = np.ones((tree.n_body, 3))
    bidx = {b: i for i, b in enumerate(tree.body_names)}
    msgs: list[str] = []
    results: list[MeasurementResult] = []
    where = setup.path or "scale setup"
    if "measurements" in setup.scaling_order and any(m.apply for m in setup.measurements):
        t0, t1 = setup.time_range if setup.time_range is not None else (-math.inf, math.inf)
        rows = frame_range(trial.time, t0, t1)
        pos = np.asarray(trial.positions, np.float64)[rows]
        model = dict(zip(tree.marker_names, default_pose_markers(tree), strict=True))
    for step in setup.scaling_order:
        if step == "measurements":
            for m in setup.measurements:
                if not m.apply:
                    continue
                r = measurement_factor(m, model, trial.marker_names, pos)
                results.append(r)
                if not math.isfinite(r.factor):
                    msgs.append(f"{where}: measurement '{m.name}' not used ({r.note})")
                    continue
                for body, axes in m.bodies.items():
                    if body not in bidx:
                        msgs.append(f"{where}: measurement '{m.name}': no body '{body}'")
                        continue
                    s[bidx[body], list(axes)] = r.factor
        else:
            for ms in setup.manual_scales:
                if ms.segment not in bidx:
                    msgs.append(f"{where}: manual scale for unknown body '{ms.segment}'")
                    continue
                s[bidx[ms.segment]] = ms.scales
    for msg in msgs:
        warnings.warn(msg, ScalingWarning, stacklevel=2)
    return ScaleFactors(tree.body_names, s, tuple(results), tuple(msgs))


# ----------------------------------------------------------------------------- marker placement
def average_static(trial, time_range: tuple[float, float] | None) -> np.ndarray:
    """The trial averaged over ``time_range`` (clipped to the trial; NaN samples skipped, a
    marker missing throughout stays NaN), as the MarkerPlacer averages it. Shape: (M, 3)."""
    t = np.asarray(trial.time, np.float64)
    t0, t1 = time_range if time_range is not None else (t[0], t[-1])
    rows = frame_range(t, max(t0, t[0]), min(t1, t[-1]))
    pos = np.asarray(trial.positions, np.float64)[rows]
    ok = np.isfinite(pos)
    n = ok.sum(0)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.where(ok, pos, 0.0).sum(0) / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class Placement:
    """Marker placement: the tree with placed markers, the static pose ``q`` (independent
    coordinates), the markers moved and the static frame's RMS marker error (m) before and
    after moving them (weighted markers only)."""

    tree: KinematicTree
    q: np.ndarray
    moved: tuple[str, ...]
    deleted: tuple[str, ...]
    rms_before: float
    rms_after: float


def place_markers(
    tree: KinematicTree,
    setup: ScaleSetup,
    trial,
    fixed: Mapping[str, bool],
) -> Placement:
    """OpenSim's MarkerPlacer on ``tree`` (already scaled): see the module doc.

    ``fixed``: marker name -> its ``fixed`` flag (markers missing here count as not fixed,
    OpenSim's default)."""
    from .ik_setup import coordinate_task_arrays, marker_weight_vector

    placer = setup.placer
    names = set(trial.marker_names)
    keep = [i for i, n in enumerate(tree.marker_names) if n in names]
    deleted = tuple(n for n in tree.marker_names if n not in names)
    if not keep:
        raise InputError("no model marker is in the static trial", path=trial.path)
    bodies = [tree.meta["marker_bodies"][i] for i in keep]
    offsets = np.asarray(tree.marker_offset, np.float64)[keep]
    tree = tree.with_markers([tree.marker_names[i] for i in keep], bodies, offsets)
    avg = average_static(trial, placer.time_range)
    tidx = {n: i for i, n in enumerate(trial.marker_names)}
    z = avg[[tidx[n] for n in tree.marker_names]]
    t_first = float(trial.time[0])
    t_static = max(placer.time_range[0], t_first) if placer.time_range else t_first
    weight, _ = marker_weight_vector(placer.ik, tree, trial.marker_names, trc_path=trial.path)
    tasks = coordinate_task_arrays(placer.ik, tree, times=np.array([t_static]))
    # a local solve from the default pose, as OpenSim's assembler starts from it: a static
    # pose leaves directions unobserved (arm rotation with a straight elbow), where a global
    # IK may settle anywhere and the placed markers with it
    q = fit_scales(tree, z[None], (), marker_weight=weight, coord_tasks=tasks, iters=60).q[0]
    fk = forward_kinematics(tree, jnp.asarray(q))
    R, p = np.asarray(fk.R_world), np.asarray(fk.p_world)
    mb = tree.topology.marker_body
    moved = []
    for m, name in enumerate(tree.marker_names):
        if fixed.get(name, False) or not np.all(np.isfinite(z[m])):
            continue
        offsets[m] = R[mb[m]].T @ (z[m] - p[mb[m]])
        moved.append(name)
    placed = tree.with_markers(tree.marker_names, bodies, offsets)
    after = np.asarray(forward_kinematics(placed, jnp.asarray(q)).markers)

    def rms(x):
        e = np.where(np.isfinite(z), x - z, 0.0)
        w = weight * np.isfinite(z).all(-1)
        return float(np.sqrt(np.sum(w * np.sum(e**2, -1)) / max(np.sum(w), 1e-300)))

    return Placement(placed, q, tuple(moved), deleted, rms(np.asarray(fk.markers)), rms(after))


# ----------------------------------------------------------------------------- optimisation
@dataclass(frozen=True)
class ScaleGroup:
    """Bodies and axes that share one fitted factor."""

    name: str
    bodies: dict[str, tuple[int, ...]]


def groups_from_setup(setup: ScaleSetup) -> tuple[ScaleGroup, ...]:
    """One group per applied measurement (its bodies and axes). A body axis that several
    measurements list belongs to the last of them, whose factor OpenSim keeps; a measurement
    left without axes forms no group."""
    owner: dict[tuple[str, int], str] = {}
    applied = [m for m in setup.measurements if m.apply]
    for m in applied:
        for b, axes in m.bodies.items():
            owner.update({(b, k): m.name for k in axes})
    out = []
    for m in applied:
        bodies = {}
        for b, axes in m.bodies.items():
            mine = tuple(k for k in axes if owner[(b, k)] == m.name)
            if mine:
                bodies[b] = mine
        if bodies:
            out.append(ScaleGroup(m.name, bodies))
    return tuple(out)


@dataclass(frozen=True)
class FitResult:
    factors: np.ndarray  # (n_body, 3)
    group_factors: dict[str, float]
    q: np.ndarray  # (T, n_indep)
    rms: float  # weighted RMS marker error at the solution (m)
    iterations: int


@partial(jax.jit, static_argnames=("plan", "iters"))
def _lm_fit(tree, plan, G, base, x0, z, w, reg, lo, hi, clamp, c_idx, c_w, c_tgt, iters):
    """Levenberg-Marquardt on x = [u (n_group,), q (T * n_indep)]; fixed iteration count.

    Residuals: weighted marker errors, coordinate tasks ``sqrt(c_w) (q_full[c_idx] - c_tgt)``
    (c_tgt (T, K)), ``sqrt(reg) u``."""
    n_g = G.shape[0]
    T, M, _ = z.shape
    ok = jnp.isfinite(z)
    z0 = jnp.where(ok, z, 0.0)
    sw = jnp.sqrt(w)[None, :, None] * ok

    def resid(x):
        u, q = x[:n_g], x[n_g:].reshape(T, -1)
        s = base * jnp.exp(jnp.einsum("g,gbk->bk", u, G))
        t = scale_tree(tree, s, plan)
        mk = forward_kinematics(t, q).markers
        qc = full_coordinates(t, q)[:, c_idx]
        return jnp.concatenate(
            [
                (sw * (mk - z0)).reshape(-1),
                (jnp.sqrt(c_w) * (qc - c_tgt)).reshape(-1),
                jnp.sqrt(reg) * u,
            ]
        )

    def clip(x):
        q = x[n_g:].reshape(T, -1)
        q = jnp.where(clamp, jnp.clip(q, lo, hi), q)
        return jnp.concatenate([x[:n_g], q.reshape(-1)])

    def step(_, carry):
        x, mu, cost = carry
        r = resid(x)
        J = jax.jacfwd(resid)(x)
        A = J.T @ J
        g = J.T @ r
        # Levenberg damping relative to the largest curvature: directions the markers do not
        # observe (arm rotation with a straight elbow) get short steps and stay near the start
        # (Marquardt's diag(A) scaling sent them far: 1 rad of pronation on a static trial)
        dx = -jnp.linalg.solve(A + mu * jnp.max(jnp.diag(A)) * jnp.eye(A.shape[0]), g)
        xn = clip(x + dx)
        cn = jnp.sum(resid(xn) ** 2)
        better = cn < cost
        return (
            jnp.where(better, xn, x),
            jnp.where(better, mu * 0.3, mu * 10.0),
            jnp.where(better, cn, cost),
        )

    x0 = clip(x0)
    c0 = jnp.sum(resid(x0) ** 2)
    x, _, cost = jax.lax.fori_loop(0, iters, step, (x0, jnp.asarray(1e-3, x0.dtype), c0))
    return x, cost


def fit_scales(
    tree: KinematicTree,
    markers,
    groups: Sequence[ScaleGroup],
    *,
    marker_weight=None,
    base_factors=None,
    q_init=None,
    coord_tasks=None,
    reg: float = 1e-3,
    iters: int = 40,
) -> FitResult:
    """Fit one log-factor per group and the pose of each frame to ``markers`` (T, M, 3), metres,
    NaN = missing, in the tree's marker order.

    Minimises ``sum_t,m w_m |fk_m(scale(tree, s), q_t) - z_tm|^2 + reg * sum_g u_g^2`` with
    ``s = base_factors * exp(sum_g u_g [body, axis in group g])`` by Levenberg-Marquardt (a
    dense Jacobian over ``n_group + T * n_indep`` unknowns: meant for a static trial or a few
    frames of a dynamic one), started from ``q_init`` (T, n_indep; default: the default
    pose), so it finds the minimum nearest the start, as OpenSim's assembler does. Clamped
    coordinates stay within their ranges. ``coord_tasks``: ``(coord_index (K,), weight (K,),
    target (K,) or (T, K))`` over the full coordinates (as
    :func:`simspine_jax.ik_setup.coordinate_task_arrays` gives them) add
    ``weight (q - target)^2``. With no groups this is a local IK of every frame.
    """
    z = np.asarray(markers, np.float64)
    if z.ndim != 3 or z.shape[1:] != (tree.n_marker, 3):
        raise InputError(f"markers must have shape (T, {tree.n_marker}, 3), got {z.shape}")
    T = z.shape[0]
    bidx = {b: i for i, b in enumerate(tree.body_names)}
    G = np.zeros((len(groups), tree.n_body, 3))
    for g, grp in enumerate(groups):
        for b, axes in grp.bodies.items():
            if b in bidx and b != "ground":
                G[g, bidx[b], list(axes)] = 1.0
    if np.any(G.sum(0) > 1):
        b = tree.body_names[int(np.argwhere(G.sum(0) > 1)[0][0])]
        raise InputError(f"body '{b}' is in more than one scale group", field=b)
    base = np.ones((tree.n_body, 3)) if base_factors is None else np.asarray(base_factors)
    w = np.ones(tree.n_marker) if marker_weight is None else np.asarray(marker_weight, np.float64)
    indep = tree.topology.indep_coord
    if q_init is None:
        q_init = np.broadcast_to(np.asarray(tree.coord_default)[indep], (T, tree.n_indep))
    rng = np.asarray(tree.coord_range)[indep]
    clamp = np.asarray(tree.topology.coord_clamped)[indep]
    x0 = np.concatenate([np.zeros(len(groups)), np.asarray(q_init, np.float64).reshape(-1)])
    if coord_tasks is None:
        coord_tasks = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    c_idx, c_w, c_tgt = (np.asarray(a) for a in coord_tasks)
    c_tgt = np.broadcast_to(c_tgt, (T, c_idx.size))
    dt = tree.dtype
    x, cost = _lm_fit(
        tree,
        scale_plan(tree),
        jnp.asarray(G, dt),
        jnp.asarray(base, dt),
        jnp.asarray(x0, dt),
        jnp.asarray(z, dt),
        jnp.asarray(w, dt),
        jnp.asarray(reg, dt),
        jnp.asarray(rng[:, 0], dt),
        jnp.asarray(rng[:, 1], dt),
        jnp.asarray(clamp),
        jnp.asarray(c_idx, np.int64),
        jnp.asarray(c_w, dt),
        jnp.asarray(c_tgt, dt),
        iters,
    )
    x = np.asarray(x, np.float64)
    u = x[: len(groups)]
    s = base * np.exp(np.einsum("g,gbk->bk", u, G))
    q = x[len(groups) :].reshape(T, tree.n_indep)
    mk = np.asarray(forward_kinematics(scale_tree(tree, s), jnp.asarray(q, dt)).markers)
    ok = np.isfinite(z).all(-1)
    e2 = np.sum((np.where(ok[..., None], mk - z, 0.0)) ** 2, -1)
    n_obs = float(np.sum(w[None, :] * ok))
    rms = math.sqrt(float(np.sum(w[None, :] * e2)) / max(n_obs, 1e-300))
    return FitResult(
        factors=s,
        group_factors={grp.name: float(np.exp(u[g])) for g, grp in enumerate(groups)},
        q=q,
        rms=rms,
        iterations=iters,
    )


# ----------------------------------------------------------------------------- .osim writer
def marker_fixed_flags(osim: str | Path, markers: str | Path | None = None) -> dict[str, bool]:
    """Each marker's ``fixed`` flag (OpenSim's default: false), from the model's MarkerSet with
    the MarkerSet file ``markers`` applied on top (as the GenericModelMaker does)."""
    from .export import _bool, parse_marker_file

    out = {}
    try:
        root = ET.parse(str(osim)).getroot()
    except (ET.ParseError, OSError) as e:
        raise ModelError(f"cannot read model: {e}", path=str(osim)) from e
    for src, els in ((osim, root.iter("Marker")), (markers, ())):
        if src is markers and markers is not None:
            els = parse_marker_file(markers)
        for m in els:
            name = m.get("name")
            out[name] = _bool(m, "fixed", False, f"marker '{name}' fixed", str(src))
    return out


def _parse_keep_comments(path: str) -> ET.ElementTree:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        return ET.parse(path, parser)
    except (ET.ParseError, OSError) as e:
        raise ModelError(f"cannot read model: {e}", path=path) from e


def _fmt(v: np.ndarray) -> str:
    return " " + " ".join(repr(float(x)) for x in v)


def _merge_marker_set(model: ET.Element, markers: str | Path) -> None:
    """Replace or add the model's markers by those of a MarkerSet file (OpenSim's
    ``Model::updateMarkerSet``)."""
    from .export import parse_marker_file

    ms = model.find("MarkerSet")
    if ms is None:
        ms = ET.SubElement(model, "MarkerSet", name="markerset")
    objs = ms.find("objects")
    if objs is None:
        objs = ET.SubElement(ms, "objects")
    have = {m.get("name"): m for m in objs.findall("Marker")}
    for m in parse_marker_file(markers):
        old = have.get(m.get("name"))
        if old is not None:
            objs.remove(old)
        objs.append(m)


def write_scaled_osim(
    osim: str | Path,
    out: str | Path,
    factors: Mapping[str, Sequence[float]],
    *,
    markers: str | Path | None = None,
    marker_offsets: Mapping[str, np.ndarray] | None = None,
    delete_markers: Sequence[str] = (),
    name: str | None = None,
) -> Path:
    """Write the scaled model: the source ``.osim`` with every quantity OpenSim's scaling
    changes edited in place (module doc), everything else kept as it was.

    ``factors``: ``{body: (sx, sy, sz)}`` (bodies not listed: 1). ``markers``: a MarkerSet file
    merged into the model first. ``marker_offsets``: marker name -> new location in its body's
    frame after scaling (from :func:`place_markers`); ``delete_markers``: markers removed.
    Returns the path written.
    """
    from .export import _floats, _Resolver, read_osim

    osim, out = str(osim), Path(out)
    doc = _parse_keep_comments(osim)
    top = doc.getroot()
    model = top.find("Model") if top.tag == "OpenSimDocument" else top
    if model is None:
        raise ModelError("no <Model> element", path=osim)
    if markers is not None:
        _merge_marker_set(model, markers)
    exported = read_osim(osim, markers=markers)
    motion = {c["name"]: c["motion_type"] for c in exported.meta["coordinates"]}
    coord_joint = {c["name"]: c["joint"] for c in exported.meta["coordinates"]}
    s = {b: np.broadcast_to(np.asarray(f, np.float64), (3,)) for b, f in factors.items()}
    res = _Resolver(model, osim)

    def fac(body: str):
        return s.get(body) if body != "ground" else None

    # frames first resolved on the unscaled model, then edited
    offset_parent = {}
    for p, kind in res.kind.items():
        if kind == "offset":
            el = res.elements[p]
            sock = (el.findtext("socket_parent") or "").strip()
            offset_parent[p] = res.lookup(p, sock, f"PhysicalOffsetFrame '{p}'").body
    joint_parent = {}
    for j in model.findall("JointSet/objects/*"):
        jp = f"/jointset/{j.get('name')}"
        joint_parent[j.get("name")] = res.lookup(
            jp, (j.findtext("socket_parent_frame") or "").strip(), f"joint '{j.get('name')}'"
        ).body
    marker_parent = {}
    for m in model.findall("MarkerSet/objects/Marker"):
        sock = (m.findtext("socket_parent_frame") or m.findtext("body") or "").strip()
        marker_parent[m.get("name")] = res.lookup(
            f"/markerset/{m.get('name')}", sock, f"marker '{m.get('name')}'"
        )

    def scale_vec(el: ET.Element | None, tag: str, f, where: str) -> None:
        c = None if el is None else el.find(tag)
        if c is None or f is None:
            return
        c.text = _fmt(_floats(c.text, 3, where, osim) * f)

    def scale_geometry(frame_el: ET.Element, f) -> None:
        for sf in frame_el.findall("attached_geometry/*/scale_factors"):
            if f is not None:
                sf.text = _fmt(_floats(sf.text, 3, "geometry scale_factors", osim) * f)

    for p, body in offset_parent.items():
        el = res.elements[p]
        scale_vec(el, "translation", fac(body), f"{p} translation")
        scale_geometry(el, fac(body))
    for b in model.findall("BodySet/objects/Body"):
        f = fac(b.get("name"))
        scale_geometry(b, f)
        scale_vec(b, "mass_center", f, f"body '{b.get('name')}' mass_center")
    for m in model.findall("MarkerSet/objects/Marker"):
        fr = marker_parent[m.get("name")]
        scale_vec(m, "location", fac(fr.body), f"marker '{m.get('name')}' location")
    for j in model.findall("JointSet/objects/CustomJoint"):
        f = fac(joint_parent[j.get("name")])
        if f is None:
            continue
        axes = j.findall("SpatialTransform/TransformAxis")
        for ta in axes[3:6]:
            fn = [c for c in ta if isinstance(c.tag, str) and c.tag not in ("axis", "coordinates")]
            if not fn:
                continue
            fn = fn[0]
            if fn.tag == "LinearFunction":
                coef = _floats(fn.findtext("coefficients"), 2, "LinearFunction", osim)
                if coef[0] == 1.0 and coef[1] == 0.0:
                    continue
            axis = _floats(ta.findtext("axis"), 3, f"joint '{j.get('name')}' axis", osim)
            k = float(np.abs(axis) @ f)
            if fn.tag == "MultiplierFunction":
                sc = fn.find("scale")
                if sc is None:
                    sc = ET.SubElement(fn, "scale")
                    sc.text = "1"
                sc.text = repr(float(sc.text) * k)
            else:
                idx = list(ta).index(fn)
                ta.remove(fn)
                mf = ET.Element("MultiplierFunction", name="function")
                holder = ET.SubElement(mf, "function")
                holder.append(fn)
                ET.SubElement(mf, "scale").text = repr(k)
                ta.insert(idx, mf)
    for con in model.findall("ConstraintSet/objects/CoordinateCouplerConstraint"):
        dep = (con.findtext("dependent_coordinate_name") or "").strip()
        if motion.get(dep) != "translational":
            continue
        jname = coord_joint[dep]
        f = fac(joint_parent[jname])
        if f is None:
            continue
        if not (f[0] == f[1] == f[2]):
            raise ModelError(
                f"coupler '{con.get('name')}': non-uniform factors {f.tolist()} on a "
                "translational coupled coordinate (OpenSim refuses them too)",
                path=osim,
            )
        sf = con.find("scale_factor")
        if sf is None:
            sf = ET.SubElement(con, "scale_factor")
            sf.text = "1"
        sf.text = repr(float(sf.text) * float(f[0]))
    # markers: deleted, then placed (offsets given in the body frame of the scaled model)
    objs = model.find("MarkerSet/objects")
    for mname in delete_markers:
        for m in list(objs if objs is not None else []):
            if m.get("name") == mname:
                objs.remove(m)
    if marker_offsets:
        sres = _Resolver(model, osim)  # frames of the scaled model
        for m in model.findall("MarkerSet/objects/Marker"):
            mname = m.get("name")
            if mname not in marker_offsets:
                continue
            sock = (m.findtext("socket_parent_frame") or m.findtext("body") or "").strip()
            fr = sres.lookup(f"/markerset/{mname}", sock, f"marker '{mname}'")
            loc = fr.R.T @ (np.asarray(marker_offsets[mname], np.float64) - fr.p)
            m.find("location").text = _fmt(loc)
    if name is not None:
        model.set("name", name)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.indent(doc, space="\t")
    tmp = out.with_name(f".{out.name}.tmp")
    doc.write(tmp, encoding="UTF-8", xml_declaration=True)
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- whole job
@dataclass(frozen=True)
class ScaleResult:
    """What :func:`scale_subject` did: factors, the scaled tree, files written, placement."""

    factors: ScaleFactors
    tree: KinematicTree
    osim: Path
    npz: Path
    mode: str
    placement: Placement | None = None
    fit: FitResult | None = None
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict:
        out = dict(
            mode=self.mode,
            osim=str(self.osim),
            npz=str(self.npz),
            factors={b: list(f) for b, f in self.factors.as_dict().items() if b != "ground"},
            measurements={m.name: m.factor for m in self.factors.measurements},
            warnings=list(self.factors.warnings),
            notes=list(self.notes),
        )
        if self.placement is not None:
            p = self.placement
            out["placement"] = dict(
                moved=list(p.moved),
                deleted=list(p.deleted),
                rms_before_m=p.rms_before,
                rms_after_m=p.rms_after,
            )
        if self.fit is not None:
            out["fit"] = dict(group_factors=self.fit.group_factors, rms_m=self.fit.rms)
        return out


def scale_subject(
    osim: str | Path,
    static: str | Path,
    setup: str | Path | ScaleSetup,
    out: str | Path,
    *,
    markers: str | Path | None = None,
    mode: str = "measurements",
    mass: float | None = None,
    height: float | None = None,
    place: bool | None = None,
    fit_frames: int = 1,
    reg: float = 1e-3,
    ik_options=None,
) -> ScaleResult:
    """Scale ``osim`` to the subject of the static trial ``static`` (TRC) with a ScaleTool
    setup, write the scaled ``.osim`` to ``out`` and its exported tree next to it (``.npz``).

    ``mode``: ``"measurements"`` (OpenSim's ModelScaler) or ``"optimise"`` (measurement factors
    as the start, then :func:`fit_scales` on the static trial: its average over the setup's
    time range with ``fit_frames=1``, else that many frames spread over the range).
    ``markers``: a MarkerSet file merged into the model (overrides the setup's
    ``marker_set_file``). ``place``: run the MarkerPlacer (default: as the setup says).
    ``mass`` and ``height`` only fill in what a setup lacks, for the report: they change no
    geometry (OpenSim uses the mass for body masses, the height nowhere). Factors and FK run
    in the default JAX dtype: enable ``jax_enable_x64`` for OpenSim's float64 results (the
    CLI does; float32 factors differ from OpenSim's by ~1e-7 relative).
    """
    from .export import read_osim
    from .io.scale_setup import read_scale_setup
    from .io.trc import read_trc
    from .model import save_tree, tree_from_export

    if mode not in ("measurements", "optimise"):
        raise InputError(f"mode must be 'measurements' or 'optimise', got {mode!r}", field="mode")
    su = setup if isinstance(setup, ScaleSetup) else read_scale_setup(setup)
    if markers is None and su.marker_set_file is not None:
        markers = su.resolve(su.marker_set_file)
    trial = read_trc(static)
    tree = tree_from_export(read_osim(osim, markers=markers))
    notes = []
    if su.ignored:
        notes.append(f"ignored (no effect on kinematics): {', '.join(su.ignored)}")
    if mass is not None and su.mass <= 0:
        notes.append(f"mass {mass} kg recorded, body masses not rescaled")
    if height is not None and su.height <= 0:
        notes.append(f"height {height} recorded (OpenSim does not use it either)")
    if not su.scaler_apply:
        sf = ScaleFactors(tree.body_names, np.ones((tree.n_body, 3)))
        notes.append("ModelScaler apply=false: no scaling")
    else:
        sf = measurement_scale_factors(tree, su, trial)
    plan = scale_plan(tree)
    fit = None
    if mode == "optimise":
        groups = groups_from_setup(su)
        rows = frame_range(trial.time, *(su.time_range or (-math.inf, math.inf)))
        tidx = {n: i for i, n in enumerate(trial.marker_names)}
        sel = [tidx.get(n, -1) for n in tree.marker_names]

        def in_tree_order(p):
            return np.where((np.asarray(sel) >= 0)[None, :, None], p[:, np.maximum(sel, 0)], np.nan)

        if fit_frames <= 1:
            z = in_tree_order(average_static(trial, su.time_range)[None])
        else:
            idx = np.linspace(rows.start, rows.stop - 1, fit_frames).round().astype(int)
            z = in_tree_order(np.asarray(trial.positions)[idx])
        # groups are fitted relative to the measurement factors (u = 0 there)
        if len(z) == 1:  # a static pose: a local fit from the default pose (as the placer)
            q0 = None
        else:  # frames of a dynamic trial: start from IK
            from .ik import solve_ik

            start = scale_tree(tree, sf.factors, plan)
            q0 = np.asarray(solve_ik(start, z, options=ik_options).q)
        fit = fit_scales(tree, z, groups, base_factors=sf.factors, q_init=q0, reg=reg)
        sf = ScaleFactors(tree.body_names, fit.factors, sf.measurements, sf.warnings)
    _check_couplers(tree, plan, sf.factors)
    scaled = scale_tree(tree, sf.factors, plan)
    placement = None
    do_place = su.placer is not None and su.placer.apply if place is None else place
    if do_place:
        if su.placer is None:
            raise InputError("the setup has no MarkerPlacer section", path=su.path)
        fixed = marker_fixed_flags(osim, markers)
        placement = place_markers(scaled, su, trial, fixed)
        scaled = placement.tree
    out = Path(out)
    bodies = {b: sf.factors[i] for i, b in enumerate(tree.body_names) if b != "ground"}
    offsets = None
    if placement is not None:
        offsets = {
            n: np.asarray(placement.tree.marker_offset[i])
            for i, n in enumerate(placement.tree.marker_names)
            if n in placement.moved
        }
    write_scaled_osim(
        osim,
        out,
        bodies,
        markers=markers,
        marker_offsets=offsets,
        delete_markers=placement.deleted if placement is not None else (),
    )
    # the tree saved and returned is the written model's own export (its name, source and
    # digest); it must match the tree scaled in memory (they differ only where the tree
    # cannot be exact: see the module doc), and body_scale stays 1 on bodies without geometry
    final = tree_from_export(read_osim(out))
    if final.marker_names == scaled.marker_names:
        worst = max(
            float(np.max(np.abs(np.asarray(getattr(final, k)) - np.asarray(getattr(scaled, k)))))
            for k in ("joint_p_pf", "joint_p_cm", "func_y", "func_b", "marker_offset")
        )
        if worst > (1e-9 if final.dtype == jnp.float64 else 1e-5):
            notes.append(
                f"the tree scaled in memory differs from the written model by {worst:.3g} m "
                "(offset frames rotated in their body with non-uniform factors); the written "
                ".osim and its .npz follow OpenSim"
            )
    npz = save_tree(final, out.with_suffix(".npz"))
    return ScaleResult(sf, final, out, npz, mode, placement, fit, tuple(notes))
