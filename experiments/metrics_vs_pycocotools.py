"""Cross-check of simspine_jax.metrics.coco_keypoint_eval against pycocotools' COCOeval.

Random multi-person images (0-2 people each, 37 keypoints with SpinePose's sigmas, some
keypoints invisible, some people with none visible, 0-2 detections per person plus stray
false positives) are scored by both; prints one JSON line per trial with the largest
difference over the ten summary numbers, and exits 1 if one exceeds 1e-12.

pycocotools is not a dependency of simspine-jax: ``pip install pycocotools`` to run this.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np

from simspine_jax.keypoints import oks_sigmas
from simspine_jax.metrics import coco_keypoint_eval

KEYS = (
    "AP",
    "AP50",
    "AP75",
    "AP_medium",
    "AP_large",
    "AR",
    "AR50",
    "AR75",
    "AR_medium",
    "AR_large",
)


def random_case(rng, n_images=30, K=37):
    """COCO-format ground truth and results, and the same in our format."""
    images, anns, results, ours_gt, ours_dt = [], [], [], [], []

    def det(p, score, img, dl):
        kk = np.concatenate([p, np.ones((K, 1))], 1)
        results.append(
            {"image_id": img, "category_id": 1, "keypoints": kk.ravel().tolist(), "score": score}
        )
        dl.append({"keypoints": p, "score": score})

    for img in range(n_images):
        images.append({"id": img, "width": 1000, "height": 1000})
        gl, dl = [], []
        for _ in range(rng.integers(0, 3)):
            kp = rng.uniform(100, 900, 2) + rng.normal(size=(K, 2)) * rng.uniform(10, 150)
            vis = (rng.random(K) < 0.8).astype(float) * 2
            if rng.random() < 0.1:
                vis[:] = 0
            (x0, y0), (x1, y1) = kp.min(0), kp.max(0)
            area = float((x1 - x0) * (y1 - y0) * 0.53)
            anns.append({
                "id": len(anns) + 1, "image_id": img, "category_id": 1, "iscrowd": 0,
                "keypoints": np.concatenate([kp, vis[:, None]], 1).ravel().tolist(),
                "num_keypoints": int((vis > 0).sum()), "area": area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            })  # fmt: skip
            gl.append({"keypoints": kp, "visible": vis, "area": area,
                       "bbox": (x0, y0, x1 - x0, y1 - y0)})  # fmt: skip
            for _ in range(rng.integers(0, 3)):
                p = kp + rng.normal(size=(K, 2)) * rng.uniform(1, 30)
                det(p, float(rng.random()), img, dl)
        if rng.random() < 0.2:
            det(rng.uniform(0, 1000, (K, 2)), float(rng.random()), img, dl)
        ours_gt.append(gl)
        ours_dt.append(dl)
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(K)],
                        "skeleton": []}],
    }  # fmt: skip
    return coco, results, ours_gt, ours_dt


def main(trials: int = 10) -> int:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        print(json.dumps({"skipped": "pycocotools is not installed (pip install pycocotools)"}))
        return 0
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(trials):
        coco, results, ours_gt, ours_dt = random_case(rng)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = coco
            gt.createIndex()
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, "keypoints")
            ev.params.kpt_oks_sigmas = oks_sigmas()
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ref = dict(zip(KEYS, map(float, ev.stats), strict=True))
        ours = coco_keypoint_eval(ours_gt, ours_dt)
        diff = max(abs(ours[k] - ref[k]) for k in KEYS)
        worst = max(worst, diff)
        print(json.dumps({"trial": trial, "max_abs_diff": diff, "AP": ref["AP"], "AR": ref["AR"]}))
    return 0 if worst <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
