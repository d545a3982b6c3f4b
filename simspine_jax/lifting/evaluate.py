"""Evaluation of a lifter as in the SimSpine paper's Tables 5 and 6, plus validity measures.

Errors in millimetres, of root-relative keypoints (root = ``Hip``), per region (lumbar, thoracic,
cervical, spine = the 15, and for ``body37`` also ``body`` = the other 22 and ``all``):

* ``mpjpe_mm``: mean per-joint position error;
* ``p_mpjpe_mm``: after a similarity (Procrustes) alignment per sample; the spine regions are
  aligned on the 15 spine keypoints, ``body`` and ``all`` on all 37, so spine-only and
  full-body lifters are scored the same way on the spine;
* ``per_action``: both, per action (Table 5's rows).

Validity (:func:`validity`): ``bone_length_cv`` (coefficient of variation of each skeleton
bone's length over a test subject's samples, averaged over bones and subjects, for the
prediction and the ground truth; ``rigid`` = bones whose two keypoints sit on one body of the
model; ``rigid_scale_free`` = the same after dividing each sample's lengths by their mean, 0 for
a skeleton of fixed shape at any scale), ``lumbar_coupling`` (error of the three angles between
consecutive lumbar segments Hip-Spine_01-Spine_02-Spine_03-Spine_04, degrees) and
``limit_violations`` (predicted model coordinates outside their ranges; a plain lifter predicts
none, so ``null``).

Metric functions come from :mod:`simspine_jax.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from ..keypoints import KEYPOINT_BODY, SIMSPINE37, SPINE15, bones
from ..metrics import joint_errors, procrustes_align, region_errors

__all__ = [
    "evaluate_lifter",
    "evaluate_workdir",
    "predict_dataset",
    "results_markdown",
    "validity",
    "write_results",
]

_LUMBAR_CHAIN = ("Hip", "Spine_01", "Spine_02", "Spine_03", "Spine_04")


def _batched(fn, arrays: list[np.ndarray], batch_size: int) -> np.ndarray:
    """``fn`` over fixed-size slices (the last one padded: one compile). Shape: (N, ...)."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch_size):
        part = [a[s : s + batch_size] for a in arrays]
        m = len(part[0])
        if m < batch_size:
            part = [np.concatenate([p, np.repeat(p[-1:], batch_size - m, 0)]) for p in part]
        outs.append(np.asarray(fn(*part))[:m])
    return np.concatenate(outs, 0)


def predict_dataset(lifter, variables, data, batch_size: int) -> np.ndarray:
    """Root-relative predicted keypoints of the lifter's joint set. Shape: (N, J, 3), metres."""
    fn = jax.jit(lambda k, c, s: lifter.predict(variables, k, c, s))
    return _batched(fn, [data.keypoints_2d, data.confidence, data.image_size], batch_size)


def _region_tables(pred, gt, valid, names) -> tuple[dict, dict]:
    """(mpjpe_mm, p_mpjpe_mm) per region. Shapes: (N, J, 3) x2, (N, J)."""
    mm = {k: v * 1000 for k, v in region_errors(joint_errors(pred, gt), names, valid).items()}
    sp = [i for i, n in enumerate(names) if n in SPINE15]
    sp_names = [names[i] for i in sp]
    aligned = procrustes_align(pred[:, sp], gt[:, sp], valid[:, sp])
    err = joint_errors(aligned, gt[:, sp])
    pmm = {k: v * 1000 for k, v in region_errors(err, sp_names, valid[:, sp]).items()}
    if len(sp) < len(names):
        aligned_all = procrustes_align(pred, gt, valid)
        whole = region_errors(joint_errors(aligned_all, gt), names, valid)
        pmm.update({k: whole[k] * 1000 for k in ("body", "all") if k in whole})
    return mm, pmm


