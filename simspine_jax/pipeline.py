"""End-to-end jobs behind the CLI: IK on TRC files, and the demo on the bundled default data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import InputError
from .ik import WEAK_SENSITIVITY, IKOptions


def cache_root() -> Path:
    """Where compiled and traced solvers are kept (``SIMSPINE_JAX_CACHE`` overrides)."""
    return Path(os.environ.get("SIMSPINE_JAX_CACHE", Path.home() / ".cache" / "simspine-jax"))


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, so a second run does not recompile
    (``SIMSPINE_JAX_XLA_CACHE=0`` leaves it off)."""
    import jax

    if os.environ.get("SIMSPINE_JAX_XLA_CACHE", "1") == "0":
        return

    cache = cache_root() / "xla"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def motion_to_independent(tree, motion, path) -> np.ndarray:
    """Independent coordinates (radians, metres) from a StorageData of a motion file."""
    idx = {c: i for i, c in enumerate(motion.labels)}
    cols = []
    for name in tree.independent_names:
        if name not in idx:
            raise InputError(
                f"motion has no column for independent coordinate '{name}'", path=str(path)
            )
        v = motion.values[:, idx[name]].astype(np.float64)
        info = tree.meta["coordinates"][tree.coordinate_names.index(name)]
        if motion.in_degrees and info["motion_type"] == "rotational":
            v = np.deg2rad(v)
        bad = np.nonzero(~np.isfinite(v))[0]
        if bad.size:
            raise InputError(
                "value is not a finite number", path=str(path), frame=int(bad[0]), field=name
            )
        cols.append(v)
    return np.stack(cols, -1)


def trc_to_model_markers(tree, trc, path) -> np.ndarray:
    """TRC positions reordered to the model's markers (NaN for model markers not in the file).

    Shape: (T, M_model, 3)."""
    idx = {n: i for i, n in enumerate(trc.marker_names)}
    common = [n for n in tree.marker_names if n in idx]
    if not common:
        raise InputError(
            f"no TRC marker matches a model marker (TRC: {', '.join(trc.marker_names[:8])}...; "
            f"model: {', '.join(tree.marker_names[:8])}...)",
            path=str(path),
        )
    out = np.full((trc.positions.shape[0], tree.n_marker, 3), np.nan)
    for j, n in enumerate(tree.marker_names):
        if n in idx:
            out[:, j] = trc.positions[:, idx[n]]
    return out


# the files of one IK trial, named after its TRC's stem as OpenSim's IK tool names them
IK_OUTPUT_SUFFIXES = (".mot", "_marker_errors.sto", "_model_marker_locations.sto")


def ik_output_paths(out_dir, stem: str) -> list[Path]:
    """The files :func:`write_ik_outputs` writes for trial ``stem`` in ``out_dir``."""
    return [Path(out_dir) / f"{stem}{suffix}" for suffix in IK_OUTPUT_SUFFIXES]


def write_ik_outputs(tree, out_dir: Path, stem: str, time_s, res, weights) -> dict:
    """Write ``<stem>.mot``, ``<stem>_marker_errors.sto``, ``<stem>_model_marker_locations.sto``
    the way OpenSim's IK tool does. Returns the summary of the trial.

    The three files appear together or not at all (:func:`simspine_jax.io.outputs.output_set`):
    they are written and fsync'ed in a staging folder inside ``out_dir``, then moved in with
    interrupts held. An error while writing (disk full, permission denied), a
    ``KeyboardInterrupt`` or SIGTERM leaves the trial's previous files as they were and no
    temporary files; existing targets that are not regular files are refused
    (:class:`~simspine_jax.io.outputs.OutputError`).
    """
    from .io import write_storage
    from .io.outputs import output_set
    from .synth import coordinates_for_storage

    weights = np.asarray(weights)
    err = np.asarray(res.marker_error, np.float64)
    used = np.isfinite(err) & (weights[None, :] > 0)
    sq = np.where(used, weights[None, :] * np.nan_to_num(err) ** 2, 0.0).sum(1)
    loc = np.asarray(res.model_markers, np.float64)
    with output_set(out_dir, field="out") as stage:
        mot, errors, locations = ik_output_paths(stage, stem)
        write_storage(
            mot,
            list(tree.coordinate_names),
            time_s,
            coordinates_for_storage(tree, np.asarray(res.q_full, np.float64)),
            in_degrees=True,
            name="Coordinates",
        )
        write_storage(
            errors,
            ["total_squared_error", "marker_error_RMS", "marker_error_max"],
            time_s,
            np.stack([sq, np.asarray(res.rms_error), np.asarray(res.max_error)], 1),
            in_degrees=None,
            name="Model Marker Errors from IK",
            kind="sto",
        )
        write_storage(
            locations,
            [f"{m}_{a}" for m in tree.marker_names for a in ("tx", "ty", "tz")],
            time_s,
            loc.reshape(loc.shape[0], -1),
            in_degrees=None,
            name="Model Marker Locations from IK",
            kind="sto",
        )
    status = np.asarray(res.status)
    sens = np.asarray(res.sensitivity)
    weak = [
        tree.independent_names[i]
        for i in range(sens.shape[1])
        if np.nanmedian(np.where(np.isfinite(sens[:, i]), sens[:, i], 1e9)) > WEAK_SENSITIVITY
    ]
    return dict(
        trial=stem,
        frames=int(status.shape[0]),
        rms_mm=round(float(np.nanmean(res.rms_error)) * 1e3, 3),
        max_mm=round(float(np.nanmax(res.max_error)) * 1e3, 3),
        iterations_mean=round(float(np.mean(res.iterations)), 2),
        converged=int(np.sum(status == 0)),
        max_iters=int(np.sum(status == 1)),
        too_few_markers=int(np.sum(status == 2)),
        stalled=int(np.sum(status == 3)),
        # the smoothing stage (only with smoothing): frames whose window hit its iteration cap
        smoothing_max_iters=int(np.sum(np.asarray(res.smooth_status) != 0)),
        weakly_observed=weak,
    )


