"""``simspine-jax triangulate``: multi-view 2D keypoints (Pose2Sim layout) -> 3D markers (TRC).

A thin layer over :func:`simspine_jax.triangulation.triangulate_recording`; prints its JSON
summary (without the per-keypoint table, which is in the report file) on one line.
"""

from __future__ import annotations

import argparse
import json


def _offsets(text: str) -> list[int] | dict[str, int]:
    """``2,0,-1`` (one per calibration camera, in order) or ``cam_01=2,cam_03=-1``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): int(v) for k, v in (p.rsplit("=", 1) for p in parts)}
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 2,0,-1 or cam_01=2,cam_03=-1, got {text!r}"
        ) from None


def register(sub) -> None:
    from ..filtering import UP_AXES
    from ..skeletons import skeleton_names

    t = sub.add_parser(
        "triangulate",
        help="triangulate multi-view OpenPose-style JSON keypoints into a TRC",
        description="Read a Pose2Sim/Anipose calibration and one folder of OpenPose JSONs per "
        "camera; pick one subject; triangulate robustly (confidence-weighted DLT, Huber "
        "refinement, outlier views pruned); fill short gaps; low-pass filter; write OUT.trc "
        "(metres, OpenSim Y-up) and OUT.triangulation.json (per-keypoint report). Camera "
        "folders are matched to the calibration's cameras by name (folder minus '_json'), "
        "else by the number in the names (cam1_json <-> cam_01), else by sorted order.",
    )
    t.add_argument(
        "--calib", required=True, help="calibration .toml (Pose2Sim/Anipose) or Qualisys .qca.txt"
    )
    t.add_argument("--pose-dir", required=True, help="folder with one JSON folder per camera")
    t.add_argument(
        "--skeleton",
        required=True,
        help=f"keypoint layout: {', '.join(skeleton_names())} (SPINEPOSE = SIMSPINE37)",
    )
    t.add_argument("-o", "--out", required=True, help="output .trc")
    t.add_argument("--rate", type=float, default=30.0, help="frame rate, Hz (default 30)")
    t.add_argument(
        "--likelihood", type=float, default=0.3, help="min keypoint confidence (default 0.3)"
    )
    t.add_argument("--min-views", type=int, default=2, help="min cameras per point (default 2)")
    t.add_argument(
        "--max-reproj",
        type=float,
        default=15.0,
        help="max reprojection error, px: views above are pruned, points above dropped "
        "(default 15)",
    )
    t.add_argument("--huber", type=float, default=3.0, help="Huber threshold, px (default 3)")
    t.add_argument(
        "--prune-on",
        choices=("max", "mean"),
        default="max",
        help="drop views while the largest (default) or the mean (Pose2Sim's rule) "
        "reprojection error of a point's views exceeds --max-reproj",
    )
    t.add_argument("--max-gap", type=int, default=10, help="fill gaps up to N frames (default 10)")
    t.add_argument(
        "--filter-cutoff", type=float, default=6.0, help="low-pass cutoff, Hz (default 6)"
    )
    t.add_argument(
        "--filter-order",
        type=int,
        default=4,
        help="Butterworth order of scipy's butter (default 4; Pose2Sim's order 4 is 2 here)",
    )
    t.add_argument("--no-filter", action="store_true", help="do not low-pass filter")
    t.add_argument(
        "--up",
        default="z",
        choices=UP_AXES,
        help="up axis of the calibration's world, turned into OpenSim's Y (default z)",
    )
    t.add_argument(
        "--frame-offsets",
        type=_offsets,
        help="per-camera frame offsets: camera file n is frame n - offset "
        "(2,0,-1 in calibration order, or cam_01=2,cam_03=-1)",
    )
    t.add_argument("--report", help="report .json (default OUT.triangulation.json)")
    t.set_defaults(run=_run)


def _run(args) -> int:
    from ..triangulation import triangulate_recording

    summary = triangulate_recording(
        args.calib,
        args.pose_dir,
        args.skeleton,
        args.out,
        rate_hz=args.rate,
        likelihood_threshold=args.likelihood,
        min_views=args.min_views,
        max_reprojection_px=args.max_reproj,
        huber_px=args.huber,
        prune_on=args.prune_on,
        max_gap=args.max_gap,
        cutoff_hz=None if args.no_filter else args.filter_cutoff,
        filter_order=args.filter_order,
        up=args.up,
        frame_offsets=args.frame_offsets,
        report_path=args.report,
    )
    short = {k: v for k, v in summary.items() if k not in ("keypoints", "gaps", "reading")}
    short["person_choice"] = summary["reading"]["person_choice"]
    short["camera_match"] = summary["reading"]["camera_match"]
    print(json.dumps(short))
    return 0
