"""Robust batched triangulation: exact recovery, outlier views, minimum views, real demo, CLI.

All calls use 128 points (T x K = 16 x 8 synthetic, 6 x 21 = 126 real, padded to 128) and 4
cameras, so the robust and the plain-DLT programs compile once each for the whole module.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from simspine_jax.cli import main
from simspine_jax.io.calibration import Camera, read_calibration, undistort_normalized
from simspine_jax.io.openpose import read_pose_dir
from simspine_jax.io.trc import read_trc
from simspine_jax.triangulation import (
    FEW_VIEWS,
    HIGH_ERROR,
    PRUNED,
    dlt_triangulate,
    project,
    triangulate,
)

DEMO = Path(__file__).parent / "data" / "pose2sim_demo"
DIST = np.array([-0.22, 0.06, 0.0015, -0.001, 0.01])  # strong barrel + tangential + k3


def _ring(n: int, dist=DIST) -> list[Camera]:
    """n cameras on a 4 m circle, 1.5 m high, looking at the vertical axis, 1920 x 1080 px."""
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n + 0.3
        C = np.array([4 * np.cos(a), 4 * np.sin(a), 1.5])
        z = np.array([-np.cos(a), -np.sin(a), -0.1])
        z /= np.linalg.norm(z)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        K = np.array([[1400.0, 0, 960], [0, 1390.0, 540], [0, 0, 1]])
        out.append(Camera(f"c{i}", (1920.0, 1080.0), K, np.asarray(dist, float), R, -R @ C))
    return out


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    cams = _ring(4)
    X = rng.uniform(-0.6, 0.6, (16, 8, 3)) + [0, 0, 1.0]  # (T, K, 3)
    uv = np.stack([c.project(X) for c in cams], axis=1)  # (T, C, K, 2)
    conf = rng.uniform(0.5, 1.0, uv.shape[:-1])
    return cams, X, uv, conf


def test_noise_free_recovery_with_distortion(scene):
    cams, X, uv, conf = scene
    assert np.abs(uv - np.asarray(project(cams, X)).transpose(0, 2, 1, 3)).max() < 1e-9
    r = triangulate(cams, uv, conf)
    assert np.abs(r.points - X).max() < 1e-6
    assert r.reprojection_px.max() < 1e-6 and (r.n_views == 4).all() and (r.flags == 0).all()
    d = dlt_triangulate(cams, uv, conf)
    assert np.abs(d.points - X).max() < 1e-6
    # the same pixels through cameras without distortion are off by millimetres: it matters
    r0 = triangulate(_ring(4, dist=np.zeros(5)), uv, conf)
    assert np.abs(r0.points - X).max() > 2e-3


def test_undistort_jax_matches_numpy():
    xy = np.random.default_rng(1).uniform(-0.6, 0.6, (50, 2))
    a = undistort_normalized(xy, DIST)
    b = undistort_normalized(jnp.asarray(xy), jnp.asarray(DIST))
    np.testing.assert_allclose(np.asarray(b), a, atol=1e-14)


def test_one_corrupted_view_per_point(scene):
    cams, X, uv, conf = scene
    rng = np.random.default_rng(2)
    sigma = 1.0  # px
    noisy = uv + rng.normal(0, sigma, uv.shape)
    clean = triangulate(cams, noisy, conf)
    err_clean = np.linalg.norm(clean.points - X, axis=-1)
    bad = noisy.copy()
    T, C, K, _ = uv.shape
    view = rng.integers(0, C, (T, K))
    shift = rng.uniform(60, 200, (T, K, 2)) * rng.choice([-1, 1], (T, K, 2))
    bad[np.arange(T)[:, None], view, np.arange(K)[None, :]] += shift
    r = triangulate(cams, bad, conf)
    d = dlt_triangulate(cams, bad, conf)
    err_r = np.linalg.norm(r.points - X, axis=-1)
    err_d = np.linalg.norm(d.points - X, axis=-1)
    # the corrupted view is the one removed, everywhere
    assert (r.flags == PRUNED).all() and (r.n_views == 3).all()
    assert not r.views[np.arange(T)[:, None], np.arange(K)[None, :], view].any()
    # robust: within the noise (3 views instead of 4); plain DLT: far outside it
    assert err_r.max() < 3 * err_clean.max() and err_r.max() < 0.01
    assert np.median(err_d) > 10 * np.median(err_clean) and err_d.max() > 0.05
    assert r.reprojection_px.max() < 4 * sigma


def test_min_views_and_missing(scene):
    cams, X, uv, conf = scene
    conf = conf.copy()
    uv = uv.copy()
    conf[0, 1:, 0] = 0.1  # keypoint 0 of frame 0: one view above the threshold
    uv[1, :3, 1] = np.nan  # keypoint 1 of frame 1: one finite view
    conf[:, 2] = 0.0  # camera 2 has no detections at all: the others still triangulate
    r = triangulate(cams, uv, conf)
    assert np.isnan(r.points[0, 0]).all() and r.flags[0, 0] == FEW_VIEWS
    assert np.isnan(r.points[1, 1]).all() and r.flags[1, 1] == FEW_VIEWS
    assert r.n_views[0, 0] == 0 and np.isnan(r.reprojection_px[0, 0])
    ok = np.isfinite(r.points[..., 0])
    assert ok.sum() == 16 * 8 - 2 and (r.n_views[ok] == 3).all() and not r.views[..., 2].any()
    assert np.abs(r.points[ok] - X[ok]).max() < 1e-6
    # three views required: the two-view points go too
    r3 = triangulate(cams, uv, conf, min_views=3)
    assert np.isfinite(r3.points[..., 0]).sum() == 16 * 8 - 2
    conf[:, 3] = 0.0
    r3 = triangulate(cams, uv, conf, min_views=3)
    assert np.isnan(r3.points).all() and (r3.flags == FEW_VIEWS).all()


def test_high_error_is_rejected_and_chunks_agree(scene):
    cams, X, uv, conf = scene
    rng = np.random.default_rng(5)
    noisy = uv + rng.normal(0, 20.0, uv.shape)  # every view off by ~20 px
    r = triangulate(cams, noisy, conf, max_reprojection_px=5.0)
    high = (r.flags & HIGH_ERROR) > 0
    assert high.any() and np.isnan(r.points[high]).all()
    assert (r.reprojection_px[high] > 5.0).all()
    # the same points through 64-point chunks give the same numbers
    d1 = dlt_triangulate(cams, noisy, conf)
    d2 = dlt_triangulate(cams, noisy, conf, chunk=64)
    np.testing.assert_array_equal(d1.points, d2.points)


def test_input_errors(scene):
    from simspine_jax.errors import InputError

    cams, X, uv, conf = scene
    with pytest.raises(InputError, match="uv must have shape"):
        triangulate(cams, uv[:, :3], conf[:, :3])
    with pytest.raises(InputError, match="confidence must have shape"):
        triangulate(cams, uv, conf[..., :3])
    with pytest.raises(InputError, match="min_views"):
        triangulate(cams, uv, conf, min_views=1)


@pytest.fixture(scope="module")
def demo():
    cams = read_calibration(DEMO / "Calib_qualisys.toml")
    return cams, read_pose_dir(DEMO / "pose", cams, "BODY_25B")


def test_real_demo_not_worse_than_dlt(demo):
    """Pose2Sim's demo (real OpenPose detections, Qualisys calibration): the robust result
    has a lower median reprojection error than plain DLT and keeps nearly every point."""
    cams, kp = demo
    r = triangulate(cams, kp.uv, kp.confidence)
    d = dlt_triangulate(cams, kp.uv, kp.confidence)
    ok_r = np.isfinite(r.points[..., 0])
    ok_d = np.isfinite(d.points[..., 0])
    med_r = np.median(r.reprojection_px[ok_r])
    med_d = np.median(d.reprojection_px[ok_d])
    assert med_r <= med_d, (med_r, med_d)
    assert ok_r.mean() >= 0.95 and ok_d.mean() >= 0.95
    # Pose2Sim's rule (prune while the mean error is too high) keeps more views, at a higher
    # error; still no worse than DLT
    m = triangulate(cams, kp.uv, kp.confidence, prune_on="mean")
    ok_m = np.isfinite(m.points[..., 0])
    assert m.n_views[ok_m].mean() > r.n_views[ok_r].mean()
    assert med_r <= np.median(m.reprojection_px[ok_m]) <= med_d
    # Z-up world, subject standing: head above the ankles, within a 2 m box
    names = list(kp.marker_names)
    head, ankle = names.index("Head"), names.index("LAnkle")
    assert np.nanmedian(r.points[:, head, 2] - r.points[:, ankle, 2]) > 1.2
    assert np.nanmax(np.ptp(r.points[ok_r], axis=0)) < 2.5


def test_cli_triangulate(tmp_path, capsys):
    out = tmp_path / "demo.trc"
    args = [
        "triangulate",
        "--calib",
        str(DEMO / "Calib_qualisys.toml"),
        "--pose-dir",
        str(DEMO / "pose"),
        "--skeleton",
        "BODY_25B",
        "-o",
        str(out),
        "--rate",
        "60",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["camera_match"] == "number" and summary["frames"] == 6
    # 6 frames are too few for the 4th-order zero-phase filter: reported, not filtered
    assert summary["filter"]["runs_skipped"] > 0 and summary["filter"]["runs_filtered"] == 0
    trc = read_trc(out)
    assert trc.marker_names[13] == "Neck" and trc.positions.shape == (6, 21, 3)
    assert trc.data_rate == 60
    report = json.loads(out.with_suffix(".triangulation.json").read_text())
    assert set(report["keypoints"]) == set(trc.marker_names)
    assert report["keypoints"]["Neck"]["views_kept_mean"] >= 2
    # OpenSim's Y-up: the head is above the ankles along Y
    names = list(trc.marker_names)
    assert np.nanmedian(trc.positions[:, names.index("Head"), 1]) > np.nanmedian(
        trc.positions[:, names.index("LAnkle"), 1]
    )
    # bad calibration / wrong skeleton: exit code 2 with a one-line message
    bad = tmp_path / "bad.toml"
    bad.write_text((DEMO / "Calib_qualisys.toml").read_text().replace("matrix =", "matrx =", 1))
    assert main([*args[:2], str(bad), *args[3:]]) == 2
    assert "has no 'matrix'" in capsys.readouterr().err
    args[6] = "HALPE_26"
    assert main(args) == 2
    assert "expected 78" in capsys.readouterr().err


def test_thresholds_do_not_recompile(scene):
    """Thresholds are traced values: new ones reuse the compiled program (trace count)."""
    from simspine_jax.triangulation import _triangulate_flat

    cams, X, uv, conf = scene
    triangulate(cams, uv, conf)
    n = _triangulate_flat._cache_size()
    triangulate(cams, uv, conf, likelihood_threshold=0.6, max_reprojection_px=4.0, huber_px=1.0)
    triangulate(_ring(4, dist=np.zeros(5)), uv[:15], conf[:15])  # new cameras, fewer frames
    assert _triangulate_flat._cache_size() == n


def test_spinepose_output_end_to_end(tmp_path, capsys):
    """Four cameras of SpinePose output (its OpenPose-style JSON: 37 keypoints in SimSpine
    order, one folder of frame_NNNNN.json per camera) and a calibration written by us:
    the CLI's TRC holds the 3D points (OpenSim Y-up) to 1e-6 m."""
    from simspine_jax.filtering import to_opensim_axes
    from simspine_jax.io.calibration import write_calibration
    from simspine_jax.keypoints import SIMSPINE37

    rng = np.random.default_rng(7)
    cams = _ring(4)
    T = 3  # 3 x 37 = 111 points: the module's 128-point program
    X = rng.uniform(-0.5, 0.5, (T, 37, 3)) + [0, 0, 1.0]
    calib = write_calibration(tmp_path / "calib.toml", cams)
    for c, cam in enumerate(cams):
        d = tmp_path / "pose" / f"cam{c + 1}"
        d.mkdir(parents=True)
        for t in range(T):
            kp = np.concatenate([cam.project(X[t]), np.full((37, 1), 0.9)], axis=1)
            people = [{"pose_keypoints_2d": kp.ravel().tolist()}]
            if c == 0:  # a bystander far from the subject in one camera
                far = cam.project(X[t] + [1.5, 0.0, 0.0])
                people.append({"pose_keypoints_2d": np.c_[far, np.full(37, 0.95)].ravel().tolist()})
            (d / f"frame_{t:05d}.json").write_text(json.dumps({"version": 1.0, "people": people}))
    out = tmp_path / "sp.trc"
    rc = main(
        ["triangulate", "--calib", str(calib), "--pose-dir", str(tmp_path / "pose"),
         "--skeleton", "SPINEPOSE", "-o", str(out), "--no-filter"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["camera_match"] == "order" and summary["coverage"] == 1.0  # c0 vs cam1
    trc = read_trc(out)
    assert trc.marker_names == SIMSPINE37
    np.testing.assert_allclose(trc.positions, to_opensim_axes(X, "z"), atol=1e-6)


def test_float32_matches_float64(scene):
    """float32 (the GPU default) keeps micrometres: cofactor 3x3 solves in metres are safe."""
    cams, X, uv, conf = scene
    r32 = triangulate(cams, uv, conf, dtype=jnp.float32)
    assert r32.points.dtype == np.float32 and (r32.flags == 0).all()
    assert np.abs(r32.points - X).max() < 1e-5
    noisy = uv + np.random.default_rng(9).normal(0, 1.0, uv.shape)
    d = (
        triangulate(cams, noisy, conf, dtype=jnp.float32).points
        - triangulate(cams, noisy, conf).points
    )
    assert np.abs(d).max() < 1e-5
