"""Every built-in OpenSim joint type our exporter rewrites as a CustomJoint, against OpenSim 4.6.

``tests/data/joint_zoo.osim`` holds one Free, Ball, Gimbal, Universal, Pin, Slider and Weld
joint (a tree of seven bodies) with rotated and translated offset frames on both sides of each
joint, nonzero defaults and a marker on every body. At 200 random poses inside the coordinate
ranges, the range ends, the defaults and 48 poses at or near gimbal lock (middle Euler angle of
the Free, Ball and Gimbal joints at +-pi/2 and just off it), body transforms and markers must
equal OpenSim's in float64 to ``TOL``. Each driven axis, tilted by 1e-6 rad, must be caught.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opensim")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from simspine_jax.export import read_osim  # noqa: E402
from simspine_jax.fk import forward_kinematics, marker_jacobian_one, marker_positions  # noqa: E402
from simspine_jax.model import tree_from_export  # noqa: E402
from simspine_jax.osim_bridge import OpenSimReference  # noqa: E402

pytestmark = pytest.mark.opensim

ZOO = Path(__file__).parent / "data" / "joint_zoo.osim"
N_POSES = 200
# Measured worst error 8.9e-16 (marker/body positions, metres) and 6.7e-16 (rotation entries):
# both sides compose the same rotations in float64, so only rounding differs.
TOL = 1e-12
TOL_JAC = 1e-12  # analytic marker Jacobian vs jax.jacfwd (measured 4.4e-16)
TILT = 1e-6  # rad: a perturbed axis must move something by far more than TOL
JOINT_TYPES = (
    "FreeJoint",
    "BallJoint",
    "GimbalJoint",
    "UniversalJoint",
    "PinJoint",
    "SliderJoint",
    "WeldJoint",
)
EULER_MIDDLE = ("free_ry", "ball_ry", "gimbal_r2")  # the middle angle of each X-Y-Z sequence


class Zoo:
    """The model on both sides, the poses and OpenSim's FK at them (loaded once per module)."""

    def __init__(self):
        self.ex = read_osim(ZOO)
        self.ref = OpenSimReference(ZOO)
        self.q_ref = self._poses()
        self.golden = self.ref.fk(self.q_ref, assemble=False)

    def _poses(self) -> np.ndarray:
        """Shape: (N_POSES + 48 + 3, n_indep), OpenSim's independent order."""
        ref = self.ref
        lo, hi = ref.coord_range[ref.indep_index].T
        rng = np.random.default_rng(7)
        q = rng.uniform(lo, hi, size=(N_POSES, lo.size))
        # gimbal lock: every middle angle at +-pi/2, +-(pi/2 - 1e-8), +-(pi/2 - 1e-4), others random
        near = np.array([1.0, 1.0 - 1e-8, 1.0 - 1e-4])[:, None] * np.array([np.pi / 2, -np.pi / 2])
        lock = rng.uniform(lo, hi, size=(8, near.size, lo.size))
        for name in EULER_MIDDLE:
            lock[..., ref.independent_names.index(name)] = near.ravel()
        lock = lock.reshape(-1, lo.size)
        assert np.all((lock >= lo) & (lock <= hi)), "gimbal-lock poses must lie inside the ranges"
        return np.concatenate([q, lock, lo[None], hi[None], ref.q_initial[ref.indep_index][None]])

    @cached_property
    def tree(self):
        return tree_from_export(self.ex, dtype=jnp.float64)

    @cached_property
    def q(self) -> np.ndarray:
        """q_ref in our independent order."""
        col = [self.ref.independent_names.index(n) for n in self.tree.independent_names]
        return self.q_ref[:, col]

    def fk(self, tree=None) -> dict[str, np.ndarray]:
        """Our FK in OpenSim's body and marker orders (ground dropped)."""
        tree = self.tree if tree is None else tree
        res = forward_kinematics(tree, self.q)
        bi = [tree.body_names.index(b) for b in self.ref.body_names]
        mi = [tree.marker_names.index(m) for m in self.ref.marker_names]
        return dict(
            body_R=np.asarray(res.R_world)[:, bi],
            body_p=np.asarray(res.p_world)[:, bi],
            markers=np.asarray(res.markers)[:, mi],
        )


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


def _worst(ours: dict, golden: dict) -> dict[str, float]:
    return {k: float(np.abs(ours[k] - golden[k]).max()) for k in ("body_R", "body_p", "markers")}


def test_model_has_every_joint_type(zoo):
    assert sorted(j["type"] for j in zoo.ex.meta["joints"]) == sorted(JOINT_TYPES)
    assert zoo.ref.model.getJointSet().getSize() == len(JOINT_TYPES)


