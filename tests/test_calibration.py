"""Calibration TOML (Pose2Sim/Anipose) and Human3.6M cameras: semantics, round trip, errors."""

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from simspine_jax.errors import InputError
from simspine_jax.io.calibration import (
    Camera,
    camera_from_h36m,
    distort_normalized,
    matrix_to_rodrigues,
    read_calibration,
    rodrigues_to_matrix,
    undistort_normalized,
    undistort_pixels,
    write_calibration,
)

DEMO = Path(__file__).parent / "data" / "pose2sim_demo"
CALIB = DEMO / "Calib_qualisys.toml"


def test_rodrigues_matches_scipy_and_inverts():
    rng = np.random.default_rng(0)
    rvecs = Rotation.random(200, random_state=1).as_rotvec()
    rvecs = np.concatenate([rvecs, [[0, 0, 0], [1e-9, 0, 0], [np.pi, 0, 0], [0, np.pi - 1e-7, 0]]])
    for r in rvecs:
        R = rodrigues_to_matrix(r)
        np.testing.assert_allclose(R, Rotation.from_rotvec(r).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(rodrigues_to_matrix(matrix_to_rodrigues(R)), R, atol=1e-9)
    r = rng.normal(size=3)
    r *= 2.0 / np.linalg.norm(r)
    np.testing.assert_allclose(matrix_to_rodrigues(rodrigues_to_matrix(r)), r, atol=1e-12)


def test_demo_calibration_is_world_to_camera():
    cams = read_calibration(CALIB)
    assert [c.name for c in cams] == ["cam_01", "cam_02", "cam_03", "cam_04"]
    c = cams[0]
    assert c.size == (1088.0, 1920.0)
    np.testing.assert_allclose(c.K[0, 2], 532.97369384375)
    np.testing.assert_allclose(c.dist[:4], [-0.000721609375, 0.002187234375, 9.5e-06, 1.078125e-05])
    np.testing.assert_allclose(
        c.rvec, [1.6882754799999993, 1.0483220499999997, -0.41955852000000016]
    )
    for cam in cams:
        # Pose2Sim's computeP: P = K [R | t] with R = Rodrigues(rotation): the subject stands
        # near the world origin, so a point 1 m above it must be in front of every camera
        # (X_cam = R X + t has z > 0) and project inside the image
        X = np.array([0.0, 0.0, 1.0])
        assert (cam.R @ X + cam.t)[2] > 1.0
        u, v = cam.project(X)
        assert 0 < u < cam.size[0] and 0 < v < cam.size[1]
        assert 2.0 < np.linalg.norm(cam.center) < 8.0
        np.testing.assert_allclose(cam.R.T @ cam.R, np.eye(3), atol=1e-12)


def test_write_read_round_trip(tmp_path):
    cams = read_calibration(CALIB)
    k3 = Camera(
        "side cam", (640.0, 480.0), cams[0].K, np.r_[cams[0].dist[:4], 0.01], cams[0].R, cams[0].t
    )
    out = write_calibration(tmp_path / "c.toml", [*cams, k3])
    back = read_calibration(out)
    assert [c.name for c in back] == [c.name for c in cams] + ["side cam"]
    for a, b in zip([*cams, k3], back, strict=True):
        assert a.size == b.size
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.dist, b.dist)
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_allclose(a.R, b.R, atol=1e-14)
    assert (
        "distortions = [ -0.000721609375, 0.002187234375, 9.5e-06, 1.078125e-05]" in out.read_text()
    )


def _toml_without(field: str) -> str:
    lines = CALIB.read_text().splitlines()
    out, in_cam2 = [], False
    for s in lines:
        if s.startswith("["):
            in_cam2 = s.strip() == "[cam_02]"
        if in_cam2 and s.startswith(field + " "):
            continue
        out.append(s)
    return "\n".join(out)


@pytest.mark.parametrize("field", ["matrix", "rotation", "translation", "distortions", "size"])
def test_missing_field_names_camera_and_field(tmp_path, field):
    p = tmp_path / "bad.toml"
    p.write_text(_toml_without(field))
    with pytest.raises(InputError, match=f"camera 'cam_02' has no '{field}'") as e:
        read_calibration(p)
    assert e.value.path == str(p) and e.value.line == 10  # the [cam_02] header


