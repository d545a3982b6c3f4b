"""Inverse-kinematics speed: our whole-sequence LM (JAX) against OpenSim's InverseKinematicsTool.

Both solve the same synthetic SimSpine trials (:func:`simspine_jax.synth.synthetic_trial`,
seed 0, 60 Hz): ``clean`` (exact markers) and ``noise5mm`` (5 mm Gaussian noise, 2% of the
marker-frames missing in gaps). Each trial is written as a TRC (millimetres) that OpenSim reads;
ours solves the markers read back from that same file. Markers: the 37 of the default model,
all with weight 1 and no coordinate task (OpenSim: the package data
``simspine_jax/data/simspine_default.osim`` + ``simspine37_markers.xml``), or a Pose2Sim IK
setup with ``--setup`` (its marker set, weights and coordinate tasks on both sides).

Prints one JSON line per measurement (progress notes go to stderr):

* ``bench: "ik"``: one solve. ``impl`` ``"opensim"`` (``tool.run()`` of
  :func:`simspine_jax.osim_bridge.ik.run_opensim_ik`, accuracy 1e-5, one CPU thread, each run
  in a child process: see "OpenSim apart" below) or
  ``"jax"`` (:func:`simspine_jax.ik.solve_ik`; ``batch > 1`` or ``batched: true``:
  :func:`simspine_jax.ik.solve_ik_batch` on ``batch`` different noisy trials, seeds 0..B-1).
  ``wall_s`` is the median over >= 3 steady-state calls, each timed to ``block_until_ready``
  (host-side packing included, as a user calls it); ``compile_s`` is the first call minus
  ``wall_s`` (``program_reused: true`` when an earlier line already compiled the same program;
  ``null`` for OpenSim, which compiles nothing: its model load is in ``setup_s``).
  ``frames_per_s`` = batch * frames / wall_s; ``frames_per_s_best`` the same from the fastest
  steady call (JAX lines: on a shared 2-core VM the same program ran at two speeds ~35 % apart
  for minutes at a time, so the median alone depends on the machine's state).
  ``marker_rms_mm``: mean over frames of the per-frame RMS marker error as the solver reports
  it (OpenSim's ``_ik_marker_errors.sto``, our ``IKResult.rms_error``); ``marker_rms_mm_fk64``
  is the same recomputed from the returned coordinates with our float64 FK, identically for
  both. ``cpu_s``: process CPU time of a steady call (a steadier figure on a busy machine; JAX
  uses every core, OpenSim one).
  ``cost_mean``: mean weighted per-frame cost (:func:`simspine_jax.pipeline.frame_costs`),
  the same function for both; ``frames_cost_gt_opensim_2pct`` counts frames where ours is
  more than 2% above OpenSim's. ``rot_rmse_deg_vs_truth``: median over rotational independent
  coordinates of the RMS error against the true motion (degrees).
* ``bench: "ik_cli"``: end to end in a fresh process, ``python -m simspine_jax.cli ik --model
  M.npz --trc T.trc -o out`` (float64, lambda = 0): ``run: "cold"`` with an empty persistent
  compilation cache (``SIMSPINE_JAX_CACHE`` in a temporary folder), then ``run: "warm"`` reusing
  it; ``total_s`` is the wall time of the whole process. ``impl: "opensim"``: OpenSim's
  ``total_s`` (model load + ``tool.run()`` + reading results back) and ``process_s`` (its whole
  child process, Python start and ``import opensim`` included).
* ``bench: "ik_ratio"``: per trial, JAX frames/s / OpenSim frames/s for lambda = 0 (float64
  and float32), with smoothing, for the best batched throughput, and the CLI totals.

Default: 500 frames, both trials, float64 at lambda = 0 and with smoothing
(``lambda_a = 0.3``; ``--parts ... float32`` adds float32 at lambda = 0, which the solver
refuses for now: the part is then skipped with a note), batches 1 8 32 (1 8 32 128 on a GPU),
the CLI cold/warm runs and OpenSim (median of 3 runs per trial: seconds to a minute each).
``--quick``: 100 frames, 3 calls per measurement, one OpenSim run, batches 1 2, and only the
float64 lambda = 0 solves unless ``--parts`` says otherwise (each further part is one more XLA
compilation, 20-60 s on a small CPU). ``--xla-flags`` only acts when the script is run as a
program (not when ``main`` is called after jax was imported).

OpenSim apart: with OpenSim run in the benchmark's own process (jaxlib 0.10.2, 2 cores), our
float64 solve of the clean trial then took 9.6 s instead of 1.1 s, and in 3 of about 10 runs a
solve never returned: the main thread waited in ``block_until_ready`` while every Eigen
thread-pool worker slept in ``WaitForWork`` (gdb), like the wedged XLA CPU Eigen pool reported
upstream (workaround there: ``--xla-flags --xla_cpu_multi_thread_eigen=false``). So each
OpenSim run is a child process (``osim_bridge.ik.run_opensim_ik_subprocess``, as the
crosscheck does), and ``--hang-timeout`` turns a hang into an error instead of a silent wait.

    python experiments/bench_ik.py [--quick] [--frames N] [--setup XML|halpe26] [--no-opensim]
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the package data of this checkout (simspine_jax.default_*_path() would import jax before the
# XLA flags are set)
DATA = REPO / "simspine_jax" / "data"
DEFAULT_NPZ = DATA / "simspine_default.npz"
DEFAULT_OSIM = DATA / "simspine_default.osim"
DEFAULT_MARKERS = DATA / "simspine37_markers.xml"

PARTS = ("float64", "float32", "smooth", "batch", "cli")
TRIALS = {"clean": (0.0, 0.0), "noise5mm": (0.005, 0.02)}  # name -> (noise_m, gap_fraction)

# keys every line of a kind carries (tests/test_bench_ik.py checks them)
REQUIRED_KEYS = {
    "ik": (
        "bench", "impl", "trial", "frames", "batch", "dtype", "lambda_v", "lambda_a",
        "compile_s", "wall_s", "frames_per_s", "marker_rms_mm", "device", "load_avg",
    ),
    "ik_cli": (
        "bench", "impl", "run", "trial", "frames", "total_s", "frames_per_s", "marker_rms_mm",
        "device", "load_avg",
    ),
    "ik_ratio": (
        "bench", "trial", "frames", "opensim_frames_per_s", "ratio_lambda0",
        "ratio_lambda0_float32", "ratio_smooth", "load_avg",
    ),
}  # fmt: skip


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 frames, 3 calls")
    ap.add_argument("--frames", type=int, help="frames per trial (500; --quick 100)")
    ap.add_argument("--trials", nargs="+", choices=tuple(TRIALS), default=list(TRIALS))
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        help=f"what to time on our side (default all: {' '.join(PARTS)}; --quick: float64)",
    )
    ap.add_argument("--batches", type=int, nargs="+", help="batch sizes (1 8 32; GPU 1 8 32 128)")
    ap.add_argument("--smooth-acc", type=float, default=0.3, help="lambda_a of the smooth run")
    ap.add_argument("--smooth-vel", type=float, default=0.0, help="lambda_v of the smooth run")
    ap.add_argument("--min-runs", type=int, help="steady calls per measurement (>= 3)")
    ap.add_argument("--min-time", type=float, help="keep repeating up to this many seconds")
    ap.add_argument("--opensim-runs", type=int, help="OpenSim runs per trial (3; --quick 1)")
    ap.add_argument("--no-opensim", action="store_true", help="skip OpenSim")
    ap.add_argument("--model", default=str(DEFAULT_NPZ), help="exported tree (.npz)")
    ap.add_argument("--osim", default=str(DEFAULT_OSIM), help="the same model for OpenSim")
    ap.add_argument(
        "--setup",
        help="OpenSim IK setup .xml (weights, coordinate tasks) or 'halpe26' for Pose2Sim's "
        "IK_Setup_Pose2Sim_Halpe26.xml",
    )
    ap.add_argument(
        "--markers",
        help="MarkerSet .xml for both sides (default: the 37 SimSpine markers; with --setup "
        "the Markers_<name>.xml next to IK_Setup_Pose2Sim_<name>.xml)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--xla-flags",
        help="set XLA_FLAGS exactly (echoed in lines); default: the CLI's CPU flags "
        "(simspine_jax._xla.CPU_FLAGS) added to the environment's",
    )
    ap.add_argument(
        "--hang-timeout",
        type=float,
        default=1200.0,
        help="abort (Python stacks on stderr, exit code 1) if one call takes longer than "
        "this many seconds (0: never); see the note on XLA CPU hangs in the module doc",
    )
    ap.add_argument("--out-dir", help="keep TRCs and outputs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 100 if args.quick else 500
    if args.parts is None:
        # float32 IK is refused by the solver for now (see simspine_jax.ik.solve_ik)
        args.parts = ["float64"] if args.quick else [p for p in PARTS if p != "float32"]
    if args.min_runs is None:
        args.min_runs = 3
    args.min_runs = max(3, args.min_runs)
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 10.0
    if args.opensim_runs is None:
        args.opensim_runs = 1 if args.quick else 3
    if args.frames < 3:
        ap.error("--frames must be at least 3")
    return args


def _emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def _note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platform without getloadavg
        return []


def _git_state() -> dict:
    """Commit of the checkout and whether the package has uncommitted changes."""

    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    status = git("status", "--porcelain", "--", "simspine_jax")
    return {"git_rev": git("rev-parse", "--short", "HEAD"), "git_dirty": bool(status)}


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({getattr(d, 'device_kind', '') or d.platform})"


def _resolve_setup(args):
    """(setup .xml or None, marker .xml for OpenSim, marker .xml for the tree or None)."""
    if args.setup is None:
        return None, Path(args.markers or DEFAULT_MARKERS), args.markers
    setup = Path(args.setup)
    if args.setup.lower() == "halpe26":
        from simspine_jax.osim_bridge import pose2sim_setup_dir

        setup = pose2sim_setup_dir() / "IK_Setup_Pose2Sim_Halpe26.xml"
    markers = args.markers
    if markers is None:
        stem = setup.stem.replace("IK_Setup_Pose2Sim_", "")
        cand = setup.parent / f"Markers_{stem}.xml"
        if not cand.is_file():
            raise SystemExit(f"no marker set for {setup}: pass --markers")
        markers = cand
    return setup, Path(markers), Path(markers)


# ----------------------------------------------------------------------------- timing
def _time_calls(call, min_runs: int, min_time: float, max_runs: int = 20):
    """First call, then >= ``min_runs`` steady calls (more while under ``min_time`` s).

    Returns (first_s, wall_s median, cpu_s median, runs, last result, fastest wall_s)."""
    import jax

    walls, cpus = [], []
    try:
        _watchdog()
        t0 = time.perf_counter()
        out = jax.block_until_ready(call())
        first = time.perf_counter() - t0
        start = time.perf_counter()
        while len(walls) < min_runs or (
            time.perf_counter() - start < min_time and len(walls) < max_runs
        ):
            _watchdog()
            t0, c0 = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(call())
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return first, statistics.median(walls), statistics.median(cpus), len(walls), out, min(walls)


_HANG_TIMEOUT = [0.0]


def _watchdog() -> None:
    """Exit with the Python stacks on stderr if the next measurement hangs (see module doc)."""
    if _HANG_TIMEOUT[0] > 0:
        # sys.__stderr__: faulthandler needs a real file descriptor (pytest swaps sys.stderr)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.dump_traceback_later(_HANG_TIMEOUT[0], exit=True, file=sys.__stderr__)


def _checks(tree64, q, trial, weights, tasks, ref_cost=None):
    """Accuracy of a solution ``q`` (T, n_indep) (any dtype) measured the same way for every
    implementation, in float64. Returns (fields, per-frame cost (T,), NaN where q is not finite).

    Fields: ``cost_mean`` (pipeline.frame_costs), ``frames_cost_gt_opensim_2pct`` (with
    ``ref_cost``), ``marker_rms_mm_fk64`` (mean per-frame RMS of the weighted observed markers,
    from float64 FK of ``q``), ``rot_rmse_deg_vs_truth``."""
    import numpy as np

    from simspine_jax.fk import forward_kinematics
    from simspine_jax.pipeline import frame_costs

    markers = trial["markers"]
    q = np.asarray(q, np.float64)
    ok = np.all(np.isfinite(q), 1)
    q0 = np.where(ok[:, None], q, 0.0)
    cost = np.where(ok, frame_costs(tree64, q0, markers, weights, tasks), np.nan)
    zhat = np.asarray(forward_kinematics(tree64, q0).markers, np.float64)
    d2 = np.sum((zhat - markers) ** 2, -1)
    used = np.isfinite(d2) & (np.asarray(weights)[None, :] > 0)
    rms = np.sqrt(np.sum(np.where(used, d2, 0.0), 1) / np.maximum(used.sum(1), 1))
    out = {
        "cost_mean": float(np.nanmean(cost)),
        "marker_rms_mm_fk64": float(np.mean(rms[ok]) * 1e3) if ok.any() else None,
    }
    if ref_cost is not None:
        out["frames_cost_gt_opensim_2pct"] = int(np.sum(cost > 1.02 * ref_cost + 1e-12))
    rot = [
        i
        for i, ci in enumerate(tree64.topology.indep_coord)
        if tree64.meta["coordinates"][int(ci)]["motion_type"] != "translational"
    ]
    err = np.rad2deg(q[:, rot] - trial["q_true"][:, rot])
    out["rot_rmse_deg_vs_truth"] = float(np.nanmedian(np.sqrt(np.nanmean(err**2, 0))))
    return out, cost


def _result_fields(res) -> dict:
    import numpy as np

    status = np.asarray(res.status)
    return {
        "marker_rms_mm": float(np.nanmean(np.asarray(res.rms_error, np.float64)) * 1e3),
        "marker_max_mm": float(np.nanmax(np.asarray(res.max_error, np.float64)) * 1e3),
        "iterations_mean": float(np.mean(np.asarray(res.iterations))),
        "converged": int(np.sum(status == 0)),
        "max_iters": int(np.sum(status == 1)),
        "too_few_markers": int(np.sum(status == 2)),
    }


# ----------------------------------------------------------------------------- trials
def make_trials(tree, names, frames: int, seed: int, out_dir: Path) -> dict:
    """Synthetic trials written as TRC (mm) and read back: both sides see the same numbers."""
    from simspine_jax.io import read_trc, write_trc
    from simspine_jax.pipeline import trc_to_model_markers
    from simspine_jax.synth import synthetic_trial

    trials = {}
    for name in names:
        noise, gaps = TRIALS[name]
        tr = synthetic_trial(tree, frames, noise_m=noise, gap_fraction=gaps, seed=seed)
        path = out_dir / f"{name}.trc"
        write_trc(path, tree.marker_names, tr["time"], tr["markers"], units="mm")
        markers = trc_to_model_markers(tree, read_trc(path), path)
        trials[name] = dict(trc=path, markers=markers, q_true=tr["q_true"], frames=frames)
    return trials


# ----------------------------------------------------------------------------- OpenSim
def _run_opensim_child(args, name, trial, osim_markers, setup, k: int) -> dict:
    """One OpenSim IK run in a fresh process (the library's
    :func:`~simspine_jax.osim_bridge.ik.run_opensim_ik_subprocess`): its timings and arrays."""
    import math

    from simspine_jax.osim_bridge.ik import run_opensim_ik_subprocess

    return run_opensim_ik_subprocess(
        args.osim,
        trial["trc"],
        setup,
        out_dir=Path(trial["trc"]).parent / f"opensim_{name}",
        markers=osim_markers,
        name=f"{name}_{k}",
        timeout_s=args.hang_timeout or math.inf,
    )


def bench_opensim(args, name, trial, tree64, weights, tasks, osim_markers, setup, base):
    """Median of ``args.opensim_runs`` runs of OpenSim's IK tool, each in a child process.
    Returns (record, per-frame cost (T,))."""
    import numpy as np

    runs = []
    for k in range(args.opensim_runs):
        r = _run_opensim_child(args, name, trial, osim_markers, setup, k)
        runs.append(r)
        _note(
            f"OpenSim {name} run {k + 1}/{args.opensim_runs}: tool.run() {r['wall_s']:.2f} s, "
            f"process {r['process_s']:.2f} s"
        )

    def med(key):
        return statistics.median(float(x[key]) for x in runs)

    wall = med("wall_s")
    r = runs[-1]
    q = np.asarray(r["q_full"])[:, tree64.topology.indep_coord]
    checks, cost = _checks(tree64, q, trial, weights, tasks)
    rec = dict(
        base,
        bench="ik",
        impl="opensim",
        trial=name,
        frames=trial["frames"],
        batch=1,
        dtype="float64",
        lambda_v=0.0,
        lambda_a=0.0,
        compile_s=None,
        wall_s=wall,
        frames_per_s=trial["frames"] / wall,
        marker_rms_mm=float(np.mean(r["marker_rms"]) * 1e3),
        marker_max_mm=float(np.max(r["marker_max"]) * 1e3),
        device=f"cpu ({platform.processor() or platform.machine()}; OpenSim, 1 thread)",
        cpu_s=med("cpu_s"),
        setup_s=statistics.median(x["total_s"] - x["wall_s"] for x in runs),
        total_s=med("total_s"),
        process_s=med("process_s"),
        accuracy=r["accuracy"],
        opensim_version=importlib.metadata.version("opensim"),
        repeats=len(runs),
        load_avg=_load_avg(),
        **checks,
    )
    _emit(rec)
    return rec, cost


# ----------------------------------------------------------------------------- ours
class _Float32Mode:
    """float32 solves run with x64 on (as asked: ``tree.astype(float32)``, float32 markers);
    if tracing fails there (a float64 constant leaking into a float32 program), they run with
    x64 off instead, as ``simspine-jax ik --float32`` does, on a float32 tree loaded with x64
    off, and the lines say ``x64: false``."""

    x64 = True
    trees: dict = {}


def _solve_context(dtype: str):
    import jax

    if dtype == "float32" and not _Float32Mode.x64:
        return jax.enable_x64(False)
    return contextlib.nullcontext()


def _tree_as(dtype: str, tree64, args):
    """The tree in ``dtype`` for the current x64 mode (call inside :func:`_solve_context`)."""
    import jax.numpy as jnp
    import numpy as np

    if dtype == "float64":
        return tree64
    key = (dtype, _Float32Mode.x64)
    if key not in _Float32Mode.trees:
        if _Float32Mode.x64:
            _Float32Mode.trees[key] = tree64.astype(jnp.dtype(dtype))
        else:  # a tree made with x64 on keeps 64-bit leaves that x64-off programs reject
            from simspine_jax.model import load_model

            _Float32Mode.trees[key] = load_model(
                args.model, markers=args.tree_markers, dtype=np.dtype(dtype)
            )
    return _Float32Mode.trees[key]


def _timed(dtype: str, make_call, args):
    """_time_calls(make_call()) in the right x64 mode, switching float32 to x64 off on a dtype
    error. ``make_call`` builds the call inside the mode's context."""
    try:
        with _solve_context(dtype):
            return _time_calls(make_call(), args.min_runs, args.min_time)
    except TypeError as e:
        if dtype != "float32" or not _Float32Mode.x64:
            raise
        first_line = str(e).strip().splitlines()[0]
        _note(f"float32 with x64 on failed ({first_line}); timing float32 with x64 off")
        _Float32Mode.x64 = False
        with _solve_context(dtype):
            return _time_calls(make_call(), args.min_runs, args.min_time)


