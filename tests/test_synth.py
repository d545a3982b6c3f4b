"""Synthetic SimSpine trials, their files, and an OpenSim IK smoke test on one of them."""

from __future__ import annotations

import numpy as np
import pytest

from simspine_jax import InputError, forward_kinematics, load_model
from simspine_jax.synth import (
    coordinates_for_storage,
    smooth_motion,
    synthetic_trial,
    write_sample_trial,
)


@pytest.fixture(scope="module")
def tree(setup_dir):
    return load_model(
        setup_dir / "Model_Pose2Sim_muscles_flex.osim", markers=setup_dir / "Markers_Halpe26.xml"
    )


@pytest.fixture(scope="module")
def motion(tree):
    return smooth_motion(tree, 500, rate=60.0, seed=0)


def _col(tree, q, name):
    return q[:, tree.independent_names.index(name)]


# ----------------------------------------------------------------------------- motion
def test_motion_inside_ranges(tree, motion):
    assert motion.shape == (500, tree.n_indep) and np.isfinite(motion).all()
    rng = np.asarray(tree.coord_range)[tree.topology.indep_coord]
    lo, hi = rng[:, 0], rng[:, 1]
    margin = 0.5 * np.minimum(0.05 * (hi - lo), 0.05)
    assert np.all(motion >= lo + margin - 1e-12) and np.all(motion <= hi - margin + 1e-12)


def test_motion_is_smooth(tree, motion):
    # second differences at 60 Hz: < 0.02 rad (72 rad/s^2) and < 3 mm (11 m/s^2) per frame^2
    # (the largest are knee flexion in swing and the pelvis height at foot hand-over)
    d2 = np.abs(np.diff(motion, 2, axis=0)).max(0)
    trans = np.array(
        [
            tree.meta["coordinates"][i]["motion_type"] == "translational"
            for i in tree.topology.indep_coord
        ]
    )
    assert d2[~trans].max() < 0.02
    assert d2[trans].max() < 0.003
    # defined in continuous time: twice the rate samples the same motion
    fine = smooth_motion(tree, 1000, rate=120.0, seed=0)
    np.testing.assert_allclose(fine[::2], motion, atol=1e-6)


def test_motion_reproducible_with_seed(tree, motion):
    np.testing.assert_array_equal(smooth_motion(tree, 500, seed=0), motion)
    other = smooth_motion(tree, 500, seed=1)
    assert np.abs(other - motion).max() > 0.01


def test_motion_exercises_spine_limbs_and_pelvis(tree, motion):
    deg = np.deg2rad
    flex = _col(tree, motion, "L5_S1_Flex_Ext")
    assert flex.min() < -0.06  # forward bend: ~30+ degrees of trunk flexion
    assert np.ptp(_col(tree, motion, "L5_S1_Lat_Bending")) > 0.02
    assert np.abs(_col(tree, motion, "L5_S1_axial_rotation")).max() > 0.1
    assert _col(tree, motion, "knee_angle_r").max() > deg(70)  # squat
    assert _col(tree, motion, "hip_flexion_l").max() > deg(60)
    assert _col(tree, motion, "arm_flex_r").max() > deg(60)  # reach
    assert np.ptp(_col(tree, motion, "pelvis_tx")) > 0.2
    assert np.ptp(_col(tree, motion, "pelvis_rotation")) > deg(10)
    assert np.ptp(_col(tree, motion, "pelvis_ty")) > 0.1  # squatting lowers the pelvis


def test_feet_stay_on_the_floor(tree, motion):
    m = np.asarray(forward_kinematics(tree, motion).markers)
    feet = [tree.marker_names.index(n) for n in ("LHeel", "RHeel", "LBigToe", "RBigToe")]
    lowest = m[:, feet, 1].min(1)
    assert lowest.min() > -0.03 and lowest.max() < 0.03


def test_motion_bad_arguments(tree):
    with pytest.raises(InputError, match="unknown actions"):
        smooth_motion(tree, 10, actions=("dance",))
    with pytest.raises(InputError, match="n_frames"):
        smooth_motion(tree, 0)