def test_bad_values(tmp_path):
    text = CALIB.read_text()
    p = tmp_path / "bad.toml"
    R = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix() * 1.01  # scaled: not orthonormal
    rows = ", ".join("[" + ", ".join(repr(float(v)) for v in r) + "]" for r in R)
    p.write_text(
        text.replace(
            "rotation = [ 1.34975875, 1.5963809099999993, -1.1983285799999999]",
            f"rotation = [{rows}]",
        )
    )
    with pytest.raises(InputError, match="not orthonormal") as e:
        read_calibration(p)
    assert e.value.field == "cam_02.rotation" and e.value.line == 15
    # a proper rotation matrix is accepted in place of the Rodrigues vector
    R = Rotation.from_rotvec([1.34975875, 1.5963809099999993, -1.1983285799999999]).as_matrix()
    rows = ", ".join("[" + ", ".join(repr(float(v)) for v in r) + "]" for r in R)
    p.write_text(
        text.replace(
            "rotation = [ 1.34975875, 1.5963809099999993, -1.1983285799999999]",
            f"rotation = [{rows}]",
        )
    )
    np.testing.assert_allclose(read_calibration(p)[1].R, R)
    p.write_text(text.replace("fisheye = false", "fisheye = true", 1))
    with pytest.raises(InputError, match="fisheye"):
        read_calibration(p)
    p.write_text(
        text.replace(
            "distortions = [ -0.000721609375, 0.002187234375, 9.5e-06, 1.078125e-05]",
            "distortions = [1, 2]",
        )
    )
    with pytest.raises(InputError, match="distortions"):
        read_calibration(p)
    p.write_text("[metadata]\nerror = 0.0\n")
    with pytest.raises(InputError, match="no camera"):
        read_calibration(p)
    p.write_text("[cam\n")
    with pytest.raises(InputError, match="not valid TOML"):
        read_calibration(p)


def test_h36m_convention(tmp_path):
    rng = np.random.default_rng(3)
    R = Rotation.from_rotvec([0.3, -2.0, 0.4]).as_matrix()
    T = np.array([1841.1, 4955.3, 1563.4])  # camera centre, mm
    f, c = np.array([1145.0, 1143.8]), np.array([512.5, 515.5])
    k = np.array([-0.207, 0.247, -0.003])
    p = np.array([-0.00096, -0.00142])
    cam = camera_from_h36m(R, T, f, c, k, p, name="54138969")
    np.testing.assert_allclose(cam.center, T)
    X = T + (R.T @ np.array([[1500.0, -1400.0, 4000.0], [-1600, 1500, 3800]]).T).T
    X = X + rng.normal(size=X.shape)
    # Human3.6M's released projection: X_cam = R (X - T), then
    # XXX = XX (radial + p1 y + p2 x) + (p2, p1) r2, then f and c
    Xc = (X - T) @ R.T
    xy = Xc[:, :2] / Xc[:, 2:]
    r2 = (xy**2).sum(1)
    radial = 1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
    tan = p[0] * xy[:, 1] + p[1] * xy[:, 0]
    uv = f * (xy * (radial + tan)[:, None] + np.outer(r2, [p[1], p[0]])) + c
    np.testing.assert_allclose(cam.project(X), uv, rtol=1e-12)
    # and its inverse: pixels back to the normalized ray
    np.testing.assert_allclose(undistort_pixels(uv, cam.K, cam.dist), xy, atol=1e-12)
    # OpenCV's tangential formula would be off by a fraction of a pixel here
    opencv = Camera("x", (1000.0, 1002.0), cam.K, cam.dist[:5], cam.R, cam.t)
    assert 0.05 < np.abs(opencv.project(X) - uv).max() < 2
    with pytest.raises(InputError, match="has no place") as e:
        write_calibration(tmp_path / "h.toml", [cam])
    assert e.value.field == "54138969.distortions"
    with pytest.raises(InputError, match="not orthonormal") as e:
        camera_from_h36m(R * 1.1, T, f, c, name="54138969")
    assert e.value.field == "54138969.R"