def bench_jax(args, tree64, trials, weights, tasks, configs, opensim, base, device):
    """One line per (config, trial). ``configs``: (dtype, IKOptions). Returns {(dtype, lam_v,
    lam_a, trial): record}."""
    import numpy as np

    from simspine_jax.errors import InputError
    from simspine_jax.ik import solve_ik

    out = {}
    for dtype, opts in configs:
        compiled = False
        for name, trial in trials.items():
            mk = np.asarray(trial["markers"], dtype)
            lam = f"lambda_v={opts.smooth_vel}, lambda_a={opts.smooth_acc}"
            _note(f"jax {dtype} {lam} on {name}: compiling/solving")

            def make_call(dtype=dtype, mk=mk, opts=opts):
                tree = _tree_as(dtype, tree64, args)
                return lambda: solve_ik(tree, mk, weights, tasks, opts)

            try:
                first, wall, cpu, runs, res, best = _timed(dtype, make_call, args)
            except InputError as e:  # e.g. a solver that refuses float32 trees
                _note(f"jax {dtype} {lam} skipped: {e}")
                break
            ref = opensim.get(name)
            ref_cost = None if ref is None else ref[1]
            checks, _ = _checks(tree64, res.q, trial, weights, tasks, ref_cost)
            rec = dict(
                base,
                bench="ik",
                impl="jax",
                trial=name,
                frames=trial["frames"],
                batch=1,
                dtype=dtype,
                lambda_v=opts.smooth_vel,
                lambda_a=opts.smooth_acc,
                compile_s=first - wall,
                wall_s=wall,
                frames_per_s=trial["frames"] / wall,
                frames_per_s_best=trial["frames"] / best,
                device=device,
                first_call_s=first,
                cpu_s=cpu,
                repeats=runs,
                program_reused=compiled,
                x64=dtype == "float64" or _Float32Mode.x64,
                load_avg=_load_avg(),
                **_result_fields(res),
                **checks,
            )
            _emit(rec)
            out[(dtype, opts.smooth_vel, opts.smooth_acc, name)] = rec
            compiled = True  # same shapes (bucketed length): the next trial reuses the program
    return out