# ----------------------------------------------------------------------------- trials
def test_synthetic_trial_noise_and_gaps(tree):
    tr = synthetic_trial(tree, 300, noise_m=0.005, gap_fraction=0.02, seed=3)
    T, M = 300, tree.n_marker
    assert tr["markers"].shape == (T, M, 3) and tr["q_true"].shape == (T, tree.n_indep)
    assert tr["q_full"].shape == (T, tree.n_coord)
    np.testing.assert_allclose(tr["time"], np.arange(T) / 60.0)
    gaps = tr["gaps"]
    np.testing.assert_array_equal(np.isnan(tr["markers"]).any(2), gaps)
    assert np.isnan(tr["markers"][gaps]).all()
    assert abs(gaps.mean() - 0.02) < 0.005
    with_gap = np.nonzero(gaps.any(0))[0]
    assert 1 <= len(with_gap) <= 3
    for m in with_gap:  # one contiguous run, never on the first or last frame
        runs = np.diff(gaps[:, m].astype(int))
        assert (runs == 1).sum() == 1 and (runs == -1).sum() == 1
        assert not gaps[0, m] and not gaps[-1, m]
    resid = (tr["markers"] - tr["markers_clean"])[~gaps]
    assert abs(resid.std() - 0.005) < 0.0003 and abs(resid.mean()) < 0.0005
    clean = np.asarray(forward_kinematics(tree, tr["q_true"]).markers)
    np.testing.assert_allclose(tr["markers_clean"], clean, atol=1e-9)
    again = synthetic_trial(tree, 300, noise_m=0.005, gap_fraction=0.02, seed=3)
    np.testing.assert_array_equal(np.isnan(again["markers"]), np.isnan(tr["markers"]))
    np.testing.assert_array_equal(np.nan_to_num(again["markers"]), np.nan_to_num(tr["markers"]))


def test_write_sample_trial_files(tree, tmp_path):
    from simspine_jax.io import read_storage, read_trc

    tr = write_sample_trial(tree, tmp_path / "t.trc", tmp_path / "t_truth.mot", n_frames=40, seed=2)
    trc = read_trc(tr["trc_path"])
    assert trc.orig_units == "mm" and tuple(trc.marker_names) == tree.marker_names
    np.testing.assert_array_equal(np.isnan(trc.positions), np.isnan(tr["markers"]))
    np.testing.assert_allclose(trc.positions, tr["markers"], atol=1e-9)
    np.testing.assert_allclose(trc.time, tr["time"], atol=1e-9)
    mot = read_storage(tr["mot_path"])
    assert tuple(mot.labels) == tree.coordinate_names and mot.in_degrees is True
    names = list(tree.coordinate_names)
    v = mot.values
    np.testing.assert_allclose(v, coordinates_for_storage(tree, tr["q_full"]), atol=1e-9)
    knee = tr["q_full"][:, names.index("knee_angle_r")]
    np.testing.assert_allclose(v[:, names.index("knee_angle_r")], np.rad2deg(knee), atol=1e-9)
    # coupled: radians (the coupler is the identity here, so beta == knee angle)
    np.testing.assert_allclose(v[:, names.index("knee_angle_r_beta")], knee, atol=1e-9)
    np.testing.assert_allclose(
        v[:, names.index("pelvis_ty")], tr["q_full"][:, names.index("pelvis_ty")], atol=1e-12
    )
    np.testing.assert_allclose(
        v[:, names.index("L4_L5_Flex_Ext")],  # dependent but rotational: degrees
        np.rad2deg(tr["q_full"][:, names.index("L4_L5_Flex_Ext")]),
        atol=1e-9,
    )


