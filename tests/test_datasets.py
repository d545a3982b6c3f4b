"""Lifting datasets: the synthetic generator, the array layout, the batcher, the loaders."""

from __future__ import annotations

import numpy as np
import pytest

import simspine_jax as sj
from simspine_jax.datasets import Batcher, LiftingData, concatenate, load_dataset
from simspine_jax.datasets.cameras import h36m_camera, h36m_cameras, project
from simspine_jax.datasets.synthetic import SOURCE_HZ, subject_tree
from simspine_jax.errors import InputError
from simspine_jax.keypoints import SIMSPINE37, index_of

SMALL = dict(duration_s=4.0, actions=("Walking", "SittingDown"))


@pytest.fixture(scope="module")
def tree():
    return sj.load_model(sj.default_model_path())


@pytest.fixture(scope="module")
def synth(tree):
    return load_dataset("synthetic", split="test", seed=3, sample_hz=2.0, tree=tree, **SMALL)


def test_synthetic_layout(synth):
    n = 2 * 2 * 4 * 8  # subjects x actions x cameras x frames (4 s at 2 Hz)
    assert len(synth) == n
    assert synth.keypoints_2d.shape == (n, 37, 2) and synth.keypoints_2d.dtype == np.float32
    assert synth.keypoints_3d.shape == (n, 37, 3) and synth.confidence.shape == (n, 37)
    assert synth.camera_R.shape == (n, 3, 3) and synth.camera_t.shape == (n, 3)
    assert set(synth.subject) == {"S9", "S11"} and set(synth.action) == set(SMALL["actions"])
    assert set(synth.camera) == {0, 1, 2, 3}
    assert np.array_equal(np.unique(synth.frame), np.arange(0, 200, 25))  # 50 Hz frame numbers
    assert synth.coordinates.shape == (n, 40)
    assert np.all(synth.confidence == 1.0)  # no noise, no dropout, all inside the images
    assert np.all(synth.keypoints_3d[..., 2] > 2.0)  # metres in front of the cameras


def test_synthetic_is_fk_of_its_coordinates(synth, tree):
    """keypoints_3d = R @ FK(subject's scaled model, coordinates) + t, and 2D = projection."""
    for subject in ("S9", "S11"):
        m = synth.subject == subject
        q = synth.coordinates[m].astype(np.float64)  # 64 rows: the generator's compiled FK
        X = np.asarray(sj.forward_kinematics(subject_tree(tree, subject, 3), q).markers)
        X_cam = np.einsum("nij,nkj->nki", synth.camera_R[m], X) + synth.camera_t[m][:, None]
        np.testing.assert_allclose(X_cam, synth.keypoints_3d[m], atol=2e-5)
        # feet on the floor (ground y = 0): their soft minimum is there, so the lowest foot
        # keypoint is at most 2 cm * log(6 keypoints) above it
        feet = [index_of(k + s) for k in ("LBig", "RBig", "LSmall", "RSmall") for s in ["Toe"]]
        lowest = X[:, feet + [index_of("LHeel"), index_of("RHeel")], 1].min(1)
        assert np.all((lowest > -1e-5) & (lowest < 0.02 * np.log(6) + 1e-5))
        for k in range(4):
            c = m & (synth.camera == k)
            cam = h36m_camera(subject, k)
            uv = project(synth.keypoints_3d[c], cam.f, cam.c, cam.dist)
            np.testing.assert_allclose(uv, synth.keypoints_2d[c], atol=1e-3)
    lo, hi = np.asarray(tree.coord_range)[tree.topology.indep_coord].T
    assert np.all((synth.coordinates >= lo - 1e-6) & (synth.coordinates <= hi + 1e-6))


def test_synthetic_subjects_differ_in_size(synth):
    def thigh(s):
        k = synth.keypoints_3d[synth.subject == s]
        return np.median(np.linalg.norm(k[:, index_of("LHip")] - k[:, index_of("LKnee")], axis=1))

    assert abs(thigh("S9") / thigh("S11") - 1.0) > 0.01


def test_synthetic_deterministic_and_rate_independent(synth, tree):
    again = load_dataset("synthetic", split="test", seed=3, sample_hz=2.0, tree=tree, **SMALL)
    np.testing.assert_array_equal(again.keypoints_2d, synth.keypoints_2d)
    other = load_dataset("synthetic", split="test", seed=4, sample_hz=2.0, tree=tree, **SMALL)
    assert np.abs(other.keypoints_3d - synth.keypoints_3d).max() > 0.05
    # the motion is continuous in time: 1 Hz frames are the even 2 Hz frames
    slow = load_dataset("synthetic", split="test", seed=3, sample_hz=1.0, tree=tree, **SMALL)
    assert len(slow) == len(synth) // 2
    keep = synth.frame % int(SOURCE_HZ) == 0
    np.testing.assert_allclose(slow.keypoints_3d, synth.keypoints_3d[keep], atol=1e-5)


