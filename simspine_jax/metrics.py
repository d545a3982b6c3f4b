"""Pose metrics used by every evaluation: MPJPE, P-MPJPE, per-region errors, PCK and its AUC,
COCO-style OKS AP/AR.

The 3D metrics are written with array-API operations common to numpy and ``jax.numpy``: given
jax arrays they run in JAX (jit-able, differentiable), given numpy arrays in numpy. PCK and OKS
AP/AR are evaluation-only (numpy); OKS and AP/AR follow pycocotools' ``COCOeval``
(``computeOks``, ``evaluateImg``, ``accumulate``, ``summarize`` for ``iouType="keypoints"``),
re-implemented here.

Conventions: keypoints on the second-to-last axis, coordinates on the last; ``valid`` masks
(1 = counted) on the keypoint axis; errors in the units of the inputs (metres in, metres out;
the evaluation reports multiply by 1000 for millimetres).
"""

from __future__ import annotations

import numpy as np

from .keypoints import REGIONS, SIMSPINE37, SPINE15, oks_sigmas

__all__ = [
    "AREA_RANGES",
    "OKS_THRESHOLDS",
    "bbox_from_keypoints",
    "coco_keypoint_eval",
    "joint_errors",
    "mpjpe",
    "oks",
    "p_mpjpe",
    "pck",
    "pck_auc",
    "procrustes_align",
    "region_errors",
    "region_keypoints",
]


def _xp(*arrays):
    """numpy or jax.numpy, whichever the inputs are (jax if any input is a jax array)."""
    for a in arrays:
        if a is not None and type(a).__module__.startswith("jax"):
            import jax.numpy as jnp

            return jnp
    return np


# ----------------------------------------------------------------------------- 3D errors
def joint_errors(pred, target):
    """Euclidean distance per keypoint. Shape: (*batch, K, D) x2 -> (*batch, K)."""
    xp = _xp(pred, target)
    return xp.sqrt(xp.sum((pred - target) ** 2, axis=-1))


def _masked_mean(err, valid):
    xp = _xp(err, valid)
    if valid is None:
        return xp.mean(err)
    valid = xp.broadcast_to(xp.asarray(valid, err.dtype), err.shape)
    return xp.sum(err * valid) / xp.maximum(xp.sum(valid), 1.0)


def mpjpe(pred, target, valid=None):
    """Mean per-joint position error over all samples and valid keypoints (a scalar).

    Shapes: pred, target (*batch, K, 3); valid (*batch, K) or (K,) or None (all).
    """
    return _masked_mean(joint_errors(pred, target), valid)


def procrustes_align(pred, target, valid=None):
    """``pred`` moved onto ``target`` by the best similarity transform, per sample.

    Rotation (no reflection), uniform scale and translation minimising the summed squared
    distances over the valid keypoints (Umeyama 1991), as P-MPJPE uses it.
    Shapes: (*batch, K, 3) x2, valid (*batch, K) or None -> (*batch, K, 3).
    """
    xp = _xp(pred, target, valid)
    w = xp.ones(pred.shape[:-1], pred.dtype) if valid is None else xp.asarray(valid, pred.dtype)
    w = xp.broadcast_to(w, pred.shape[:-1])[..., None]  # (*batch, K, 1)
    n = xp.maximum(xp.sum(w, axis=-2, keepdims=True), 1.0)
    mu_p = xp.sum(w * pred, axis=-2, keepdims=True) / n
    mu_t = xp.sum(w * target, axis=-2, keepdims=True) / n
    p, t = (pred - mu_p) * w, (target - mu_t) * w
    H = xp.swapaxes(p, -1, -2) @ t  # (*batch, 3, 3): sum_k p_k t_k^T
    U, S, Vt = xp.linalg.svd(H)
    d = xp.sign(xp.linalg.det(xp.swapaxes(Vt, -1, -2) @ xp.swapaxes(U, -1, -2)))
    d = xp.where(d == 0, 1.0, d)
    D = xp.concatenate([xp.ones(d.shape + (2,), pred.dtype), d[..., None]], axis=-1)
    R = xp.swapaxes(Vt, -1, -2) @ (D[..., :, None] * xp.swapaxes(U, -1, -2))  # p -> t
    var_p = xp.sum(p * p, axis=(-2, -1))
    scale = xp.sum(S * D, axis=-1) / xp.maximum(var_p, xp.finfo(pred.dtype).tiny)
    aligned = scale[..., None, None] * ((pred - mu_p) @ xp.swapaxes(R, -1, -2)) + mu_t
    assert aligned.shape == pred.shape
    return aligned