# ----------------------------------------------------------------------------- OpenSim IK
# Observable from Halpe26's 22 markers: everything but forearm rotation and the wrists (no
# hand markers), the mtp joints and neck rotation (one head marker off the axis) and humeral
# rotation (weak with the elbow nearly straight).
_WELL_OBSERVED = [
    "pelvis_tilt", "pelvis_list", "pelvis_rotation",
    "hip_flexion_r", "hip_adduction_r", "hip_rotation_r", "knee_angle_r", "ankle_angle_r",
    "hip_flexion_l", "hip_adduction_l", "hip_rotation_l", "knee_angle_l", "ankle_angle_l",
    "L5_S1_Flex_Ext", "L5_S1_Lat_Bending", "L5_S1_axial_rotation", "neck_flexion",
    "arm_flex_r", "arm_add_r", "elbow_flex_r", "arm_flex_l", "arm_add_l", "elbow_flex_l",
]  # fmt: skip


@pytest.mark.opensim
def test_opensim_ik_smoke(tree, setup_dir, tmp_path):
    pytest.importorskip("opensim")
    from simspine_jax.io import read_storage
    from simspine_jax.osim_bridge.ik import run_opensim_ik

    tr = write_sample_trial(
        tree,
        tmp_path / "s.trc",
        tmp_path / "s_truth.mot",
        n_frames=20,
        noise_m=0.0,
        gap_fraction=0.02,
        seed=0,
    )
    res = run_opensim_ik(
        setup_dir / "Model_Pose2Sim_muscles_flex.osim",
        tr["trc_path"],
        setup_xml=setup_dir / "IK_Setup_Pose2Sim_Halpe26.xml",
        markers=setup_dir / "Markers_Halpe26.xml",
        out_dir=tmp_path / "ik",
    )
    assert res["coordinate_names"] == tree.coordinate_names
    assert res["q_full"].shape == (20, tree.n_coord) and res["n_frames"] == 20
    np.testing.assert_allclose(res["time"], tr["time"], atol=1e-6)
    assert res["wall_s"] > 0 and res["frames_per_s"] > 0
    # clean markers (with gaps): OpenSim stops at accuracy 1e-5 and the L5_S1 task pulls
    # lumbar flexion towards 0, so residuals are small but not zero (measured: 0.5-1.1 mm RMS,
    # 5 mm max, on Nose/Head whose weight is 0.1)
    assert res["marker_rms"].max() < 0.003 and res["marker_max"].max() < 0.012
    err = res["q_full"] - tr["q_full"]
    names = list(tree.coordinate_names)
    rms = {n: np.sqrt(np.mean(err[:, names.index(n)] ** 2)) for n in names}
    for n in _WELL_OBSERVED:
        assert rms[n] < np.deg2rad(2.5), (n, np.rad2deg(rms[n]))
    assert rms["L5_S1_Flex_Ext"] < np.deg2rad(0.5)
    assert rms["L5_S1_Lat_Bending"] < np.deg2rad(0.1)
    assert rms["L5_S1_axial_rotation"] < np.deg2rad(0.1)
    for n in ("pelvis_tx", "pelvis_ty", "pelvis_tz"):
        assert rms[n] < 0.003, (n, rms[n])
    # units OpenSim 4.6 writes with inDegrees=yes: rotational in degrees, coupled
    # (knee_angle_r_beta) in radians -- the same convention as our truth file
    raw = read_storage(res["mot_path"])
    assert raw.in_degrees is True
    col = {n: j for j, n in enumerate(raw.labels)}
    knee_deg = raw.values[:, col["knee_angle_r"]]
    np.testing.assert_allclose(
        raw.values[:, col["knee_angle_r_beta"]], np.deg2rad(knee_deg), atol=1e-6
    )
    truth = read_storage(tr["mot_path"])
    tcol = {n: j for j, n in enumerate(truth.labels)}
    for n, tol in [
        ("knee_angle_r", 2.0),  # degrees
        ("knee_angle_r_beta", 0.035),  # radians in both files
        ("L4_L5_Flex_Ext", 1.0),  # dependent, rotational: degrees
        ("pelvis_ty", 0.003),  # metres
    ]:
        d = np.abs(raw.values[:, col[n]] - truth.values[:, tcol[n]]).max()
        assert d < tol, (n, d)
