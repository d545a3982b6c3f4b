"""Golden comparisons of our export + JAX forward kinematics against OpenSim 4.6 itself.

For each model (the default SimSpine model ``Model_Pose2Sim_muscles_flex.osim``, the simple
Pose2Sim model, with Halpe26 and Coco17 markers, and both models scaled by OpenSim's ScaleTool
with non-uniform per-body factors) and 200 random poses plus the range ends and the defaults,
every marker position and every body transform must equal OpenSim's, in float64 and float32.

The OpenSim reference sets the independent coordinates and computes the dependent ones with
OpenSim's own coupler functions (exact); ``Model.assemble`` (an iterative solve that also moves
the independent coordinates by about its accuracy, and takes ~0.1 s a frame) is checked on a
subset. Each model is loaded once per module (module-scoped fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opensim")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from simspine_jax.errors import ModelError  # noqa: E402
from simspine_jax.export import read_osim  # noqa: E402
from simspine_jax.fk import forward_kinematics, full_coordinates  # noqa: E402
from simspine_jax.model import tree_from_export  # noqa: E402
from simspine_jax.osim_bridge import (  # noqa: E402
    OpenSimReference,
    pose2sim_setup_dir,
    scale_model,
    strip_to_kinematics,
)

pytestmark = pytest.mark.opensim

N_POSES = 200  # random poses; the range ends and the default pose are added to them
N_ASSEMBLED = 20  # poses also solved with OpenSim's assembler (slow: ~0.1 s each)
TOL64 = 1e-6  # metres, and rotation-matrix entries
TOL32 = 1e-4
TOL_COUPLER = 1e-12  # our coupler map vs OpenSim's coupler functions (radians / metres)

FLEX = "Model_Pose2Sim_muscles_flex.osim"
SIMPLE = "Model_Pose2Sim_simple.osim"
HALPE26 = "Markers_Halpe26.xml"
COCO17 = "Markers_Coco17.xml"

# Non-uniform per-body factors for OpenSim's ScaleTool (bodies missing from a model are skipped).
SCALE_FACTORS = {
    "pelvis": (1.02, 0.98, 1.04),
    "femur_r": (1.1, 1.12, 1.08),
    "femur_l": 1.1,
    "tibia_r": 0.93,
    "tibia_l": (0.93, 0.95, 0.91),
    "torso": (1.05, 0.97, 1.02),
    "humerus_r": (0.95, 1.04, 0.99),
    "head": 1.03,
    **{f"lumbar{i}": 1.08 for i in range(1, 6)},
}

# (case id, model file, marker file, scaled by OpenSim's ScaleTool)
CASES = [
    ("flex-halpe26", FLEX, HALPE26, False),
    ("flex-coco17", FLEX, COCO17, False),
    ("simple-halpe26", SIMPLE, HALPE26, False),
    ("simple-coco17", SIMPLE, COCO17, False),
    ("flex-scaled-halpe26", FLEX, HALPE26, True),
    ("simple-scaled-halpe26", SIMPLE, HALPE26, True),
]


def _setup_dir() -> Path:
    try:
        return pose2sim_setup_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _random_poses(ref: OpenSimReference, n: int, seed: int) -> np.ndarray:
    """Independent coordinates uniformly inside their ranges, translations clipped to +-1 m and
    rotations to +-pi; then one pose at all lower ends, one at all upper ends, one at the
    defaults. Shape: (n + 3, n_indep), OpenSim's independent order."""
    idx = ref.indep_index
    lo, hi = ref.coord_range[idx].T
    lim = np.array([1.0 if ref.motion_types[i] == "translational" else np.pi for i in idx])
    lo, hi = np.maximum(lo, -lim), np.minimum(hi, lim)
    q = np.random.default_rng(seed).uniform(lo, hi, size=(n, len(idx)))
    return np.concatenate([q, lo[None], hi[None], ref.q_initial[idx][None]])


