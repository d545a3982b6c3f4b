"""OpenSim IK setup files: parsing, task -> tree mapping, and the errors users get."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from simspine_jax import InputError, load_model
from simspine_jax.errors import IKSetupWarning
from simspine_jax.ik_setup import (
    CoordinateTask,
    IKSetup,
    apply_setup,
    coordinate_task_arrays,
    marker_weight_vector,
    read_ik_setup,
    select_frames,
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


def test_task_naming_missing_marker_is_skipped(tmp_path, tree):
    """The SimSpine IK_Setup.xml has LEye/REye/LEar/REar tasks that Pose2Sim's Halpe26 model
    lacks; OpenSim 4.6 skips them (test_opensim_runs_setup_with_missing_markers), so do we."""
    tasks = "".join(_marker_task(n, 0.1) for n in ("LEye", "REye", "LEar", "REar"))
    p = _write_setup(tmp_path, _marker_task("LShoulder", 2.0) + tasks)
    s = read_ik_setup(p)
    with pytest.warns(IKSetupWarning) as rec:
        w, present = marker_weight_vector(s, tree, list(tree.marker_names) + ["LEar"])
    msgs = [str(r.message) for r in rec]
    assert len(msgs) == 4
    for n, m in zip(("LEye", "REye", "LEar", "REar"), msgs, strict=True):
        assert m.startswith(f"{p}, field 'IKMarkerTask {n}': marker '{n}' is not in the model")
        assert "\n" not in m
    names = list(tree.marker_names)
    assert w[names.index("LShoulder")] == 2.0 and np.count_nonzero(w) == 1
    assert present.all()
    # present in the model, absent from the trial: skipped too, naming the TRC file
    p2 = _write_setup(tmp_path, _marker_task("LShoulder") + _marker_task("Neck"), name="s2.xml")
    with pytest.warns(IKSetupWarning, match=r"IKMarkerTask LShoulder.*not in the marker data"):
        w, present = marker_weight_vector(read_ik_setup(p2), tree, ["Neck", "Nose"])
    assert w[names.index("Neck")] == 1.0 and np.count_nonzero(w) == 1
    assert present.sum() == 2


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
        (_coord_task("knee_angle_r", 1, "guess"), "", r"value_type 'guess' is not one of"),
        (_marker_task("Neck") + _marker_task("Neck"), "", r"IKMarkerTask Neck.*listed twice"),
        ('<IKMarkerTask name="Neck"><apply>maybe</apply></IKMarkerTask>', "", "true or false"),
        ("<IKOrientationTask name='x'/>", "", r"unknown task type <IKOrientationTask>"),
        # OpenSim 4.6 warns and uses "0 1" here (and the whole trial for "0.3" or "a b"); a
        # malformed range is a typing error, so we refuse it
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


# ----------------------------------------------------------------------------- OpenSim's rules
# Each rule below was measured by running OpenSim 4.6's InverseKinematicsTool on this model; the
# ones that involve time_range and missing markers are checked against it again in the tests
# marked opensim at the end of this file.
THREE_LINK = """<?xml version="1.0" encoding="UTF-8" ?>
<OpenSimDocument Version="40000">
  <Model name="three_link">
    <Ground name="ground" />
    <BodySet name="bodyset"><objects>
      <Body name="upper"><mass>1</mass><inertia>1 1 1 0 0 0</inertia></Body>
      <Body name="lower"><mass>1</mass><inertia>1 1 1 0 0 0</inertia></Body>
      <Body name="hand"><mass>1</mass><inertia>1 1 1 0 0 0</inertia></Body>
    </objects></BodySet>
    <JointSet name="jointset"><objects>
      <PinJoint name="shoulder">
        <socket_parent_frame>ground_offset</socket_parent_frame>
        <socket_child_frame>upper_offset</socket_child_frame>
        <coordinates><Coordinate name="q1"><range>-3 3</range></Coordinate></coordinates>
        <frames>
          <PhysicalOffsetFrame name="ground_offset"><socket_parent>/ground</socket_parent>
            <translation>0 1 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
          <PhysicalOffsetFrame name="upper_offset"><socket_parent>/bodyset/upper</socket_parent>
            <translation>0 0 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
        </frames>
      </PinJoint>
      <CustomJoint name="elbow">
        <socket_parent_frame>upper_offset</socket_parent_frame>
        <socket_child_frame>lower_offset</socket_child_frame>
        <coordinates>
          <Coordinate name="q2"><range>-3 3</range></Coordinate>
          <Coordinate name="q2_dep"><range>-3 3</range></Coordinate>
        </coordinates>
        <frames>
          <PhysicalOffsetFrame name="upper_offset"><socket_parent>/bodyset/upper</socket_parent>
            <translation>0.5 0 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
          <PhysicalOffsetFrame name="lower_offset"><socket_parent>/bodyset/lower</socket_parent>
            <translation>0 0 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
        </frames>
        <SpatialTransform>
          <TransformAxis name="rotation1"><coordinates>q2</coordinates><axis>0 0 1</axis>
            <LinearFunction name="function"><coefficients>1 0</coefficients></LinearFunction>
          </TransformAxis>
          <TransformAxis name="rotation2"><coordinates></coordinates><axis>1 0 0</axis>
            <Constant name="function"><value>0</value></Constant></TransformAxis>
          <TransformAxis name="rotation3"><coordinates></coordinates><axis>0 1 0</axis>
            <Constant name="function"><value>0</value></Constant></TransformAxis>
          <TransformAxis name="translation1"><coordinates>q2_dep</coordinates><axis>1 0 0</axis>
            <LinearFunction name="function"><coefficients>1 0</coefficients></LinearFunction>
          </TransformAxis>
          <TransformAxis name="translation2"><coordinates></coordinates><axis>0 1 0</axis>
            <Constant name="function"><value>0</value></Constant></TransformAxis>
          <TransformAxis name="translation3"><coordinates></coordinates><axis>0 0 1</axis>
            <Constant name="function"><value>0</value></Constant></TransformAxis>
        </SpatialTransform>
      </CustomJoint>
      <PinJoint name="wrist">
        <socket_parent_frame>lower_offset</socket_parent_frame>
        <socket_child_frame>hand_offset</socket_child_frame>
        <coordinates><Coordinate name="q3"><default_value>0.2</default_value>
          <range>-3 3</range><locked>true</locked></Coordinate></coordinates>
        <frames>
          <PhysicalOffsetFrame name="lower_offset"><socket_parent>/bodyset/lower</socket_parent>
            <translation>0.4 0 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
          <PhysicalOffsetFrame name="hand_offset"><socket_parent>/bodyset/hand</socket_parent>
            <translation>0 0 0</translation><orientation>0 0 0</orientation></PhysicalOffsetFrame>
        </frames>
      </PinJoint>
    </objects></JointSet>
    <ConstraintSet name="constraintset"><objects>
      <CoordinateCouplerConstraint name="slide">
        <coupled_coordinates_function><LinearFunction><coefficients>0.1 0.05</coefficients>
        </LinearFunction></coupled_coordinates_function>
        <independent_coordinate_names>q2</independent_coordinate_names>
        <dependent_coordinate_name>q2_dep</dependent_coordinate_name>
      </CoordinateCouplerConstraint>
    </objects></ConstraintSet>
    <MarkerSet name="markerset"><objects>
      <Marker name="tip"><socket_parent_frame>/bodyset/lower</socket_parent_frame>
        <location>0.4 0 0</location></Marker>
      <Marker name="hand"><socket_parent_frame>/bodyset/hand</socket_parent_frame>
        <location>0.1 0 0</location></Marker>
      <Marker name="mid"><socket_parent_frame>/bodyset/upper</socket_parent_frame>
        <location>0.25 0 0</location></Marker>
    </objects></MarkerSet>
  </Model>
