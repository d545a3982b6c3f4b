"""``simspine-jax`` command line: a thin layer over the library (each subcommand is a function)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ._resources import default_model_path
from .errors import SimSpineError

# the bundled SimSpine tree (package data, simspine_jax/data/)
DEFAULT_MODEL = default_model_path()


# ----------------------------------------------------------------------------- library calls
def export_model(osim: str, out: str, markers: str | None = None) -> Path:
    """Export an ``.osim`` (+ optional MarkerSet ``.xml``) to a kinematic-tree ``.npz``.

    ``out`` is the file written, as given (``x.export`` stays ``x.export``); one ending with a
    path separator or naming an existing folder means ``<osim stem>.npz`` inside it. An ``out``
    that is an input, or not a regular file, is refused (:mod:`simspine_jax.io.outputs`).
    Returns the path written.
    """
    from .export import read_osim
    from .io.outputs import output_file, refuse_inputs
    from .model import save_tree

    target = output_file(out, Path(osim).stem + ".npz", field="out")
    refuse_inputs([target], [osim, markers], field="out")
    return save_tree(read_osim(osim, markers=markers), target)


def model_info(model: str, markers: str | None = None) -> str:
    """A readable summary of a model: bodies, joints, coordinates, markers."""
    from .model import load_model

    tree = load_model(model, markers=markers)
    meta = tree.meta
    lines = [
        f"model {meta['name']} (from {meta['source']}, sha256 {meta['source_sha256'][:12]})",
        f"bodies ({tree.n_body - 1} + ground):",
    ]
    parent = tree.topology.body_parent
    for i, b in enumerate(tree.body_names[1:], start=1):
        lines.append(f"  {b:<14} parent {tree.body_names[parent[i]]}")
    lines.append(f"joints ({len(meta['joints'])}):")
    for j in meta["joints"]:
        lines.append(
            f"  {j['name']:<22} {j['type']:<15} {j['parent']} -> {j['child']}"
            f"  [{', '.join(j['coordinates'])}]"
        )
    lines.append(
        f"coordinates ({tree.n_coord}; {tree.n_indep} independent, "
        f"{len(meta['couplers'])} coupled, "
        f"{sum(c['locked'] for c in meta['coordinates'])} locked):"
    )
    for c in meta["coordinates"]:
        if c["dependent_on"]:
            kind = f"dependent on {c['dependent_on']}"
        elif c["locked"]:
            kind = "locked"
        else:
            kind = "independent"
        rng = c["range"]
        lines.append(
            f"  {c['name']:<24} {c['motion_type']:<13} {kind:<32} "
            f"range [{rng[0]:.4g}, {rng[1]:.4g}]{' clamped' if c['clamped'] else ''}"
        )
    lines.append(f"markers ({tree.n_marker}):")
    for m, b in zip(meta["markers"], meta["marker_bodies"], strict=True):
        lines.append(f"  {m:<16} on {b}")
    return "\n".join(lines)


def run_fk(model: str, mot: str, out_trc: str, markers: str | None = None, plot: str | None = None):
    """Marker trajectories of an OpenSim motion file, written as TRC. Returns a summary dict.

    Rotational coordinates are converted from degrees when the file says ``inDegrees=yes``
    (coupled coordinates stay in radians, as OpenSim 4.6 writes them). Dependent coordinates
    are recomputed from the independent ones (OpenSim enforces constraints the same way);
    missing independent columns are an error, missing dependent/locked ones are allowed.

    ``out_trc`` (and ``plot``) is the file written; one ending with a path separator or naming
    an existing folder means ``<mot stem>.trc`` (``<mot stem>_markers.png``) inside it. An
    output that is an input, or not a regular file, is refused before any work
    (:mod:`simspine_jax.io.outputs`).
    """
    import jax

    from .errors import InputError
    from .fk import forward_kinematics
    from .io import read_storage, write_trc
    from .io.outputs import output_file, output_set, refuse_inputs
    from .model import load_model
    from .pipeline import motion_to_independent

    stem = Path(mot).stem
    out_trc = output_file(out_trc, stem + ".trc", field="out")
    refuse_inputs([out_trc], [mot, model, markers], field="out")
    if plot:
        plot = output_file(plot, stem + "_markers.png", field="plot")
        refuse_inputs([plot], [mot, model, markers], field="plot")
        refuse_inputs([plot], [out_trc], field="plot", what="the TRC output")
    tree = load_model(model, markers=markers)
    motion = read_storage(mot)
    q = motion_to_independent(tree, motion, mot)
    if tree.n_marker == 0:
        raise InputError("the model has no markers; pass --markers MARKERS.xml", path=model)
    t0 = time.perf_counter()
    pos = np.asarray(jax.block_until_ready(forward_kinematics(tree, q).markers))
    dt = time.perf_counter() - t0
    write_trc(out_trc, tree.marker_names, motion.time, pos, units="m")
    summary = dict(
        frames=int(q.shape[0]),
        markers=tree.n_marker,
        fk_seconds=round(dt, 4),
        out=str(out_trc),
        extent_m=np.round(np.nanmax(pos, (0, 1)) - np.nanmin(pos, (0, 1)), 3).tolist(),
    )
    if plot:
        from .plots import plot_marker_trajectories

        with output_set(plot.parent, field="plot") as stage:  # no stray temporary file
            plot_marker_trajectories(motion.time, pos, tree.marker_names, stage / plot.name)
        summary["plot"] = str(plot)
    return summary


def _show_our_warnings_on_one_line() -> None:
    """Show this package's warnings (:class:`~simspine_jax.errors.SimSpineWarning`, e.g. an IK
    setup task skipped as OpenSim skips it) as one line on stderr, not Python's two-line form
    with our source line; other warnings are shown as before."""
    import warnings

    from .errors import SimSpineWarning

    show = warnings.showwarning
    if getattr(show, "_simspine_one_line", False):
        return

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SimSpineWarning):
            print(f"simspine-jax: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    one_line._simspine_one_line = True
    warnings.showwarning = one_line


# ----------------------------------------------------------------------------- argparse
def _weight(text: str) -> float:
    """argparse type of a smoothing weight: a finite number >= 0 (not nan, inf or negative,
    which the solver cannot use; argparse turns the ValueError into a usage error, exit 2)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def _frame_count(text: str) -> int:
    """argparse type of ``demo --frames``: an integer >= 2 (a trial's sampling rate needs two
    frames)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(
            f"must be at least 2 (the sample trial's sampling rate needs two frames), got {n}"
        )
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simspine-jax",
        description="Fast, differentiable, OpenSim-exact spine kinematics in JAX.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="export an OpenSim .osim to a kinematic tree (.npz)")
    e.add_argument("osim", help="OpenSim model file (.osim, OpenSim 4 format)")
    e.add_argument("--markers", help="OpenSim MarkerSet .xml to use instead of the model's")
    e.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file, written under exactly this name (any extension); a path ending "
        "with '/' or an existing folder means OSIM_STEM.npz inside it",
    )

    i = sub.add_parser("info", help="print bodies, joints, coordinates and markers of a model")
    i.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help=".npz or .osim")
    i.add_argument("--markers", help="OpenSim MarkerSet .xml")

    f = sub.add_parser("fk", help="marker trajectories (TRC) from an OpenSim motion (.mot)")
    f.add_argument("--model", default=str(DEFAULT_MODEL), help=".npz or .osim (default: SimSpine)")
    f.add_argument("--markers", help="OpenSim MarkerSet .xml (overrides the model's markers)")
    f.add_argument("--mot", required=True, help="OpenSim motion file (.mot/.sto)")
    f.add_argument(
        "-o",
        "--out",
        required=True,
        help="output .trc (metres); a path ending with '/' or an existing folder means "
        "MOT_STEM.trc inside it; never an input file",
    )
    f.add_argument(
        "--plot",
        help="also write a PNG of the marker trajectories (a folder: MOT_STEM_markers.png in it)",
    )

    k = sub.add_parser("ik", help="inverse kinematics of TRC trials (writes .mot and .sto)")
    k.add_argument("--model", default=str(DEFAULT_MODEL), help=".npz or .osim")
    k.add_argument("--markers", help="OpenSim MarkerSet .xml (overrides the model's markers)")
    k.add_argument("--trc", required=True, nargs="+", help="marker trials (.trc)")
    k.add_argument("--setup", help="OpenSim IK setup .xml (marker weights, coordinate tasks)")
    k.add_argument("--smooth-vel", type=_weight, default=0.0, help="lambda_v >= 0 on |D1 q|^2")
    k.add_argument("--smooth-acc", type=_weight, default=0.0, help="lambda_a >= 0 on |D2 q|^2")
    k.add_argument(
        "--continuity",
        type=_weight,
        default=1e-4,
        help="without smoothing: largest weight (m^2 per rad^2 between frames, x the mean "
        "marker weight) of the continuity pass that pulls weakly observed coordinates toward "
        "their neighbours, every frame within 0.5%% of its per-frame minimum's cost; 0: the "
        "per-frame minima themselves (default 1e-4)",
    )
    k.add_argument(
        "-o",
        "--out",
        required=True,
        help="output folder: TRIAL.mot, TRIAL_marker_errors.sto and "
        "TRIAL_model_marker_locations.sto per trial, each trial's files replaced together or "
        "not at all; two TRCs with the same file name are refused (not renamed, so each "
        "output keeps the name OpenSim gives it)",
    )

    c = sub.add_parser("crosscheck", help="OpenSim's IK vs ours (lambda = 0) on the same inputs")
    c.add_argument("--osim", required=True, help="OpenSim model (.osim)")
    c.add_argument("--markers", help="OpenSim MarkerSet .xml added to the model")
    c.add_argument("--trc", required=True, help="marker trial (.trc)")
    c.add_argument("--setup", help="OpenSim IK setup .xml")
    c.add_argument(
        "--opensim-timeout",
        type=float,
        help="seconds before OpenSim's child process is killed as hung "
        "(default: 120 s + 1 s per line of the TRC file)",
    )
    c.add_argument("-o", "--out", required=True, help="output folder")

    d = sub.add_parser("demo", help="the main job on the bundled default data")
    d.add_argument("-o", "--out", default="out/demo", help="output folder")
    d.add_argument(
        "--frames", type=_frame_count, default=300, help="frames of the sample trial (>= 2)"
    )
    d.add_argument("--no-opensim", action="store_true", help="skip the OpenSim cross-check")

    # further subcommands live beside their stage: each module of simspine_jax/commands/ named
    # here has ``register(sub)``, adding its parsers with ``set_defaults(run=handler)``; the
    # handler takes the parsed arguments and returns an exit code (or None for 0).
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"simspine_jax.commands.{name}").register(sub)
    return p


# modules of simspine_jax/commands/ that add subcommands (one line each, in menu order)
_COMMAND_MODULES: tuple[str, ...] = ("merge", "frontend", "scale", "lifting")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._xla import tune_xla_cpu

    tune_xla_cpu()  # before the first JAX computation of this process
    _show_our_warnings_on_one_line()
    try:
        if getattr(args, "run", None) is not None:
            return int(args.run(args) or 0)
        if args.cmd == "export":
            out = export_model(args.osim, args.out, args.markers)
            print(f"wrote {out}")
            print(model_info(str(out)).split("\n")[0])
        elif args.cmd == "info":
            print(model_info(args.model, args.markers))
        elif args.cmd == "fk":
            print(json.dumps(run_fk(args.model, args.mot, args.out, args.markers, args.plot)))
        elif args.cmd == "ik":
            from .pipeline import run_ik_files

            run_ik_files(
                args.model,
                args.trc,
                args.out,
                markers=args.markers,
                setup=args.setup,
                smooth_vel=args.smooth_vel,
                smooth_acc=args.smooth_acc,
                continuity=args.continuity,
            )
        elif args.cmd == "crosscheck":
            from .pipeline import crosscheck

            r = crosscheck(
                args.osim,
                args.trc,
                args.out,
                setup=args.setup,
                markers=args.markers,
                opensim_timeout_s=args.opensim_timeout,
            )
            summary = {k: r[k] for k in ("frames", "ours", "opensim", "speed_ratio")}
            for side in ("ours", "opensim"):  # per-frame lists stay in crosscheck.json
                summary[side] = {k: v for k, v in r[side].items() if k != "frame_costs"}
            summary["frames_where_ours_costs_more_than_2pct"] = r[
                "frames_where_ours_costs_more_than_2pct"
            ]
            print(json.dumps(summary))
        elif args.cmd == "demo":
            from .pipeline import run_demo

            run_demo(args.out, frames=args.frames, opensim_check=not args.no_opensim)
    except SimSpineError as e:
        print(f"simspine-jax: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # OpenSim's child process failed or hung: not the input's fault
        from .osim_bridge.ik import OpenSimRunError

        if not isinstance(e, OpenSimRunError):
            raise
        print(f"simspine-jax: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
