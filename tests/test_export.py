"""Export and FK on tiny inline models with closed-form answers, bad-input errors, FK
properties (batch shapes, autodiff vs finite differences, analytic Jacobian)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simspine_jax import (
    InputError,
    ModelError,
    default_model_path,
    forward_kinematics,
    load_model,
    read_osim,
)
from simspine_jax.export import PiecewiseCubic, simm_spline_coefficients
from simspine_jax.fk import full_coordinates, marker_jacobian_one, marker_positions
from simspine_jax.model import load_tree, save_tree, tree_from_export

DATA = Path(__file__).parent / "data"
TWO_LINK = DATA / "two_link.osim"
DEFAULT = default_model_path()


@pytest.fixture(scope="module")
def two_link():
    return tree_from_export(read_osim(TWO_LINK))


def test_two_link_closed_form(two_link):
    q1, q2 = 0.3, -0.7
    res = forward_kinematics(two_link, jnp.array([q1, q2]))
    dep = 0.1 * q2 + 0.05  # the coupler slides the elbow along the upper link
    elbow = np.array([0, 1, 0]) + (0.5 + dep) * np.array([np.cos(q1), np.sin(q1), 0])
    tip = elbow + 0.4 * np.array([np.cos(q1 + q2), np.sin(q1 + q2), 0])
    mid = np.array([0, 1, 0]) + 0.25 * np.array([np.cos(q1), np.sin(q1), 0])
    names = two_link.marker_names
    np.testing.assert_allclose(res.markers[names.index("tip")], tip, atol=1e-12)
    np.testing.assert_allclose(res.markers[names.index("mid")], mid, atol=1e-12)
    qf = full_coordinates(two_link, jnp.array([q1, q2]))
    np.testing.assert_allclose(qf, [q1, q2, dep], atol=1e-14)
    assert two_link.independent_names == ("q1", "q2")


@pytest.mark.parametrize("batch", [(), (1,), (3, 1, 2, 1)])
def test_batch_shapes(two_link, batch):
    q = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, batch + (2,)))
    res = forward_kinematics(two_link, q)
    assert res.markers.shape == batch + (2, 3)
    assert res.R_world.shape == batch + (3, 3, 3)
    flat = forward_kinematics(two_link, q.reshape(-1, 2)).markers.reshape(res.markers.shape)
    np.testing.assert_allclose(res.markers, flat, atol=1e-14)


def test_save_load_roundtrip(tmp_path, two_link):
    p = save_tree(read_osim(TWO_LINK), tmp_path / "m.npz")
    t2 = load_tree(p)
    q = jnp.array([0.2, 0.1])
    np.testing.assert_array_equal(
        forward_kinematics(two_link, q).markers, forward_kinematics(t2, q).markers
    )
    assert t2.topology == two_link.topology


def test_default_model_jacobian_matches_autodiff_and_fd():
    tree = load_model(DEFAULT)
    q = jnp.asarray(np.random.default_rng(3).uniform(-0.4, 0.4, tree.n_indep))
    _, J, _, _ = marker_jacobian_one(tree, q)
    J_ad = jax.jit(jax.jacfwd(lambda x: marker_positions(tree, x)))(q)
    np.testing.assert_allclose(J, J_ad, atol=1e-11)
    h = 1e-6
    fk_jit = jax.jit(lambda x: marker_positions(tree, x))
    for i in range(0, tree.n_indep, 3):
        e = jnp.zeros(tree.n_indep).at[i].set(h)
        fd = (fk_jit(q + e) - fk_jit(q - e)) / (2 * h)
        np.testing.assert_allclose(J[..., i], fd, atol=1e-7, err_msg=tree.independent_names[i])


def test_two_link_jacrev_equals_jacfwd(two_link):
    q = jnp.array([0.3, -1.1])
    f = lambda x: marker_positions(two_link, x)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.jacrev(f))(q), jax.jit(jax.jacfwd(f))(q), atol=1e-13)
    _, J, _, _ = marker_jacobian_one(two_link, q)
    np.testing.assert_allclose(J, jax.jacfwd(f)(q), atol=1e-13)


def test_gradients_finite_at_zero_pose():
    tree = load_model(DEFAULT)
    g = jax.grad(lambda x: jnp.sum(marker_positions(tree, x) ** 2))(jnp.zeros(tree.n_indep))
    assert np.all(np.isfinite(g))


def test_float32_tree():
    tree64 = load_model(DEFAULT)
    tree32 = tree64.astype(jnp.float32)
    q = np.random.default_rng(1).uniform(-0.5, 0.5, (4, tree64.n_indep))
    m32 = forward_kinematics(tree32, q).markers
    assert m32.dtype == jnp.float32
    np.testing.assert_allclose(m32, forward_kinematics(tree64, q).markers, atol=1e-5)


def test_simm_spline_matches_opensim():
    osim = pytest.importorskip("opensim")
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 9):
        x = np.sort(rng.uniform(-2, 2, n)) + np.arange(n) * 0.1
        y = rng.normal(size=n)
        ours = simm_spline_coefficients(x, y)
        ref = osim.SimmSpline()
        for xi, yi in zip(x, y, strict=True):
            ref.addPoint(float(xi), float(yi))
        for X in np.linspace(x[0] - 1, x[-1] + 1, 41):
            v = osim.Vector(1, float(X))
            assert abs(ours(X) - ref.calcValue(v)) < 1e-12, (n, X)


def test_piecewise_linear_constant():
    assert PiecewiseCubic.linear(2.0, 1.0)(3.0) == 7.0
    assert PiecewiseCubic.constant(4.0)(-9.0) == 4.0


# ----------------------------------------------------------------------------- bad input
def _write(tmp_path, text, name="bad.osim"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_malformed_xml(tmp_path):
    p = _write(tmp_path, "<OpenSimDocument><Model name='x'><BodySet>")
    with pytest.raises(ModelError, match=re.escape(str(p)) + ".*malformed XML"):
        read_osim(p)


def test_not_a_model(tmp_path):
    p = _write(tmp_path, "<OpenSimDocument Version='40000'><Foo/></OpenSimDocument>")
    with pytest.raises(ModelError, match="no <Model>"):
        read_osim(p)


def test_unknown_function_type(tmp_path):
    text = TWO_LINK.read_text().replace(
        '<LinearFunction name="function"><coefficients>1 0</coefficients></LinearFunction>',
        '<StepFunction name="function"><start_time>0</start_time></StepFunction>',
        1,
    )
    p = _write(tmp_path, text)
    with pytest.raises(
        ModelError, match=r"CustomJoint 'elbow' rotation1.*unsupported function type 'StepFunction'"
    ):
        read_osim(p)


def test_unsupported_joint(tmp_path):
    p = _write(tmp_path, TWO_LINK.read_text().replace("PinJoint", "PlanarJoint"))
    with pytest.raises(ModelError, match="joint 'shoulder'.*PlanarJoint.*not supported"):
        read_osim(p)


def test_marker_on_missing_body(tmp_path):
    markers = _write(
        tmp_path,
        "<OpenSimDocument><MarkerSet><objects><Marker name='ghost'>"
        "<socket_parent_frame>/bodyset/pelvis</socket_parent_frame><location>0 0 0</location>"
        "</Marker></objects></MarkerSet></OpenSimDocument>",
        "markers.xml",
    )
    with pytest.raises(ModelError, match=r"markers.xml.*field 'ghost'.*'/bodyset/pelvis'"):
        read_osim(TWO_LINK, markers=markers)


def test_wrong_coordinate_count_for_fk(two_link):
    with pytest.raises(InputError, match="last axis 2"):
        forward_kinematics(two_link, jnp.zeros(5))


def test_chained_coupler_rejected(tmp_path):
    text = TWO_LINK.read_text().replace(
        "</objects></ConstraintSet>",
        "<CoordinateCouplerConstraint name='chain'><coupled_coordinates_function><LinearFunction>"
        "<coefficients>1 0</coefficients></LinearFunction></coupled_coordinates_function>"
        "<independent_coordinate_names>q2_dep</independent_coordinate_names>"
        "<dependent_coordinate_name>q1</dependent_coordinate_name>"
        "</CoordinateCouplerConstraint></objects></ConstraintSet>",
    )
    with pytest.raises(ModelError, match="chained couplers"):
        read_osim(_write(tmp_path, text))
