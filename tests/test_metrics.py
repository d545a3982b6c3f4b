"""Pose metrics against hand-computed cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from simspine_jax import keypoints as kp
from simspine_jax import metrics as M


def test_mpjpe_hand_case():
    target = np.zeros((1, 2, 3))
    pred = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    assert M.mpjpe(pred, target) == pytest.approx(2.5)
    assert M.mpjpe(pred, target, valid=np.array([[1, 0]])) == pytest.approx(5.0)
    np.testing.assert_allclose(M.joint_errors(pred, target), [[5.0, 0.0]])


def test_p_mpjpe_hand_case():
    """Collinear points: only the scale and the shift matter; worked out by hand.

    pred x = (-1, 0.6, 1), target x = (-1, 0, 1): centred pred (-1.2, 0.4, 0.8), scale
    <p, t> / |p|^2 = 2 / 2.24, aligned - target = (-1, 5, -4) / 14, mean error 10 / 42.
    """
    target = np.array([[[-1.0, 0, 0], [0, 0, 0], [1, 0, 0]]])
    pred = np.array([[[-1.0, 0, 0], [0.6, 0, 0], [1, 0, 0]]])
    aligned = M.procrustes_align(pred, target)
    np.testing.assert_allclose(aligned[0, :, 0] - target[0, :, 0], np.array([-1, 5, -4]) / 14)
    np.testing.assert_allclose(aligned[0, :, 1:], 0.0, atol=1e-12)
    assert M.p_mpjpe(pred, target) == pytest.approx(10 / 42)


def test_p_mpjpe_removes_similarity_and_is_jax_friendly():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(4, 15, 3))
    R = Rotation.random(4, random_state=1).as_matrix()
    moved = 1.7 * np.einsum("nij,nkj->nki", R, target) + rng.normal(size=(4, 1, 3))
    assert M.mpjpe(moved, target) > 0.5
    assert M.p_mpjpe(moved, target) < 1e-10
    # a reflection is not a rotation: a mirrored pose keeps an error
    mirrored = target * np.array([1.0, 1.0, -1.0])
    assert M.p_mpjpe(mirrored, target) > 0.1
    # a mask: keypoints left out do not steer the alignment
    noisy = moved.copy()
    noisy[:, 0] += 5.0
    valid = np.ones((4, 15))
    valid[:, 0] = 0
    assert M.p_mpjpe(noisy, target, valid) < 1e-10
    # the same numbers in JAX, under jit, with finite gradients
    noisy_pred = moved + 0.05 * rng.normal(size=moved.shape)
    ref = M.p_mpjpe(noisy_pred, target)
    f = jax.jit(lambda p: M.p_mpjpe(p, jnp.asarray(target)))
    assert float(f(jnp.asarray(noisy_pred))) == pytest.approx(ref, rel=1e-9)
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(jnp.asarray(noisy_pred)))))


def test_region_errors():
    err = np.zeros((2, 37))
    err[:, kp.index_of("Spine_01")] = 4.0  # lumbar: 4 keypoints
    err[:, kp.index_of("Neck_03")] = 10.0  # cervical: 5 keypoints
    err[:, kp.index_of("LKnee")] = 22.0  # body: 22 keypoints
    out = M.region_errors(err)
    assert out["lumbar"] == pytest.approx(1.0)
    assert out["cervical"] == pytest.approx(2.0)
    assert out["thoracic"] == pytest.approx(0.0)
    assert out["spine"] == pytest.approx(14.0 / 15.0)
    assert out["body"] == pytest.approx(1.0)
    assert out["all"] == pytest.approx(36.0 / 37.0)
    spine_only = M.region_errors(err[:, kp.spine15_indices()], names=kp.SPINE15)
    assert set(spine_only) == {"lumbar", "thoracic", "cervical", "spine"}
    assert spine_only["spine"] == pytest.approx(out["spine"])
    assert {k: len(v) for k, v in M.region_keypoints().items()} == {
        "lumbar": 4, "thoracic": 6, "cervical": 5, "spine": 15, "body": 22, "all": 37,
    }  # fmt: skip


def test_pck_and_auc_hand_case():
    # box 100 x 200: the shorter side is 100 px
    gt = np.array([[[0.0, 0.0], [100.0, 200.0], [50.0, 50.0], [20.0, 20.0]]])
    pred = gt + np.array([[[2.5, 0.0], [0.0, 7.5], [0.0, 29.5], [0.0, 60.0]]])
    vis = np.array([[1, 1, 1, 0]])
    assert M.pck(pred, gt, vis, 0.05) == pytest.approx(1 / 3)  # only the 2.5 px error
    assert M.pck(pred, gt, vis, 0.1) == pytest.approx(2 / 3)
    # errors 0.025, 0.075, 0.295 of the size; over 0, 0.01, ..., 0.5 the PCK is 1/3 from 0.03
    # (48 thresholds), 2/3 from 0.08 (43), 1 from 0.30 (21): AUC = (48 + 43 + 21) / 3 / 51
    assert M.pck_auc(pred, gt, vis) == pytest.approx((48 + 43 + 21) / 3 / 51)
    np.testing.assert_allclose(M.bbox_from_keypoints(gt, vis), [[0, 0, 100, 200]])


def test_oks_hand_case():
    sig = np.array([0.1, 0.05])
    gt = np.array([[[0.0, 0.0], [10.0, 0.0]]])
    pred = np.array([[[2.0, 0.0], [10.0, 1.0]]])
    area = np.array([100.0])
    # e_k = d^2 / (2 sigma)^2 / area / 2
    e = np.array([4.0 / 0.04 / 100 / 2, 1.0 / 0.01 / 100 / 2])
    np.testing.assert_allclose(
        M.oks(pred, gt, np.array([[1, 1]]), area, sig), [[np.exp(-e).mean()]]
    )
    np.testing.assert_allclose(M.oks(pred, gt, np.array([[0, 1]]), area, sig), [[np.exp(-e[1])]])
    # no visible ground truth: distances outside the box grown by its size on each side
    box = [(0.0, 0.0, 1.0, 1.0)]  # grown box: [-1, 2] x [-1, 2]
    far = np.array([[[5.0, 0.0], [0.0, 0.0]]])
    e0 = 9.0 / 0.04 / 100 / 2
    np.testing.assert_allclose(
        M.oks(far, gt, np.array([[0, 0]]), area, sig, box), [[(np.exp(-e0) + 1.0) / 2]]
    )
    assert len(kp.SIMSPINE37_SIGMAS) == 37
    for left, right in (("LShoulder", "RShoulder"), ("LLatissimus", "RLatissimus")):
        assert kp.oks_sigmas([left]) == kp.oks_sigmas([right])


def _det_with_oks(value, sigma=0.1, area=100.0):
    """One-keypoint detection at the distance that gives OKS ``value``."""
    d = np.sqrt(-np.log(value) * 8 * sigma**2 * area)
    return {"keypoints": np.array([[d, 0.0]]), "score": 0.0}


def test_coco_ap_ar_hand_case():
    """Two images, one person each; detections with OKS 0.92 (score 0.9), 0.62 (score 0.8).

    Thresholds 0.50-0.60: both match, AP 1. 0.65-0.90 (6): the first only; precision 1 up
    to recall 0.5, so 51 of 101 recall points, AP 51/101. 0.95: none. AR: 1, 0.5, 0.
    """
    gt = {"keypoints": np.zeros((1, 2)), "visible": np.ones(1), "area": 100.0}
    d1 = {**_det_with_oks(0.92), "score": 0.9}
    d2 = {**_det_with_oks(0.62), "score": 0.8}
    out = M.coco_keypoint_eval([[gt], [gt]], [[d1], [d2]], sigmas=np.array([0.1]))
    assert out["AP"] == pytest.approx((3 + 6 * 51 / 101) / 10)
    assert out["AP50"] == pytest.approx(1.0)
    assert out["AP75"] == pytest.approx(51 / 101)
    assert out["AR"] == pytest.approx(0.6)
    assert out["AR75"] == pytest.approx(0.5)
    assert out["AP_medium"] == -1.0  # area 100 < 32^2: no medium or large ground truth
    # a false positive with a higher score than every true one halves the precision
    fp = {"keypoints": np.array([[100.0, 0.0]]), "score": 0.95}
    out = M.coco_keypoint_eval([[gt], [gt]], [[d1, fp], [d2]], sigmas=np.array([0.1]))
    # t <= 0.60: precision (0, 1/2, 2/3) -> envelope 2/3 for all recalls: AP 2/3
    assert out["AP50"] == pytest.approx(2 / 3)
    # a ground truth without visible keypoints is ignored (and its detection too)
    hidden = {**gt, "visible": np.zeros(1), "bbox": (0, 0, 1, 1)}
    out = M.coco_keypoint_eval([[gt], [hidden]], [[d1], [d2]], sigmas=np.array([0.1]))
    assert out["AR"] == pytest.approx(0.9)  # the one real person found at t <= 0.90