def bench_batch(args, tree64, weights, tasks, batches, base, device):
    """solve_ik_batch (float64, lambda = 0) on B different noisy trials (seeds 0..B-1)."""
    import numpy as np

    from simspine_jax.ik import IKOptions, solve_ik_batch
    from simspine_jax.synth import synthetic_trial

    noise, gaps = TRIALS["noise5mm"]
    seqs = [
        synthetic_trial(tree64, args.frames, noise_m=noise, gap_fraction=gaps, seed=s)["markers"]
        for s in range(max(batches))
    ]
    out = {}
    for B in batches:
        _note(f"jax batch {B} x {args.frames} frames: compiling/solving")
        first, wall, cpu, runs, res, best = _timed(
            "float64",
            lambda b=B: lambda: solve_ik_batch(tree64, seqs[:b], weights, tasks, IKOptions()),
            args,
        )
        per = [_result_fields(r) for r in res]
        rec = dict(
            base,
            bench="ik",
            impl="jax",
            trial="noise5mm",
            frames=args.frames,
            batch=B,
            batched=True,
            seeds=f"0..{B - 1}",
            dtype="float64",
            lambda_v=0.0,
            lambda_a=0.0,
            compile_s=first - wall,
            wall_s=wall,
            frames_per_s=B * args.frames / wall,
            frames_per_s_best=B * args.frames / best,
            marker_rms_mm=float(np.mean([p["marker_rms_mm"] for p in per])),
            marker_max_mm=float(np.max([p["marker_max_mm"] for p in per])),
            iterations_mean=float(np.mean([p["iterations_mean"] for p in per])),
            converged=int(sum(p["converged"] for p in per)),
            max_iters=int(sum(p["max_iters"] for p in per)),
            device=device,
            first_call_s=first,
            cpu_s=cpu,
            repeats=runs,
            program_reused=False,
            load_avg=_load_avg(),
        )
        _emit(rec)
        out[B] = rec
    return out


