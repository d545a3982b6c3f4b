"""OpenPose JSON reading: camera folders, frame offsets, subject choice, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simspine_jax.errors import InputError, SimSpineWarning
from simspine_jax.io.calibration import Camera, read_calibration
from simspine_jax.io.openpose import (
    Keypoints2D,
    match_camera_dirs,
    read_openpose_frame,
    read_pose_dir,
    select_person,
)
from simspine_jax.skeletons import SKELETONS, get_skeleton

DEMO = Path(__file__).parent / "data" / "pose2sim_demo"


@pytest.fixture(scope="module")
def cams():
    return read_calibration(DEMO / "Calib_qualisys.toml")


def _copy_demo(tmp: Path, rename=None) -> Path:
    dst = tmp / "pose"
    for d in sorted((DEMO / "pose").iterdir()):
        name = rename(d.name) if rename else d.name
        shutil.copytree(d, dst / name)
    return dst


def test_skeletons():
    b = get_skeleton("body_25b")
    assert b.n_keypoints == 25 and b.n_markers == 21 and b.marker_index[13] == 17
    assert b.marker_names[13] == "Neck"
    assert get_skeleton("SpinePose") is SKELETONS["SIMSPINE37"]
    assert get_skeleton("SIMSPINE37").marker_names[26] == "Spine_01"
    h = get_skeleton("HALPE_26")
    assert dict(zip(h.marker_names, h.marker_index, strict=True))["Hip"] == 19
    assert get_skeleton("COCO_17").n_markers == 13
    with pytest.raises(InputError, match="unknown skeleton"):
        get_skeleton("BODY_99")
    with pytest.raises(InputError, match="26 keypoints"):
        h.select(np.zeros((3, 25, 3)))


def test_read_frame_and_bad_files(tmp_path):
    f = DEMO / "pose" / "cam1_json" / "cam01.0000.json"
    people = read_openpose_frame(f, 25)
    assert people.shape[1:] == (25, 3) and len(people) >= 2
    raw = json.loads(f.read_text())["people"][1]["pose_keypoints_2d"]
    np.testing.assert_array_equal(people[1].ravel(), raw)
    with pytest.raises(InputError, match="expected 78") as e:
        read_openpose_frame(f, 26)
    assert e.value.path == str(f) and e.value.field == "pose_keypoints_2d"
    bad = tmp_path / "b.json"
    bad.write_text('{"people": [{"pose_keypoints_2d": []}, {"pose_keypoints_2d": [1, 2, 0.5]}]}')
    assert read_openpose_frame(bad, 1).tolist() == [[[1.0, 2.0, 0.5]]]
    bad.write_text('{"people": [{"pose_keypoints_2d": [1, "a", 0.5]}]}')
    with pytest.raises(InputError, match="non-numeric"):
        read_openpose_frame(bad, 1)
    bad.write_text('{"people": [')
    with pytest.raises(InputError, match="not valid JSON"):
        read_openpose_frame(bad, 25)
    bad.write_text('{"version": 1.3}')
    with pytest.raises(InputError, match="no 'people'"):
        read_openpose_frame(bad, 25)


def test_camera_matching(tmp_path, cams):
    names = [c.name for c in cams]
    dirs, rule = match_camera_dirs(DEMO / "pose", names)
    assert rule == "number" and [d.name for d in dirs] == [f"cam{i}_json" for i in (1, 2, 3, 4)]
    by_name = _copy_demo(tmp_path / "a", lambda n: f"cam_0{n[3]}_json")
    assert match_camera_dirs(by_name, names)[1] == "name"
    by_order = _copy_demo(tmp_path / "b", lambda n: "abcd"[int(n[3]) - 1])
    dirs, rule = match_camera_dirs(by_order, names)
    assert rule == "order" and [d.name for d in dirs] == list("abcd")
    three = _copy_demo(tmp_path / "c")
    shutil.rmtree(three / "cam4_json")
    with pytest.raises(InputError, match="cannot match.*cam_04"):
        match_camera_dirs(three, names)


def test_demo_subject_is_consistent(cams):
    kp = read_pose_dir(DEMO / "pose", cams, "BODY_25B")
    assert kp.uv.shape == (6, 4, 21, 2) and kp.confidence.shape == (6, 4, 21)
    assert kp.report["camera_match"] == "number" and kp.report["max_people_per_view"] >= 2
    stats = kp.report["person_choice"]
    assert stats["searched"] == 1 and stats["tracked"] == 5
    # the subject chosen in the crowded cameras 1 and 2 is the one cameras 3 and 4 (one person
    # each) see: a DLT from cameras 3 + 4 reprojects near it, far from the bystanders
    from simspine_jax.io.openpose import _dlt_px, _reproj

    for f in range(6):
        w = np.where(kp.confidence[f, 2:] >= 0.3, kp.confidence[f, 2:], 0)
        X = _dlt_px(cams[2:], kp.uv[f, 2:], w)
        proj = _reproj(cams, X)
        for c in (0, 1):
            ok = (kp.confidence[f, c] >= 0.3) & np.isfinite(proj[c, :, 0])
            err = np.linalg.norm(kp.uv[f, c, ok] - proj[c, ok], axis=-1)
            assert np.median(err) < 30, (f, c, np.median(err))


def test_frame_offsets_and_empty_camera(tmp_path, cams):
    ref = read_pose_dir(DEMO / "pose", cams, "BODY_25B")
    pose = _copy_demo(tmp_path)
    # camera 2's files numbered 3 later: offset 3 puts them back
    for f in sorted((pose / "cam2_json").iterdir(), reverse=True):
        n = int(f.name.split(".")[1])
        f.rename(f.with_name(f"cam02.{n + 3:04d}.json"))
    kp = read_pose_dir(pose, cams, "BODY_25B", frame_offsets={"cam_02": 3})
    np.testing.assert_array_equal(kp.frames, ref.frames)
    np.testing.assert_array_equal(kp.uv, ref.uv)
    kp = read_pose_dir(pose, cams, "BODY_25B", frame_offsets=[0, 3, 0, 0])
    np.testing.assert_array_equal(kp.uv, ref.uv)
    # without the offset, the frames span 0..8 and camera 2 is missing in frames 0-2
    kp = read_pose_dir(pose, cams, "BODY_25B")
    assert kp.uv.shape[0] == 9 and np.isnan(kp.uv[:3, 1]).all()
    with pytest.raises(InputError, match="unknown cameras"):
        read_pose_dir(pose, cams, "BODY_25B", frame_offsets={"cam_9": 1})
    # a camera whose files have no person: a warning and a reported skip
    for f in (pose / "cam3_json").iterdir():
        f.write_text(json.dumps({"version": 1.3, "people": []}))
    with pytest.warns(SimSpineWarning, match="no person detected in camera.*cam_03"):
        kp = read_pose_dir(pose, cams, "BODY_25B", frame_offsets=[0, 3, 0, 0])
    assert kp.report["cameras_without_detections"] == ["cam_03"]
    assert np.isnan(kp.uv[:, 2]).all() and (kp.confidence[:, 2] == 0).all()
    # a camera folder without JSON files is an error naming the folder
    for f in (pose / "cam4_json").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="cannot match"):
        read_pose_dir(pose, cams, "BODY_25B")


def _ring(n: int) -> list[Camera]:
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        C = np.array([4 * np.cos(a), 4 * np.sin(a), 1.2])
        z = np.array([-np.cos(a), -np.sin(a), 0.0])
        x = np.cross(z, [0, 0, 1.0])
        R = np.stack([x, np.cross(z, x), z])
        K = np.array([[1400.0, 0, 960], [0, 1400.0, 540], [0, 0, 1]])
        out.append(Camera(f"c{i}", (1920.0, 1080.0), K, np.zeros(5), R, -R @ C))
    return out


def test_two_people_never_swapped():
    """Two people walk past each other; each camera lists them in a random order per frame.
    The chosen identity must be the same in every camera and every frame."""
    rng = np.random.default_rng(4)
    cams = _ring(3)
    T, K = 30, 6
    body = rng.uniform(-0.2, 0.2, (K, 3)) + [0, 0, 1.0]
    path_a = np.linspace([-1.0, -0.3, 0], [1.0, -0.3, 0], T)
    path_b = np.linspace([1.0, 0.3, 0], [-1.0, 0.3, 0], T)
    people = np.full((T, 3, 2, K, 3), np.nan)
    truth = np.zeros((T, 3), int)  # slot of person A
    for t in range(T):
        for c, cam in enumerate(cams):
            order = rng.permutation(2)
            for slot, who in enumerate(order):
                X = body + (path_a if who == 0 else path_b)[t]
                people[t, c, slot, :, :2] = cam.project(X) + rng.normal(0, 1.0, (K, 2))
                people[t, c, slot, :, 2] = 0.9
                if who == 0:
                    truth[t, c] = slot
    chosen, stats = select_person(people, cams)
    assert stats["searched"] >= 1 and stats["tracked"] + stats["searched"] == T
    picked_a = np.isclose(
        chosen[..., 0, 0], people[np.arange(T)[:, None], np.arange(3), truth][..., 0, 0]
    )
    assert picked_a.all() or (~picked_a).all()


def test_from_arrays():
    uv = np.zeros((2, 3, 4, 2))
    conf = np.ones((2, 3, 4))
    uv[0, 1, 2] = np.nan
    kp = Keypoints2D.from_arrays(uv, conf, camera_names=["a", "b", "c"])
    assert kp.confidence[0, 1, 2] == 0 and kp.marker_names[3] == "kp3"
    with pytest.raises(InputError, match="confidence must have shape"):
        Keypoints2D.from_arrays(uv, conf[:, :2])


def test_skeletons_match_installed_pose2sim(monkeypatch):
    """Our layouts are Pose2Sim's (its skeletons.py from the installed wheel, read with a
    stand-in for anytree, which the wheel was installed without)."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("Pose2Sim")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("pose2sim is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "skeletons.py"
    if not path.exists():
        pytest.skip("pose2sim has no skeletons.py")

    class Node:
        def __init__(self, name, id=None, children=()):
            self.name, self.id, self.children = name, id, list(children)

    fake = types.ModuleType("anytree")
    fake.Node = Node
    fake.RenderTree = object
    importer = types.ModuleType("anytree.importer")
    importer.DictImporter = object
    monkeypatch.setitem(sys.modules, "anytree", fake)
    monkeypatch.setitem(sys.modules, "anytree.importer", importer)
    ns: dict = {"__name__": "pose2sim_skeletons"}
    exec(compile(path.read_text(), str(path), "exec"), ns)

    def walk(n):
        yield n
        for c in n.children:
            yield from walk(c)

    for name, sk in SKELETONS.items():
        if name == "SIMSPINE37":
            continue
        theirs = {(n.id, n.name) for n in walk(ns[name]) if n.id is not None}
        if name == "BLAZEPOSE":  # Pose2Sim's tree spells 'Lknee'; its marker set 'LKnee'
            theirs = {(i, "LKnee" if n == "Lknee" else n) for i, n in theirs}
        assert set(zip(sk.marker_index, sk.marker_names, strict=True)) == theirs, name


