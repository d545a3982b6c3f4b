"""Subject scaling against OpenSim's ScaleTool, and the parts it is made of.

The static trial is synthetic: OpenSim scales the default SimSpine model with known per-segment
factors, our FK puts its markers at the default pose, 1 mm noise is added to 12 frames, and a
TRC is written. Pose2Sim's Halpe26 scaling setup (its measurements, marker pairs and bodies)
then scales the generic model twice, by OpenSim's ScaleTool (child process) and by
:func:`simspine_jax.scaling.scale_subject`; OpenSim evaluates both written models.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import jax.numpy as jnp
import numpy as np
import pytest

import simspine_jax as ssj
from simspine_jax import scaling as sc
from simspine_jax.errors import InputError
from simspine_jax.export import read_osim
from simspine_jax.io import write_trc
from simspine_jax.io.scale_setup import read_scale_setup
from simspine_jax.model import tree_from_export

pytest.importorskip("opensim")
from simspine_jax.osim_bridge.scale import run_scale_jobs  # noqa: E402

SEED = 3


def _setup_for(template, osim, markers, trc, out, scale_file, time_range=" 0.02 0.15"):
    """A copy of a Pose2Sim scaling setup pointed at our files (the trial and outputs in the
    setup's folder)."""
    doc = ET.parse(template)
    tool = doc.getroot().find("ScaleTool")
    tool.find("GenericModelMaker/model_file").text = str(osim)
    tool.find("GenericModelMaker/marker_set_file").text = str(markers)
    ms = tool.find("ModelScaler")
    # OpenSim's ModelScaler prefixes these with the setup's folder: names relative to it
    ms.find("marker_file").text = trc.name
    ms.find("time_range").text = time_range
    ms.find("output_model_file").text = out.name
    ms.find("output_scale_file").text = scale_file.name
    tool.find("MarkerPlacer/apply").text = "false"
    return doc


@pytest.fixture(scope="module")
def case(tmp_path_factory, setup_dir):
    tmp = tmp_path_factory.mktemp("scaling")
    osim, mk = ssj.default_osim_path(), ssj.default_markers_path()
    template = setup_dir / "Scaling_Setup_Pose2Sim_Halpe26.xml"
    su = read_scale_setup(template)
    rng = np.random.default_rng(SEED)
    truth = {}
    for m in su.measurements:
        f = float(rng.uniform(0.88, 1.15))
        truth.update({b: [f, f, f] for b in m.bodies})
    truth_osim = tmp / "truth.osim"
    run_scale_jobs(
        [dict(op="manual", osim=str(osim), out=str(truth_osim), factors=truth, markers=str(mk))]
    )
    t_truth = tree_from_export(read_osim(truth_osim))
    base = ssj.marker_positions(
        t_truth, jnp.asarray(t_truth.coord_default)[t_truth.topology.indep_coord]
    )
    T = 12
    time = np.arange(T) / 60.0
    pos = np.asarray(base)[None] + rng.normal(0, 1e-3, (T, t_truth.n_marker, 3))
    trc = write_trc(tmp / "static.trc", t_truth.marker_names, time, pos, units="mm")
    os_out, ours_out = tmp / "opensim_scaled.osim", tmp / "ours_scaled.osim"
    setup = tmp / "setup.xml"
    scale_file = tmp / "opensim_scale_set.xml"
    _setup_for(template, osim, mk, trc, os_out, scale_file).write(setup)
    res = sc.scale_subject(osim, trc, setup, ours_out, markers=mk)
    ev = run_scale_jobs(
        [
            dict(op="setup", setup=str(setup), expect=str(os_out)),
            dict(op="evaluate", osim=str(os_out)),
            dict(op="evaluate", osim=str(ours_out)),
        ]
    )
    return dict(
        tmp=tmp, su=su, truth=truth, t_truth=t_truth, trc=trc, res=res, os_out=os_out,
        ours_out=ours_out, scale_file=scale_file, os_eval=ev[1], ours_eval=ev[2], setup=setup,
    )  # fmt: skip


def test_factors_equal_opensim(case):
    os_f = {}
    for s in ET.parse(case["scale_file"]).getroot().iter("Scale"):
        os_f[s.findtext("segment").strip()] = np.array(s.findtext("scales").split(), float)
    ours = case["res"].factors.as_dict()
    assert set(os_f) >= set(ours) - {"ground"}
    for b, f in ours.items():
        if b != "ground":
            np.testing.assert_allclose(
                f, os_f[b], rtol=5e-6, atol=0, err_msg=b
            )  # OpenSim writes 6 digits
    # the measurements moved the factors away from 1, toward the truth
    f = case["res"].factors.as_dict()
    assert abs(f["femur_r"][0] - case["truth"]["femur_r"][0]) < 0.03
    assert f["femur_r"][0] != 1.0


def test_scaled_models_agree_at_default_pose(case):
    """OpenSim's FK of both written models: body origins and markers within 2 mm (measured:
    ~1e-12 m); and our tree of the scaled model agrees with OpenSim's FK of it."""
    a, b = case["os_eval"], case["ours_eval"]
    assert set(a["bodies"]) == set(b["bodies"]) and set(a["markers"]) == set(b["markers"])
    d_body = max(np.abs(np.subtract(a["bodies"][k], b["bodies"][k])).max() for k in a["bodies"])
    d_mk = max(np.abs(np.subtract(a["markers"][k], b["markers"][k])).max() for k in a["markers"])
    assert d_body < 2e-3 and d_mk < 2e-3
    assert d_body < 1e-9 and d_mk < 1e-9  # the same arithmetic, in fact
    tree = case["res"].tree
    fk = ssj.forward_kinematics(tree, jnp.asarray(tree.coord_default)[tree.topology.indep_coord])
    for i, n in enumerate(tree.marker_names):
        np.testing.assert_allclose(np.asarray(fk.markers[i]), a["markers"][n], atol=1e-9)
    for i, n in enumerate(tree.body_names[1:], start=1):
        np.testing.assert_allclose(np.asarray(fk.p_world[i]), a["bodies"][n], atol=1e-9)
    # the written .npz is the scaled tree
    back = ssj.load_tree(case["res"].npz)
    np.testing.assert_array_equal(np.asarray(back.marker_offset), np.asarray(tree.marker_offset))


def test_ik_on_both_scaled_models_agrees(case):
    """IK of the same 3 frames (truth model, random poses) on our scaled tree and on the tree
    of OpenSim's scaled model (same structure, OpenSim's geometry), with the local
    Levenberg-Marquardt of :func:`fit_scales` (no scale groups; started 0.05 rad off). The
    library's whole-sequence IK gives the same (experiments/scaling_vs_opensim.py, ik_dq_max
    7e-14 rad); it is not run here to keep the test within its time budget."""
    ours = case["res"].tree
    theirs = tree_from_export(read_osim(case["os_out"]))
    theirs = sc._replace(ours, **{k: getattr(theirs, k) for k in ("joint_p_pf", "joint_p_cm",
        "func_y", "func_b", "func_c", "func_d", "marker_offset")})  # fmt: skip
    t_truth = case["t_truth"]
    rng = np.random.default_rng(SEED + 1)
    idx = t_truth.topology.indep_coord
    lo, hi = np.asarray(t_truth.coord_range)[idx].T
    q = np.asarray(t_truth.coord_default)[idx] + rng.normal(0, 0.15, (3, t_truth.n_indep))
    q = np.clip(q, lo + 0.05, hi - 0.05)
    z = np.asarray(ssj.marker_positions(t_truth, jnp.asarray(q)))
    assert ours.marker_names == t_truth.marker_names
    start = q + rng.normal(0, 0.05, q.shape)
    for t in range(len(q)):  # one frame per call: the program the placement test uses too
        ra = sc.fit_scales(ours, z[t : t + 1], (), q_init=start[t : t + 1], iters=60)
        rb = sc.fit_scales(theirs, z[t : t + 1], (), q_init=start[t : t + 1], iters=60)
        # same objective to 1e-12 m; q to 1e-5 rad (measured 1e-6 on weakly observed
        # coordinates, which a fixed count of LM iterations leaves not fully converged)
        assert np.abs(ra.q - rb.q).max() < 1e-5
        assert abs(ra.rms - rb.rms) < 1e-12
        assert ra.rms < 0.02  # a real fit: the scaled model differs from the truth by cm


def test_scale_tree_matches_written_osim():
    """Random non-uniform factors on every body: FK of scale_tree equals FK of the exported
    .osim that write_scaled_osim wrote (joint frames, CustomJoint translation functions,
    markers), and OpenSim's own already-scaled functions (MultiplierFunction) multiply."""
    osim, mk = ssj.default_osim_path(), ssj.default_markers_path()
    tree = tree_from_export(read_osim(osim, markers=mk))
    rng = np.random.default_rng(SEED)
    f = {b: rng.uniform(0.85, 1.2, 3) for b in tree.body_names[1:]}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        out = sc.write_scaled_osim(osim, Path(d) / "s.osim", f, markers=mk)
        written = tree_from_export(read_osim(out))
        # everything else is kept: element counts as in the source (+ the markers merged in,
        # + a MultiplierFunction wrapping each scaled translation function not yet wrapped)
        from collections import Counter

        src = Counter(e.tag for e in ET.parse(osim).getroot().iter())
        got = Counter(e.tag for e in ET.parse(out).getroot().iter())
        n_mk = len(ET.parse(mk).getroot().findall(".//Marker"))
        assert got["Marker"] == src["Marker"] + n_mk
        new = got["MultiplierFunction"] - src["MultiplierFunction"]
        assert new > 0 and got["function"] - src["function"] == new
        for tag in set(src) | set(got):
            if tag not in (
                "Marker",
                "MultiplierFunction",
                "function",
                "scale",
                "location",
                "socket_parent_frame",
                "fixed",
                "objects",
                "MarkerSet",
            ):
                assert got[tag] == src[tag], tag  # fmt: skip
    scaled = sc.scale_tree(tree, f)
    q = rng.normal(0, 0.3, (4, tree.n_indep))
    a, b = ssj.forward_kinematics(scaled, q), ssj.forward_kinematics(written, q)
    np.testing.assert_allclose(np.asarray(a.markers), np.asarray(b.markers), atol=1e-13)
    np.testing.assert_allclose(np.asarray(a.p_world), np.asarray(b.p_world), atol=1e-13)
    # and scaling moved things: the unscaled tree differs
    c = ssj.forward_kinematics(tree, q)
    assert np.abs(np.asarray(c.markers) - np.asarray(a.markers)).max() > 1e-2


def test_frame_range_is_opensims():
    t = np.arange(10) * 0.1
    assert sc.frame_range(t, 0.25, 0.55) == slice(2, 7)  # last <= start, first >= end
    assert sc.frame_range(t, 0.2, 0.5) == slice(2, 6)
    assert sc.frame_range(t, -1, 5) == slice(0, 10)
    with pytest.raises(InputError):
        sc.frame_range(t, 0.5, 0.2)


def test_measurement_factor_mean_of_ratios():
    from simspine_jax.io.scale_setup import Measurement

    m = Measurement("m", True, (("a", "b"), ("a", "c")), {"x": (0, 1, 2)})
    model = {"a": np.zeros(3), "b": np.array([1.0, 0, 0]), "c": np.array([0, 2.0, 0])}
    # frame distances a-b: 1.1, 1.3 (mean 1.2); a-c: 2.2 both -> (1.2/1 + 2.2/2) / 2 = 1.15
    pos = np.zeros((2, 3, 3))
    pos[:, 1, 0] = [1.1, 1.3]
    pos[:, 2, 1] = 2.2
    r = sc.measurement_factor(m, model, ["a", "b", "c"], pos)
    assert r.factor == pytest.approx(1.15, abs=1e-15)
    pos[1, 2, 1] = np.nan  # a NaN sample voids the measurement, as in OpenSim
    assert math.isnan(sc.measurement_factor(m, model, ["a", "b", "c"], pos).factor)
    assert math.isnan(sc.measurement_factor(m, model, ["a", "b"], pos[:, :2]).factor)


def test_bad_setup_names_the_field(tmp_path, setup_dir):
    src = (setup_dir / "Scaling_Setup_Pose2Sim_Halpe26.xml").read_text()
    p = tmp_path / "bad.xml"
    p.write_text(src.replace("measurements manualScale", "measurements byHand"))
    with pytest.raises(InputError, match="scaling_order"):
        read_scale_setup(p)
    p.write_text(src.replace("<axes> X Y Z</axes>", "<axes> X Q</axes>", 1))
    with pytest.raises(InputError, match="axis 'Q'"):
        read_scale_setup(p)
    p.write_text(src[:2000])
    with pytest.raises(InputError, match="malformed XML"):
        read_scale_setup(p)


# ----------------------------------------------------------------------------- small model
@pytest.fixture(scope="module")
def zoo():
    from pathlib import Path

    return tree_from_export(read_osim(Path(__file__).parent / "data" / "joint_zoo.osim"))


def _zoo_poses(tree, rng, T):
    idx = tree.topology.indep_coord
    lo, hi = np.asarray(tree.coord_range)[idx].T
    q = np.asarray(tree.coord_default)[idx] + rng.normal(0, 0.3, (T, tree.n_indep))
    return np.clip(q, lo + 0.01, hi - 0.01)


def test_fit_scales_recovers_group_factors(zoo):
    """Noise-free markers of a scaled zoo model in 4 poses: the joint fit of two groups'
    factors and the poses, started 0.05 rad off, recovers the factors."""
    rng = np.random.default_rng(SEED)
    groups = (
        sc.ScaleGroup("upper", {"trunk": (0, 1, 2), "head": (0, 1, 2)}),
        sc.ScaleGroup("leg", {"thigh": (1,), "shank": (1,)}),
    )
    truth = {"trunk": 1.12, "head": 1.12, "thigh": [1, 0.9, 1], "shank": [1, 0.9, 1]}
    scaled = sc.scale_tree(zoo, truth)
    q = _zoo_poses(zoo, rng, 4)
    z = np.asarray(ssj.marker_positions(scaled, jnp.asarray(q)))
    fit = sc.fit_scales(zoo, z, groups, q_init=q + rng.normal(0, 0.05, q.shape), reg=1e-12)
    assert fit.group_factors["upper"] == pytest.approx(1.12, abs=1e-6)
    assert fit.group_factors["leg"] == pytest.approx(0.9, abs=1e-6)
    assert fit.rms < 1e-6
    np.testing.assert_allclose(fit.factors, sc.factors_array(zoo, truth), atol=1e-6)


def test_place_markers_moves_only_free_markers(case):
    """MarkerPlacer rules on the scaled model: markers the trial lacks are deleted; free
    markers land on the averaged static positions at the solved pose; fixed ones keep their
    offsets; the static pose is solved (here a random pose of the truth model)."""
    from simspine_jax.ik_setup import IKSetup
    from simspine_jax.io import TRCData
    from simspine_jax.io.scale_setup import MarkerPlacement, ScaleSetup

    tree, t_truth = case["res"].tree, case["t_truth"]
    rng = np.random.default_rng(SEED + 2)
    idx = t_truth.topology.indep_coord
    lo, hi = np.asarray(t_truth.coord_range)[idx].T
    q = np.clip(np.asarray(t_truth.coord_default)[idx] + rng.normal(0, 0.1, idx.size), lo, hi)
    z = np.asarray(ssj.marker_positions(t_truth, jnp.asarray(q)))
    names = list(tree.marker_names)
    pos = z[None] + rng.normal(0, 5e-4, (5, len(names), 3))
    pos[:, names.index("Neck_03")] = np.nan  # missing throughout: not moved
    trial = TRCData(tuple(names), np.arange(5) / 100, np.arange(1, 6), pos, 100.0, 100.0, "m")
    ik = IKSetup(marker_weights={n: 1.0 for n in names}, coordinate_tasks=())
    placer = MarkerPlacement(True, ik, None, None, (0.0, 0.04), -1.0, None, None, None)
    setup = ScaleSetup("t", None, None, True, (), (), (), None, None, None, None, placer)
    free = ("LWrist", "RHeel", "Spine_03", "Neck_03")
    fixed = {n: n not in free for n in names}
    pl = sc.place_markers(tree, setup, trial, fixed)
    assert pl.deleted == () and pl.moved == ("LWrist", "RHeel", "Spine_03")
    avg = pos.mean(0)
    mk = np.asarray(ssj.marker_positions(pl.tree, jnp.asarray(pl.q)))
    moved = [names.index(n) for n in pl.moved]
    np.testing.assert_allclose(mk[moved], avg[moved], atol=1e-12)
    keep = [i for i, n in enumerate(names) if n not in pl.moved]
    np.testing.assert_array_equal(
        np.asarray(pl.tree.marker_offset)[keep], np.asarray(tree.marker_offset)[keep]
    )
    assert pl.rms_after < pl.rms_before < 0.03


def test_cli_scale(case, capsys):
    """``simspine-jax scale`` writes the scaled .osim, its tree and a JSON summary; a bad setup
    is a one-line error with exit code 2."""
    import json

    from simspine_jax.cli import main

    tmp = case["tmp"]
    out = tmp / "cli_scaled.osim"
    rc = main(["scale", "--osim", str(ssj.default_osim_path()), "--static", str(case["trc"]),
               "--setup", str(case["setup"]), "--markers", str(ssj.default_markers_path()),
               "-o", str(out), "--mass", "70"])  # fmt: skip
    assert rc == 0 and out.is_file() and out.with_suffix(".npz").is_file()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mode"] == "measurements"
    assert summary["factors"]["femur_r"] == list(case["res"].factors.as_dict()["femur_r"])
    np.testing.assert_array_equal(
        np.asarray(ssj.load_tree(out.with_suffix(".npz")).marker_offset),
        np.asarray(case["res"].tree.marker_offset),
    )
    bad = tmp / "bad_setup.xml"
    bad.write_text(case["setup"].read_text().replace("<scaling_order>", "<scaling_order>x "))
    rc = main(["scale", "--osim", str(ssj.default_osim_path()), "--static", str(case["trc"]),
               "--setup", str(bad), "-o", str(tmp / "never.osim")])  # fmt: skip
    assert rc == 2 and "scaling_order" in capsys.readouterr().err


def test_groups_follow_measurement_order():
    """A body axis listed by two measurements belongs to the later one (OpenSim keeps the
    later factor); a measurement left with nothing forms no group."""
    from simspine_jax.io.scale_setup import Measurement, ScaleSetup

    ms = (
        Measurement("a", True, (("p", "q"),), {"b1": (0, 1, 2), "b2": (1,)}),
        Measurement("b", True, (("p", "q"),), {"b1": (1,)}),
        Measurement("c", True, (("p", "q"),), {"b2": (1,)}),
        Measurement("off", False, (("p", "q"),), {"b3": (0,)}),
    )
    su = ScaleSetup("s", None, None, True, ("measurements",), ms, (), None, None, None, None, None)
    g = {x.name: x.bodies for x in sc.groups_from_setup(su)}
    assert g == {"a": {"b1": (0, 2)}, "b": {"b1": (1,)}, "c": {"b2": (1,)}}