# ----------------------------------------------------------------------------- CLI
def bench_cli(args, name, trial, tree_markers, setup, base, device, opensim_rec):
    """``python -m simspine_jax.cli ik`` in a fresh process, cold then warm compilation cache."""
    out = {}
    work = Path(trial["trc"]).parent / f"cli_{name}"
    with tempfile.TemporaryDirectory(prefix="simspine_xla_cache_") as cache:
        env = dict(os.environ, SIMSPINE_JAX_CACHE=cache)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        for run in ("cold", "warm"):
            cmd = [sys.executable, "-m", "simspine_jax.cli", "ik", "--model", str(args.model)]
            cmd += ["--trc", str(trial["trc"]), "-o", str(work / run)]
            if tree_markers is not None:
                cmd += ["--markers", str(tree_markers)]
            if setup is not None:
                cmd += ["--setup", str(setup)]
            _note(f"CLI {run} on {name}: {' '.join(cmd[1:])}")
            t0 = time.perf_counter()
            p = subprocess.run(
                cmd,
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=args.hang_timeout or None,
            )
            total = time.perf_counter() - t0
            summary = {}
            for line in p.stdout.splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        summary = json.loads(line)
            if p.returncode:
                _note(f"CLI failed ({p.returncode}): {p.stderr[-2000:]}")
            rec = dict(
                base,
                bench="ik_cli",
                impl="jax_cli",
                run=run,
                trial=name,
                frames=trial["frames"],
                dtype="float64",
                total_s=total,
                frames_per_s=trial["frames"] / total,
                marker_rms_mm=summary.get("rms_mm"),
                solve_frames_per_s=summary.get("solve_frames_per_s"),
                cli_reported_wall_s=summary.get("wall_s"),
                returncode=p.returncode,
                device=device,
                load_avg=_load_avg(),
            )
            _emit(rec)
            out[run] = rec
    if opensim_rec is not None:
        rec = dict(
            base,
            bench="ik_cli",
            impl="opensim",
            run="load_and_run",
            trial=name,
            frames=trial["frames"],
            dtype="float64",
            total_s=opensim_rec["total_s"],
            frames_per_s=trial["frames"] / opensim_rec["total_s"],
            marker_rms_mm=opensim_rec["marker_rms_mm"],
            process_s=opensim_rec["process_s"],
            device=opensim_rec["device"],
            load_avg=_load_avg(),
        )
        _emit(rec)
        out["opensim"] = rec
    return out