def _bone_cv(
    x: np.ndarray, subject: np.ndarray, pairs: list[tuple[int, int]], scale_free: bool = False
) -> float:
    """Mean over bones and subjects of std / mean of the bone length. Shape: x (N, J, 3).

    ``scale_free``: each sample's lengths divided by their mean first (proportions only).
    """
    if not pairs:
        return float("nan")
    c, p = np.array(pairs).T
    length = np.linalg.norm(x[:, c] - x[:, p], axis=-1)  # (N, B)
    if scale_free:
        length = length / np.maximum(length.mean(-1, keepdims=True), 1e-12)
    cvs = []
    for s in np.unique(subject):
        ls = length[subject == s]
        if len(ls) > 1:
            cvs.append(ls.std(0) / np.maximum(ls.mean(0), 1e-9))
    return float(np.mean(cvs)) if cvs else float("nan")


def _lumbar_angles(x: np.ndarray, pos: dict) -> np.ndarray:
    """Angles (degrees) between consecutive lumbar segments. Shape: (N, J, 3) -> (N, 3)."""
    pts = [x[:, pos[n]] for n in _LUMBAR_CHAIN]
    seg = [b - a for a, b in zip(pts[:-1], pts[1:], strict=True)]
    out = []
    for u, v in zip(seg[:-1], seg[1:], strict=True):
        cos = np.sum(u * v, -1) / np.maximum(
            np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-12
        )
        out.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.stack(out, -1)


def validity(pred, gt, names, subject, coordinates=None, limits=None) -> dict:
    """Bone-length CV, lumbar coupling, limit violations. Shapes: (N, J, 3) x2, (N,) subjects;
    ``coordinates`` (N, C) predicted model coordinates with ``limits`` ((C,), (C,)) or None."""
    pos = {n: i for i, n in enumerate(names)}
    pairs = [(pos[c], pos[p]) for c, p in bones() if c in pos and p in pos]
    rigid = [(c, p) for c, p in pairs if KEYPOINT_BODY[names[c]] == KEYPOINT_BODY[names[p]]]
    out = {
        "bone_length_cv": {
            "prediction": _bone_cv(pred, subject, pairs),
            "ground_truth": _bone_cv(gt, subject, pairs),
            "rigid_prediction": _bone_cv(pred, subject, rigid),
            "rigid_ground_truth": _bone_cv(gt, subject, rigid),
            # proportions of the rigid bones: 0 for a skeleton of fixed shape at any scale
            "rigid_scale_free_prediction": _bone_cv(pred, subject, rigid, scale_free=True),
            "bones": len(pairs),
            "rigid_bones": len(rigid),
        }
    }
    if all(n in pos for n in _LUMBAR_CHAIN):
        a_pred, a_gt = _lumbar_angles(pred, pos), _lumbar_angles(gt, pos)
        out["lumbar_coupling"] = {
            "angle_error_deg": float(np.mean(np.abs(a_pred - a_gt))),
            "per_angle_error_deg": np.mean(np.abs(a_pred - a_gt), 0).round(4).tolist(),
            "prediction_mean_deg": a_pred.mean(0).round(4).tolist(),
            "ground_truth_mean_deg": a_gt.mean(0).round(4).tolist(),
        }
    if coordinates is None:
        out["limit_violations"] = None
        out["limit_violations_note"] = "the plain lifter predicts keypoints, no model coordinates"
    else:
        lo, hi = limits
        bad = (coordinates < lo - 1e-6) | (coordinates > hi + 1e-6)
        out["limit_violations"] = {
            "coordinates_outside_range": int(bad.sum()),
            "samples_with_violation": int(bad.any(-1).sum()),
            "coordinates_checked": int(bad.size),
        }
    return out