def test_undistort_matches_closed_form_and_inverts():
    # pure k1: r_d = r (1 + k1 r^2), a cubic in r solved by Cardano's formula
    k1 = -0.25
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, 0.5, (500, 2))
    dist = np.array([k1, 0, 0, 0, 0.0])
    xd = distort_normalized(xy, dist)
    rd = np.linalg.norm(xd, axis=1)
    # k1 r^3 + r - rd = 0 -> r^3 + p r + q = 0 with p = 1/k1, q = -rd/k1
    p, q = 1.0 / k1, -rd / k1
    disc = (q / 2) ** 2 + (p / 3) ** 3
    # three real roots (disc < 0): the one nearest rd is the physical one
    phi = np.arccos(np.clip(-q / 2 / np.sqrt(-((p / 3) ** 3)), -1, 1))
    roots = np.stack([2 * np.sqrt(-p / 3) * np.cos((phi + 2 * np.pi * j) / 3) for j in range(3)])
    assert np.all(disc < 0)
    r = roots[np.argmin(np.abs(roots - rd), axis=0), np.arange(len(rd))]
    closed = xd * (r / rd)[:, None]
    np.testing.assert_allclose(undistort_normalized(xd, dist), closed, atol=1e-12)
    np.testing.assert_allclose(closed, xy, atol=1e-12)
    # full model with tangential and k3: distort(undistort(x)) == x
    dist = np.array([-0.2, 0.05, 0.001, -0.0015, 0.01])
    back = distort_normalized(undistort_normalized(xd, dist), dist)
    np.testing.assert_allclose(back, xd, atol=1e-10)
    # pixels: undistort_pixels inverts Camera.project
    cam = read_calibration(CALIB)[0]
    cam = Camera(cam.name, cam.size, cam.K, dist, cam.R, cam.t)
    X = rng.uniform(-0.5, 0.5, (50, 3)) + [0, 0, 1]
    Xc = X @ cam.R.T + cam.t
    np.testing.assert_allclose(
        undistort_pixels(cam.project(X), cam.K, dist), Xc[:, :2] / Xc[:, 2:], atol=1e-10
    )


def test_camera_model_matches_opencv():
    """Golden numbers written by OpenCV 4.11 (tests/data/opencv/make_golden.py):
    cv2.Rodrigues, cv2.projectPoints and cv2.undistortPointsIter (100 iterations)."""
    g = np.load(Path(__file__).parent / "data" / "opencv" / "golden.npz")
    R = rodrigues_to_matrix(g["rvec"])
    np.testing.assert_allclose(R, g["R"], atol=1e-15)
    uv = Camera("c", (1920.0, 1080.0), g["K"], g["dist"], R, g["tvec"]).project(g["X"])
    np.testing.assert_allclose(uv, g["uv"], atol=1e-9)  # px
    np.testing.assert_allclose(undistort_pixels(g["uv"], g["K"], g["dist"]), g["xn"], atol=1e-14)


def test_qualisys_qca_equals_pose2sims_toml(tmp_path):
    """The installed pose2sim wheel's demo Calib.qca.txt, read by read_qca, gives the cameras
    of the TOML Pose2Sim 0.5.7 converted from the same file (shipped in tests/data)."""
    import importlib.util

    from simspine_jax.io.calibration import load_calibration, read_qca

    spec = importlib.util.find_spec("Pose2Sim")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("pose2sim is not installed")
    qca = (
        Path(list(spec.submodule_search_locations)[0])
        / "Demo_SinglePerson/calibration/Calib.qca.txt"
    )
    if not qca.exists():
        pytest.skip("the installed pose2sim has no demo Calib.qca.txt")
    ours = load_calibration(qca)
    toml = read_calibration(CALIB)
    assert [c.name for c in ours] == ["cam01", "cam02", "cam03", "cam04"]
    for a, b in zip(ours, toml, strict=True):
        assert a.size == b.size
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.dist, b.dist)
        np.testing.assert_allclose(a.R, b.R, atol=1e-14)
        np.testing.assert_allclose(a.t, b.t, atol=1e-14)
    bad = tmp_path / "bad.qca.txt"
    bad.write_text(qca.read_text().replace('focalLengthU="107599.671875" ', "", 1))
    with pytest.raises(InputError, match="cam01.*focalLengthU|focalLengthU") as e:
        read_qca(bad)
    assert e.value.field == "cam01.intrinsic.focalLengthU"
