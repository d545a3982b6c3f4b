"""Public IK entry points: one sequence or many, any length.

A trial of at most ``IKOptions.segment`` frames is one compiled call (robust start, per-frame
stage, smoothing stage or continuity pass, report), padded to a bucket length so few shapes
compile. A longer trial is solved in segments of ``segment`` frames, one call each, with the
per-frame stage's chain carried from one segment's last solved frame to the next segment's
first: cost linear in length, memory bounded by the segment, a progress bar, and Ctrl-C
honoured between segments (a compiled loop blocks signals). The smoothing stage (or continuity
pass) then runs on windows of ``segment`` frames that overlap by ``2 * margin`` frames, keeping
each window's core: the penalties couple frames only a few apart, so the cores equal the
whole-trial optimum to within the solver tolerance (1e-4 rad, tested).

The compiled programs take the traced :class:`IKParams` as arguments: a new lambda, tolerance
or weight reuses them; only :meth:`IKOptions.static` is part of the cache key.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._xla import release_if_near_map_limit_throttled
from ..errors import InputError
from ..model import KinematicTree
from .per_frame import per_frame_stage, robust_start
from .problem import (
    CONVERGED,
    FEW_MARKERS,
    IKOptions,
    IKParams,
    IKProblem,
    IKResult,
    bounds,
    bucket_length,
    frame_inputs,
    make_problem,
)
from .report import report
from .smooth import continuity_stage, smooth_stage

CPU_SEQUENCE_GROUP = 8  # sequences vmapped together on CPU (the rest in a sequential map)
_SEQ = "seq"


def fill_gaps(q, ok):
    """Frames not ``ok`` filled by linear interpolation in time between the nearest ok frames
    (the nearest one at the ends; unchanged if none is ok). Shapes: q (T, n), ok (T,)."""
    T = q.shape[0]
    idx = jnp.arange(T)
    prev = jax.lax.cummax(jnp.where(ok, idx, -1))
    nxt = jax.lax.cummin(jnp.where(ok, idx, T), reverse=True)
    p, n_ = jnp.clip(prev, 0, T - 1), jnp.clip(nxt, 0, T - 1)
    p = jnp.where(prev < 0, n_, p)
    n_ = jnp.where(nxt >= T, p, n_)
    frac = jnp.where(n_ > p, (idx - p) / jnp.maximum(n_ - p, 1), 0.0).astype(q.dtype)
    filled = q[p] + frac[:, None] * (q[n_] - q[p])
    return jnp.where(ok[:, None] | ~jnp.any(ok), q, filled)


def _seq_segment(tree, opts: IKOptions, whole: bool, params, prob, q_prev, has_prev, seq_axis):
    """One sequence (or one segment of it): start, per-frame stage, the second stage
    (smoothing or continuity) if ``whole``, report. Returns the IKResult's fields and the
    chain's end (q of the last ok frame, and whether there is one)."""
    lo, hi = bounds(tree)
    q_default = jnp.clip(
        tree.coord_default[tree.topology.indep_coord].astype(prob.markers.dtype), lo, hi
    )
    obs_count = jnp.sum(jnp.all(jnp.isfinite(prob.markers), -1) & (prob.marker_weight > 0), 1)
    first = jnp.argmax(prob.frame_valid & (obs_count >= opts.min_markers))
    z0, w0, _ = frame_inputs(prob.markers[first], prob.marker_weight)

    def fresh():
        return robust_start(
            tree, params, q_default, z0, w0, prob.coord_index, prob.coord_weight,
            prob.coord_target[first], lo, hi,
        )  # fmt: skip

    q_start = jax.lax.cond(has_prev, lambda: q_prev, fresh)
    q, it, status, ok, cost, H, x = per_frame_stage(
        tree, opts, params, prob, q_start, ~has_prev, seq_axis
    )
    T = q.shape[0]
    last = T - 1 - jnp.argmax(ok[::-1])
    end = (jnp.where(jnp.any(ok), q[last], q_prev), has_prev | jnp.any(ok))
    smooth_status = jnp.asarray(CONVERGED, jnp.int32)
    if whole and opts.second_stage:
        q, it_s, smooth_status, H, x = _second_stage(tree, opts, params, prob, q, ok, (cost, H, x))
        it = it + it_s
    if not (whole and opts.smoothing):
        q, x = _gaps_nan(q, x, ok)
    return tuple(report(tree, prob, q, status, it, H, x, smooth_status)) + end