def evaluate_lifter(lifter, variables, data, *, batch_size: int) -> dict:
    """Scores of ``lifter`` on ``data`` (a LiftingData): the dict written to results.json."""
    joints = lifter.joints
    names = [SIMSPINE37[i] for i in joints]
    pred = predict_dataset(lifter, variables, data, batch_size).astype(np.float64)
    x = np.asarray(data.keypoints_3d, np.float64)[:, joints]
    gt = x - x[:, lifter.root : lifter.root + 1]
    valid = np.ones(gt.shape[:2]) if data.valid_3d is None else np.asarray(data.valid_3d)[:, joints]
    valid = valid * valid[:, lifter.root : lifter.root + 1]  # no root, no root-relative target
    mm, pmm = _region_tables(pred, gt, valid, names)
    per_action = {}
    for action in sorted(set(data.action.tolist())):
        sel = data.action == action
        a_mm, a_pmm = _region_tables(pred[sel], gt[sel], valid[sel], names)
        per_action[action] = {"mpjpe_mm": a_mm, "p_mpjpe_mm": a_pmm, "samples": int(sel.sum())}
    coords = limits = None
    if hasattr(lifter, "predict_coordinates"):
        fn = jax.jit(lambda k, c, s: lifter.predict_coordinates(variables, k, c, s))
        q = _batched(fn, [data.keypoints_2d, data.confidence, data.image_size], batch_size)
        coords, limits = q[:, lifter.free], lifter.limits
    results = {
        "model": {"kind": type(lifter).__name__, "joints": lifter.config.joints},
        "samples": len(data),
        "subjects": sorted(set(data.subject.tolist())),
        "mpjpe_mm": mm,
        "p_mpjpe_mm": pmm,
        "per_action": per_action,
    }
    results.update(validity(pred, gt, names, np.asarray(data.subject), coords, limits))
    if coords is not None and data.coordinates is not None:
        err = coords - np.asarray(data.coordinates)[:, lifter.free]
        results["coordinate_rmse"] = float(np.sqrt(np.mean(err**2)))
    return results


def results_markdown(results: dict) -> str:
    """Tables 5 (per action) and 6 (per region) of the paper's layout, as Markdown."""
    regions = list(results["p_mpjpe_mm"])
    lines = [
        f"Model: {results['model']['kind']} ({results['model']['joints']}), "
        f"{results['samples']} test samples of {', '.join(results['subjects'])}.",
        "",
        "Table 5 style: spine error per action (mm)",
        "",
        "| Action | MPJPE | P-MPJPE |",
        "| --- | ---: | ---: |",
    ]
    for action, r in results["per_action"].items():
        lines.append(
            f"| {action} | {r['mpjpe_mm']['spine']:.2f} | {r['p_mpjpe_mm']['spine']:.2f} |"
        )
    mm, pmm = results["mpjpe_mm"], results["p_mpjpe_mm"]
    lines.append(f"| **Average** | {mm['spine']:.2f} | {pmm['spine']:.2f} |")
    lines += ["", "Table 6 style: error per region (mm)", "", "| Region | MPJPE | P-MPJPE |"]
    lines.append("| --- | ---: | ---: |")
    for region in regions:
        lines.append(f"| {region} | {mm[region]:.2f} | {pmm[region]:.2f} |")
    cv = results["bone_length_cv"]
    lines += [
        "",
        "Validity",
        "",
        f"- bone-length CV: {cv['prediction']:.4f} (ground truth {cv['ground_truth']:.4f}); "
        f"rigid bones {cv['rigid_prediction']:.2e} (ground truth {cv['rigid_ground_truth']:.2e})",
    ]
    if "lumbar_coupling" in results:
        lc = results["lumbar_coupling"]
        lines.append(f"- lumbar inter-segment angle error: {lc['angle_error_deg']:.2f} deg")
    lv = results["limit_violations"]
    if lv is None:
        lines.append(f"- limit violations: n/a ({results.get('limit_violations_note', '')})")
    else:
        lines.append(
            f"- limit violations: {lv['coordinates_outside_range']} of "
            f"{lv['coordinates_checked']} predicted coordinates"
        )
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic | jax.Array):
        return np.asarray(x).item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_results(results: dict, json_path, md_path=None) -> None:
    """``results`` as JSON (NaN written as null) and, if ``md_path``, as Markdown tables."""
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    if md_path is not None:
        Path(md_path).write_text(results_markdown(results))


def evaluate_workdir(workdir, out=None) -> dict:
    """Evaluate the latest checkpoint of a ``train-lifter`` workdir on its config's test split.

    Writes ``out`` (default ``workdir/results.json``) and the Markdown beside it (``.md``).
    """
    from .train import load_split, load_trained

    config, lifter, variables, step = load_trained(workdir)
    test = load_split(config, "test")
    results = evaluate_lifter(lifter, variables, test, batch_size=config.train.eval_batch_size)
    results["step"] = step
    out = Path(workdir) / "results.json" if out is None else Path(out)
    write_results(results, out, out.with_suffix(".md"))
    return results
