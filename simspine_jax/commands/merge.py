"""``simspine-jax merge`` (known markers + pseudo-markers -> one TRC and its IK setup) and
``simspine-jax filter`` (gap filling, zero-phase low-pass, axes of a TRC): thin layers over
:func:`simspine_jax.merging.merge_trc_files` and :func:`simspine_jax.filtering.filter_trc`.
Each prints its JSON summary on one line."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError

_UP_HELP = "up axis of the input's world (x, y, z, -x, -y, -z), turned into OpenSim's Y-up"


def _weight_pair(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from None


def register(sub) -> None:
    from ..filtering import GAP_METHODS, UP_AXES
    from ..merging import (
        DEFAULT_KNOWN_WEIGHT,
        DEFAULT_PSEUDO_WEIGHT,
        DUPLICATE_RULES,
        RESAMPLE_METHODS,
    )

    m = sub.add_parser(
        "merge",
        help="merge known markers and triangulated pseudo-markers (TRC) into one TRC + IK setup",
        description="Put known 3D markers and pseudo-markers on one time base (their overlap; "
        "linear interpolation) and write them as one TRC, with an OpenSim IK setup weighting "
        "known markers higher. Rules: simspine_jax/merging.py.",
    )
    m.add_argument("--known", required=True, help="known markers (.trc), e.g. Human3.6M joints")
    m.add_argument("--pseudo", required=True, help="triangulated pseudo-markers (.trc)")
    m.add_argument("-o", "--out", required=True, help="merged markers (.trc)")
    m.add_argument("--setup-out", help="OpenSim IK setup (.xml) for the merged markers")
    m.add_argument(
        "--known-weight",
        type=float,
        default=DEFAULT_KNOWN_WEIGHT,
        help=f"IK weight of every known marker (default {DEFAULT_KNOWN_WEIGHT:g})",
    )
    m.add_argument(
        "--pseudo-weight",
        type=float,
        default=DEFAULT_PSEUDO_WEIGHT,
        help=f"IK weight of every pseudo-marker (default {DEFAULT_PSEUDO_WEIGHT:g})",
    )
    m.add_argument(
        "--weight",
        action="append",
        type=_weight_pair,
        default=[],
        metavar="NAME=W",
        help="weight of one merged marker (repeatable; overrides the two above)",
    )
    m.add_argument(
        "--rate", type=float, help="resample onto this rate (Hz) from the overlap's start"
    )
    m.add_argument(
        "--resample",
        choices=RESAMPLE_METHODS,
        default="cubic",
        help="interpolation in time, per gap-free stretch of each marker (default cubic)",
    )
    m.add_argument(
        "--time-base",
        choices=("known", "pseudo"),
        default="known",
        help="without --rate: the frames of this file inside the overlap (default known)",
    )
    m.add_argument(
        "--pseudo-offset",
        type=float,
        default=0.0,
        help="seconds added to the pseudo-markers' times before merging (default 0)",
    )
    m.add_argument(
        "--on-duplicate",
        choices=DUPLICATE_RULES,
        default="prefer_known",
        help="a marker in both files: keep the known one (default), the pseudo one, both "
        "(pseudo renamed NAME+SUFFIX), or fail",
    )
    m.add_argument("--rename-suffix", default="_pseudo", help="for --on-duplicate rename")
    m.add_argument("--known-up", choices=UP_AXES, help=_UP_HELP + " (known file)")
    m.add_argument("--pseudo-up", choices=UP_AXES, help=_UP_HELP + " (pseudo file)")
    m.add_argument("--model", help="model_file written into the setup (.osim)")
    m.add_argument("--motion-out", help="output_motion_file written into the setup (.mot)")
    m.add_argument("--units", choices=("m", "mm", "cm"), default="m", help="units of the TRC")
    m.set_defaults(run=_run_merge)

    f = sub.add_parser(
        "filter",
        help="fill short gaps, zero-phase Butterworth low-pass and re-orient a TRC",
        description="Gaps of at most --max-gap frames are interpolated (longer ones and gaps "
        "at either end stay empty and are reported); then a zero-phase Butterworth low-pass "
        "(scipy's butter + filtfilt) runs on each gap-free stretch of each marker. Rules: "
        "simspine_jax/filtering.py.",
    )
    f.add_argument("--trc", required=True, help="input markers (.trc)")
    f.add_argument("-o", "--out", required=True, help="output markers (.trc)")
    f.add_argument("--cutoff", type=float, default=6.0, help="cutoff frequency, Hz (default 6)")
    f.add_argument(
        "--order",
        type=int,
        default=4,
        help="Butterworth order of one pass (default 4; Pose2Sim's order 4 is 2 here)",
    )
    f.add_argument("--no-filter", action="store_true", help="fill gaps only")
    f.add_argument(
        "--max-gap", type=int, default=10, help="longest gap filled, frames (default 10)"
    )
    f.add_argument(
        "--gap-method", choices=GAP_METHODS, default="cubic", help="interpolation (default cubic)"
    )
    f.add_argument("--up", choices=UP_AXES, help=_UP_HELP)
    f.add_argument(
        "--strict",
        action="store_true",
        help="fail on a gap-free stretch too short to filter (default: leave it, report it)",
    )
    f.add_argument("--units", choices=("m", "mm", "cm"), help="output units (default: input's)")
    f.set_defaults(run=_run_filter)


def _run_merge(args) -> int:
    from ..merging import merge_trc_files

    weights = dict(args.weight)
    if len(weights) != len(args.weight):
        raise InputError("a marker is given two --weight values", field="--weight")
    summary = merge_trc_files(
        args.known,
        args.pseudo,
        args.out,
        args.setup_out,
        known_weight=args.known_weight,
        pseudo_weight=args.pseudo_weight,
        weights=weights,
        model_file=args.model,
        output_motion_file=args.motion_out,
        units=args.units,
        rate_hz=args.rate,
        time_base=args.time_base,
        pseudo_offset_s=args.pseudo_offset,
        on_duplicate=args.on_duplicate,
        rename_suffix=args.rename_suffix,
        known_up=args.known_up,
        pseudo_up=args.pseudo_up,
        resample=args.resample,
    )
    print(json.dumps(summary))
    return 0


def _run_filter(args) -> int:
    from ..filtering import filter_trc

    summary = filter_trc(
        args.trc,
        args.out,
        cutoff_hz=None if args.no_filter else args.cutoff,
        order=args.order,
        max_gap=args.max_gap,
        method=args.gap_method,
        up=args.up,
        on_short="error" if args.strict else "keep",
        units=args.units,
    )
    print(json.dumps(summary))
    return 0