def _gaps_nan(q, x, ok):
    """Frames not ``ok`` as NaN (without smoothing no prior fills them)."""
    return jnp.where(ok[:, None], q, jnp.nan), jnp.where(ok[:, None, None], x, jnp.nan)


def _second_stage(tree, opts: IKOptions, params, prob, q_pf, ok, pf=None):
    """Smoothing stage, or (lambda = 0) the continuity pass, from the per-frame solution
    (``pf``: its cost, J'J and markers where known, for the continuity pass)."""
    q = fill_gaps(q_pf, ok)
    if opts.smoothing:
        return smooth_stage(tree, opts, params, prob, q, ok)
    return continuity_stage(tree, opts, params, prob, q, ok, pf)


def _seq_window(tree, opts: IKOptions, params, prob, q_init, ok, status, it, seq_axis):
    """The second stage on one window from the per-frame solution, then the report."""
    q, it_s, smooth_status, H, x = _second_stage(tree, opts, params, prob, q_init, ok)
    if not opts.smoothing:
        q, x = _gaps_nan(q, x, ok)
    return tuple(report(tree, prob, q, status, it + it_s, H, x, smooth_status))


def _map_sequences(f, args):
    """``f(args_one, axis_name)`` over the leading (sequence) axis: vmapped (axis name "seq")
    on accelerators; on CPU in vmapped groups of CPU_SEQUENCE_GROUP (a ``lax.map`` over groups,
    the remainder vmapped apart), since every group's rounds run until its slowest sequence is
    done (500-frame noisy trials, 2 cores: 1532 frames/s in a batch of 8, 738 in a batch of 32
    as one vmap). One sequence is not vmapped (a vmap of one cost ~20%)."""
    one = jax.vmap(lambda a: f(a, _SEQ), axis_name=_SEQ)
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    G = CPU_SEQUENCE_GROUP
    if n == 1:
        out = f(jax.tree_util.tree_map(lambda a: a[0], args), None)
        return jax.tree_util.tree_map(lambda a: a[None], out)
    if jax.default_backend() != "cpu" or n <= G:
        return one(args)
    full = n // G * G
    groups = jax.tree_util.tree_map(lambda a: a[:full].reshape((n // G, G) + a.shape[1:]), args)
    out = jax.tree_util.tree_map(
        lambda a: a.reshape((full,) + a.shape[2:]), jax.lax.map(one, groups)
    )
    if full == n:
        return out
    rest = one(jax.tree_util.tree_map(lambda a: a[full:], args))
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, rest)


def _program(kind: str, tree, opts: IKOptions, params, batched_args):
    """The traced program of one call: every sequence of the batch through ``kind``."""
    if kind == "window":
        f = partial(_seq_window, tree, opts, params)
    else:
        f = partial(_seq_segment, tree, opts, kind == "whole", params)
    return _map_sequences(lambda a, ax: f(*a, ax), batched_args)


_program_jit = jax.jit(_program, static_argnames=("kind", "opts"))


def _source_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted(here.glob("*.py")) + [
        here.parent / m for m in ("fk.py", "model.py", "_banded.py")
    ]:
        h.update(p.read_bytes())
    return h.hexdigest()


def _call(kind, tree, opts, params, args, cache_dir):
    """Run ``_program`` jitted, or through a serialized ``jax.export`` artefact in
    ``cache_dir`` (keyed by model structure, static options, shapes, dtypes, JAX version and
    the solver's source), so a new process skips tracing and, with JAX's persistent
    compilation cache, compilation too."""
    if cache_dir is None:
        return _program_jit(kind, tree, opts, params, args)
    from jax import export

    tree_leaves, topology = tree.tree_flatten()
    leaves, treedef = jax.tree_util.tree_flatten((params, args))
    leaves = [jnp.asarray(a) for a in leaves]
    sig = [(np.shape(a), str(a.dtype)) for a in list(tree_leaves) + leaves]
    key = hashlib.sha256(
        repr(
            (kind, topology.digest, opts, sig, str(treedef), jax.__version__, _source_digest())
        ).encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"ik_{kind}_{key}.jaxexport"
    exp = None
    if path.exists():
        try:
            exp = export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # a stale or partial artefact: rebuild it
            exp = None
    if exp is None:

        def flat(tl, lv):
            t = KinematicTree.tree_unflatten(topology, tl)
            p, a = jax.tree_util.tree_unflatten(treedef, lv)
            return tuple(_program(kind, t, opts, p, a))

        exp = export.export(jax.jit(flat))(tuple(tree_leaves), tuple(leaves))
        from ..io import atomic_open

        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            f.write(exp.serialize())
    return exp.call(tuple(tree_leaves), tuple(leaves))


# ----------------------------------------------------------------------------- driver
def _check_dtype(tree: KinematicTree) -> None:
    # float32 IK is not validated: the stopping tolerances are float64-sized
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
    for name, least in (("lanes", 0), ("round_iters", 0), ("max_iters", 1), ("min_markers", 1)):
        if getattr(options, name) < least:
            raise InputError(f"{name} must be >= {least}, got {getattr(options, name)}", field=name)
    if options.max_iters_smooth < 1:
        raise InputError("max_iters_smooth must be >= 1", field="max_iters_smooth")
    if options.segment < 8 * c or options.segment % (2 * c):
        raise InputError(
            f"segment must be a multiple of 2 * chunk and >= 8 * chunk, got {options.segment}",
            field="segment",
        )
    for name in IKParams._fields:
        v = getattr(options, name)
        if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}", field=name)
    return options


def _stack(probs):
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *probs)


def _window_margin(segment: int) -> int:
    return min(256, segment // 8)


def solve_ik_batch(
    tree: KinematicTree,
    sequences: list,
    marker_weight=None,
    coord_tasks=None,
    options: IKOptions | None = None,
    cache_dir: str | None = None,
    progress: bool = False,
) -> list[IKResult]:
    """Solve many sequences of any lengths together, one compiled call per segment (padding +
    masks; see the module doc). Returns one :class:`IKResult` (numpy arrays) per sequence, cut
    to its length. ``cache_dir``: keep the traced solver there (``jax.export``), so a new
    process skips tracing and, with JAX's persistent compilation cache, compilation too (used
    by the CLI). ``coord_tasks``: one (index, weight, target) tuple for every sequence, or a
    list with one tuple per sequence (same index and weight; e.g. per-frame targets from
    coordinate files). ``progress``: a progress bar over the segments of long trials."""
    # entry checks (issue 9): the same refusals as the CLI, before any work
    if not isinstance(tree, KinematicTree):
        raise InputError(f"tree must be a KinematicTree, got {type(tree).__name__}", field="tree")
    if not isinstance(sequences, list | tuple):
        raise InputError(
            "sequences must be a list of (T, M, 3) marker arrays (solve_ik takes one), got "
            f"{type(sequences).__name__}",
            field="sequences",
        )
    if options is not None and not isinstance(options, IKOptions):
        raise InputError(
            f"options must be an IKOptions, got {type(options).__name__}", field="options"
        )
    options = _resolve(IKOptions() if options is None else options)
    if not sequences:
        return []
    _check_dtype(tree)
    release_if_near_map_limit_throttled()
    lengths = [int(np.shape(s)[0]) if np.ndim(s) == 3 else 0 for s in sequences]
    tasks = coord_tasks if isinstance(coord_tasks, list) else [coord_tasks] * len(sequences)
    if len(tasks) != len(sequences):
        raise InputError(
            f"{len(tasks)} coordinate-task tuples for {len(sequences)} sequences",
            field="coord_tasks",
        )
    T_max = max(lengths)
    S = options.segment
    opts = options.static()
    params = options.params(np.dtype(tree.dtype))
    B = len(sequences)
    n = tree.n_indep
    segmented = T_max > S
    L = S * -(-T_max // S) if segmented else bucket_length(max(T_max, 1), options.chunk)
    probs = _stack(
        [
            make_problem(tree, s, marker_weight, t, length=L, as_numpy=True)
            for s, t in zip(sequences, tasks, strict=True)
        ]
    )
    bar = None
    if progress and segmented:
        from tqdm import tqdm

        bar = tqdm(total=sum(lengths) * (2 if opts.second_stage else 1), unit="frame", desc="IK")
    q_prev = np.zeros((B, n), np.dtype(tree.dtype))
    has_prev = np.zeros(B, bool)
    try:
        if not segmented:
            out = _call("whole", tree, opts, params, (probs, q_prev, has_prev), cache_dir)
            out = [np.asarray(a) for a in out[: len(IKResult._fields)]]
        else:
            parts = []
            for k in range(L // S):
                seg = _problem_frames(probs, k * S, S)
                o = _call("segment", tree, opts, params, (seg, q_prev, has_prev), cache_dir)
                o = [np.asarray(a) for a in o]
                parts.append(o[: len(IKResult._fields)])
                q_prev, has_prev = o[-2], o[-1]
                if bar is not None:
                    bar.update(sum(min(S, max(0, T - k * S)) for T in lengths))
            out = [np.concatenate(p, 1) for p in zip(*parts, strict=True)]
            if opts.second_stage:
                out = _smooth_windows(
                    tree, opts, params, probs, IKResult(*out), lengths, cache_dir, bar
                )
    finally:
        if bar is not None:
            bar.close()
    res = IKResult(*out)
    return [IKResult(*(a[i, :T] for a in res)) for i, T in enumerate(lengths)]


def _frames(a, start: int, length: int, fill=None):
    """Frames [start, start + length) of a stacked array (B, T, ...); frames outside [0, T)
    are ``fill`` (default: the nearest frame's value)."""
    idx = np.arange(start, start + length)
    inside = (idx >= 0) & (idx < a.shape[1])
    out = a[:, np.clip(idx, 0, a.shape[1] - 1)]
    if fill is None:
        return out
    return np.where(inside.reshape((1, -1) + (1,) * (a.ndim - 2)), out, fill)


def _problem_frames(p: IKProblem, start: int, length: int) -> IKProblem:
    """Frames [start, start + length) of stacked problems; outside: padding (NaN markers,
    invalid frames, the nearest target row)."""
    return p._replace(
        markers=_frames(p.markers, start, length, np.nan),
        frame_valid=_frames(p.frame_valid, start, length, False),
        coord_target=_frames(p.coord_target, start, length),
    )


def _smooth_windows(tree, opts, params, probs, pf: IKResult, lengths, cache_dir, bar):
    """Smoothing on overlapping windows of ``segment`` frames; each window's core is kept."""
    S = opts.segment
    m = _window_margin(S)
    core = S - 2 * m
    Ltot = probs.markers.shape[1]
    ok = np.asarray(pf.status) != FEW_MARKERS
    q_pf = np.asarray(pf.q)
    outs = [np.array(a, copy=True) for a in pf]
    for c0 in range(0, max(lengths), core):
        s0 = c0 - m
        win = _problem_frames(probs, s0, S)
        q_w = _frames(np.where(np.isfinite(q_pf), q_pf, 0.0), s0, S, 0.0)
        ok_w = _frames(ok, s0, S, False) & win.frame_valid
        st_w = _frames(np.asarray(pf.status), s0, S)
        it_w = _frames(np.asarray(pf.iterations), s0, S)
        o = _call("window", tree, opts, params, (win, q_w, ok_w, st_w, it_w), cache_dir)
        keep = slice(m, m + min(core, Ltot - c0))
        for a, b in zip(outs, o, strict=True):
            a[:, c0 : c0 + keep.stop - keep.start] = np.asarray(b)[:, keep]
        if bar is not None:
            bar.update(sum(min(core, max(0, T - c0)) for T in lengths))
    return outs


def solve_ik(
    tree: KinematicTree,
    markers,
    marker_weight=None,
    coord_tasks=None,
    options: IKOptions | None = None,
    progress: bool = False,
) -> IKResult:
    """Solve IK for one sequence. ``markers`` (T, M, 3) metres, NaN = missing.

    Returns an :class:`IKResult` (numpy arrays) of T frames."""
    return solve_ik_batch(tree, [markers], marker_weight, coord_tasks, options, None, progress)[0]