def test_synthetic_noise_and_dropout(synth, tree):
    noisy = load_dataset(
        "synthetic", split="test", seed=3, sample_hz=2.0, tree=tree, noise_px=4.0,
        dropout=0.1, **SMALL,
    )  # fmt: skip
    seen = noisy.confidence > 0
    assert 0.85 < seen.mean() < 0.95
    assert np.all(noisy.keypoints_2d[~seen] == 0.0)
    err = (noisy.keypoints_2d - synth.keypoints_2d)[seen]
    assert 2.5 < err.std() < 6.0  # per-keypoint sigmas around 4 px
    np.testing.assert_array_equal(noisy.keypoints_3d, synth.keypoints_3d)


def test_synthetic_bad_input(tree):
    with pytest.raises(InputError, match="subjects"):
        load_dataset("synthetic", subjects=["S2"], tree=tree, **SMALL)
    with pytest.raises(InputError, match="actions"):
        load_dataset("synthetic", split="test", actions=("Dancing",), tree=tree)
    with pytest.raises(InputError, match="split"):
        load_dataset("synthetic", split="val", tree=tree, **SMALL)
    with pytest.raises(InputError, match="source"):
        load_dataset("mpii", "/tmp")


def test_h36m_cameras():
    for subject in ("S1", "S11"):
        for cam in h36m_cameras(subject):
            np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-6)
            assert np.linalg.det(cam.R) > 0
            centre = -cam.R.T @ cam.t
            assert 4.0 < np.linalg.norm(centre[:2]) < 6.0 and 1.4 < centre[2] < 1.7  # metres
            # a point 1 m above the capture volume's origin is seen near the image centre
            uv = project(cam.R @ np.array([0.0, 0.0, 1.0]) + cam.t, cam.f, cam.c, cam.dist)
            assert np.all(np.abs(uv - np.array(cam.size) / 2) < 250)
    # no distortion: a pinhole
    np.testing.assert_allclose(project(np.array([0.2, -0.1, 2.0]), [1000, 1000], [500, 400]),
                               [600.0, 350.0])  # fmt: skip
    with pytest.raises(InputError, match="subject"):
        h36m_camera("S2", 0)


# ----------------------------------------------------------------------------- layout
def _tiny(n=6, coords=True) -> LiftingData:
    rng = np.random.default_rng(0)
    return LiftingData(
        keypoints_2d=rng.normal(size=(n, 37, 2)),
        confidence=np.ones((n, 37)),
        keypoints_3d=rng.normal(size=(n, 37, 3)),
        image_size=np.full((n, 2), 1000.0),
        subject=np.array(["S1"] * n),
        action=np.array(["Walking"] * n),
        camera=np.zeros(n),
        frame=np.arange(n),
        camera_R=np.tile(np.eye(3), (n, 1, 1)),
        camera_t=np.zeros((n, 3)),
        coordinates=rng.normal(size=(n, 4)) if coords else None,
    )


def test_lifting_data_layout():
    d = _tiny()
    assert d.keypoints_2d.dtype == np.float32 and d.camera.dtype == np.int32
    assert not d.keypoints_2d.flags.writeable
    sub = d.subset(d.frame % 2 == 0)
    assert len(sub) == 3 and np.array_equal(sub.frame, [0, 2, 4])
    assert np.array_equal(d.subset([5, 0]).frame, [5, 0])
    both = concatenate([d, _tiny(coords=False)])
    assert len(both) == 12 and both.coordinates is None
    with pytest.raises(InputError, match="keypoints_3d"):
        LiftingData(**{**d.__dict__, "keypoints_3d": np.zeros((6, 15, 3))})
    with pytest.raises(InputError, match="frame"):
        LiftingData(**{**d.__dict__, "frame": np.arange(5)})
    assert len(SIMSPINE37) == 37


# ----------------------------------------------------------------------------- batcher
def test_batcher_epochs_and_resume():
    d = _tiny(n=10)
    b = Batcher(d, 3, seed=5, to_device=False)
    assert b.batches_per_epoch == 3
    epoch0 = [next(b)["index"] for _ in range(3)]
    seen = np.concatenate(epoch0)
    assert len(set(seen.tolist())) == 9  # 9 distinct rows, the 10th dropped this epoch
    assert b.position == (1, 0)
    epoch1 = [next(b)["index"] for _ in range(3)]
    assert not all(np.array_equal(x, y) for x, y in zip(epoch0, epoch1, strict=True))
    # same seed: same stream; batches carry the rows' data
    ref = Batcher(d, 3, seed=5, to_device=False)
    first = next(ref)
    np.testing.assert_array_equal(first["keypoints_3d"], d.keypoints_3d[first["index"]])
    # an interrupted run resumes bit-exactly, prefetching included (device arrays)
    full = Batcher(d, 4, seed=1, prefetch=2)
    stream = [np.asarray(next(full)["keypoints_2d"]) for _ in range(7)]
    part = Batcher(d, 4, seed=1, prefetch=2)
    for _ in range(3):
        next(part)
    state = part.state()
    resumed = Batcher(d, 4, seed=1, prefetch=2)
    resumed.restore(state)
    for k in range(3, 7):
        np.testing.assert_array_equal(np.asarray(next(resumed)["keypoints_2d"]), stream[k])
    with pytest.raises(InputError, match="seed"):
        Batcher(d, 4, seed=2).restore(state)
    with pytest.raises(InputError, match="batch"):
        Batcher(d, 11)