</OpenSimDocument>
"""
SMALL_MARKERS = ("tip", "hand", "mid")
DECIMAL_TIMES = np.arange(11) * 0.1  # 0.30000000000000004, ...: OpenSim reads the same doubles
BINARY_TIMES = np.arange(11) * 0.125  # exact: midpoints are exact ties


@pytest.fixture(scope="module")
def small_osim(tmp_path_factory) -> Path:
    """A planar three-link model: q1, q2 with a coupled q2_dep, a locked q3 (default 0.2)."""
    p = tmp_path_factory.mktemp("three_link") / "three_link.osim"
    p.write_text(THREE_LINK)
    return p


@pytest.fixture(scope="module")
def small(small_osim):
    tree = load_model(small_osim)
    assert tree.marker_names == SMALL_MARKERS
    assert tree.coordinate_names == ("q1", "q2", "q2_dep", "q3")
    assert tree.independent_names == ("q1", "q2")
    return tree


def _small_trial(tree, path: Path, times, names=SMALL_MARKERS + ("LEye",), noise=0.001):
    """A TRC of the small model moving (1 mm noise: OpenSim 4.6 failed with std::bad_alloc on
    noise-free data that its default pose fits exactly); 'LEye' is not a model marker."""
    from simspine_jax.fk import forward_kinematics
    from simspine_jax.io import write_trc

    q = np.stack([0.3 * np.sin(2 * times), 0.5 * times], -1)
    m = np.asarray(forward_kinematics(tree, q).markers)
    m = m + np.random.default_rng(0).normal(0.0, noise, m.shape)
    pos = {n: m[:, i] for i, n in enumerate(SMALL_MARKERS)}
    pos["LEye"] = m[:, 0] + np.array([0.0, 0.1, 0.0])
    write_trc(path, list(names), times, np.stack([pos[n] for n in names], 1), units="mm")
    return path


@pytest.mark.parametrize(
    "tasks",
    [
        "",
        _coord_task("q1", 0.5),
        _marker_task("tip", 2.0, apply=False) + _marker_task("mid", 1.0, apply=False),
    ],
    ids=["no_tasks", "coordinate_task_only", "marker_tasks_not_applied"],
)
def test_no_applied_marker_task_tracks_every_trial_marker(tmp_path, small, tasks):
    """OpenSim's MarkersReference keeps every marker of the file when no marker weight is set
    (default weight 1); measured: all three model markers tracked, LEye ignored."""
    p = _write_setup(tmp_path, tasks)
    with pytest.warns(IKSetupWarning, match=r"no applied IKMarkerTask.*weight 1") as rec:
        w, present = marker_weight_vector(read_ik_setup(p), small, ["tip", "mid", "LEye"])
    assert str(p) in str(rec[0].message)
    np.testing.assert_array_equal(w, [1.0, 0.0, 1.0])  # hand is not in the trial
    np.testing.assert_array_equal(present, [True, False, True])


@pytest.mark.parametrize(
    "tasks",
    [
        _marker_task("LEye"),  # OpenSim: "Marker data does not correspond to any model markers."
        _marker_task("REar"),  # in neither: OpenSim 4.6 crashed (segmentation fault)
        _marker_task("hand") + _marker_task("LEye", apply=False),  # hand: not in the trial
    ],
)
def test_every_marker_task_skipped_is_an_error(tmp_path, small, tasks):
    p = _write_setup(tmp_path, tasks)
    with pytest.raises(InputError, match="no applied IKMarkerTask names a marker") as e:
        marker_weight_vector(read_ik_setup(p), small, ["tip", "mid", "LEye"])
    assert e.value.path == str(p) and e.value.field == "IKTaskSet"


def test_weights_checked_only_where_used(tmp_path, small):
    """OpenSim refuses a negative marker weight only on a marker it tracks, a negative
    coordinate weight only on a coordinate it does not drop: all of these ran."""
    tasks = (
        _marker_task("tip")
        + _marker_task("mid", 0.5)
        + _marker_task("LEye", -1)  # not in the model
        + _marker_task("REar", "inf")  # in neither
        + _marker_task("hand", -2)  # not in the trial
        + _marker_task("Foo", -1, apply=False)
        + _coord_task("q3", -1)  # locked
        + _coord_task("q1", -1, apply=False)
    )
    s = read_ik_setup(_write_setup(tmp_path, tasks))
    assert s.marker_weights["LEye"] == -1 and math.isinf(s.marker_weights["REar"])
    with pytest.warns(IKSetupWarning) as rec:
        plan = apply_setup(s, small, ["tip", "mid", "LEye"], DECIMAL_TIMES)
    np.testing.assert_array_equal(plan.marker_weight, [1.0, 0.0, 0.5])
    assert plan.coord_tasks[0].size == 0
    assert len(rec) == len(plan.warnings) == 4  # LEye, REar, hand, q3
    assert [str(r.message) for r in rec] == list(plan.warnings)


@pytest.mark.parametrize(
    "tasks, field, pattern",
    [
        # OpenSim: "Markers::addMarker(): Illegal marker weight -1." / "... inf."
        (_marker_task("tip", -1), "IKMarkerTask tip/weight", "finite and >= 0"),
        (_marker_task("tip", "inf"), "IKMarkerTask tip/weight", "finite and >= 0"),
        # OpenSim: "Assembler::adoptAssemblyGoal(): Illegal assembly goal weight -1."
        (_marker_task("tip") + _coord_task("q1", -1), "IKCoordinateTask q1/weight", ">= 0"),
        # OpenSim runs this one, holding q2_dep at 0 as a constraint; we cannot
        (
            _marker_task("tip") + _coord_task("q2_dep", "inf"),
            "IKCoordinateTask q2_dep/weight",
            "infinite",
        ),
    ],
)
def test_bad_weight_on_a_used_task_is_an_error(tmp_path, small, tasks, field, pattern):
    p = _write_setup(tmp_path, tasks)
    with pytest.raises(InputError, match=pattern) as e:
        apply_setup(read_ik_setup(p), small, SMALL_MARKERS, DECIMAL_TIMES)
    assert e.value.path == str(p) and e.value.field == field


def test_coordinate_tasks_locked_dependent_unknown(tmp_path, small):
    """Measured: a task on the locked q3 is dropped (q3 stays at 0.2 rad, no error, even with
    weight 100 and target 1); a task on the coupled q2_dep is used (it pulled q2_dep to 0);
    one on an unknown coordinate fails ("ArrayPtrs.get(aName): No object with name nope" for
    default_value, "AssemblySolver: Model does not contain coordinate nope." for
    manual_value)."""
    tasks = (
        _marker_task("tip")
        + _coord_task("q3", 100.0, "manual_value", 1.0)
        + _coord_task("q2_dep", 2.0, "manual_value", 0.0)
        + _coord_task("q1", 1.0)
        + _coord_task("nope", 1.0, apply=False)  # not applied: never looked up
    )
    p = _write_setup(tmp_path, tasks)
    with pytest.warns(IKSetupWarning, match=r"IKCoordinateTask q3': coordinate 'q3' is locked"):
        idx, w, target = coordinate_task_arrays(read_ik_setup(p), small)
    assert [small.coordinate_names[i] for i in idx] == ["q2_dep", "q1"]
    np.testing.assert_allclose(w, [2.0, 1.0])
    np.testing.assert_allclose(target, [0.0, 0.0])
    for vt in ("default_value", "manual_value"):
        bad = _write_setup(tmp_path, _marker_task("tip") + _coord_task("nope", 1, vt), name=vt)
        with pytest.raises(InputError, match="IKCoordinateTask nope.*not in the model"):
            coordinate_task_arrays(read_ik_setup(bad), small)


def _case_id(v) -> str | None:
    """Test ids: the time_range text; the times by kind; frames as start-stop."""
    if v is None or isinstance(v, str):
        return str(v)
    if isinstance(v, tuple):
        return f"frames{v[0]}-{v[1]}"
    return "decimal" if v is DECIMAL_TIMES else "binary"


# time_range -> frames: what OpenSim 4.6 wrote to its .mot for the decimal times (measured)
TIME_RANGE_CASES = [
    (None, DECIMAL_TIMES, (0, 11)),
    ("-Inf Inf", DECIMAL_TIMES, (0, 11)),
    ("-0.5 0.34", DECIMAL_TIMES, (0, 4)),  # clipped to the data, then nearest frame
    ("0.66 5", DECIMAL_TIMES, (7, 11)),
    ("0.24 0.76", DECIMAL_TIMES, (2, 9)),  # nearest frames lie outside the range: 0.2 .. 0.8
    ("0.25 0.75", DECIMAL_TIMES, (2, 8)),  # 0.30000000000000004 and 0.7000000000000001 lose
    ("0.15 0.45", DECIMAL_TIMES, (1, 6)),
    ("0.52 0.53", DECIMAL_TIMES, (5, 6)),  # one frame
    ("0.3 0.3", DECIMAL_TIMES, (3, 4)),
    ("1.0 2", DECIMAL_TIMES, (10, 11)),  # the last frame only
    ("0.0625 0.1875", BINARY_TIMES, (1, 3)),  # exact ties go to the later frame
    ("0.6875 5", BINARY_TIMES, (6, 11)),
]


@pytest.mark.parametrize("time_range, times, frames", TIME_RANGE_CASES, ids=_case_id)
def test_time_range_selects_opensims_frames(tmp_path, time_range, times, frames):
    extra = "" if time_range is None else f"<time_range>{time_range}</time_range>"
    s = read_ik_setup(_write_setup(tmp_path, _marker_task("tip"), extra))
    assert select_frames(s, times) == slice(*frames)


@pytest.mark.parametrize("time_range", ["2 3", "-3 -2", "1.02 2"])
def test_time_range_outside_the_trial_is_an_error(tmp_path, time_range):
    """OpenSim: "Assertion 'final_time >= start_time' failed" (after clipping to the data)."""
    p = _write_setup(tmp_path, _marker_task("tip"), f"<time_range>{time_range}</time_range>")
    with pytest.raises(InputError, match=r"does not overlap .*trial\.trc.*\[0, 1\] s") as e:
        select_frames(read_ik_setup(p), DECIMAL_TIMES, trc_path="trial.trc")
    assert e.value.path == str(p) and e.value.field == "time_range"


def test_apply_setup_reads_coordinate_file_at_the_selected_frames(tmp_path, small):
    """from_file targets are needed only at the time_range frames: a coordinate file that
    covers just those is enough (without time_range it is an error)."""
    from simspine_jax.io import write_storage

    t = DECIMAL_TIMES[2:7]
    write_storage(tmp_path / "q.mot", ["q1"], t, np.rad2deg(t)[:, None], in_degrees=True)
    tasks = _marker_task("tip") + _marker_task("LEye") + _coord_task("q1", 2.0, "from_file")
    extra = "<coordinate_file>q.mot</coordinate_file><time_range>0.2 0.6</time_range>"
    s = read_ik_setup(_write_setup(tmp_path, tasks, extra))
    with pytest.warns(IKSetupWarning, match="IKMarkerTask LEye.*not in the model"):
        plan = apply_setup(s, small, ["tip", "LEye"], DECIMAL_TIMES, trc_path="trial.trc")
    assert plan.frames == slice(2, 7)
    np.testing.assert_array_equal(plan.marker_weight, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(plan.present, [True, False, False])
    idx, w, target = plan.coord_tasks
    assert idx.tolist() == [0] and w.tolist() == [2.0] and target.shape == (5, 1)
    np.testing.assert_allclose(target[:, 0], t, atol=1e-9)
    assert len(plan.warnings) == 1 and "LEye" in plan.warnings[0]
    whole = read_ik_setup(_write_setup(tmp_path, tasks, extra.split("<time_range>")[0], "w.xml"))
    with pytest.raises(InputError, match="outside the coordinate file's time range"):
        apply_setup(whole, small, ["tip", "LEye"], DECIMAL_TIMES)


def test_cli_ik_honours_time_range_and_skips_tasks(tmp_path, small, small_osim, capsys):
    """``simspine-jax ik`` writes the time_range frames only and shows one line per skipped
    task, naming the setup file and the task (no traceback, no Python source line)."""
    from simspine_jax.cli import main
    from simspine_jax.io import read_storage

    trc = _small_trial(small, tmp_path / "trial.trc", DECIMAL_TIMES)
    tasks = "".join(_marker_task(n) for n in SMALL_MARKERS + ("LEye", "REar"))
    p = _write_setup(tmp_path, tasks, "<time_range>0.24 0.76</time_range>")
    rc = main(["ik", "--model", str(small_osim), "--trc", str(trc), "--setup", str(p),
               "-o", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    ours = [ln for ln in err.splitlines() if "IKSetupWarning" in ln or "warning" in ln]
    assert ours == [
        f"simspine-jax: warning: {p}, field 'IKMarkerTask {n}': marker '{n}' is not in the "
        "model; task skipped, as OpenSim does"
        for n in ("LEye", "REar")
    ]
    mot = read_storage(tmp_path / "out" / "trial.mot")
    np.testing.assert_allclose(mot.time, DECIMAL_TIMES[2:9], atol=1e-9)
    errors = read_storage(tmp_path / "out" / "trial_marker_errors.sto")
    assert len(errors.time) == 7


# ----------------------------------------------------------------------------- against OpenSim
needs_opensim = pytest.mark.skipif(
    importlib.util.find_spec("opensim") is None, reason="the opensim package is not installed"
)


@pytest.mark.opensim
@needs_opensim
@pytest.mark.parametrize(
    "time_range, times, frames",
    [
        c
        for c in TIME_RANGE_CASES
        if c[0] in ("-0.5 0.34", "0.25 0.75", "0.0625 0.1875", "0.6875 5")
    ],
    ids=_case_id,
)
def test_opensim_selects_the_same_frames(tmp_path, small, small_osim, time_range, times, frames):
    """OpenSim's own tool (in a child process) on a setup with a time_range and with tasks
    naming markers absent from the model (LEye, in the trial) and from both (REar): it runs,
    and writes exactly the frames select_frames picks."""
    from simspine_jax.osim_bridge.ik import run_opensim_ik_subprocess

    trc = _small_trial(small, tmp_path / "trial.trc", times)
    tasks = "".join(_marker_task(n) for n in SMALL_MARKERS + ("LEye", "REar"))
    s = read_ik_setup(_write_setup(tmp_path, tasks, f"<time_range>{time_range}</time_range>"))
    ref = run_opensim_ik_subprocess(
        small_osim, trc, s.path, out_dir=tmp_path / "opensim", time_range=s.time_range
    )
    sel = select_frames(s, times)
    assert sel == slice(*frames)
    np.testing.assert_allclose(ref["time"], times[sel], atol=1e-9)


@pytest.mark.opensim
@needs_opensim
def test_crosscheck_runs_setup_with_missing_markers(tmp_path, small, small_osim):
    """Both solvers run a setup whose tasks name markers the model lacks, on the time_range
    frames, and agree."""
    from simspine_jax.io import read_storage
    from simspine_jax.pipeline import crosscheck

    trc = _small_trial(small, tmp_path / "trial.trc", DECIMAL_TIMES)
    tasks = "".join(_marker_task(n) for n in SMALL_MARKERS + ("LEye", "REar"))
    tasks += _coord_task("q3", 5.0, "manual_value", 1.0)  # locked: dropped by both
    p = _write_setup(tmp_path, tasks, "<time_range>0.24 0.76</time_range>")
    with pytest.warns(IKSetupWarning) as rec:
        rep = crosscheck(small_osim, trc, tmp_path / "cc", setup=p, plot=False)
    assert len(rec) == 3 and rep["setup_warnings"] == [str(r.message) for r in rec]
    assert rep["frames"] == 7
    mot = read_storage(tmp_path / "cc" / "opensim" / "trial.mot")
    np.testing.assert_allclose(mot.time, DECIMAL_TIMES[2:9], atol=1e-9)
    for name, c in rep["coordinates"].items():
        assert c["max"] < 0.05, (name, c)  # degrees
    assert rep["coordinate_tasks"] == []