def p_mpjpe(pred, target, valid=None):
    """MPJPE after :func:`procrustes_align` of each sample (a scalar)."""
    return mpjpe(procrustes_align(pred, target, valid), target, valid)


def region_keypoints(names=SIMSPINE37) -> dict[str, list[int]]:
    """Positions in ``names`` of each region's keypoints: ``lumbar``, ``thoracic``,
    ``cervical`` (Table B3), ``spine`` (the 15), and, when ``names`` has more than the spine,
    ``body`` (the others) and ``all``. Regions with no keypoint in ``names`` are left out."""
    pos = {n: i for i, n in enumerate(names)}
    out = {r: [pos[n] for n in ks if n in pos] for r, ks in REGIONS.items()}
    out["spine"] = [pos[n] for n in SPINE15 if n in pos]
    body = [i for i, n in enumerate(names) if n not in SPINE15]
    if body:
        out["body"] = body
        out["all"] = list(range(len(names)))
    return {k: v for k, v in out.items() if v}


def region_errors(errors, names=SIMSPINE37, valid=None) -> dict[str, float]:
    """Mean error per region (:func:`region_keypoints`) of per-keypoint ``errors``.

    Shapes: errors (N, K) in ``names`` order (e.g. :func:`joint_errors` of aligned poses);
    valid (N, K) or None.
    """
    errors = np.asarray(errors, np.float64)
    valid = np.ones_like(errors) if valid is None else np.asarray(valid, np.float64)
    out = {}
    for region, idx in region_keypoints(names).items():
        w = valid[..., idx]
        if w.sum() > 0:
            out[region] = float((errors[..., idx] * w).sum() / w.sum())
    return out


# ----------------------------------------------------------------------------- 2D: PCK
def bbox_from_keypoints(keypoints, visible=None) -> np.ndarray:
    """Tight box (x0, y0, x1, y1) around the visible keypoints. Shape: (*batch, K, 2) ->
    (*batch, 4); zeros where none is visible."""
    kp = np.asarray(keypoints, np.float64)[..., :2]
    vis = np.ones(kp.shape[:-1], bool) if visible is None else np.asarray(visible) > 0
    big = np.finfo(np.float64).max
    lo = np.where(vis[..., None], kp, big).min(-2)
    hi = np.where(vis[..., None], kp, -big).max(-2)
    box = np.concatenate([lo, hi], -1)
    return np.where(vis.any(-1)[..., None], box, 0.0)


def _pck_hits(pred, target, visible, thresholds):
    """(T, *batch, K) hits and the (*batch, K) mask of counted keypoints."""
    target = np.asarray(target, np.float64)[..., :2]
    vis = np.ones(target.shape[:-1], bool) if visible is None else np.asarray(visible) > 0
    box = bbox_from_keypoints(target, vis)
    size = np.minimum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])  # shorter side
    err = (
        joint_errors(np.asarray(pred, np.float64)[..., :2], target)
        / np.maximum(size, 1e-12)[..., None]
    )
    thr = np.asarray(thresholds, np.float64).reshape((-1,) + (1,) * err.ndim)
    return err[None] <= thr, vis


def pck(pred, target, visible=None, threshold: float = 0.05) -> float:
    """Fraction of visible keypoints within ``threshold`` times the shorter side of the
    target's keypoint bounding box. Shapes: (*batch, K, 2) x2, visible (*batch, K)."""
    hits, vis = _pck_hits(pred, target, visible, [threshold])
    return float(hits[0][vis].mean()) if vis.any() else float("nan")


def pck_auc(pred, target, visible=None, thresholds=None) -> float:
    """Area under the PCK curve over thresholds 0..0.5 (51 steps of 0.01 by default),
    normalised to [0, 1]: the mean PCK over the thresholds."""
    if thresholds is None:
        thresholds = np.linspace(0.0, 0.5, 51)
    hits, vis = _pck_hits(pred, target, visible, thresholds)
    if not vis.any():
        return float("nan")
    return float(np.mean([h[vis].mean() for h in hits]))


# ----------------------------------------------------------------------------- 2D: OKS
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # pycocotools: np.linspace(.5, .95, 10)
AREA_RANGES = {"all": (0.0, 1e10), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}


