"""Can our IK be trusted? Issue 8's targets, measured against OpenSim's InverseKinematicsTool.

Every trial is a synthetic motion of the SimSpine model (:func:`simspine_jax.synth.synthetic_trial`,
seed ``--seed``, 60 Hz) written as a TRC (millimetres). OpenSim (``InverseKinematicsTool.run()``
in a child process, :func:`simspine_jax.osim_bridge.ik.run_opensim_ik_subprocess`: this process
never imports ``opensim``, see experiments/bench_ik.py "OpenSim apart") and ours
(:func:`simspine_jax.ik.solve_ik`, float64, lambda = 0) solve that same file with the same
weights and coordinate tasks, over the whole trial (a setup's ``time_range`` is not applied
on either side; OpenSim is given the TRC's first and last time). Both solutions are then
measured the same way here, in float64: per-frame cost
:func:`simspine_jax.pipeline.frame_costs` (OpenSim's objective), marker errors from our FK of
the returned coordinates, error against the true motion.

Trial grid (one trial = marker set x weighting x noise x gaps):

* marker sets: ``simspine37`` (the model's 37 SimSpine markers, ``simspine37_markers.xml``;
  setup ``IK_Setup_SimSpine37.xml``, next to ``simspine_jax.cli.DEFAULT_MODEL``), ``halpe26``
  (Pose2Sim's ``Markers_Halpe26.xml`` on the same model, setup ``IK_Setup_Pose2Sim_Halpe26.xml``
  from the pose2sim wheel), and ``custom`` when ``--markers FILE.xml [--setup FILE.xml]`` are
  given (e.g. the official SimSpine ``Markers.xml`` + ``IK_Setup.xml`` from dfki-av/simspine);
* weightings: ``uniform`` (every marker weight 1, no coordinate task: no setup file on either
  side) and ``setup`` (the setup's marker weights and coordinate tasks);
* noise 0, 5, 10 mm (Gaussian, per axis); gaps: 2 % of the marker-frames missing, in runs
  on 3 markers. The same seed gives the same motion and the same noise pattern (scaled) at
  every noise level.

Default grid (12 trials, 300 frames): every marker set x weighting, noise-free without gaps,
5 mm and 10 mm with gaps. ``--full`` (24 trials): each noise level with and without gaps.
``--quick`` (smoke run, 64 frames): ``simspine37`` with its setup, noise-free and 5 mm with
gaps. ``--marker-sets``, ``--weightings``, ``--noise-mm`` cut any grid down.

Runtime of the default on 2 cores (jax 0.10, OpenSim 4.6): OpenSim solves 10-30 frames/s
noise-free and 4-10 frames/s noisy, so its 12 runs of 300 frames take 6-10 minutes, child
start included; ours compiles one program per (marker set, weighting, lambda) (8 of them,
20-50 s each) and then solves a trial in well under a second (a smoothed one in seconds).
Measured: 16.6 minutes (OpenSim's children 10.3 of them) with a load average of 4-7 from other
jobs on the 2 cores; expect 10-12 on a quiet machine. With ``--reuse-opensim`` a rerun takes
OpenSim's results from the cache (below) and needs about 5 minutes. ``--full`` doubles
OpenSim's share. ``--quick`` with ``--no-opensim``: 1-2 minutes.

Smoothing: on the 5 mm trials (``--smooth-noise-mm``) ours also solves with ``lambda_a =
--smooth-acc`` (0.1) and ``lambda_v = --smooth-vel`` (0), and the error against the true motion
is compared with OpenSim's (which has no smoothing): RMS in degrees over the frames and the
rotational independent coordinates whose names start with pelvis, hip, knee, ankle, L5_S1 or
neck (``core``; pelvis translations are left out of it and reported apart in mm).

Prints JSON lines on stdout (progress notes on stderr; the same lines go to
``OUT/results.jsonl``), each with a ``kind``; ``REQUIRED_KEYS`` lists the keys each kind always
carries (null where a value does not apply, e.g. OpenSim's with ``--no-opensim``):

* ``run``: the configuration, ``git_rev`` and whether ``simspine_jax/ik`` has uncommitted changes
  (``ik_dirty``, ``ik_changes``), versions, and whether OpenSim runs.
* ``trial``: one per trial, lambda = 0. ``fit_fraction`` / ``opensim_fit_fraction``: fraction
  of frames whose largest marker error (markers with weight > 0 and data) is below ``--fit-mm``
  (1 mm; meaningful on noise-free trials). ``cost_mean`` / ``opensim_cost_mean``: mean per-frame
  cost; ``cost_ratio_mean``: their ratio (ours / OpenSim). ``frames_within_2pct`` and
  ``fraction_within_2pct``: frames with ours <= 1.02 OpenSim + 1e-12 (absolute);
  ``worst_ratio`` / ``worst_frame``: the largest per-frame (ours + 1e-12) / (OpenSim + 1e-12)
  and its frame (0-based). ``max_iters`` / ``max_iters_fraction``: frames with
  ``IKResult.status == 1``; ``iterations_mean``; ``frames_per_s`` (ours, a steady call after the
  compiling one; ``compile_s`` is the first call minus that) and ``opensim_frames_per_s``
  (frames / ``tool.run()`` seconds; from the cache when ``opensim_cached``).
  ``truth_rms_deg_core`` / ``opensim_truth_rms_deg_core``: error against the true motion.
  ``jump_deg_p50`` / ``jump_deg_p90`` (and ``opensim_``): continuity, the median and 90th
  percentile over neighbouring-frame pairs of the largest change of a rotational coordinate.
* ``smooth``: one per smoothed trial: ``truth_rms_deg_core`` (ours smoothed),
  ``opensim_truth_rms_deg_core``, ``truth_rms_deg_core_lambda0`` (ours unsmoothed),
  ``truth_ratio`` (smoothed ours / OpenSim), ``truth_rms_per_coordinate`` (both sides; degrees,
  pelvis translations in mm); ``objective_rms_deg_core`` / ``opensim_objective_rms_deg_core`` /
  ``objective_ratio``: the same against the objective's noise-free optimum (our lambda = 0
  solve of the true motion's markers with the trial's weights and coordinate tasks). Without
  coordinate tasks that optimum is the truth; a setup's tasks pull their coordinates toward
  fixed targets, which biases the optimum -- OpenSim's and ours alike (SimSpine37 setup, 5 mm:
  pelvis tilt, hip and neck flexion ~5-9 deg off the truth for both) -- and only the noise on
  top of that bias is smoothing's to remove.
* ``target``: one per issue target, ``pass`` true/false (null when nothing could be checked, e.g.
  without OpenSim), the figure that decides it (``value``, ``limit``) and the failing trials:
  ``noise_free_fit`` (every frame of every noise-free trial fits: ``fit_fraction`` == 1; trials
  with coordinate tasks are ``excluded``: a task pulls its coordinate off the true motion, so
  there the optimum itself misfits, OpenSim's too; ``opensim_value``: OpenSim's figure),
  ``noisy_cost`` (every noisy trial: ``fraction_within_2pct`` >= 0.99 and ``cost_ratio_mean``
  <= 1), ``max_iters`` (every lambda = 0 trial: ``max_iters_fraction`` <= 0.01),
  ``smoothing_truth`` (every smoothed trial: ``objective_ratio`` <= 0.5; equal to
  ``truth_ratio`` where there are no coordinate tasks).

OpenSim's results are kept in ``OUT/opensim_cache/`` keyed by a hash of the TRC, the setup (or
"uniform"), the marker set and the model files; ``--reuse-opensim`` takes them from there
instead of running OpenSim again (a changed input changes the key). ``--plot`` draws the
per-frame cost ratio ours / OpenSim of every trial to ``OUT/cost_ratio.png`` (matplotlib).

    python experiments/ik_trust.py [--quick | --full] [--frames N] [--no-opensim]
        [--reuse-opensim] [--out DIR] [--plot] [--markers FILE.xml [--setup FILE.xml]]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

MARKER_SETS = ("simspine37", "halpe26")  # "custom" joins them with --markers
WEIGHTINGS = ("uniform", "setup")
NOISE_MM = (0.0, 5.0, 10.0)
GAP_FRACTION = 0.02
CORE_PREFIXES = ("pelvis", "hip", "knee", "ankle", "L5_S1", "neck")
MAX_ITERS_STATUS = 1  # IKResult.status of a frame that ran out of iterations
REL_TOL, ABS_TOL = 0.02, 1e-12  # "ours <= OpenSim + 2 %" per frame
CACHE_VERSION = 1  # bump when what the cache holds changes

# issue 8's limits
WITHIN_2PCT_MIN = 0.99
COST_RATIO_MAX = 1.0
MAX_ITERS_FRACTION_MAX = 0.01
SMOOTH_TRUTH_RATIO_MAX = 0.5
JUMP_RATIO_MAX = 1.25  # continuity (lambda = 0): median largest jump between frames <= this
# x OpenSim's (its sequential IK is the reference for continuity)

# keys every line of a kind carries (tests/test_ik_trust.py checks them)
REQUIRED_KEYS = {
    "run": (
        "kind", "git_rev", "ik_dirty", "ik_changes", "frames", "rate", "seed", "trials",
        "smooth_acc", "smooth_vel", "fit_mm", "opensim", "jax_version", "device",
    ),
    "trial": (
        "kind", "trial", "marker_set", "weighting", "setup", "noise_mm", "gap_fraction",
        "frames", "n_marker", "fit_fraction", "opensim_fit_fraction", "marker_max_mm",
        "opensim_marker_max_mm", "marker_rms_mm", "opensim_marker_rms_mm", "cost_mean",
        "opensim_cost_mean", "cost_ratio_mean", "frames_within_2pct", "fraction_within_2pct",
        "worst_ratio", "worst_frame", "max_iters", "max_iters_fraction", "too_few_markers",
        "iterations_mean", "frames_per_s", "compile_s", "opensim_frames_per_s",
        "opensim_cached", "truth_rms_deg_core", "opensim_truth_rms_deg_core", "git_rev",
    ),
    "smooth": (
        "kind", "trial", "marker_set", "weighting", "noise_mm", "frames", "lambda_a",
        "lambda_v", "truth_rms_deg_core", "opensim_truth_rms_deg_core",
        "truth_rms_deg_core_lambda0", "truth_ratio", "truth_rms_mm_pelvis",
        "opensim_truth_rms_mm_pelvis", "max_iters", "iterations_mean", "frames_per_s",
        "git_rev",
    ),
    "target": (
        "kind", "target", "pass", "criterion", "value", "limit", "trials", "failing",
        "excluded", "elapsed_s", "git_rev",
    ),
}  # fmt: skip
TARGETS = ("noise_free_fit", "noisy_cost", "max_iters", "smoothing_truth", "continuity")


class TrialSpec(NamedTuple):
    marker_set: str
    weighting: str
    noise_mm: float
    gaps: bool

    @property
    def name(self) -> str:
        gaps = "_gaps" if self.gaps else ""
        return f"{self.marker_set}/{self.weighting}/noise{self.noise_mm:g}mm{gaps}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")


class MarkerSet(NamedTuple):
    """Files of one marker set: the MarkerSet .xml both sides load, and its IK setup .xml."""

    name: str
    markers: Path
    setup: Path | None


# ----------------------------------------------------------------------------- config
def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="smoke run (see the module doc)")
    grid.add_argument("--full", action="store_true", help="every noise level with and without gaps")
    ap.add_argument("--frames", type=int, help="frames per trial (300; --quick 64)")
    ap.add_argument("--rate", type=float, default=60.0, help="frame rate (Hz)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the motion and the noise")
    ap.add_argument("--marker-sets", nargs="+", help=f"subset of {' '.join(MARKER_SETS)} custom")
    ap.add_argument("--weightings", nargs="+", choices=WEIGHTINGS, help="subset of the grid's")
    ap.add_argument("--noise-mm", type=float, nargs="+", help="noise levels (0 5 10)")
    ap.add_argument("--smooth-acc", type=float, default=0.1, help="lambda_a of the smooth solve")
    ap.add_argument("--smooth-vel", type=float, default=0.0, help="lambda_v of the smooth solve")
    ap.add_argument(
        "--smooth-noise-mm",
        type=float,
        default=5.0,
        help="trials at this noise are also solved with smoothing (a negative value: none)",
    )
    ap.add_argument("--fit-mm", type=float, default=1.0, help="a frame fits below this error")
    ap.add_argument("--no-opensim", action="store_true", help="ours only (OpenSim targets: null)")
    ap.add_argument(
        "--reuse-opensim",
        action="store_true",
        help="take OpenSim's results from OUT/opensim_cache when its inputs are unchanged",
    )
    ap.add_argument(
        "--opensim-timeout",
        type=float,
        help="seconds before an OpenSim child is killed (default: the library's, by TRC length)",
    )
    ap.add_argument("--out", default="out/ik_trust", help="output folder (TRCs, caches, plot)")
    ap.add_argument("--plot", action="store_true", help="write OUT/cost_ratio.png")
    ap.add_argument("--model", help="exported tree .npz (default: simspine_jax.cli.DEFAULT_MODEL)")
    ap.add_argument("--osim", help="the same model for OpenSim (default: next to --model)")
    ap.add_argument("--markers", help="a user MarkerSet .xml: adds the marker set 'custom'")
    ap.add_argument("--setup", help="the IK setup .xml of --markers (its 'setup' weighting)")
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 64 if args.quick else 300
    if args.frames < 8:
        ap.error("--frames must be at least 8")
    if args.setup and not args.markers:
        ap.error("--setup needs --markers (the marker set it weights)")
    known = (*MARKER_SETS, "custom")
    if args.marker_sets is None:
        args.marker_sets = ["simspine37"] if args.quick else list(MARKER_SETS)
        if args.markers:
            args.marker_sets.append("custom")
    bad = [m for m in args.marker_sets if m not in known]
    if bad:
        ap.error(f"unknown marker sets {bad}; known: {' '.join(known)}")
    if "custom" in args.marker_sets and not args.markers:
        ap.error("marker set 'custom' needs --markers")
    if args.weightings is None:
        args.weightings = ["setup"] if args.quick else list(WEIGHTINGS)
    if args.noise_mm is None:
        args.noise_mm = [0.0, 5.0] if args.quick else list(NOISE_MM)
    return args


def trial_grid(args) -> list[TrialSpec]:
    """The trials to run: noise-free without gaps and noisy with them (``--full``: both)."""
    specs = []
    for ms in args.marker_sets:
        for w in args.weightings:
            if w == "setup" and ms == "custom" and not args.setup:
                continue  # a user marker set without a setup has no setup weighting
            for n in args.noise_mm:
                gap_options = (False, True) if args.full else ((True,) if n > 0 else (False,))
                specs.extend(TrialSpec(ms, w, float(n), g) for g in gap_options)
    return specs


def _default_files() -> dict[str, Path]:
    """The default model (.npz, .osim), its 37 markers and their setup, wherever they live now
    (``models/`` or the package's ``data/``): found from ``simspine_jax.cli.DEFAULT_MODEL``."""
    from simspine_jax.cli import DEFAULT_MODEL

    npz = Path(DEFAULT_MODEL)
    folders = (npz.parent, REPO / "simspine_jax" / "data", REPO / "models")
    names = dict(
        osim="simspine_default.osim",
        markers="simspine37_markers.xml",
        setup="IK_Setup_SimSpine37.xml",
    )
    out = dict(npz=npz)
    for key, name in names.items():
        found = [d / name for d in folders if (d / name).is_file()]
        if not found:
            raise SystemExit(f"cannot find {name} in {', '.join(str(d) for d in folders)}")
        out[key] = found[0]
    return out


def marker_set_files(name: str, args, defaults: dict) -> MarkerSet:
    if name == "simspine37":
        return MarkerSet(name, defaults["markers"], defaults["setup"])
    if name == "halpe26":
        from simspine_jax.osim_bridge import pose2sim_setup_dir

        d = pose2sim_setup_dir()
        return MarkerSet(name, d / "Markers_Halpe26.xml", d / "IK_Setup_Pose2Sim_Halpe26.xml")
    return MarkerSet(name, Path(args.markers), Path(args.setup) if args.setup else None)


# ----------------------------------------------------------------------------- output
class Emitter:
    """JSON lines to stdout and to ``OUT/results.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def __call__(self, rec: dict) -> None:
        line = json.dumps(rec)
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def _note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def _git_state() -> dict:
    """Commit of the checkout and the uncommitted changes to the IK solver."""

    def git(*a):
        try:
            r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    changes = git("status", "--porcelain", "--", "simspine_jax/ik.py", "simspine_jax/ik")
    changes = [] if not changes else changes.splitlines()
    return dict(git_rev=git("log", "-1", "--format=%h"), ik_dirty=bool(changes), ik_changes=changes)


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # platform without getloadavg
        return []


def _finite(x):
    """A float for JSON: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- OpenSim
def _sha256(path: Path | None) -> str:
    if path is None:
        return "none"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def opensim_cache_key(trc: Path, setup: Path | None, markers: Path, osim: Path) -> str:
    """Hash of everything OpenSim's result depends on: the TRC, the setup ("uniform" without
    one), the marker set and the model."""
    h = hashlib.sha256(f"ik_trust opensim cache v{CACHE_VERSION}\n".encode())
    for part in (_sha256(trc), "uniform" if setup is None else _sha256(setup)):
        h.update(part.encode() + b"\n")
    for part in (_sha256(markers), _sha256(osim)):
        h.update(part.encode() + b"\n")
    return h.hexdigest()[:24]


def _save_opensim(path: Path, r: dict) -> None:
    import numpy as np

    meta = dict(
        coordinate_names=list(r["coordinate_names"]),
        **{k: float(r[k]) for k in ("wall_s", "cpu_s", "total_s", "process_s", "accuracy")},
    )
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        meta=np.array(json.dumps(meta)),
        q_full=np.asarray(r["q_full"]),
        time=np.asarray(r["time"]),
        marker_rms=np.asarray(r["marker_rms"]),
        marker_max=np.asarray(r["marker_max"]),
    )
    os.replace(tmp, path)