def _random_full(ref: OpenSimReference, n: int, seed: int) -> np.ndarray:
    """Full coordinate vectors with *every* unlocked coordinate random (couplers violated)."""
    lo, hi = ref.coord_range.T
    lim = np.array([1.0 if m == "translational" else np.pi for m in ref.motion_types])
    q = np.random.default_rng(seed).uniform(np.maximum(lo, -lim), np.minimum(hi, lim), (n, len(lo)))
    q[:, ref.locked] = ref.q_initial[ref.locked]
    return q


def _assert_close(what: str, ours, ref, names, tol: float, report: dict | None = None) -> float:
    """max |ours - ref| <= tol; on failure name the worst item and pose. Shapes (N, n, ...)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != OpenSim's {ref.shape}"
    per = np.abs(ours - ref).reshape(ours.shape[0], ours.shape[1], -1).max(-1)
    worst = float(per.max(initial=0.0))
    if report is not None:
        report[what] = worst
    if per.size:
        pose, item = np.unravel_index(np.argmax(per), per.shape)
        assert worst <= tol, (
            f"{what}: max error {worst:.3e} > {tol:g} at '{names[item]}', pose {pose} "
            f"(ours {ours[pose, item].ravel()}, OpenSim {ref[pose, item].ravel()})"
        )
    return worst


@dataclass
class Case:
    name: str
    osim_path: Path
    markers: Path | None  # marker file given to both sides (None: the model's own markers)
    ex: object
    ref: OpenSimReference
    q_ref: np.ndarray  # (N, n_indep) in OpenSim's independent order
    golden: dict  # OpenSim FK at q_ref, couplers from OpenSim's functions
    cache: dict = field(default_factory=dict)

    @cached_property
    def tree64(self):
        return tree_from_export(self.ex, dtype=jnp.float64)

    @cached_property
    def tree32(self):
        return tree_from_export(self.ex, dtype=jnp.float32)

    @cached_property
    def q(self) -> np.ndarray:
        """q_ref in our independent order."""
        col = [self.ref.independent_names.index(n) for n in self.tree64.independent_names]
        return self.q_ref[:, col]

    @cached_property
    def body_idx(self) -> list[int]:
        return [self.tree64.body_names.index(b) for b in self.ref.body_names]

    @cached_property
    def marker_idx(self) -> list[int]:
        return [self.tree64.marker_names.index(m) for m in self.ref.marker_names]

    def fk(self, dtype: str, q=None, full: bool = False) -> dict[str, np.ndarray]:
        """Our FK as float64 numpy in OpenSim's body and marker orders (cached per dtype)."""
        key = (dtype, full)
        if q is not None or key not in self.cache:
            tree = self.tree64 if dtype == "float64" else self.tree32
            res = forward_kinematics(tree, self.q if q is None else q, full=full)
            jax.block_until_ready(res)
            assert res.markers.dtype == jnp.dtype(dtype)
            out = dict(
                body_R=np.asarray(res.R_world, np.float64)[:, self.body_idx],
                body_p=np.asarray(res.p_world, np.float64)[:, self.body_idx],
                markers=np.asarray(res.markers, np.float64)[:, self.marker_idx],
            )
            if q is not None:
                return out
            self.cache[key] = out
        return self.cache[key]


def _scaled_model(model: str, markers: str, tmp: Path) -> Path:
    S = _setup_dir()
    bodies = set(read_osim(S / model).meta["bodies"])
    factors = {b: f for b, f in SCALE_FACTORS.items() if b in bodies}
    out = tmp / f"{Path(model).stem}_scaled.osim"
    return scale_model(S / model, out, factors, S / markers, setup_path=tmp / "scale_setup.xml")


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request, tmp_path_factory) -> Case:
    name, model, markers, scaled = request.param
    S = _setup_dir()
    if scaled:
        # The scaled model carries the (scaled) markers of the marker file.
        osim_path = _scaled_model(model, markers, tmp_path_factory.mktemp(name))
        marker_path = None
    else:
        osim_path, marker_path = S / model, S / markers
    ex = read_osim(osim_path, marker_path)
    ref = OpenSimReference(osim_path, marker_path)
    q_ref = _random_poses(ref, N_POSES, seed=len(name))
    golden = ref.fk(q_ref, assemble=False)
    return Case(name, osim_path, marker_path, ex, ref, q_ref, golden)


