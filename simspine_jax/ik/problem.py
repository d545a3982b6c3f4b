"""The IK problem: options (static) and parameters (traced), per-sequence data, results,
statuses, and the per-frame residual in OpenSim's objective.

Per sequence, over the independent coordinates q_t (couplers by reparametrisation, locked
coordinates held at their defaults)::

    min_q  sum_t [ sum_m w_m |z_mt - zhat_m(q_t)|^2 + W_t sum_k c_k (qfull_t[k] - target_tk)^2 ]
           + lambda_v |D1 q|^2 + lambda_a |D2 q|^2

W_t is the summed weight of the markers observed in frame t (OpenSim's task scale, see
:func:`task_scale`); D1/D2 are first/second differences between consecutive frames (rad or m
per frame). ``lambda = 0`` is exactly OpenSim's per-frame weighted least squares (then the
continuity pass, ``IKOptions.continuity``, picks within 0.5 % of each frame's minimum cost).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..fk import _fk_one, _full_one, marker_jacobian_one
from ..model import KinematicTree


class IKStatus(enum.IntEnum):
    """Per-frame outcome of the solver (``IKResult.status``)."""

    CONVERGED = 0  # stationary on the free coordinates (projected gradient test) or fitted
    MAX_ITERS = 1  # iteration cap reached first
    TOO_FEW_MARKERS = 2  # fewer than min_markers observed markers: not solved
    STALLED = 3  # every step rejected up to the damping ceiling before the stop test held


CONVERGED, MAX_ITERS, FEW_MARKERS, STALLED = (int(s) for s in IKStatus)
STATUS_NAMES = tuple(s.name.lower() for s in IKStatus)
# rad (about 2.9 deg) or m per mm of marker noise: above this a coordinate is weakly observed
WEAK_SENSITIVITY = 0.05


@dataclass(frozen=True)
class IKOptions:
    """Solver settings.

    Structural fields (``max_iters``, ``max_iters_smooth``, ``max_iters_continuity``,
    ``chunk``, ``lanes``, ``round_iters``, ``min_markers``, ``banded``, ``segment``, whether
    any smoothing is on, and whether the continuity pass runs)
    shape the compiled program: changing one recompiles. Every other field is a traced number
    (:class:`IKParams`): a new lambda, tolerance or damping reuses the compiled solver.
    """

    smooth_vel: float = 0.0  # lambda_v on |q_{t+1} - q_t|^2 (per frame, rad or m)   [traced]
    smooth_acc: float = 0.0  # lambda_a on |q_{t+1} - 2 q_t + q_{t-1}|^2             [traced]
    continuity: float = 1e-4  # without smoothing (lambda_v = lambda_a = 0): a continuity
    # pass after the per-frame stage: ``max_iters_continuity`` red-black sweeps in which each
    # frame takes the Gauss-Newton step of its cost plus a pull nu |q_t - qbar|^2 toward its
    # neighbours' mean, nu the largest whose model cost stays within ``continuity_guard`` of
    # the frame's per-frame minimum, and at most ``continuity`` x the mean marker weight x
    # its number of neighbours (m^2 per rad^2 or m^2: a 1 rad change weighs like a 1 cm
    # error of one marker); a step whose actual cost is over the guard is cut to a half, a
    # quarter or none. Weakly observed coordinates (pronation, arm rotation, toe angle) then
    # follow their neighbours instead of jumping to where the noise puts each frame's
    # minimum; well-observed ones stay. Skipped on data the minima fit. 0: the per-frame
    # minima themselves [traced; on/off structural]
    continuity_guard: float = 0.005  # a frame's cost stays within this of its per-frame
    # minimum's. The pass's price in cost: on the ik_trust grid (8 noisy 300-frame trials)
    # 0.5 % gave 97.0-100 % of frames within OpenSim's cost +2 % and median jumps 0.97-1.38x
    # OpenSim's; 1 % gave 94.0-99.3 % and 0.73-1.25x (experiments/RESULTS.md) [traced]
    max_iters: int = 150  # LM iterations per frame (per-frame stage); frames creeping along
    # flat directions need them: 5 mm trial, 60 -> 150 took max_iters frames 17 -> 3 of 300
    # at +9 % iterations
    max_iters_smooth: int = 60  # global iterations (smoothing stage)
    max_iters_continuity: int = 2  # sweeps of the continuity pass (a fixed number: each
    # step is bounded frame by frame, it has no convergence test). 4 sweeps lowered Halpe26's
    # 5 mm median jump by ~1 deg at ~20 % of the noisy solve's time
    tol_cost: float = 1e-4  # converged when the Gauss-Newton decrease still available on the
    # free coordinates (undamped model, bound-blocked coordinates frozen) is below
    # tol_cost * cost: a projected-gradient test, evaluated on points actually reached. 1e-4
    # of a frame's cost is far inside the 2 % by which solvers are compared; measured on the
    # ik_trust grid (12 trials of 300 frames) against 1e-6: iterations per noisy frame
    # 14.5-18.6 -> 8.6-9.8 incl. the continuity pass, frames within 2 % of OpenSim's cost
    # equal or better on 7 of 8 noisy trials, worst frame 1.03-1.07x (was up to 1.13x), and
    # the smoothing stage converges in about 4 iterations at the same truth error (it ran
    # 40-60, to its cap, chasing decreases of 1e-6 of the whole sequence's cost) [traced]
    tol_marker: float = 1e-6  # or the weighted RMS marker error is below this (m): 1 um,
    # far below marker precision [traced]
    mu_init: float = 1e-3  # initial Marquardt damping (relative to the largest curvature) [traced]
    mu_init_warm: float = 1e-5  # initial damping of frames started from solved neighbours [traced]
    max_step: float = 0.1  # initial step radius (max over coordinates, rad or m) of frames
    # started from solved ones; doubled after a capped step the model predicted well, halved
    # after a rejected one. Long Gauss-Newton steps along weakly observed directions (arm
    # rotation, pronation) otherwise jump into other local minima: measured on 5 mm noise,
    # uncapped frames cost 1.32x OpenSim's on average, capped 0.98x [traced]
    chunk: int = 64  # stride (a power of two) of the frames solved first, in order; the
    # frames between are solved coarse to fine in parallel (see per_frame.py); 64 beat 16 on
    # three noisy 300-frame trials (mean cost vs OpenSim 0.98-0.99x vs 0.99-2.4x: the longer
    # chain of the finer stride met more chances to switch basins)
    lanes: int = 0  # frames iterated in parallel per round and sequence; 0: 8 on CPU, 64 on
    # accelerators
    round_iters: int = 0  # FK + Jacobian evaluations per round before lanes are reassigned;
    # 0: 1 on CPU (a lane whose frame finished idles until the round ends: 500-frame trials,
    # 2 cores, 1 vs 2: +5 % frames/s clean, +4 % noisy), 2 on accelerators
    min_markers: int = 3  # fewer observed markers in a frame -> TOO_FEW_MARKERS
    banded: str = "auto"  # smoothing-stage solve: "thomas" (block Cholesky scan), "cyclic"
    # (block cyclic reduction, log T depth) or "auto" (cyclic on GPU/TPU)
    segment: int = 2048  # longer trials are solved in segments of this many frames (a
    # multiple of 2 * chunk): cost linear in length, bounded memory, progress and Ctrl-C
    # between segments; smoothing then runs on overlapping windows (see solve.py)

    @property
    def smoothing(self) -> bool:
        return self.smooth_vel > 0 or self.smooth_acc > 0

    @property
    def continuity_pass(self) -> bool:
        """The continuity pass runs: no smoothing and ``continuity`` > 0."""
        return not self.smoothing and self.continuity > 0

    @property
    def second_stage(self) -> bool:
        """A whole-sequence stage follows the per-frame one (smoothing or continuity)."""
        return self.smoothing or self.continuity_pass

    def static(self) -> IKOptions:
        """The structural part (traced fields normalised): the jit cache key."""
        kw = dict.fromkeys(IKParams._fields, 0.0)
        kw["smooth_acc"] = 1.0 if self.smoothing else 0.0  # only "is smoothing on" and
        kw["continuity"] = 1.0 if self.continuity_pass else 0.0  # "continuity pass on" are
        return dataclasses.replace(self, **kw)  # structural

    def params(self, dtype=np.float64) -> IKParams:
        return IKParams(*(np.asarray(getattr(self, f), dtype) for f in IKParams._fields))


class IKParams(NamedTuple):
    """The traced numbers of :class:`IKOptions` (scalars; a pytree)."""

    smooth_vel: jax.Array
    smooth_acc: jax.Array
    continuity: jax.Array
    continuity_guard: jax.Array
    tol_cost: jax.Array
    tol_marker: jax.Array
    mu_init: jax.Array
    mu_init_warm: jax.Array
    max_step: jax.Array


class IKProblem(NamedTuple):
    """Per-sequence data (a pytree). Shapes: markers (T, M, 3) NaN = missing; frame_valid (T,);
    marker_weight (M,); coord_index (K,) int; coord_weight (K,); coord_target (T, K)
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
    cost (T,) weighted per-frame cost incl. coordinate tasks; status (T,) an
    :class:`IKStatus`; iterations (T,) (per-frame plus smoothing-stage iterations);
    sensitivity (T, n_indep): sqrt(diag((J^T W J)^-1)), the standard deviation of each
    coordinate (rad or m) per millimetre of isotropic marker noise (inf = not observed);
    above WEAK_SENSITIVITY a coordinate counts as weakly observed; model_markers (T, M, 3)
    the model's marker positions at the solution; smooth_status (T,): the smoothing stage's
    status of the window holding the frame (CONVERGED or MAX_ITERS; CONVERGED without
    smoothing, and after the continuity pass, which is capped by design)."""

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
    smooth_status: jax.Array


# ----------------------------------------------------------------------------- residuals
def bounds(tree: KinematicTree):
    """Lower and upper limits of the independent coordinates (+-inf where not clamped)."""
    topo = tree.topology
    idx = topo.indep_coord
    rng = tree.coord_range[idx]
    clamped = jnp.asarray(topo.coord_clamped[idx])
    lo = jnp.where(clamped, rng[:, 0], -jnp.inf)
    hi = jnp.where(clamped, rng[:, 1], jnp.inf)
    return lo, hi


def task_scale(w, cw):
    """Per-task residual scale sqrt(c_k W) of one frame, W = summed weight of its observed
    markers (``w`` already holds the NaN mask).

    OpenSim (Simbody's assembler) minimises sum_m w_m |e_m|^2 / W + sum_k c_k (q_k - v_k)^2;
    we minimise W times that (same minimiser), so every solver stage and the report scale
    coordinate-task residuals here, in one place.
    """
    return jnp.sqrt(cw * jnp.sum(w, axis=-1, keepdims=jnp.ndim(cw) > 1))


def weighted_residual(x, qf, z, w, ci, cw, ct):
    """One frame's residual in OpenSim's objective from its model markers ``x`` (M, 3) and full
    coordinates ``qf``: marker rows first, then the coordinate tasks. Shape: (3M + K,)."""
    rm = (x - z) * jnp.sqrt(w)[:, None]
    return jnp.concatenate([rm.reshape(-1), task_scale(w, cw) * (qf[ci] - ct)])


def residual_and_markers(tree: KinematicTree, q, z, w, ci, cw, ct):
    """Weighted residual of one frame (FK only, no Jacobian) and the model markers.
    Shapes: (3M + K,), (M, 3)."""
    qf = _full_one(tree, q)
    zhat = _fk_one(tree, qf).markers
    return weighted_residual(zhat, qf, z, w, ci, cw, ct), zhat


def residual(tree: KinematicTree, q, z, w, ci, cw, ct):
    """Weighted residual of one frame (FK only, no Jacobian). Shape: (3M + K,)."""
    return residual_and_markers(tree, q, z, w, ci, cw, ct)[0]


def frame_terms(tree: KinematicTree, q, z, w, ci, cw, ct):
    """One FK + Jacobian pass for one frame: model markers x (M, 3), full coordinates (n_coord,),
    residual (3M + K,) and its analytic Jacobian (3M + K, n_indep); marker rows first."""
    x, J, qf, G = marker_jacobian_one(tree, q)
    sw = jnp.sqrt(w)
    rm = ((x - z) * sw[:, None]).reshape(-1)
    Jm = (J * sw[:, None, None]).reshape(-1, q.shape[0])
    scw = task_scale(w, cw)
    rc = scw * (qf[ci] - ct)
    Jc = scw[:, None] * G[ci]
    return x, qf, jnp.concatenate([rm, rc]), jnp.concatenate([Jm, Jc], 0)


def frame_inputs(z, w):
    """Replace NaN markers by 0 and fold the mask into the weights."""
    obs = jnp.all(jnp.isfinite(z), axis=-1)
    return jnp.where(obs[..., None], z, 0.0), jnp.where(obs, w, 0.0), obs


# ----------------------------------------------------------------------------- building
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
    bad = np.isinf(markers) | (np.abs(np.nan_to_num(markers)) > 1e6)
    if bad.any():
        t, m, _ = np.argwhere(bad)[0]
        raise InputError(
            f"marker position {markers[t, m].tolist()} is not a finite coordinate in metres "
            "(|x| <= 1e6; NaN marks a missing marker)",
            frame=int(t),
            field=tree.marker_names[m],
        )
    L = T if length is None else length
    if L < T:
        raise InputError(f"padded length {L} shorter than the sequence ({T})")
    pad = np.full((L - T, tree.n_marker, 3), np.nan)
    mk = np.concatenate([markers, pad], 0)
    valid = np.arange(L) < T
    w = np.ones(tree.n_marker) if marker_weight is None else np.asarray(marker_weight, float)
    if w.shape != (tree.n_marker,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError(
            f"marker weights must be {tree.n_marker} finite numbers >= 0", field="marker_weight"
        )
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
    if not (np.all(np.isfinite(cw)) and np.all(cw >= 0) and np.all(np.isfinite(ct))):
        raise InputError(
            "coordinate-task weights must be finite and >= 0, targets finite", field="coord_tasks"
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
