"""Structure checks of the SimSpine 37-keypoint definition."""

from __future__ import annotations

import numpy as np
import pytest

from simspine_jax import keypoints as kp

HALPE26 = (
    "Nose",
    "LEye",
    "REye",
    "LEar",
    "REar",
    "LShoulder",
    "RShoulder",
    "LElbow",
    "RElbow",
    "LWrist",
    "RWrist",
    "LHip",
    "RHip",
    "LKnee",
    "RKnee",
    "LAnkle",
    "RAnkle",
    "Head",
    "Neck",
    "Hip",
    "LBigToe",
    "RBigToe",
    "LSmallToe",
    "RSmallToe",
    "LHeel",
    "RHeel",
)


def test_37_unique_names_halpe26_first():
    assert len(kp.SIMSPINE37) == 37
    assert len(set(kp.SIMSPINE37)) == 37
    assert kp.SIMSPINE37[:26] == HALPE26
    assert kp.SIMSPINE37[26:] == (
        "Spine_01",
        "Spine_02",
        "Spine_03",
        "Spine_04",
        "Spine_05",
        "LLatissimus",
        "RLatissimus",
        "LClavicle",
        "RClavicle",
        "Neck_02",
        "Neck_03",
    )


def test_every_keypoint_has_a_defined_parent():
    assert set(kp.SIMSPINE37_PARENT) == set(kp.SIMSPINE37)
    for name, parent in kp.SIMSPINE37_PARENT.items():
        assert parent is None or parent in kp.SIMSPINE37, name
        assert parent != name


def test_parents_form_a_tree_rooted_at_hip():
    roots = [n for n, p in kp.SIMSPINE37_PARENT.items() if p is None]
    assert roots == ["Hip"]
    for name in kp.SIMSPINE37:  # walking up from anywhere reaches Hip without a cycle
        seen, cur = set(), name
        while cur is not None:
            assert cur not in seen, f"cycle through {cur}"
            seen.add(cur)
            cur = kp.SIMSPINE37_PARENT[cur]
        assert "Hip" in seen


def test_parent_indices_match_names():
    par = kp.parent_indices()
    assert par.shape == (37,) and np.issubdtype(par.dtype, np.integer)
    assert (par == -1).sum() == 1 and par[kp.SIMSPINE37.index("Hip")] == -1
    for i, name in enumerate(kp.SIMSPINE37):
        p = kp.SIMSPINE37_PARENT[name]
        assert par[i] == (-1 if p is None else kp.SIMSPINE37.index(p))
    # a topological order exists: repeatedly visiting parents terminates within 37 steps
    depth = np.zeros(37, int)
    for i in range(37):
        j = i
        while par[j] >= 0:
            j = par[j]
            depth[i] += 1
            assert depth[i] <= 36


def test_specified_parents():
    P = kp.SIMSPINE37_PARENT
    chain = ["Hip", "Spine_01", "Spine_02", "Spine_03", "Spine_04", "Spine_05", "Neck"]
    for child, parent in zip(chain[1:], chain[:-1], strict=True):
        assert P[child] == parent
    assert P["Neck_02"] == "Neck" and P["Neck_03"] == "Neck_02" and P["Head"] == "Neck_03"
    assert P["Nose"] == "Head" and P["LEar"] == "LEye" and P["REar"] == "REye"
    assert P["LShoulder"] == "LClavicle" and P["RClavicle"] == "Spine_05"
    assert P["LLatissimus"] == "Spine_04" and P["RLatissimus"] == "Spine_04"
    assert P["LSmallToe"] == "LBigToe" and P["RHeel"] == "RAnkle"


def test_bones():
    b = kp.bones()
    assert len(b) == 36
    assert all(kp.SIMSPINE37_PARENT[c] == p for c, p in b)
    assert [c for c, _ in b] == [n for n in kp.SIMSPINE37 if n != "Hip"]


def test_spine15_subset_and_indices():
    assert len(kp.SPINE15) == 15 and len(set(kp.SPINE15)) == 15
    assert set(kp.SPINE15) <= set(kp.SIMSPINE37)
    idx = kp.spine15_indices()
    assert [kp.SIMSPINE37[i] for i in idx] == list(kp.SPINE15)


def test_regions_partition_spine15():
    assert set(kp.REGIONS) == {"lumbar", "thoracic", "cervical"}
    members = [n for names in kp.REGIONS.values() for n in names]
    assert len(members) == len(set(members)) == 15
    assert set(members) == set(kp.SPINE15)
    assert kp.REGIONS["lumbar"] == ("Hip", "Spine_01", "Spine_02", "Spine_03")


def test_keypoint_body_covers_all():
    assert set(kp.KEYPOINT_BODY) == set(kp.SIMSPINE37)
    assert kp.KEYPOINT_BODY["Spine_01"] == "lumbar5"
    assert kp.KEYPOINT_BODY["Spine_02"] == "lumbar3"
    assert kp.KEYPOINT_BODY["Spine_03"] == "lumbar1"
    assert kp.KEYPOINT_BODY["Hip"] == "pelvis"
    assert kp.KEYPOINT_BODY["Head"] == kp.KEYPOINT_BODY["Nose"] == "head"
    for n in ("Spine_04", "Spine_05", "Neck", "Neck_02", "Neck_03", "LClavicle", "RLatissimus"):
        assert kp.KEYPOINT_BODY[n] == "torso"


def test_index_of():
    assert kp.index_of("Hip") == 19
    with pytest.raises(KeyError, match="Spine_99"):
        kp.index_of("Spine_99")


def test_light_import():
    import subprocess
    import sys

    code = (
        "import sys, importlib.util, pathlib;"
        f"spec = importlib.util.spec_from_file_location('kp', pathlib.Path({kp.__file__!r}));"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "bad = [x for x in ('jax', 'opensim') if x in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_marker_file_matches_definition():
    """The bundled simspine37_markers.xml holds the 37 keypoints, in order, on KEYPOINT_BODY."""
    import xml.etree.ElementTree as ET

    from simspine_jax import default_markers_path

    path = default_markers_path()
    markers = list(ET.parse(path).getroot().iter("Marker"))
    assert [m.get("name") for m in markers] == list(kp.SIMSPINE37)
    for m in markers:
        name = m.get("name")
        assert m.findtext("socket_parent_frame") == f"/bodyset/{kp.KEYPOINT_BODY[name]}", name
        xyz = np.array(m.findtext("location").split(), float)
        assert xyz.shape == (3,) and np.all(np.abs(xyz) < 1.0), name
        if name[1:] in ("Eye", "Ear", "Shoulder", "Hip", "Clavicle", "Latissimus"):
            # on the head / torso / pelvis: left at z < 0, right at z > 0 (limb and foot markers
            # sit on their own segments, where the sign says nothing about the side)
            assert (xyz[2] < 0) == (name[0] == "L"), name
