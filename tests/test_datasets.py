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


# ----------------------------------------------------------------------------- loaders
# The synthetic fixture provides consistent truth: S9 Walking seen by camera 0, as OpenSim-frame
# markers X_osim, camera-frame keypoints and coordinates; each test writes it in a format.
P_TRC_TO_WORLD = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
# the release's 37-marker order (src/simspine/serialize_dataset.py MARKER_NAMES)
RELEASE_ORDER = (
    "Hip Spine_01 Spine_02 Spine_03 Spine_04 Spine_05 Neck Neck_02 Neck_03 Head Nose REye LEye "
    "REar LEar RLatissimus LLatissimus RClavicle RShoulder RElbow RWrist LClavicle LShoulder "
    "LElbow LWrist RHip RKnee RAnkle RBigToe RSmallToe RHeel LHip LKnee LAnkle LBigToe "
    "LSmallToe LHeel"
).split()


@pytest.fixture(scope="module")
def truth(synth, tree):
    m = (synth.subject == "S9") & (synth.action == "Walking") & (synth.camera == 0)
    R, t = synth.camera_R[m][0].astype(float), synth.camera_t[m][0].astype(float)
    X_cam = synth.keypoints_3d[m].astype(float)
    X_osim = (X_cam - t) @ R  # R orthonormal: R^T (X - t), row-wise
    K = np.array([[1100.0, 0.0, 500.0], [0.0, 1100.0, 500.0], [0.0, 0.0, 1.0]])
    uv = (X_cam[..., :2] / X_cam[..., 2:]) * 1100.0 + 500.0  # pinhole, no distortion
    q = synth.coordinates[m].astype(float)
    return dict(R=R, t=t, X_cam=X_cam, X_osim=X_osim, K=K, uv=uv, q=q, n=len(X_cam),
                R_cal=R @ P_TRC_TO_WORLD.T)  # fmt: skip


def _mot_columns(tree, q):
    """Independent coordinates as .mot columns: degrees for rotations, metres otherwise."""
    motion = {c["name"]: c["motion_type"] for c in tree.meta["coordinates"]}
    names = list(tree.independent_names)
    vals = q.copy()
    rot = [i for i, n in enumerate(names) if motion[n] == "rotational"]
    vals[:, rot] = np.rad2deg(vals[:, rot])
    return names, vals


def _check_truth(d, truth, atol=1e-5):
    assert len(d) == truth["n"]
    np.testing.assert_allclose(d.keypoints_3d, truth["X_cam"], atol=atol)
    np.testing.assert_allclose(d.camera_R, np.broadcast_to(truth["R"], d.camera_R.shape), atol=1e-6)
    np.testing.assert_allclose(d.keypoints_2d, truth["uv"], atol=1e-3)
    np.testing.assert_allclose(d.coordinates, truth["q"], atol=1e-5)
    assert set(d.subject) == {"S9"} and set(d.action) == {"Walking"}


def test_simspine_h5(tmp_path, truth, tree):
    h5py = pytest.importorskip("h5py")
    order = [SIMSPINE37.index(n) for n in RELEASE_ORDER]
    names, kin = _mot_columns(tree, truth["q"])
    axes = ["pelvis_foo", *names]  # an extra .mot column is ignored
    path = tmp_path / "simspine.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("metadata/markers_names", data=np.array(RELEASE_ORDER, dtype="S"))
        f.create_dataset("metadata/kinematic_axes", data=np.array(axes, dtype="S"))
        cal = f.create_group("S9/calibration")
        cal["names"] = np.array(["cam01"], dtype="S")
        cal["K"], cal["dist"] = truth["K"][None], np.zeros((1, 4))
        cal["R"], cal["t"] = truth["R_cal"][None], truth["t"][None]
        cal["size"] = np.array([[1000, 1000]], np.int32)
        seq = f.create_group("S9/Walking_1")
        # the file's frames at 50 Hz: our 2 Hz truth repeated 25 times (sampling picks it)
        seq["markers"] = np.repeat(truth["X_osim"][:, order], 25, axis=0)
        seq["kinematics"] = np.repeat(np.concatenate([np.zeros((truth["n"], 1)), kin], 1), 25, 0)
        seq["timestamps"] = np.arange(truth["n"] * 25) / 50.0
    d = load_dataset("simspine", tmp_path, "test", subjects=["S9"], sample_hz=2.0)
    _check_truth(d, truth)
    assert np.array_equal(d.frame, np.arange(truth["n"]) * 25)
    assert set(d.sequence) == {"Walking_1"}
    with pytest.raises(InputError, match="S11"):
        load_dataset("simspine", path, "test")  # S11 is not in the file
    with h5py.File(path, "a") as f:
        del f["S9/Walking_1/markers"]
        f["S9/Walking_1/markers"] = np.zeros((10, 36, 3))
    with pytest.raises(InputError, match=r"S9/Walking_1/markers"):
        load_dataset("simspine", path, "test", subjects=["S9"])