def plan_ik_outputs(out, trcs, inputs=()) -> list[str]:
    """Check, before any work, where :func:`run_ik_files` will write: ``out`` must be a folder
    (or not exist yet), no two trials may share a stem (their files would overwrite each other:
    refused, not renamed, so each output keeps the name OpenSim gives it), and no output may be
    an input (the TRCs or ``inputs``) or an existing non-regular file. Returns the stems.
    Raises :class:`~simspine_jax.io.outputs.OutputError`."""
    from .io.outputs import check_output_dir, check_output_file, refuse_inputs, unique_stems

    check_output_dir(out, field="out")
    stems = unique_stems(trcs, field="trc")
    paths = [p for stem in stems for p in ik_output_paths(out, stem)]
    for p in paths:
        check_output_file(p, field="out")
    refuse_inputs(paths, [*trcs, *inputs], field="out")
    return stems


def run_ik_files(
    model,
    trcs,
    out,
    *,
    markers=None,
    setup=None,
    smooth_vel=0.0,
    smooth_acc=0.0,
    continuity=IKOptions.continuity,
    progress=True,
) -> list[dict]:
    """IK of TRC trials, solved together in one compiled batch; writes OpenSim-style files.

    ``out`` is a folder; each trial writes the files of :func:`write_ik_outputs` there, named
    after its TRC's stem, as one set (all or none). Checked before solving
    (:func:`plan_ik_outputs`): two TRCs with the same stem, an output that would replace an
    input (TRC, model, markers, setup) or a non-regular file are refused with
    :class:`~simspine_jax.io.outputs.OutputError`.
    """
    import jax

    jax.config.update("jax_enable_x64", True)  # IK runs in float64 (see ik.solve_ik)
    enable_compilation_cache()
    from tqdm import tqdm

    from .ik import IKOptions, solve_ik_batch
    from .ik_setup import apply_setup, read_ik_setup
    from .io import read_trc
    from .model import load_model

    t_start = time.perf_counter()
    stems = plan_ik_outputs(out, trcs, [model, markers, setup])
    tree = load_model(model, markers=markers)
    trials = [read_trc(p) for p in trcs]
    seqs = [trc_to_model_markers(tree, t, p) for t, p in zip(trials, trcs, strict=True)]
    if setup is not None:
        ik_setup = read_ik_setup(setup)
        # per trial, as OpenSim's tool runs each: the tasks it skips (a warning each), its
        # time_range frames, from_file targets at the trial's own frame times
        plans = [
            apply_setup(ik_setup, tree, t.marker_names, t.time, trc_path=p)
            for t, p in zip(trials, trcs, strict=True)
        ]
        # one weight vector for the batch: a marker that a trial lacks is NaN there (unused)
        weights = np.max([p.marker_weight for p in plans], axis=0)
        tasks = [p.coord_tasks for p in plans]
        # each trial cut to its time_range frames: those are solved and written
        trials = [
            replace(t, time=t.time[f], frame_numbers=t.frame_numbers[f], positions=t.positions[f])
            for t, f in zip(trials, (p.frames for p in plans), strict=True)
        ]
        seqs = [s[p.frames] for s, p in zip(seqs, plans, strict=True)]
    else:
        weights, tasks = np.ones(tree.n_marker), None
    opts = IKOptions(smooth_vel=smooth_vel, smooth_acc=smooth_acc, continuity=continuity)
    t0 = time.perf_counter()
    results = solve_ik_batch(
        tree, seqs, weights, tasks, opts, cache_dir=cache_root() / "traced", progress=progress
    )
    jax.block_until_ready(results)
    solve_s = time.perf_counter() - t0
    out = Path(out)
    summaries = []
    it = zip(trials, stems, results, strict=True)
    for trial, stem, res in tqdm(it, total=len(trials), disable=not progress, desc="writing"):
        s = write_ik_outputs(tree, out, stem, trial.time, res, weights)
        s["solve_s_incl_compile"] = round(solve_s, 2)  # all trials, one call
        s["frames_per_s_incl_compile"] = round(sum(len(t.time) for t in trials) / solve_s, 1)
        s["wall_s"] = round(time.perf_counter() - t_start, 2)
        summaries.append(s)
        print(json.dumps(s))
    return summaries


