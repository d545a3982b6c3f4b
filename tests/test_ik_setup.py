"""OpenSim IK setup files: parsing, task -> tree mapping, and the errors users get."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simspine_jax import InputError, load_model
from simspine_jax.ik_setup import (
    CoordinateTask,
    IKSetup,
    coordinate_task_arrays,
    marker_weight_vector,
    read_ik_setup,
)

HALPE26_WEIGHTS = {
    "Nose": 0.1,
    "Head": 0.1,
    "Neck": 0.2,
    "LShoulder": 2.0,
    "RShoulder": 2.0,
    "LElbow": 1.0,
    "RElbow": 1.0,
    "LWrist": 1.0,
    "RWrist": 1.0,
    "Hip": 1.0,
    "LHip": 2.0,
    "RHip": 2.0,
    **{
        n: 1.0
        for n in (
            "LKnee RKnee LAnkle RAnkle LBigToe LSmallToe LHeel RBigToe RSmallToe RHeel".split()
        )
    },
}


@pytest.fixture(scope="module")
def tree(setup_dir):
    return load_model(
        setup_dir / "Model_Pose2Sim_muscles_flex.osim", markers=setup_dir / "Markers_Halpe26.xml"
    )


def _write_setup(tmp_path: Path, tasks: str, extra: str = "", name="setup.xml") -> Path:
    p = tmp_path / name
    p.write_text(
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        '<OpenSimDocument Version="40500">\n'
        "  <InverseKinematicsTool>\n"
        "    <model_file>model.osim</model_file>\n"
        f"    {extra}\n"
        f"    <IKTaskSet><objects>{tasks}</objects><groups /></IKTaskSet>\n"
        "    <marker_file>Unassigned</marker_file>\n"
        "  </InverseKinematicsTool>\n"
        "</OpenSimDocument>\n"
    )
    return p


def _marker_task(name, weight=1.0, apply=True):
    return (
        f'<IKMarkerTask name="{name}"><apply>{str(apply).lower()}</apply>'
        f"<weight>{weight}</weight></IKMarkerTask>"
    )


def _coord_task(name, weight=1.0, value_type="default_value", value=0.0, apply=True):
    return (
        f'<IKCoordinateTask name="{name}"><apply>{str(apply).lower()}</apply>'
        f"<weight>{weight}</weight><value_type>{value_type}</value_type>"
        f"<value>{value}</value></IKCoordinateTask>"
    )


# ----------------------------------------------------------------------------- Pose2Sim file
def test_parse_pose2sim_halpe26(setup_dir):
    path = setup_dir / "IK_Setup_Pose2Sim_Halpe26.xml"
    s = read_ik_setup(path)
    assert isinstance(s, IKSetup)
    assert s.marker_weights == HALPE26_WEIGHTS
    # the only coordinate task: keep L5_S1 flexion near its default (weight 0.1 in this
    # Pose2Sim version, not 1)
    assert s.coordinate_tasks == (CoordinateTask("L5_S1_Flex_Ext", 0.1, "default_value", 0.0),)
    assert s.accuracy == pytest.approx(1e-5)
    assert s.time_range == pytest.approx((1 / 60, 1.6333333333333333))
    assert math.isinf(s.constraint_weight)
    assert s.report_errors is True and s.report_marker_locations is False
    assert s.coordinate_file is None  # "Unassigned"
    assert s.model_file.endswith("Model_Pose2Sim_S00_P00_halpe26_scaled.osim")
    assert s.output_motion_file.endswith(".mot") and s.marker_file.endswith(".trc")
    assert s.path == str(path)
    # relative names resolve against the setup file's folder, as OpenSim does
    assert s.resolve(s.model_file) == (
        setup_dir.resolve().parent
        / "S00_Demo_Session/S00_P00_SingleParticipant/S00_P00_OpenSim"
        / "Model_Pose2Sim_S00_P00_halpe26_scaled.osim"
    )
    assert s.resolve(None) is None


def test_pose2sim_tasks_on_tree(setup_dir, tree):
    s = read_ik_setup(setup_dir / "IK_Setup_Pose2Sim_Halpe26.xml")
    w, present = marker_weight_vector(s, tree, tree.marker_names)
    assert w.shape == present.shape == (tree.n_marker,)
    assert present.all()
    np.testing.assert_array_equal(w, [HALPE26_WEIGHTS[n] for n in tree.marker_names])
    idx, cw, target = coordinate_task_arrays(s, tree)
    assert [tree.coordinate_names[i] for i in idx] == ["L5_S1_Flex_Ext"]
    np.testing.assert_allclose(cw, [0.1])
    np.testing.assert_allclose(target, [0.0])  # the model default


# ----------------------------------------------------------------------------- mapping rules
def test_unapplied_and_missing_tasks_get_zero_weight(tmp_path, tree):
    p = _write_setup(
        tmp_path,
        _marker_task("LShoulder", 3.0)
        + _marker_task("RShoulder", 5.0, apply=False)
        + _marker_task("NotAMarker", 1.0, apply=False),  # not applied: never checked
    )
    s = read_ik_setup(p)
    assert s.marker_weights == {"LShoulder": 3.0}
    assert s.disabled_tasks == ("RShoulder", "NotAMarker")
    trc_names = [n for n in tree.marker_names if n != "Nose"]
    w, present = marker_weight_vector(s, tree, trc_names)
    names = list(tree.marker_names)
    assert w[names.index("LShoulder")] == 3.0
    assert w[names.index("RShoulder")] == 0.0  # apply=false
    assert w[names.index("Neck")] == 0.0  # no task at all: OpenSim ignores the marker
    assert np.count_nonzero(w) == 1
    assert not present[names.index("Nose")] and present.sum() == tree.n_marker - 1


def test_task_naming_missing_marker_is_an_error(tmp_path, tree):
    p = _write_setup(tmp_path, _marker_task("LShoulder") + _marker_task("LEar", 1.0))
    s = read_ik_setup(p)
    with pytest.raises(InputError) as e:
        marker_weight_vector(s, tree, list(tree.marker_names) + ["LEar"])
    msg = str(e.value)
    assert str(p) in msg and "IKMarkerTask LEar" in msg and "not in the model" in msg
    # present in the model, absent from the TRC
    p2 = _write_setup(tmp_path, _marker_task("LShoulder"), name="s2.xml")
    with pytest.raises(InputError, match=r"IKMarkerTask LShoulder.*not in the marker \(TRC\)"):
        marker_weight_vector(read_ik_setup(p2), tree, ["RShoulder"])


def test_coordinate_task_values(tmp_path, tree):
    p = _write_setup(
        tmp_path,
        _coord_task("arm_add_r", 2.0)  # default_value: the model default, -1.57
        + _coord_task("knee_angle_r", 0.5, "manual_value", 0.3)
        + _coord_task("L4_L5_Flex_Ext", 1.0)  # a dependent coordinate is allowed
        + _coord_task("pelvis_tilt", 9.0, apply=False),
    )
    s = read_ik_setup(p)
    assert [t.name for t in s.coordinate_tasks] == ["arm_add_r", "knee_angle_r", "L4_L5_Flex_Ext"]
    idx, w, target = coordinate_task_arrays(s, tree)
    names = list(tree.coordinate_names)
    np.testing.assert_array_equal(
        idx, [names.index("arm_add_r"), names.index("knee_angle_r"), names.index("L4_L5_Flex_Ext")]
    )
    np.testing.assert_allclose(w, [2.0, 0.5, 1.0])
    np.testing.assert_allclose(target, [-1.57, 0.3, 0.0])


def _coordinate_file(tmp_path, tree, name="coords.mot"):
    """A coordinate file at 10 Hz: a rotational, a coupled and a translational coordinate."""
    from simspine_jax.io import write_storage

    t = np.arange(6) * 0.1
    cols = ["L5_S1_Flex_Ext", "knee_angle_r_beta", "pelvis_tx"]
    assert all(c in tree.coordinate_names for c in cols)
    vals = np.stack([10.0 * t, 0.2 + t, 0.5 - t], -1)  # deg, rad (coupled), m
    return write_storage(tmp_path / name, cols, t, vals, in_degrees=True), t, vals


def test_from_file_targets_per_frame(tmp_path, tree):
    _coordinate_file(tmp_path, tree)
    tasks = "".join(
        [
            _coord_task("L5_S1_Flex_Ext", 2.0, "from_file"),
            _coord_task("knee_angle_r_beta", 1.0, "from_file"),
            _coord_task("pelvis_tx", 1.0, "from_file"),
            _coord_task("L5_S1_Lat_Bending", 0.5, "manual_value", 0.25),
        ]
    )
    s = read_ik_setup(
        _write_setup(tmp_path, tasks, "<coordinate_file>coords.mot</coordinate_file>")
    )
    times = np.array([0.0, 0.05, 0.1, 0.5])  # on and between the file's samples, both ends
    idx, w, target = coordinate_task_arrays(s, tree, times=times)
    names = [tree.coordinate_names[i] for i in idx]
    assert names == ["L5_S1_Flex_Ext", "knee_angle_r_beta", "pelvis_tx", "L5_S1_Lat_Bending"]
    np.testing.assert_allclose(w, [2.0, 1.0, 1.0, 0.5])
    assert target.shape == (4, 4)
    # rotational: degrees -> radians; coupled stays as written (OpenSim's IK convention);
    # translational in metres; linear between samples; a constant task repeats per frame
    np.testing.assert_allclose(target[:, 0], np.deg2rad(10.0 * times), atol=1e-12)
    np.testing.assert_allclose(target[:, 1], 0.2 + times, atol=1e-12)
    np.testing.assert_allclose(target[:, 2], 0.5 - times, atol=1e-12)
    np.testing.assert_allclose(target[:, 3], 0.25)


@pytest.mark.parametrize(
    "extra, times, match",
    [
        ("", np.zeros(2), "needs the setup's coordinate_file"),
        ("<coordinate_file>coords.mot</coordinate_file>", None, "needs the marker frames' times"),
        ("<coordinate_file>nowhere.mot</coordinate_file>", np.zeros(2), "not found"),
        (
            "<coordinate_file>coords.mot</coordinate_file>",
            np.array([0.0, 0.3, 0.7]),
            r"frame 2.*marker time 0\.7 s is outside .*\[0, 0\.5\] s",
        ),
    ],
)
def test_from_file_errors(tmp_path, tree, extra, times, match):
    _coordinate_file(tmp_path, tree)
    p = _write_setup(tmp_path, _coord_task("L5_S1_Flex_Ext", 1.0, "from_file"), extra)
    with pytest.raises(InputError, match=match):
        coordinate_task_arrays(read_ik_setup(p), tree, times=times)


def test_from_file_missing_column(tmp_path, tree):
    _coordinate_file(tmp_path, tree)
    extra = "<coordinate_file>coords.mot</coordinate_file>"
    p = _write_setup(tmp_path, _coord_task("hip_flexion_r", 1.0, "from_file"), extra)
    with pytest.raises(InputError, match="no column for coordinate 'hip_flexion_r'") as e:
        coordinate_task_arrays(read_ik_setup(p), tree, times=np.zeros(1))
    assert "coords.mot" in str(e.value)


def test_unknown_coordinate_is_an_error(tmp_path, tree):
    s = read_ik_setup(_write_setup(tmp_path, _coord_task("spine_twist")))
    with pytest.raises(InputError, match="IKCoordinateTask spine_twist.*not in the model"):
        coordinate_task_arrays(s, tree)


# ----------------------------------------------------------------------------- bad files
def test_malformed_xml(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text("<OpenSimDocument>\n<InverseKinematicsTool>\n<accuracy>1e-5</accurcy>\n")
    with pytest.raises(InputError, match="malformed XML") as e:
        read_ik_setup(p)
    assert e.value.path == str(p) and e.value.line == 3


def test_not_an_ik_setup(tmp_path):
    p = tmp_path / "scale.xml"
    p.write_text("<OpenSimDocument><ScaleTool/></OpenSimDocument>")
    with pytest.raises(InputError, match="no <InverseKinematicsTool>"):
        read_ik_setup(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_ik_setup(tmp_path / "nope.xml")


@pytest.mark.parametrize(
    "tasks, extra, pattern",
    [
        (_marker_task("Neck", "heavy"), "", r"IKMarkerTask Neck/weight.*expected a number"),
        (_marker_task("Neck", -1), "", r"weight must be finite and >= 0"),
        (_coord_task("knee_angle_r", 1, "guess"), "", r"value_type 'guess' is not one of"),
        (_marker_task("Neck") + _marker_task("Neck"), "", r"IKMarkerTask Neck.*listed twice"),
        ('<IKMarkerTask name="Neck"><apply>maybe</apply></IKMarkerTask>', "", "true or false"),
        ("<IKOrientationTask name='x'/>", "", r"unknown task type <IKOrientationTask>"),
        (_marker_task("Neck"), "<time_range>0 1 2</time_range>", "field 'time_range'"),
        (_marker_task("Neck"), "<time_range>2 1</time_range>", "before start time"),
        (_marker_task("Neck"), "<accuracy>0</accuracy>", "field 'accuracy'"),
    ],
)
def test_bad_values_name_the_field(tmp_path, tasks, extra, pattern):
    p = _write_setup(tmp_path, tasks, extra)
    with pytest.raises(InputError, match=pattern) as e:
        read_ik_setup(p)
    assert str(p) in str(e.value)


def test_defaults_and_external_task_set(tmp_path):
    (tmp_path / "tasks.xml").write_text(
        "<OpenSimDocument><IKTaskSet><objects>"
        + _marker_task("Neck", 0.5)
        + _coord_task("pelvis_tilt", 1.0, "manual_value", 0.1)
        + "</objects></IKTaskSet></OpenSimDocument>"
    )
    p = tmp_path / "setup.xml"
    p.write_text(
        "<OpenSimDocument><InverseKinematicsTool>"
        '<IKTaskSet file="tasks.xml"/>'
        "<constraint_weight>20</constraint_weight>"
        "</InverseKinematicsTool></OpenSimDocument>"
    )
    s = read_ik_setup(p)
    assert s.marker_weights == {"Neck": 0.5}
    assert s.coordinate_tasks == (CoordinateTask("pelvis_tilt", 1.0, "manual_value", 0.1),)
    assert s.accuracy == 1e-5 and s.time_range is None and s.constraint_weight == 20.0
    assert s.model_file is None and s.marker_file is None and s.report_errors is True