# ----------------------------------------------------------------------------- main
def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    else:  # what the CLI runs with (simspine_jax._xla); --xla-flags '' times JAX's defaults
        from simspine_jax._xla import tune_xla_cpu

        tune_xla_cpu()
    _HANG_TIMEOUT[0] = args.hang_timeout
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from simspine_jax.ik import IKOptions
    from simspine_jax.model import load_model

    setup, osim_markers, tree_markers = _resolve_setup(args)
    args.tree_markers = tree_markers
    tree64 = load_model(args.model, markers=tree_markers, dtype=np.float64)
    if setup is not None:
        from simspine_jax.ik_setup import (
            coordinate_task_arrays,
            marker_weight_vector,
            read_ik_setup,
        )

        ik_setup = read_ik_setup(setup)
        weights, _ = marker_weight_vector(ik_setup, tree64, tree64.marker_names)
        tasks = coordinate_task_arrays(ik_setup, tree64)
    else:
        weights, tasks = np.ones(tree64.n_marker), None
    device = _device()
    base = dict(
        model=Path(args.model).stem,
        setup=None if setup is None else setup.name,
        n_marker=tree64.n_marker,
        n_indep=tree64.n_indep,
        jax_version=jax.__version__,
        cpu_count=os.cpu_count(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        quick=bool(args.quick),
        **_git_state(),
    )
    _note(
        f"model {base['model']} ({tree64.n_indep} independent coordinates, {tree64.n_marker} "
        f"markers, setup {base['setup']}); {args.frames} frames; jax {jax.__version__} on "
        f"{device}; parts {' '.join(args.parts)}"
    )
    batches = args.batches or (
        [1, 8, 32] if jax.devices()[0].platform == "cpu" else [1, 8, 32, 128]
    )
    if args.quick and args.batches is None:
        batches = [1, 2]

    with contextlib.ExitStack() as stack:
        if args.out_dir:
            out_dir = Path(args.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
        else:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_ik_")))
        trials = make_trials(tree64, args.trials, args.frames, args.seed, out_dir)

        opensim = {}
        if not args.no_opensim:
            if importlib.util.find_spec("opensim") is None:
                _note("OpenSim skipped: the 'opensim' package is not installed")
            else:
                for name, trial in trials.items():
                    opensim[name] = bench_opensim(
                        args, name, trial, tree64, weights, tasks, osim_markers, setup, base
                    )

        configs = []
        if "float64" in args.parts:
            configs.append(("float64", IKOptions()))
        if "float32" in args.parts:
            configs.append(("float32", IKOptions()))
        smooth = IKOptions(smooth_vel=args.smooth_vel, smooth_acc=args.smooth_acc)
        if "smooth" in args.parts:
            configs.append(("float64", smooth))
        ours = bench_jax(args, tree64, trials, weights, tasks, configs, opensim, base, device)
        batch = (
            bench_batch(args, tree64, weights, tasks, batches, base, device)
            if "batch" in args.parts
            else {}
        )
        cli = {}
        if "cli" in args.parts:
            name = "noise5mm" if "noise5mm" in trials else next(iter(trials))
            os_rec = opensim.get(name, (None,))[0]
            cli = bench_cli(args, name, trials[name], tree_markers, setup, base, device, os_rec)

    for name, trial in trials.items():
        os_rec = opensim.get(name, (None,))[0]
        os_fps = None if os_rec is None else os_rec["frames_per_s"]

        def fps(dtype, lv, la, n=name):
            r = ours.get((dtype, lv, la, n))
            return None if r is None else r["frames_per_s"]

        line = dict(
            bench="ik_ratio",
            trial=name,
            frames=trial["frames"],
            setup=base["setup"],
            opensim_frames_per_s=os_fps,
            jax_frames_per_s_lambda0=fps("float64", 0.0, 0.0),
            ratio_lambda0=_ratio(fps("float64", 0.0, 0.0), os_fps),
            jax_frames_per_s_lambda0_float32=fps("float32", 0.0, 0.0),
            ratio_lambda0_float32=_ratio(fps("float32", 0.0, 0.0), os_fps),
            lambda_v=smooth.smooth_vel,
            lambda_a=smooth.smooth_acc,
            jax_frames_per_s_smooth=fps("float64", smooth.smooth_vel, smooth.smooth_acc),
            ratio_smooth=_ratio(fps("float64", smooth.smooth_vel, smooth.smooth_acc), os_fps),
        )
        r0 = ours.get(("float64", 0.0, 0.0, name))
        if os_rec is not None and r0 is not None:
            # CPU time per frame: OpenSim uses one core, XLA all of them
            line["ratio_cpu_time_lambda0"] = os_rec["cpu_s"] / r0["cpu_s"]
        if batch and name == "noise5mm":
            best = max(batch.values(), key=lambda r: r["frames_per_s"])
            line.update(
                batch_best=best["batch"],
                jax_frames_per_s_batch_best=best["frames_per_s"],
                ratio_batch_best=_ratio(best["frames_per_s"], os_fps),
            )
        if cli and cli.get("cold", {}).get("trial") == name:
            os_cli = cli.get("opensim", {})
            os_total, os_process = os_cli.get("total_s"), os_cli.get("process_s")
            cold, warm = cli["cold"]["total_s"], cli["warm"]["total_s"]
            line.update(
                cli_cold_total_s=cold,
                cli_warm_total_s=warm,
                opensim_total_s=os_total,
                opensim_process_s=os_process,
                # > 1: the CLI process is faster than OpenSim's model load + run (+ read back)
                ratio_total_cold=_ratio(os_total, cold),
                ratio_total_warm=_ratio(os_total, warm),
                # the same against OpenSim's whole process (python + imports + load + run)
                ratio_process_cold=_ratio(os_process, cold),
                ratio_process_warm=_ratio(os_process, warm),
            )
        line["load_avg"] = _load_avg()
        _emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