def run_demo(out, frames: int = 300, opensim_check: bool = True, excerpt: int = 40) -> dict:
    """The README's main job on the bundled default data.

    A reproducible synthetic SimSpine trial (smooth multi-action motion, 5 mm marker noise, a
    few gaps) is written as TRC, solved with the default IK setup (Pose2Sim-style weights and
    the L5_S1 coordinate task), written as OpenSim files with a plot, and, when the opensim
    package is installed, cross-checked against OpenSim's IK on a short excerpt.

    ``out`` is a folder (created if missing; a file there is refused); its files are
    replaced one trial set at a time, as in :func:`run_ik_files` and :func:`crosscheck`.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache()
    from ._resources import (
        default_ik_setup_path,
        default_markers_path,
        default_model_path,
        default_osim_path,
    )
    from .io import read_storage, write_trc
    from .io.outputs import check_output_dir, check_output_file, output_set, writing_to
    from .model import load_model
    from .plots import plot_ik_summary
    from .synth import synthetic_trial

    setup = default_ik_setup_path()
    out = check_output_dir(out, field="out")
    plot = check_output_file(out / "sample_trial_ik.png", field="out")
    with writing_to(out, field="out"):
        out.mkdir(parents=True, exist_ok=True)
    tree = load_model(default_model_path())
    trial = synthetic_trial(tree, frames, noise_m=0.005, gap_fraction=0.02, seed=0)
    trc = out / "sample_trial.trc"
    write_trc(trc, tree.marker_names, trial["time"], trial["markers"], units="mm")
    summaries = run_ik_files(default_model_path(), [trc], out, setup=setup, progress=False)
    mot = read_storage(out / "sample_trial.mot")
    q = motion_to_independent(tree, mot, out / "sample_trial.mot")
    with output_set(out, field="out") as stage:  # no stray temporary file
        plot_ik_summary(tree, trial, q, stage / plot.name)
    err_deg = np.rad2deg(np.abs(q - trial["q_true"]))
    report = dict(
        summary=summaries[0],
        coordinate_error_vs_truth_deg_median=round(float(np.median(err_deg)), 3),
        plot=str(plot),
    )
    if opensim_check:
        # found, not imported: OpenSim runs in a child process (see crosscheck)
        if importlib.util.find_spec("opensim") is None:
            report["crosscheck"] = "skipped: the opensim package is not installed"
        else:
            n = min(excerpt, frames)
            ex = out / "crosscheck" / "excerpt.trc"
            write_trc(ex, tree.marker_names, trial["time"][:n], trial["markers"][:n], units="mm")
            cc = crosscheck(
                default_osim_path(),
                ex,
                out / "crosscheck",
                setup=setup,
                markers=default_markers_path(),
            )
            worst = max(
                (k for k, v in cc["coordinates"].items() if not v["weakly_observed"]),
                key=lambda k: cc["coordinates"][k]["rms"],
            )
            report["crosscheck"] = dict(
                frames=n,
                ours_marker_rms_mm=round(cc["ours"]["marker_rms_mm"], 3),
                opensim_marker_rms_mm=round(cc["opensim"]["marker_rms_mm"], 3),
                ours_cost_mean=cc["ours"]["cost_mean"],
                opensim_cost_mean=cc["opensim"]["cost_mean"],
                worst_observed_coordinate=worst,
                worst_rms_diff=round(cc["coordinates"][worst]["rms"], 4),
                frames_where_ours_costs_more_than_2pct=cc["frames_where_ours_costs_more_than_2pct"],
                unit=cc["coordinates"][worst]["unit"],
                speed_ratio=round(cc["speed_ratio"], 1),
                report=str(out / "crosscheck" / "crosscheck.json"),
            )
    print(json.dumps(report))
    return report


def frame_costs(tree, q_indep, markers, weights, tasks) -> np.ndarray:
    """Weighted per-frame IK cost of given coordinates, the one the solver minimises: markers
    plus coordinate tasks scaled by the frame's observed marker weight (OpenSim's objective
    times that weight, so costs are comparable between the two solvers). Shape: (T,)."""
    import jax.numpy as jnp

    from .fk import forward_kinematics, full_coordinates

    zhat = np.asarray(forward_kinematics(tree, q_indep).markers)
    d2 = np.sum((zhat - markers) ** 2, -1)
    w = np.asarray(weights)[None, :] * np.isfinite(d2)
    cost = np.sum(np.where(w > 0, w * np.nan_to_num(d2), 0.0), 1)
    if tasks is not None and len(tasks[0]):
        qf = np.asarray(full_coordinates(tree, jnp.asarray(q_indep)))
        ci, cw, ct = (np.asarray(a) for a in tasks)
        W = np.sum(np.where(w > 0, w, 0.0), 1)  # OpenSim's task scale (see ik._residual)
        ct = np.broadcast_to(ct, qf[:, ci].shape)  # (K,) or per frame (T, K)
        cost = cost + W * np.sum(cw[None] * (qf[:, ci] - ct) ** 2, 1)
    return cost


def _json_floats(a) -> list:
    """A float array as a JSON-safe list (non-finite values become null)."""
    return [float(x) if math.isfinite(x) else None for x in np.asarray(a, np.float64).ravel()]


def crosscheck(
    osim, trc, out, *, setup=None, markers=None, plot=True, opensim_timeout_s=None
) -> dict:
    """OpenSim's InverseKinematicsTool and our IK (lambda = 0) on identical inputs.

    OpenSim runs in a child process (:func:`~simspine_jax.osim_bridge.ik.run_opensim_ik_subprocess`;
    its files go to ``out/opensim``), so this process never imports ``opensim``: run in one
    process with JAX it slowed XLA CPU ~9x and sometimes hung it. ``opensim_timeout_s`` bounds
    that child (default: the helper's, from the trial's length); past it the child is killed
    and :class:`~simspine_jax.osim_bridge.ik.OpenSimTimeoutError` raised.

    Writes ``out/crosscheck.json`` (per-coordinate RMS/max difference in degrees or mm, marker
    errors, per-frame weighted costs of both solvers (``ours.frame_costs``,
    ``opensim.frame_costs``: :func:`frame_costs`, one per TRC frame), the frames (0-based) where
    ours costs more than 2 % above OpenSim's and their count, wall times, frames/s ratio) and a
    plot of the coordinates that differ most. Coordinates that the markers observe poorly
    (sensitivity) are flagged. ``crosscheck.json`` and ``crosscheck.png`` appear together or
    not at all (:func:`simspine_jax.io.outputs.output_set`); an output (ours or OpenSim's) that
    would replace an input or a non-regular file is refused before any work.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache()
    from .ik import IKOptions, solve_ik
    from .ik_setup import apply_setup, read_ik_setup
    from .io import read_trc
    from .io.outputs import (
        check_output_dir,
        check_output_file,
        output_set,
        refuse_inputs,
        writing_to,
    )
    from .model import load_model
    from .osim_bridge.ik import run_opensim_ik_subprocess

    out = check_output_dir(out, field="out")
    check_output_dir(out / "opensim", field="out")
    name = Path(trc).stem.replace(".", "_")  # OpenSim's names (see run_opensim_ik)
    outputs = [
        out / "crosscheck.json",
        out / "crosscheck.png",
        out / "opensim" / f"{name}.mot",
        out / "opensim" / f"{name}_ik_marker_errors.sto",
    ]
    for p in outputs:
        check_output_file(p, field="out")
    refuse_inputs(outputs, [osim, trc, setup, markers], field="out")
    with writing_to(out, field="out"):
        (out / "opensim").mkdir(parents=True, exist_ok=True)
    tree = load_model(osim, markers=markers)
    data = read_trc(trc)
    seq = trc_to_model_markers(tree, data, trc)
    time_range, setup_warnings = None, []
    if setup is not None:
        s = read_ik_setup(setup)
        plan = apply_setup(s, tree, data.marker_names, data.time, trc_path=trc)
        weights, tasks, setup_warnings = plan.marker_weight, plan.coord_tasks, plan.warnings
        seq = seq[plan.frames]
        if s.time_range is not None:  # OpenSim's frames: the ones we picked, by their times
            t_sel = data.time[plan.frames]
            time_range = (float(t_sel[0]), float(t_sel[-1]))
    else:
        weights = np.array([float(n in data.marker_names) for n in tree.marker_names])
        tasks = None
    ref = run_opensim_ik_subprocess(
        osim,
        trc,
        setup,
        out_dir=out / "opensim",
        markers=markers,
        time_range=time_range,
        timeout_s=opensim_timeout_s,
    )
    if len(ref["time"]) != len(seq):  # a bug of ours, not the input's fault
        raise RuntimeError(f"OpenSim solved {len(ref['time'])} frames of {trc}, we {len(seq)}")
    if list(ref["coordinate_names"]) != list(tree.coordinate_names):
        raise InputError("OpenSim and the exported model list different coordinates", path=osim)
    # ours: a first call compiles; time the second (the compile is reported separately)
    t0 = time.perf_counter()
    res = jax.block_until_ready(solve_ik(tree, seq, weights, tasks, IKOptions()))
    t1 = time.perf_counter()
    res = jax.block_until_ready(solve_ik(tree, seq, weights, tasks, IKOptions()))
    t2 = time.perf_counter()
    T = seq.shape[0]
    q_ref_full = np.asarray(ref["q_full"])
    q_ref = q_ref_full[:, tree.topology.indep_coord]
    q_ours = np.asarray(res.q)
    cost_ours = frame_costs(tree, q_ours, seq, weights, tasks)
    cost_ref = frame_costs(tree, q_ref, seq, weights, tasks)
    worse = np.nonzero(cost_ours > 1.02 * cost_ref + 1e-12)[0]
    sens = np.nanmedian(np.where(np.isfinite(res.sensitivity), res.sensitivity, 1e9), 0)
    coords = {}
    for i, n in enumerate(tree.independent_names):
        info = tree.meta["coordinates"][tree.coordinate_names.index(n)]
        d = q_ours[:, i] - q_ref[:, i]
        if info["motion_type"] == "translational":
            unit, d = "mm", d * 1e3
        else:
            unit, d = "deg", np.rad2deg(d)
        coords[n] = dict(
            unit=unit,
            rms=float(np.sqrt(np.mean(d**2))),
            max=float(np.max(np.abs(d))),
            weakly_observed=bool(sens[i] > WEAK_SENSITIVITY),
        )
    report = dict(
        osim=str(osim),
        trc=str(trc),
        setup=None if setup is None else str(setup),
        setup_warnings=list(setup_warnings),  # tasks skipped, as OpenSim skips them
        frames=T,
        coordinates=coords,
        ours=dict(
            marker_rms_mm=float(np.nanmean(res.rms_error) * 1e3),
            marker_max_mm=float(np.nanmax(res.max_error) * 1e3),
            wall_s=t2 - t1,
            first_call_s=t1 - t0,
            frames_per_s=T / (t2 - t1),
            cost_mean=float(np.mean(cost_ours)),
            frame_costs=_json_floats(cost_ours),
        ),
        opensim=dict(
            marker_rms_mm=float(np.mean(ref["marker_rms"]) * 1e3),
            marker_max_mm=float(np.max(ref["marker_max"]) * 1e3),
            wall_s=ref["wall_s"],
            frames_per_s=ref["frames_per_s"],
            process_s=ref["process_s"],  # the child process: start, imports, run, results
            cost_mean=float(np.mean(cost_ref)),
            frame_costs=_json_floats(cost_ref),
        ),
        frames_where_ours_costs_more_than_2pct=int(worse.size),
        frame_indices_where_ours_costs_more_than_2pct=[int(t) for t in worse],
        speed_ratio=(T / (t2 - t1)) / ref["frames_per_s"],
        coordinate_tasks=None
        if tasks is None
        else [
            # target: a number, or "per_frame" (a setup with from_file tasks)
            dict(
                coordinate=tree.coordinate_names[int(c)],
                weight=float(w),
                target=float(np.asarray(tasks[2])[k]) if np.ndim(tasks[2]) == 1 else "per_frame",
            )
            for k, (c, w) in enumerate(zip(tasks[0], tasks[1], strict=True))
        ],
    )
    from .io import atomic_write_text

    with output_set(out, field="out") as stage:
        atomic_write_text(stage / "crosscheck.json", json.dumps(report, indent=1))
        if plot:
            from .plots import plot_crosscheck

            plot_crosscheck(tree, ref["time"], q_ours, q_ref, coords, stage / "crosscheck.png")
    return report