def test_cli_frame_offsets_argument():
    import argparse

    from simspine_jax.commands.frontend import _offsets

    assert _offsets("2,0,-1") == [2, 0, -1]
    assert _offsets("cam_01=2, cam_03=-1") == {"cam_01": 2, "cam_03": -1}
    with pytest.raises(argparse.ArgumentTypeError):
        _offsets("2,x")


def test_gate_empties_a_view_with_only_a_bystander():
    """Cameras 1 and 2 see the subject and a bystander; camera 0 sees only a third person
    far away: it is left empty (the gate), the subject is kept in the other two."""
    rng = np.random.default_rng(5)
    cams = _ring(3)
    T, K = 5, 6
    body = rng.uniform(-0.2, 0.2, (K, 3)) + [0, 0, 1.0]
    people = np.full((T, 3, 2, K, 3), np.nan)
    for t in range(T):
        for c, cam in enumerate(cams):
            who = [body + [2.0, 2.0, 0]] if c == 0 else [body, body + [0.0, 1.2, 0]]
            for slot, X in enumerate(who):
                people[t, c, slot, :, :2] = cam.project(X) + rng.normal(0, 0.5, (K, 2))
                people[t, c, slot, :, 2] = 0.9
    chosen, stats = select_person(people, cams)
    assert stats["no_person_views"] == T
    assert np.isnan(chosen[:, 0, :, :2]).all() and (chosen[:, 0, :, 2] == 0).all()
    # in cameras 1 and 2 the same person is chosen in every frame
    for c in (1, 2):
        first = chosen[0, c, 0, 0]
        slot = 0 if np.isclose(first, people[0, c, 0, 0, 0]) else 1
        np.testing.assert_array_equal(chosen[:, c, :, :2], people[:, c, slot, :, :2])
