"""``simspine-jax scale``: scale a model to a subject from a static trial and a ScaleTool setup.

A thin layer over :func:`simspine_jax.scaling.scale_subject`; prints its JSON summary (factors
per body, per-measurement factors, marker placement, notes) on one line and writes
``SCALED.osim`` plus the exported tree ``SCALED.npz``.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    s = sub.add_parser(
        "scale",
        help="scale an .osim to a subject (OpenSim ScaleTool setup + static TRC)",
        description="Measurement-based scaling as OpenSim's ScaleTool does it (marker-pair "
        "distances of the static trial over the model's at its default pose, the setup's "
        "bodies and axes, scaling order, manual scales), then marker placement if the setup "
        "enables it. --mode optimise then fits the measurement groups' factors and the static "
        "pose jointly through the FK. Writes SCALED.osim (the source model with every "
        "scaled quantity edited, the rest unchanged) and SCALED.npz (its kinematic tree).",
    )
    s.add_argument("--osim", required=True, help="generic model .osim")
    s.add_argument("--static", required=True, help="static trial .trc")
    s.add_argument("--setup", required=True, help="OpenSim ScaleTool setup .xml")
    s.add_argument("-o", "--out", required=True, help="scaled model .osim to write")
    s.add_argument(
        "--markers", help="MarkerSet .xml added to the model (default: the setup's, if any)"
    )
    s.add_argument(
        "--mode",
        choices=("measurements", "optimise"),
        default="measurements",
        help="measurements (OpenSim's ScaleTool) or optimise (joint fit, from measurements)",
    )
    s.add_argument(
        "--height",
        type=float,
        help="subject height where the setup lacks it (reported; OpenSim does not use it)",
    )
    s.add_argument("--mass", type=float, help="subject mass (kg) where the setup lacks it")
    place = s.add_mutually_exclusive_group()
    place.add_argument(
        "--place-markers", dest="place", action="store_true", default=None, help="force on"
    )
    place.add_argument(
        "--no-place-markers", dest="place", action="store_false", help="force marker placement off"
    )
    s.add_argument(
        "--fit-frames",
        type=int,
        default=1,
        help="optimise: 1 = the time range's average, else that many frames (default 1)",
    )
    s.add_argument(
        "--reg",
        type=float,
        default=1e-3,
        help="optimise: weight of |log factor|^2 toward 1, m^2 (default 1e-3)",
    )
    s.set_defaults(run=run)


def run(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # factors and the written model in float64
    from ..scaling import scale_subject

    res = scale_subject(
        args.osim,
        args.static,
        args.setup,
        args.out,
        markers=args.markers,
        mode=args.mode,
        mass=args.mass,
        height=args.height,
        place=args.place,
        fit_frames=args.fit_frames,
        reg=args.reg,
    )
    print(json.dumps(res.summary()))
    return 0