def test_simspine_trc_folders(tmp_path, truth, tree):
    from simspine_jax.io import write_storage, write_trc
    from simspine_jax.io.calibration import Camera, write_calibration

    cam = Camera("cam01", (1000.0, 1000.0), truth["K"], np.zeros(5), truth["R_cal"], truth["t"])
    (tmp_path / "cameras").mkdir()
    write_calibration(tmp_path / "cameras" / "Calib_S9.toml", [cam])
    time = np.arange(truth["n"]) / 2.0
    X = truth["X_osim"].copy()
    X[1, SIMSPINE37.index("Spine_03")] = np.nan  # a gap: confidence 0 in that frame only
    (tmp_path / "positions" / "S9").mkdir(parents=True)
    write_trc(tmp_path / "positions/S9/S9_Walking.trc", SIMSPINE37, time, X, units="mm",
              data_rate=2.0)  # fmt: skip
    names, kin = _mot_columns(tree, truth["q"])
    mot_dir = tmp_path / "kinematics/S9/S9_Walking"
    mot_dir.mkdir(parents=True)
    write_storage(mot_dir / "S9_Walking.mot", names, time, kin, in_degrees=True)
    d = load_dataset("simspine_trc", tmp_path, "test", subjects=["S9"], sample_hz=None)
    assert d.confidence[1, SIMSPINE37.index("Spine_03")] == 0
    assert d.valid_3d[1].sum() == 36 and d.confidence.sum() == d.confidence.size - 1
    keep = np.ones(truth["n"], bool)
    keep[1] = False
    sub = d.subset(keep)
    _check_truth(sub, {**truth, "n": truth["n"] - 1, "X_cam": truth["X_cam"][keep],
                       "uv": truth["uv"][keep], "q": truth["q"][keep]}, atol=2e-5)  # fmt: skip
    with pytest.raises(InputError, match="Calib_S11"):
        load_dataset("simspine_trc", tmp_path, "test")


def test_simspine_annotations_npz(tmp_path, truth, tree):
    """The release's MMPose-style file: 15 spine keypoints, camera 3D as R (X - t)."""
    from simspine_jax.keypoints import SPINE15

    release15 = ("Hip Spine_01 Spine_02 Spine_03 Spine_04 Spine_05 Neck Neck_02 Neck_03 Head "
                 "Nose LClavicle RClavicle LLatissimus RLatissimus").split()  # fmt: skip
    assert set(release15) == set(SPINE15)
    cols = [SIMSPINE37.index(n) for n in release15]
    world = truth["X_osim"][:, cols] @ P_TRC_TO_WORLD.T  # Pose2Sim world, z up
    S = (world - truth["t"]) @ truth["R_cal"].T  # the release's R (X - t)
    part = np.concatenate([truth["uv"][:, cols], np.ones((truth["n"], 15, 1))], -1)
    part[2, 4, 2] = 0.0  # one invisible keypoint
    ones = np.ones((truth["n"], 15, 1))
    names, kin = _mot_columns(tree, truth["q"])
    frames = np.arange(truth["n"]) * 25
    np.savez(
        tmp_path / "simspine_test.npz",
        metadata={"joint_names": np.array(release15), "param_names": np.array(names)},
        imgname=np.array(
            [f"S9/S9_Walking 1.55011271/S9_Walking 1.55011271_{i:06d}.jpg" for i in frames]
        ),  # fmt: skip
        center=np.zeros((truth["n"], 2)),
        scale=np.ones(truth["n"]),
        part=part,
        S=np.concatenate([S, ones], -1),
        S_world=np.concatenate([world, ones], -1),
        angles=kin,
    )
    d = load_dataset("simspine", tmp_path, "test", subjects=["S9"], sample_hz=None)
    assert len(d) == truth["n"] and set(d.camera) == {1} and set(d.action) == {"Walking"}
    assert np.array_equal(d.frame, frames) and d.valid_3d.sum(1).tolist() == [15] * truth["n"]
    np.testing.assert_allclose(d.keypoints_3d[:, cols], S, atol=1e-5)
    np.testing.assert_allclose(d.keypoints_2d[:, cols][part[..., 2] > 0], truth["uv"][:, cols][
        part[..., 2] > 0], atol=1e-3)  # fmt: skip
    assert d.confidence[2, cols[4]] == 0 and d.confidence.sum() == 15 * truth["n"] - 1
    # the camera transform is recovered exactly: S = R @ X_osim + t
    X = np.einsum("nij,nkj->nki", d.camera_R, truth["X_osim"][:, cols]) + d.camera_t[:, None]
    np.testing.assert_allclose(X, S, atol=1e-5)
    np.testing.assert_allclose(d.coordinates, truth["q"], atol=1e-5)
    assert len(load_dataset("simspine", tmp_path, "test", subjects=["S9"], sample_hz=1.0)) == 4