def oks(pred, gt, visible, area, sigmas=None, gt_bbox=None) -> np.ndarray:
    """Object keypoint similarity of every detection with every ground truth (pycocotools).

    ``e_k = d_k^2 / (2 sigma_k)^2 / (area + eps) / 2`` and OKS = mean of ``exp(-e_k)`` over
    the visible ground-truth keypoints; a ground truth without visible keypoints is scored,
    as pycocotools does, by each keypoint's distance outside its box ``gt_bbox`` (x, y, w, h)
    grown by its size on every side. Shapes: pred (D, K, 2+), gt (G, K, 2), visible (G, K),
    area (G,), sigmas (K,) (default SimSpine's 37) -> (D, G).
    """
    pred = np.asarray(pred, np.float64)[..., :2]
    gt = np.asarray(gt, np.float64)[..., :2]
    vis = np.asarray(visible) > 0
    area = np.asarray(area, np.float64)
    sig = oks_sigmas() if sigmas is None else np.asarray(sigmas, np.float64)
    var = (2.0 * sig) ** 2
    out = np.zeros((pred.shape[0], gt.shape[0]))
    for g in range(gt.shape[0]):
        if vis[g].any():
            d2 = np.sum((pred - gt[g]) ** 2, axis=-1)  # (D, K)
        else:
            x, y, w, h = np.zeros(4) if gt_bbox is None else np.asarray(gt_bbox[g], float)
            dx = np.maximum(0, x - w - pred[..., 0]) + np.maximum(0, pred[..., 0] - (x + 2 * w))
            dy = np.maximum(0, y - h - pred[..., 1]) + np.maximum(0, pred[..., 1] - (y + 2 * h))
            d2 = dx**2 + dy**2
        e = d2 / var / (area[g] + np.spacing(1)) / 2.0
        if vis[g].any():
            e = e[:, vis[g]]
        out[:, g] = np.exp(-e).sum(-1) / e.shape[-1]
    return out


def _evaluate_image(ious, gt_ignore, det_scores, det_ignore_area, thresholds, max_dets):
    """pycocotools ``evaluateImg`` for one image and one area range: (scores, matched,
    ignored) of the kept detections per threshold, and the number of non-ignored GTs."""
    g_order = np.argsort(gt_ignore, kind="mergesort")
    gt_ig = gt_ignore[g_order]
    d_order = np.argsort(-det_scores, kind="mergesort")[:max_dets]
    ious = ious[d_order][:, g_order] if ious.size else np.zeros((len(d_order), len(g_order)))
    T, D, G = len(thresholds), len(d_order), len(g_order)
    gt_matched = np.zeros((T, G), bool)
    dt_matched = np.zeros((T, D), bool)
    dt_ig = np.zeros((T, D), bool)
    for ti, t in enumerate(thresholds):
        for di in range(D):
            best, m = min(t, 1 - 1e-10), -1
            for gi in range(G):
                if gt_matched[ti, gi]:
                    continue  # no crowd ground truth here: a match is final
                if m > -1 and not gt_ig[m] and gt_ig[gi]:
                    break
                if ious[di, gi] < best:
                    continue
                best, m = ious[di, gi], gi
            if m == -1:
                continue
            dt_ig[ti, di] = gt_ig[m]
            dt_matched[ti, di] = True
            gt_matched[ti, m] = True
    # unmatched detections outside the area range are ignored
    out_of_range = det_ignore_area[d_order][None, :]
    dt_ig = dt_ig | (~dt_matched & out_of_range)
    return det_scores[d_order], dt_matched, dt_ig, int((~gt_ig).sum())