# ----------------------------------------------------------------------------- structure
def test_names_and_orders(case):
    t, r = case.tree64, case.ref
    assert t.coordinate_names == r.coordinate_names
    assert t.independent_names == r.independent_names
    assert t.body_names[0] == "ground"
    assert sorted(t.body_names[1:]) == sorted(r.body_names)
    assert t.marker_names == r.marker_names
    assert len(r.marker_names) > 0


def test_coordinate_motion_types(case):
    ours = [c["motion_type"] for c in case.ex.meta["coordinates"]]
    bad = [
        (n, a, b)
        for n, a, b in zip(case.ref.coordinate_names, ours, case.ref.motion_types, strict=True)
        if a != b
    ]
    assert not bad, f"motion type differs from OpenSim's (name, ours, OpenSim): {bad}"


# ----------------------------------------------------------------------------- couplers
def test_coupler_map_matches_opensim_functions(case):
    """independent -> full equals OpenSim's coupler functions, and OpenSim finds no
    constraint violation at our full coordinates."""
    qf = np.asarray(full_coordinates(case.tree64, case.q))
    names = case.ref.coordinate_names
    _assert_close("q_full", qf[:, :, None], case.golden["q_full"][:, :, None], names, TOL_COUPLER)
    err = case.ref.fk(qf, full=True, bodies=False, markers=False)["constraint_error"]
    assert np.abs(err).max(initial=0.0) <= TOL_COUPLER
    n_dep = len(case.tree64.topology.dep_coord)
    if case.name.startswith("flex"):
        assert n_dep == 20 and err.shape[1] == 22  # 20 couplers + 2 locks in SimSpine


def test_coupler_map_matches_opensim_assembly(case):
    """Model.assemble from the same independent values gives our full coordinates and FK (to
    the assembler's accuracy: it moves the independent coordinates too)."""
    sub = slice(0, N_ASSEMBLED)
    asm = case.ref.fk(case.q_ref[sub], assemble=True)
    qf = np.asarray(full_coordinates(case.tree64, case.q[sub]))
    names = case.ref.coordinate_names
    e = _assert_close(
        "q_full vs assembled", qf[:, :, None], asm["q_full"][:, :, None], names, TOL64
    )
    ours = case.fk("float64")
    _assert_close(
        "markers vs assembled", ours["markers"][sub], asm["markers"], case.ref.marker_names, TOL64
    )
    _assert_close(
        "body_p vs assembled", ours["body_p"][sub], asm["body_p"], case.ref.body_names, TOL64
    )
    print(f"[fk-opensim] {case.name}: q_full vs Model.assemble max {e:.2e}")


# ----------------------------------------------------------------------------- FK
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fk_matches_opensim(case, dtype):
    tol = TOL64 if dtype == "float64" else TOL32
    ours, gold = case.fk(dtype), case.golden
    rep: dict = {}
    _assert_close("markers", ours["markers"], gold["markers"], case.ref.marker_names, tol, rep)
    _assert_close("body_p", ours["body_p"], gold["body_p"], case.ref.body_names, tol, rep)
    _assert_close("body_R", ours["body_R"], gold["body_R"], case.ref.body_names, tol, rep)
    assert case.golden["markers"].shape[0] == N_POSES + 3
    print(f"[fk-opensim] {case.name} {dtype}: " + ", ".join(f"{k} {v:.2e}" for k, v in rep.items()))