def test_h36m_npz(tmp_path):
    from simspine_jax.datasets.h36m import H36M32_TO_17, H36M_TO_SIMSPINE

    rng = np.random.default_rng(0)
    T = 30
    X = rng.normal(0.0, 0.3, (T, 32, 3)) + np.array([0.2, -0.1, 1.0])  # metres, z up
    uv32 = rng.uniform(0, 1000, (4, T + 2, 32, 2))  # the 2D is 2 frames longer: cut to 3D's
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d={"S11": {"Directions 1": X}})
    gt = {"S11": {"Directions 1": [uv32[k][:, list(H36M32_TO_17)] for k in range(4)]}}
    np.savez(tmp_path / "data_2d_h36m_gt.npz", positions_2d=gt,
             metadata={"layout_name": "h36m", "num_joints": 17})  # fmt: skip
    d = load_dataset("h36m", tmp_path, "test", subjects=["S11"], sample_hz=25.0)
    assert len(d) == 4 * 15 and set(d.action) == {"Directions"}
    assert set(d.sequence) == {"Directions 1"}
    assert d.confidence.sum(1).tolist() == [15.0] * 60 and np.array_equal(d.valid_3d, d.confidence)
    # RElbow is Human3.6M joint 26 (of 32); camera 2's frame 4 is row 2 of its block
    k = SIMSPINE37.index("RElbow")
    cam = h36m_camera("S11", 2)
    row = np.nonzero((d.camera == 2) & (d.frame == 4))[0][0]
    np.testing.assert_allclose(d.keypoints_2d[row, k], uv32[2, 4, 26], atol=1e-3)
    np.testing.assert_allclose(d.keypoints_3d[row, k], cam.R @ X[4, 26] + cam.t, atol=1e-5)
    assert d.keypoints_3d[row, SIMSPINE37.index("Spine_02")].tolist() == [0, 0, 0]
    assert set(H36M_TO_SIMSPINE.values()) <= set(SIMSPINE37)
    with pytest.raises(InputError, match="S9"):
        load_dataset("h36m", tmp_path, "test")
    with pytest.raises(InputError, match="data_2d_h36m_cpn"):
        load_dataset("h36m", tmp_path, "test", subjects=["S11"], keypoints="cpn")
    with pytest.raises(InputError, match="subject"):
        load_dataset("h36m", tmp_path, "test", subjects=["S2"])
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d={"S11": {"Directions 1": X[:, :17]}})
    with pytest.raises(InputError, match="32, 3"):
        load_dataset("h36m", tmp_path, "test", subjects=["S11"])
    np.savez(tmp_path / "data_3d_h36m.npz", poses={"S11": {}})
    with pytest.raises(InputError, match="positions_3d"):
        load_dataset("h36m", tmp_path, "test", subjects=["S11"])


def test_lifting_data_leaves_callers_arrays_writeable():
    kp = np.zeros((2, 37, 2), np.float32)
    d = LiftingData(**{**_tiny(2).__dict__, "keypoints_2d": kp})
    assert kp.flags.writeable and not d.keypoints_2d.flags.writeable