def test_names_orders_defaults_and_ranges(zoo):
    tree, ref = zoo.tree, zoo.ref
    assert tree.coordinate_names == ref.coordinate_names
    assert tree.independent_names == ref.independent_names
    assert tree.body_names == ("ground", *ref.body_names)
    assert tree.marker_names == ref.marker_names
    np.testing.assert_array_equal(np.asarray(tree.coord_default), ref.q_initial)
    np.testing.assert_array_equal(np.asarray(tree.coord_range), ref.coord_range)
    assert np.all(ref.q_initial != 0.0), "every default should be nonzero in this model"


def test_motion_types(zoo):
    ours = tuple(c["motion_type"] for c in zoo.ex.meta["coordinates"])
    assert ours == zoo.ref.motion_types


def test_opensim_keeps_the_euler_angles(zoo):
    """Ball and Free joints are quaternion mobilizers in Simbody; OpenSim must hand back the
    angles we set (it runs them as X-Y-Z Euler angles), or the comparison would be moot."""
    np.testing.assert_array_equal(zoo.golden["q_full"], zoo.q_ref)


def test_fk_matches_opensim(zoo):
    worst = _worst(zoo.fk(), zoo.golden)
    assert max(worst.values()) <= TOL, worst


@pytest.mark.parametrize("joint", JOINT_TYPES)
def test_fk_matches_opensim_per_joint(zoo, joint):
    """The child body of each joint and the markers on it, so a failure names the joint."""
    j = next(j for j in zoo.ex.meta["joints"] if j["type"] == joint)
    b = zoo.ref.body_names.index(j["child"])
    m = [i for i, mb in enumerate(zoo.ex.meta["marker_bodies"]) if mb == j["child"]]
    ours, gold = zoo.fk(), zoo.golden
    err = dict(
        R=np.abs(ours["body_R"][:, b] - gold["body_R"][:, b]).max(),
        p=np.abs(ours["body_p"][:, b] - gold["body_p"][:, b]).max(),
        markers=np.abs(ours["markers"][:, m] - gold["markers"][:, m]).max(),
    )
    assert max(err.values()) <= TOL, (joint, err)


def _tilted(v: np.ndarray) -> np.ndarray:
    """v rotated by TILT about a unit axis perpendicular to it."""
    w = np.cross(v, np.eye(3)[np.argmin(np.abs(v))])
    w /= np.linalg.norm(w)
    return v * np.cos(TILT) + np.cross(w, v) * np.sin(TILT)


def _perturbations(ex) -> list[tuple[str, str, int]]:
    """(joint name, array, axis) for every coordinate-driven axis and for the weld's frame."""
    a = ex.arrays
    out = []
    for i, b in enumerate(ex.meta["bodies"][1:], start=1):
        name = next(j["name"] for j in ex.meta["joints"] if j["child"] == b)
        driven = [k for k in range(6) if a["func_input"][a["axis_func"][i, k]] >= 0]
        out += [(name, "joint_axes", k) for k in driven] or [(name, "joint_R_pf", 0)]
    return out


def test_every_perturbed_axis_is_caught(zoo):
    """The comparison can fail: tilting any driven axis (or the weld's parent frame axis) by
    1e-6 rad moves some body or marker by far more than TOL."""
    ex = zoo.ex
    names = ex.meta["bodies"]
    missed = {}
    for joint, key, k in _perturbations(ex):
        child = next(j["child"] for j in ex.meta["joints"] if j["name"] == joint)
        arrays = {**ex.arrays, key: ex.arrays[key].copy()}
        i = names.index(child)
        if key == "joint_axes":
            arrays[key][i, k] = _tilted(arrays[key][i, k])
        else:
            arrays[key][i] = arrays[key][i] @ _tilted_frame()
        bad = type(ex)(meta=ex.meta, arrays=arrays)
        worst = max(_worst(zoo.fk(tree_from_export(bad, dtype=jnp.float64)), zoo.golden).values())
        if worst <= 1e3 * TOL:
            missed[(joint, key, k)] = worst
    assert not missed, missed


def _tilted_frame() -> np.ndarray:
    """A rotation by TILT about x. Shape: (3, 3)."""
    c, s = np.cos(TILT), np.sin(TILT)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def test_marker_jacobian_matches_autodiff(zoo):
    """Analytic Jacobian vs jax.jacfwd of marker_positions, random and gimbal-lock poses."""
    tree = zoo.tree
    q = jnp.asarray(zoo.q[::5])
    x, J, _, _ = jax.jit(jax.vmap(lambda v: marker_jacobian_one(tree, v)))(q)
    J_ad = jax.jit(jax.vmap(jax.jacfwd(lambda v: marker_positions(tree, v))))(q)
    assert J.shape == J_ad.shape == (q.shape[0], tree.n_marker, 3, tree.n_indep)
    np.testing.assert_allclose(np.asarray(x), np.asarray(marker_positions(tree, q)), 0, TOL_JAC)
    np.testing.assert_allclose(np.asarray(J), np.asarray(J_ad), 0, TOL_JAC)
    assert np.abs(np.asarray(J)).max() > 0.1  # not trivially zero
