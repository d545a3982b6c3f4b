"""Issue 11's lifting benchmark: the paper's four lifter variants and the constrained lifter.

Variants (each trained from scratch by ``train_and_evaluate`` in ``OUT/<variant>``):

* ``spine15_gt``, ``body37_gt``: spine-only (15 in / 15 out) and full-body (37 in, scored on the
  15 spine keypoints) SimpleBaseline3D on exact 2D projections;
* ``spine15_noisy``, ``body37_noisy``: the same on detector-like 2D (``--noise-px`` pixels,
  scaled per keypoint by its OKS sigma, ``--dropout`` of keypoints missing);
* ``kinematic_gt`` (and ``kinematic_noisy`` with ``--variants``): the kinematics-constrained
  lifter (full-body input, keypoints from FK).

Prints one JSON line per variant: Table 6-style ``p_mpjpe_mm`` / ``mpjpe_mm`` per region, the
Table 5-style per-action spine P-MPJPE, validity (bone-length CV, lumbar coupling, limit
violations), the training throughput (samples/s, compile excluded) and the JAX device; then
one summary line comparing the variants (full-body vs spine-only, constrained vs plain).

Synthetic run (defaults: 5 Hz training frames, 2 Hz test frames, 20 s per subject and action):

    python experiments/lifting_synthetic.py --steps 3000 --out out/lifting_synthetic

The real SimSpine data (paper: full-body lifter, GT 2D, spine P-MPJPE 13.48 mm): download the
release into ROOT (see simspine_jax/datasets/simspine.py for the files it reads), then

    python experiments/lifting_synthetic.py --source simspine --root ROOT --train-hz 1 \\
        --test-hz 0 --steps 200000 --variants spine15_gt body37_gt

(1 Hz training frames and every test frame, as the paper; ``--test-hz 0`` = every frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

VARIANTS = {
    "spine15_gt": ["model.kind=simple_baseline", "model.joints=spine15"],
    "body37_gt": ["model.kind=simple_baseline", "model.joints=body37"],
    "spine15_noisy": ["model.kind=simple_baseline", "model.joints=spine15", "NOISY"],
    "body37_noisy": ["model.kind=simple_baseline", "model.joints=body37", "NOISY"],
    "kinematic_gt": ["model.kind=kinematic", "model.joints=body37"],
    "kinematic_noisy": ["model.kind=kinematic", "model.joints=body37", "NOISY"],
}
DEFAULT_VARIANTS = ["spine15_gt", "body37_gt", "spine15_noisy", "body37_noisy", "kinematic_gt"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/lifting_synthetic", help="one workdir per variant")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--source", default="synthetic")
    p.add_argument("--root", default="")
    p.add_argument("--train-hz", type=float, default=5.0)
    p.add_argument("--test-hz", type=float, default=2.0)
    p.add_argument("--noise-px", type=float, default=5.0)
    p.add_argument("--dropout", type=float, default=0.02, help="2D keypoints missing (noisy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    from simspine_jax._xla import tune_xla_cpu

    tune_xla_cpu()
    import jax

    from simspine_jax.lifting.config import load_config
    from simspine_jax.lifting.train import train_and_evaluate

    device = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"
    common = [
        f"seed={args.seed}",
        f"model.hidden={args.hidden}",
        f"data.source={args.source}",
        f"data.root={args.root}",
        f"data.train_hz={args.train_hz}",
        f"data.test_hz={args.test_hz}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.decay_steps={max(args.steps // 3, 1)}",
        f"train.checkpoint_every={max(args.steps // 2, 1)}",
        f"train.log_every={max(args.steps // 20, 1)}",
        f"train.progress={str(args.progress).lower()}",
    ]
    rows = {}
    for name in args.variants:
        sets = [s for s in VARIANTS[name] if s != "NOISY"]
        if "NOISY" in VARIANTS[name]:
            sets += [f"data.noise_px={args.noise_px}", f"data.keypoint_dropout={args.dropout}"]
        config = load_config(None, common + sets)
        t0 = time.perf_counter()
        r = train_and_evaluate(config, Path(args.out) / name)
        row = {
            "variant": name,
            "device": device,
            "steps": args.steps,
            "hidden": args.hidden,
            "p_mpjpe_mm": r["p_mpjpe_mm"],
            "mpjpe_mm": r["mpjpe_mm"],
            "per_action_spine_p_mpjpe_mm": {
                a: round(v["p_mpjpe_mm"]["spine"], 2) for a, v in r["per_action"].items()
            },
            "bone_length_cv": r["bone_length_cv"],
            "lumbar_coupling": r.get("lumbar_coupling"),
            "limit_violations": r["limit_violations"],
            "train_samples_per_s": r["train"]["train_samples_per_s"],
            "final_loss": r["train"]["final_loss"],
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        rows[name] = row
        print(json.dumps(row), flush=True)

    def spine(v):
        return rows[v]["p_mpjpe_mm"]["spine"] if v in rows else None

    summary = {"summary": True, "device": device}
    for kind in ("gt", "noisy"):
        s, b = spine(f"spine15_{kind}"), spine(f"body37_{kind}")
        if s is not None and b is not None:
            summary[f"full_body_beats_spine_only_{kind}"] = b < s
        k = spine(f"kinematic_{kind}")
        if k is not None and b is not None:
            summary[f"kinematic_over_body37_p_mpjpe_{kind}"] = round(k / b, 3)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