def coco_keypoint_eval(
    gts, dets, sigmas=None, max_dets: int = 20, thresholds=OKS_THRESHOLDS
) -> dict[str, float]:
    """COCO keypoint AP/AR (pycocotools' ``summarize`` for keypoints), re-implemented.

    ``gts``: per image a list of ground truths, each a dict with ``keypoints`` (K, 2),
    ``visible`` (K,), ``area`` (float; COCO uses the segmentation area, datasets without
    one, as MMPose does, 0.53 x the box area) and optional ``bbox`` (x, y, w, h) and
    ``ignore``. ``dets``: per image (same order) a list of detections, dicts with
    ``keypoints`` (K, 2+) and ``score``. A ground truth without visible keypoints is ignored
    (pycocotools' rule for keypoints); a detection's area is that of its keypoints' box.
    Returns AP, AP50, AP75, AP_medium, AP_large, AR, AR50, AR75, AR_medium, AR_large (-1
    where there is no ground truth in the range).
    """
    if len(gts) != len(dets):
        from .errors import InputError

        raise InputError(f"{len(gts)} images of ground truth but {len(dets)} of detections")
    thresholds = np.asarray(thresholds, np.float64)
    rec_thrs = np.linspace(0.0, 1.0, 101)
    results = {}
    for rng_name, (lo, hi) in AREA_RANGES.items():
        scores, matched, ignored, n_gt = [], [], [], 0
        for img_gts, img_dets in zip(gts, dets, strict=True):
            if not img_gts and not img_dets:
                continue
            g_area = np.array([g["area"] for g in img_gts], np.float64)
            g_vis = [np.asarray(g["visible"]) > 0 for g in img_gts]
            g_ig = np.array(
                [
                    bool(g.get("ignore", False)) or not v.any()
                    for g, v in zip(img_gts, g_vis, strict=True)
                ],
                bool,
            )
            g_ig = g_ig | (g_area < lo) | (g_area > hi) if len(img_gts) else g_ig
            d_kp = [np.asarray(d["keypoints"], np.float64)[..., :2] for d in img_dets]
            d_box = bbox_from_keypoints(np.array(d_kp)) if d_kp else np.zeros((0, 4))
            d_area = (d_box[:, 2] - d_box[:, 0]) * (d_box[:, 3] - d_box[:, 1])
            d_score = np.array([d["score"] for d in img_dets], np.float64)
            if img_gts and img_dets:
                ious = oks(
                    np.array(d_kp),
                    np.array([np.asarray(g["keypoints"], np.float64)[..., :2] for g in img_gts]),
                    np.array(g_vis),
                    g_area,
                    sigmas,
                    [g.get("bbox", (0, 0, 0, 0)) for g in img_gts],
                )
            else:
                ious = np.zeros((len(img_dets), len(img_gts)))
            s, m, ig, n = _evaluate_image(
                ious, g_ig, d_score, (d_area < lo) | (d_area > hi), thresholds, max_dets
            )
            scores.append(s)
            matched.append(m)
            ignored.append(ig)
            n_gt += n
        if n_gt == 0:
            results[rng_name] = (np.full(len(thresholds), -1.0), np.full(len(thresholds), -1.0))
            continue
        s = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-s, kind="mergesort")
        m = np.concatenate(matched, 1)[:, order] if matched else np.zeros((len(thresholds), 0))
        ig = np.concatenate(ignored, 1)[:, order] if ignored else np.zeros_like(m)
        tps = np.cumsum(m & ~ig, axis=1, dtype=np.float64)
        fps = np.cumsum(~m & ~ig, axis=1, dtype=np.float64)
        ap, ar = np.zeros(len(thresholds)), np.zeros(len(thresholds))
        for ti in range(len(thresholds)):
            tp, fp = tps[ti], fps[ti]
            rc = tp / n_gt
            pr = tp / (fp + tp + np.spacing(1))
            ar[ti] = rc[-1] if len(rc) else 0.0
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
            idx = np.searchsorted(rc, rec_thrs, side="left")
            q = np.where(idx < len(pr), pr[np.minimum(idx, max(len(pr) - 1, 0))], 0.0)
            ap[ti] = q.mean() if len(pr) else 0.0
        results[rng_name] = (ap, ar)

    def at(values, t):
        if values[0] < 0:
            return -1.0
        return float(values[np.argmin(np.abs(thresholds - t))])

    ap_all, ar_all = results["all"]
    return {
        "AP": float(ap_all.mean()) if ap_all[0] >= 0 else -1.0,
        "AP50": at(ap_all, 0.5),
        "AP75": at(ap_all, 0.75),
        "AP_medium": float(results["medium"][0].mean()) if results["medium"][0][0] >= 0 else -1.0,
        "AP_large": float(results["large"][0].mean()) if results["large"][0][0] >= 0 else -1.0,
        "AR": float(ar_all.mean()) if ar_all[0] >= 0 else -1.0,
        "AR50": at(ar_all, 0.5),
        "AR75": at(ar_all, 0.75),
        "AR_medium": float(results["medium"][1].mean()) if results["medium"][1][0] >= 0 else -1.0,
        "AR_large": float(results["large"][1].mean()) if results["large"][1][0] >= 0 else -1.0,
    }