def _load_opensim(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        out = json.loads(str(z["meta"]))
        out.update({k: z[k] for k in z.files if k != "meta"})
    return out


def run_opensim(args, spec, trc, time_range, ms: MarkerSet, osim: Path, out: Path) -> dict | None:
    """OpenSim's result for one trial (cached), or None if OpenSim is off or failed.
    Adds ``cached`` to the returned dict."""
    from simspine_jax.errors import InputError
    from simspine_jax.osim_bridge.ik import OpenSimRunError, run_opensim_ik_subprocess

    setup = ms.setup if spec.weighting == "setup" else None
    cache = out / "opensim_cache" / f"{opensim_cache_key(trc, setup, ms.markers, osim)}.npz"
    if args.reuse_opensim and cache.is_file():
        _note(f"OpenSim {spec.name}: from the cache ({cache.name})")
        return dict(_load_opensim(cache), cached=True)
    _note(f"OpenSim {spec.name}: running ({args.frames} frames)")
    try:
        r = run_opensim_ik_subprocess(
            osim,
            trc,
            setup,
            out_dir=out / "opensim" / spec.slug,
            markers=ms.markers,
            time_range=time_range,
            name=spec.slug,
            timeout_s=args.opensim_timeout,
        )
    except (OpenSimRunError, InputError) as e:
        _note(f"OpenSim {spec.name} failed, its fields stay null: {e}")
        return None
    _note(
        f"OpenSim {spec.name}: tool.run() {r['wall_s']:.1f} s ({r['frames_per_s']:.1f} frames/s), "
        f"process {r['process_s']:.1f} s"
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    _save_opensim(cache, r)
    return dict(r, cached=False)


# ----------------------------------------------------------------------------- measures
def _jumps(tree, q) -> tuple[float | None, float | None]:
    """Continuity at lambda = 0: per pair of neighbouring frames, the largest change of any
    rotational independent coordinate (degrees); its median and 90th percentile over the
    trial. Weakly observed coordinates (forearm pronation, arm rotation) dominate it: OpenSim's
    sequential IK leaves them near the previous frame's value, a solver that wanders along
    flat valleys makes them jump between frames."""
    import numpy as np

    rot = [
        i
        for i, n in enumerate(tree.independent_names)
        if tree.meta["coordinates"][tree.coordinate_names.index(n)]["motion_type"]
        != "translational"
    ]
    q = np.asarray(q)[:, rot]
    d = np.abs(np.diff(q, axis=0))
    ok = np.all(np.isfinite(d), axis=1)
    if not np.any(ok):
        return None, None
    j = np.degrees(np.max(d[ok], axis=1))
    return float(np.median(j)), float(np.quantile(j, 0.9))


def _core_indices(tree) -> tuple[list[int], list[int]]:
    """Independent-coordinate columns of the core: (rotational, translational)."""
    rot, trans = [], []
    for i, n in enumerate(tree.independent_names):
        if not n.startswith(CORE_PREFIXES):
            continue
        info = tree.meta["coordinates"][tree.coordinate_names.index(n)]
        (trans if info["motion_type"] == "translational" else rot).append(i)
    return rot, trans


def truth_errors(tree, q, q_true) -> dict:
    """RMS error against the true motion over finite frames: core rotations pooled (deg), pelvis
    translations pooled (mm), and per core coordinate (deg or mm)."""
    import numpy as np

    rot, trans = _core_indices(tree)
    q = np.asarray(q, np.float64)
    ok = np.all(np.isfinite(q), 1)
    d = q[ok] - q_true[ok]
    per = {}
    for i in rot:
        per[tree.independent_names[i]] = _finite(np.rad2deg(np.sqrt(np.mean(d[:, i] ** 2))))
    for i in trans:
        per[tree.independent_names[i]] = _finite(1e3 * np.sqrt(np.mean(d[:, i] ** 2)))
    return dict(
        deg_core=_finite(np.rad2deg(np.sqrt(np.mean(d[:, rot] ** 2)))) if ok.any() else None,
        mm_pelvis=_finite(1e3 * np.sqrt(np.mean(d[:, trans] ** 2))) if ok.any() and trans else None,
        per_coordinate=per,
    )


def frame_measures(tree, q, markers, weights, tasks, fit_mm: float) -> dict:
    """Per-frame cost (:func:`simspine_jax.pipeline.frame_costs`), largest and RMS marker error
    (weighted markers with data, from float64 FK of ``q``); NaN on frames where ``q`` is not
    finite. Arrays of shape (T,)."""
    import numpy as np

    from simspine_jax.fk import forward_kinematics
    from simspine_jax.pipeline import frame_costs

    q = np.asarray(q, np.float64)
    ok = np.all(np.isfinite(q), 1)
    q0 = np.where(ok[:, None], q, 0.0)
    cost = np.where(ok, frame_costs(tree, q0, markers, weights, tasks), np.nan)
    zhat = np.asarray(forward_kinematics(tree, q0).markers, np.float64)
    d = np.sqrt(np.sum((zhat - markers) ** 2, -1))
    used = np.isfinite(d) & (np.asarray(weights)[None, :] > 0)
    err_max = np.where(ok, np.max(np.where(used, d, 0.0), 1), np.nan)
    rms = np.sqrt(np.sum(np.where(used, d, 0.0) ** 2, 1) / np.maximum(used.sum(1), 1))
    err_rms = np.where(ok, rms, np.nan)
    fits = ok & (err_max < fit_mm * 1e-3)
    return dict(cost=cost, err_max=err_max, err_rms=err_rms, fits=fits)


def compare_costs(ours, ref) -> dict:
    """Ours against OpenSim's per-frame costs (T,); NaN (an unsolved frame) counts as worse."""
    import numpy as np

    within = np.isfinite(ours) & (ours <= (1.0 + REL_TOL) * ref + ABS_TOL)
    ratio = np.where(np.isfinite(ours), (ours + ABS_TOL) / (ref + ABS_TOL), np.inf)
    worst = int(np.argmax(ratio))
    return dict(
        cost_ratio_mean=_finite(np.nanmean(ours) / np.mean(ref)) if np.mean(ref) > 0 else None,
        frames_within_2pct=int(within.sum()),
        fraction_within_2pct=float(within.mean()),
        worst_ratio=_finite(ratio[worst]),
        worst_frame=worst,
        ratio_per_frame=ratio,
    )


# ----------------------------------------------------------------------------- ours
def _solve_timed(tree, markers, weights, tasks, opts):
    """Our solve twice: (result, steady seconds, first call seconds)."""
    import jax

    from simspine_jax.ik import solve_ik

    t0 = time.perf_counter()
    jax.block_until_ready(solve_ik(tree, markers, weights, tasks, opts))
    t1 = time.perf_counter()
    res = jax.block_until_ready(solve_ik(tree, markers, weights, tasks, opts))
    t2 = time.perf_counter()
    return res, t2 - t1, t1 - t0


def _status_counts(res) -> dict:
    import numpy as np

    status = np.asarray(res.status)
    n_max = int(np.sum(status == MAX_ITERS_STATUS))
    return dict(
        max_iters=n_max,
        max_iters_fraction=n_max / status.shape[0],
        too_few_markers=int(np.sum(status == 2)),
        iterations_mean=float(np.mean(np.asarray(res.iterations))),
    )


# ----------------------------------------------------------------------------- targets
def _target(name, criterion, recs, value_key, limit, ok, reduce, excluded=()):
    """One ``target`` line: ``ok(rec)`` decides each trial; ``value`` is ``reduce`` of the
    deciding figure over the trials (the worst one). ``excluded``: (trial, why) pairs left out."""
    recs = [r for r in recs if r.get(value_key) is not None]
    failing = [r["trial"] for r in recs if not ok(r)]
    return {
        "kind": "target",
        "target": name,
        "pass": None if not recs else not failing,
        "criterion": criterion,
        "value": reduce(r[value_key] for r in recs) if recs else None,
        "limit": limit,
        "trials": len(recs),
        "failing": failing,
        "excluded": [list(e) for e in excluded],
    }


def _ratio(rec: dict, key: str) -> float | None:
    """``rec[key] / rec["opensim_" + key]`` (None where either is missing or OpenSim's is 0)."""
    a, b = rec.get(key), rec.get("opensim_" + key)
    return None if a is None or not b else a / b


def evaluate_targets(trials: list[dict], smooths: list[dict]) -> list[dict]:
    # a coordinate task pulls its coordinate away from the true motion: the optimum itself
    # leaves marker errors there (for OpenSim too), so the exact-fit target skips such trials
    clean = [r for r in trials if r["noise_mm"] == 0 and not r["coordinate_tasks"]]
    no_fit = [
        (r["trial"], "coordinate tasks: the optimum does not fit exactly")
        for r in trials
        if r["noise_mm"] == 0 and r["coordinate_tasks"]
    ]
    noisy = [r for r in trials if r["noise_mm"] > 0 and r["cost_ratio_mean"] is not None]
    out = [
        _target(
            "noise_free_fit",
            "noise-free trials: every frame fits (largest marker error < fit_mm)",
            clean,
            "fit_fraction",
            1.0,
            lambda r: r["fit_fraction"] >= 1.0,
            min,
            no_fit,
        ),
        _target(
            "noisy_cost",
            f"noisy trials: ours <= OpenSim * {1 + REL_TOL:g} + {ABS_TOL:g} on >= "
            f"{WITHIN_2PCT_MIN:.0%} of frames, and mean cost <= OpenSim's",
            noisy,
            "fraction_within_2pct",
            WITHIN_2PCT_MIN,
            lambda r: (
                r["fraction_within_2pct"] >= WITHIN_2PCT_MIN
                and r["cost_ratio_mean"] <= COST_RATIO_MAX
            ),
            min,
        ),
        _target(
            "max_iters",
            f"every trial (lambda = 0): frames with status max_iters <= "
            f"{MAX_ITERS_FRACTION_MAX:.0%}",
            trials,
            "max_iters_fraction",
            MAX_ITERS_FRACTION_MAX,
            lambda r: r["max_iters_fraction"] <= MAX_ITERS_FRACTION_MAX,
            max,
        ),
        _target(
            "smoothing_truth",
            f"smoothed trials: core RMS error (deg) against the objective's noise-free optimum "
            f"(the truth where there are no coordinate tasks) <= {SMOOTH_TRUTH_RATIO_MAX:g} x "
            "OpenSim's",
            smooths,
            "objective_ratio",
            SMOOTH_TRUTH_RATIO_MAX,
            lambda r: (
                r["objective_ratio"] is not None and r["objective_ratio"] <= SMOOTH_TRUTH_RATIO_MAX
            ),
            max,
        ),
        _target(
            "continuity",
            f"noisy trials (lambda = 0): median largest jump of a rotational coordinate between "
            f"frames <= {JUMP_RATIO_MAX:g} x OpenSim's",
            [dict(r, jump_ratio=_ratio(r, "jump_deg_p50")) for r in noisy],
            "jump_ratio",
            JUMP_RATIO_MAX,
            lambda r: r["jump_ratio"] <= JUMP_RATIO_MAX,
            max,
        ),
    ]
    fits = [r["opensim_fit_fraction"] for r in clean if r["opensim_fit_fraction"] is not None]
    out[0]["opensim_value"] = min(fits) if fits else None  # OpenSim on the same trials
    # the second half of noisy_cost, shown beside the first
    out[1]["cost_ratio_mean_max"] = max((r["cost_ratio_mean"] for r in noisy), default=None)
    return out


def plot_cost_ratios(ratios: dict, noise_mm: dict, path: Path) -> None:
    """Per-frame cost ratio ours / OpenSim of every trial: noisy trials on a linear scale
    around 1 with the 2 % line, noise-free ones (where both costs are tiny) on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for name, r in ratios.items():
        ax = top if noise_mm[name] > 0 else bottom
        ax.plot(np.arange(len(r)), np.where(np.isfinite(r), r, np.nan), lw=0.8, label=name)
    for ax in (top, bottom):
        ax.axhline(1.0 + REL_TOL, color="k", ls="--", lw=1, label=f"{1 + REL_TOL:g}")
        ax.set_ylabel("cost ours / OpenSim")
        ax.legend(fontsize=7, ncol=2)
    top.set_title("IK per-frame cost ratio, lambda = 0: noisy trials")
    bottom.set_title("noise-free trials (log scale)")
    bottom.set_yscale("log")
    bottom.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    from simspine_jax._xla import tune_xla_cpu

    tune_xla_cpu()  # the CLI's XLA CPU flags (acts only before JAX's backend starts)
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from simspine_jax.ik import IKOptions
    from simspine_jax.ik_setup import coordinate_task_arrays, marker_weight_vector, read_ik_setup
    from simspine_jax.io import read_trc, write_trc
    from simspine_jax.model import load_model
    from simspine_jax.pipeline import trc_to_model_markers
    from simspine_jax.synth import synthetic_trial

    out = Path(args.out)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    emit = Emitter(out / "results.jsonl")
    defaults = _default_files()
    npz = Path(args.model) if args.model else defaults["npz"]
    osim = Path(args.osim) if args.osim else npz.with_suffix(".osim")
    if not osim.is_file():
        osim = defaults["osim"]
    use_opensim = not args.no_opensim
    if use_opensim and importlib.util.find_spec("opensim") is None:
        _note("OpenSim skipped: the 'opensim' package is not installed")
        use_opensim = False
    specs = trial_grid(args)
    git = _git_state()
    d = jax.devices()[0]
    emit(
        dict(
            kind="run",
            **git,
            frames=args.frames,
            rate=args.rate,
            seed=args.seed,
            trials=[s.name for s in specs],
            smooth_acc=args.smooth_acc,
            smooth_vel=args.smooth_vel,
            smooth_noise_mm=args.smooth_noise_mm,
            fit_mm=args.fit_mm,
            opensim=use_opensim,
            reuse_opensim=bool(args.reuse_opensim),
            opensim_version=importlib.metadata.version("opensim") if use_opensim else None,
            model=str(npz),
            osim=str(osim),
            jax_version=jax.__version__,
            device=f"{d.platform} ({getattr(d, 'device_kind', '') or d.platform})",
            cpu_count=os.cpu_count(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            load_avg=_load_avg(),
        )
    )
    _note(
        f"{len(specs)} trials of {args.frames} frames; git {git['git_rev']}, ik dirty: "
        f"{git['ik_dirty']}; OpenSim {'on' if use_opensim else 'off'}"
    )
    base = dict(git_rev=git["git_rev"])
    lam0 = IKOptions()
    smooth = IKOptions(smooth_vel=args.smooth_vel, smooth_acc=args.smooth_acc)
    do_smooth = args.smooth_acc > 0 or args.smooth_vel > 0
    trial_recs, smooth_recs, ratios, noise_of = [], [], {}, {}

    for ms_name in args.marker_sets:
        ms_specs = [s for s in specs if s.marker_set == ms_name]
        if not ms_specs:
            continue
        ms = marker_set_files(ms_name, args, defaults)
        tree = load_model(npz, markers=ms.markers, dtype=np.float64)
        _note(f"marker set {ms_name}: {tree.n_marker} markers ({ms.markers}), setup {ms.setup}")
        for spec in ms_specs:
            noise_m, gaps = spec.noise_mm * 1e-3, GAP_FRACTION if spec.gaps else 0.0
            tr = synthetic_trial(
                tree,
                args.frames,
                noise_m=noise_m,
                gap_fraction=gaps,
                seed=args.seed,
                rate=args.rate,
            )
            trc = out / "trials" / f"{spec.slug}.trc"
            write_trc(trc, tree.marker_names, tr["time"], tr["markers"], units="mm")
            data = read_trc(trc)
            markers = trc_to_model_markers(tree, data, trc)  # what OpenSim reads, in metres
            if spec.weighting == "setup":
                ik_setup = read_ik_setup(ms.setup)
                weights, _ = marker_weight_vector(ik_setup, tree, data.marker_names)
                tasks = coordinate_task_arrays(ik_setup, tree, times=data.time)
            else:
                weights, tasks = np.ones(tree.n_marker), None

            whole = (float(data.time[0]), float(data.time[-1]))
            ref = run_opensim(args, spec, trc, whole, ms, osim, out) if use_opensim else None
            if ref is not None:
                if list(ref["coordinate_names"]) != list(tree.coordinate_names):
                    raise SystemExit(f"OpenSim and {npz} list different coordinates")
                if np.shape(ref["q_full"])[0] != args.frames:
                    raise SystemExit(
                        f"OpenSim returned {np.shape(ref['q_full'])[0]} frames of {args.frames}"
                    )
            _note(f"ours {spec.name}: solving (lambda = 0; the first call of a program compiles)")
            res, wall, first = _solve_timed(tree, markers, weights, tasks, lam0)
            m = frame_measures(tree, res.q, markers, weights, tasks, args.fit_mm)
            truth = truth_errors(tree, res.q, tr["q_true"])
            rec = dict(
                kind="trial",
                trial=spec.name,
                marker_set=ms_name,
                weighting=spec.weighting,
                setup=None if spec.weighting == "uniform" else ms.setup.name,
                noise_mm=spec.noise_mm,
                gap_fraction=gaps,
                frames=args.frames,
                n_marker=tree.n_marker,
                n_marker_weighted=int(np.sum(np.asarray(weights) > 0)),
                coordinate_tasks=0 if tasks is None else len(tasks[0]),
                fit_fraction=float(np.mean(m["fits"])),
                opensim_fit_fraction=None,
                marker_max_mm=_finite(np.nanmax(m["err_max"]) * 1e3),
                opensim_marker_max_mm=None,
                marker_rms_mm=_finite(np.nanmean(m["err_rms"]) * 1e3),
                opensim_marker_rms_mm=None,
                cost_mean=_finite(np.nanmean(m["cost"])),
                opensim_cost_mean=None,
                cost_ratio_mean=None,
                frames_within_2pct=None,
                fraction_within_2pct=None,
                worst_ratio=None,
                worst_frame=None,
                **_status_counts(res),
                frames_per_s=args.frames / wall,
                compile_s=max(first - wall, 0.0),
                opensim_frames_per_s=None,
                opensim_cached=None,
                opensim_accuracy=None,
                truth_rms_deg_core=truth["deg_core"],
                opensim_truth_rms_deg_core=None,
                jump_deg_p50=_jumps(tree, res.q)[0],
                jump_deg_p90=_jumps(tree, res.q)[1],
                opensim_jump_deg_p50=None,
                opensim_jump_deg_p90=None,
                truth_rms_mm_pelvis=truth["mm_pelvis"],
                opensim_truth_rms_mm_pelvis=None,
                load_avg=_load_avg(),
                **base,
            )
            ref_truth, q_ref = None, None
            if ref is not None:
                q_ref = np.asarray(ref["q_full"])[:, tree.topology.indep_coord]
                mr = frame_measures(tree, q_ref, markers, weights, tasks, args.fit_mm)
                ref_truth = truth_errors(tree, q_ref, tr["q_true"])
                cmp = compare_costs(m["cost"], mr["cost"])
                ratios[spec.name] = cmp.pop("ratio_per_frame")
                noise_of[spec.name] = spec.noise_mm
                rec.update(
                    opensim_fit_fraction=float(np.mean(mr["fits"])),
                    opensim_marker_max_mm=_finite(np.nanmax(mr["err_max"]) * 1e3),
                    opensim_marker_rms_mm=_finite(np.nanmean(mr["err_rms"]) * 1e3),
                    opensim_cost_mean=_finite(np.mean(mr["cost"])),
                    **cmp,
                    opensim_frames_per_s=args.frames / float(ref["wall_s"]),
                    opensim_cached=bool(ref["cached"]),
                    opensim_accuracy=float(ref["accuracy"]),
                    opensim_truth_rms_deg_core=ref_truth["deg_core"],
                    opensim_jump_deg_p50=_jumps(tree, q_ref)[0],
                    opensim_jump_deg_p90=_jumps(tree, q_ref)[1],
                    opensim_truth_rms_mm_pelvis=ref_truth["mm_pelvis"],
                )
            emit(rec)
            trial_recs.append(rec)

            if do_smooth and spec.noise_mm == args.smooth_noise_mm:
                _note(f"ours {spec.name}: solving with smoothing (lambda_a = {args.smooth_acc})")
                res_s, wall_s, _ = _solve_timed(tree, markers, weights, tasks, smooth)
                ts = truth_errors(tree, res_s.q, tr["q_true"])
                ref_deg = None if ref_truth is None else ref_truth["deg_core"]
                # the objective's own noise-free optimum: the same weights and coordinate
                # tasks on the true motion's markers (no noise, no gaps). Without coordinate
                # tasks it is the truth; with them (a setup's tasks pull coordinates toward
                # fixed targets) it is biased the same for every solver, and noise removal --
                # what smoothing can do -- is measured against it
                q_obj = tr["q_true"]
                if tasks is not None:
                    from simspine_jax import marker_positions
                    from simspine_jax.ik import solve_ik

                    m_true = np.asarray(marker_positions(tree, tr["q_true"]))
                    q_obj = np.asarray(solve_ik(tree, m_true, weights, tasks, lam0).q)
                to = truth_errors(tree, res_s.q, q_obj)
                ref_obj = None if q_ref is None else truth_errors(tree, q_ref, q_obj)
                srec = dict(
                    kind="smooth",
                    trial=spec.name,
                    marker_set=ms_name,
                    weighting=spec.weighting,
                    noise_mm=spec.noise_mm,
                    gap_fraction=gaps,
                    frames=args.frames,
                    lambda_a=args.smooth_acc,
                    lambda_v=args.smooth_vel,
                    truth_rms_deg_core=ts["deg_core"],
                    opensim_truth_rms_deg_core=ref_deg,
                    truth_rms_deg_core_lambda0=truth["deg_core"],
                    truth_ratio=None
                    if ref_deg is None or ts["deg_core"] is None
                    else ts["deg_core"] / ref_deg,
                    truth_rms_mm_pelvis=ts["mm_pelvis"],
                    opensim_truth_rms_mm_pelvis=None
                    if ref_truth is None
                    else ref_truth["mm_pelvis"],
                    objective_rms_deg_core=to["deg_core"],
                    opensim_objective_rms_deg_core=None if ref_obj is None else ref_obj["deg_core"],
                    objective_ratio=None
                    if ref_obj is None or to["deg_core"] is None or not ref_obj["deg_core"]
                    else to["deg_core"] / ref_obj["deg_core"],
                    truth_rms_per_coordinate=dict(
                        ours_smooth=ts["per_coordinate"],
                        opensim=None if ref_truth is None else ref_truth["per_coordinate"],
                    ),
                    max_iters=_status_counts(res_s)["max_iters"],
                    iterations_mean=_status_counts(res_s)["iterations_mean"],
                    frames_per_s=args.frames / wall_s,
                    load_avg=_load_avg(),
                    **base,
                )
                emit(srec)
                smooth_recs.append(srec)

    elapsed = time.perf_counter() - t_start
    for rec in evaluate_targets(trial_recs, smooth_recs):
        emit(dict(rec, elapsed_s=round(elapsed, 1), **base))
    if args.plot and ratios:
        plot_cost_ratios(ratios, noise_of, out / "cost_ratio.png")
        _note(f"plot: {out / 'cost_ratio.png'}")
    _note(f"done in {elapsed:.0f} s; lines in {out / 'results.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
