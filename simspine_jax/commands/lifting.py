"""``train-lifter``, ``eval-lifter`` and ``export-onnx``: 2D-to-3D lifting (issue 11).

Thin wrappers over :func:`simspine_jax.lifting.train.train_and_evaluate`,
:func:`simspine_jax.lifting.evaluate.evaluate_workdir` and
:func:`simspine_jax.lifting.onnx.export_workdir`; Flax is imported only when one of them runs.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    t = sub.add_parser(
        "train-lifter",
        help="train a 2D-to-3D lifter (resumes the workdir's latest checkpoint), then evaluate",
    )
    t.add_argument("--workdir", required=True, help="folder of checkpoints, metrics and results")
    t.add_argument("--config", help="TOML config overriding the defaults (lifting/configs)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set train.steps=2000 (repeatable)",
    )
    t.set_defaults(run=_train)

    e = sub.add_parser("eval-lifter", help="MPJPE / P-MPJPE per region and action of a workdir")
    e.add_argument("--workdir", required=True, help="a train-lifter workdir")
    e.add_argument("-o", "--out", help="results JSON (default WORKDIR/results.json; .md beside)")
    e.set_defaults(run=_evaluate)

    x = sub.add_parser("export-onnx", help="export a trained lifter to ONNX")
    x.add_argument("--workdir", required=True, help="a train-lifter workdir")
    x.add_argument("-o", "--out", required=True, help="output .onnx")
    x.set_defaults(run=_export)


def _summary(results: dict) -> dict:
    keep = ("model", "samples", "mpjpe_mm", "p_mpjpe_mm", "limit_violations", "train", "step")
    out = {k: results[k] for k in keep if k in results}
    out["bone_length_cv"] = results["bone_length_cv"]["prediction"]
    return out


def _train(args) -> int:
    from ..lifting.config import load_config
    from ..lifting.train import train_and_evaluate

    config = load_config(args.config, args.overrides)
    results = train_and_evaluate(config, args.workdir)
    print(json.dumps(_summary(results)))
    return 0


def _evaluate(args) -> int:
    from ..lifting.evaluate import evaluate_workdir

    print(json.dumps(_summary(evaluate_workdir(args.workdir, args.out))))
    return 0


def _export(args) -> int:
    from ..lifting.onnx import export_workdir

    print(f"wrote {export_workdir(args.workdir, args.out)}")
    return 0