def test_fk_full_coordinates_matches_opensim(case):
    """full=True with every unlocked coordinate random (couplers violated): joint kinematics
    of the dependent coordinates, without the coupler map."""
    q = _random_full(case.ref, 64, seed=7)
    gold = case.ref.fk(q, full=True)
    np.testing.assert_array_equal(gold["q_full"], q)  # OpenSim took every value as given
    ours = case.fk("float64", q=q, full=True)
    rep: dict = {}
    for k, names in (("markers", case.ref.marker_names), ("body_p", case.ref.body_names)):
        _assert_close(k, ours[k], gold[k], names, TOL64, rep)
    _assert_close("body_R", ours["body_R"], gold["body_R"], case.ref.body_names, TOL64, rep)
    print(
        f"[fk-opensim] {case.name} full=True: " + ", ".join(f"{k} {v:.2e}" for k, v in rep.items())
    )


def test_scaled_model_differs_from_generic(case):
    """The scaled cases really are scaled: the generic tree misses the scaled markers."""
    if case.markers is not None:
        pytest.skip("not a scaled case")
    S = _setup_dir()
    model = FLEX if case.name.startswith("flex") else SIMPLE
    generic = tree_from_export(read_osim(S / model, S / HALPE26))
    res = forward_kinematics(generic, case.q)
    mi = [generic.marker_names.index(m) for m in case.ref.marker_names]
    diff = np.abs(np.asarray(res.markers)[:, mi] - case.golden["markers"]).max()
    assert diff > 0.01, f"scaled model's markers within {diff:.2e} m of the generic model's"
    # Mesh scale factors (which the generic models already have) are multiplied by ScaleTool.
    i, j = case.tree64.body_names.index("torso"), generic.body_names.index("torso")
    ratio = np.asarray(case.tree64.body_scale)[i] / np.asarray(generic.body_scale)[j]
    np.testing.assert_allclose(ratio, SCALE_FACTORS["torso"], rtol=1e-12)


# ----------------------------------------------------------------------------- bridge tools
def test_strip_to_kinematics(tmp_path):
    S = _setup_dir()
    out = tmp_path / "stripped.osim"
    removed = strip_to_kinematics(S / FLEX, out)
    assert removed["ForceSet"] > 300 and removed["ContactGeometrySet"] > 0
    assert out.stat().st_size < (S / FLEX).stat().st_size / 5
    a, b = read_osim(S / FLEX, S / HALPE26), read_osim(out, S / HALPE26)
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    for k in ("bodies", "coordinates", "independent", "couplers", "markers", "joints"):
        assert a.meta[k] == b.meta[k], k
    ra, rb = OpenSimReference(S / FLEX, S / HALPE26), OpenSimReference(out, S / HALPE26)
    assert rb.model.getForceSet().getSize() == 0
    q = _random_poses(ra, 10, seed=3)
    ga, gb = ra.fk(q, assemble=False), rb.fk(q, assemble=False)
    for k in ("q_full", "markers", "body_p", "body_R"):
        np.testing.assert_allclose(gb[k], ga[k], rtol=0, atol=1e-14, err_msg=k)


def test_strip_rejects_non_model(tmp_path):
    bad = tmp_path / "bad.osim"
    bad.write_text("<OpenSimDocument Version='40000'><Nothing/></OpenSimDocument>")
    with pytest.raises(ModelError, match="no <Model>"):
        strip_to_kinematics(bad, tmp_path / "out.osim", verify=False)
    assert not (tmp_path / "out.osim").exists()


def test_scale_model_rejects_unknown_body(tmp_path):
    S = _setup_dir()
    with pytest.raises(ModelError, match="unknown bodies"):
        scale_model(S / SIMPLE, tmp_path / "x.osim", {"no_such_body": 1.1})


def test_reference_rejects_wrong_shape():
    S = _setup_dir()
    ref = OpenSimReference(S / SIMPLE)
    with pytest.raises(ValueError, match="expected q of shape"):
        ref.fk(np.zeros((2, ref.n_indep + 1)))


def test_pose2sim_setup_dir_message(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps pose2sim==0\.10\.49"):
        pose2sim_setup_dir()


def test_bridge_import_is_lazy():
    """``import simspine_jax.osim_bridge`` must not import opensim."""
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    code = "import sys, simspine_jax, simspine_jax.osim_bridge; print('opensim' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
