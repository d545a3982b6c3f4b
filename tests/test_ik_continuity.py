"""The continuity pass at lambda = 0 (``IKOptions.continuity``), on the default model.

A module of its own: JAX's compiled programs are dropped between test modules (conftest), and
tests/test_ik.py already compiles enough to come near XLA CPU's memory-map limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simspine_jax import load_model
from simspine_jax.ik import WEAK_SENSITIVITY, IKOptions, solve_ik
from simspine_jax.synth import synthetic_trial

DEFAULT = Path(__file__).parent.parent / "simspine_jax" / "data" / "simspine_default.npz"


@pytest.fixture(scope="module")
def tree():
    return load_model(DEFAULT)


def _observed(res, limit=WEAK_SENSITIVITY):
    s = np.asarray(res.sensitivity)
    return np.all(np.isfinite(s) & (s < limit), axis=0)


def _largest_jumps(tree, q):
    """Per pair of neighbouring frames, the largest change of a rotational coordinate (rad)."""
    kinds = {c["name"]: c["motion_type"] for c in tree.meta["coordinates"]}
    rot = [i for i, n in enumerate(tree.independent_names) if kinds[n] != "translational"]
    return np.max(np.abs(np.diff(np.asarray(q)[:, rot], axis=0)), axis=1)


def test_continuity_pass_keeps_weak_coordinates_near_neighbours(tree):
    """At lambda = 0 the per-frame minima of weakly observed coordinates (pronation, arm
    rotation, toe angle) sit wherever the noise puts them; the continuity pass must keep them
    near their neighbours while no frame costs more than its per-frame minimum + guard."""
    trial = synthetic_trial(tree, 160, noise_m=0.005, gap_fraction=0.0, seed=11)
    minima = solve_ik(tree, trial["markers"], options=IKOptions(continuity=0.0))
    cont = solve_ik(tree, trial["markers"])
    guard = IKOptions().continuity_guard
    c0, c1 = np.asarray(minima.cost), np.asarray(cont.cost)
    assert np.all(c1 <= (1 + guard) * c0 * (1 + 1e-9)), np.max(c1 / c0)
    j0 = np.median(_largest_jumps(tree, minima.q))
    j1 = np.median(_largest_jumps(tree, cont.q))
    assert j1 < 0.6 * j0, (j1, j0)
    # well-observed coordinates hardly move: the pass is a tie-break, not a smoother
    obs = _observed(minima, 0.01)
    dq = np.abs(np.asarray(cont.q) - np.asarray(minima.q))[:, obs]
    assert np.quantile(dq, 0.9) < np.deg2rad(1.0), np.rad2deg(np.quantile(dq, 0.9))
    assert np.array_equal(np.asarray(cont.status), np.asarray(minima.status))


def test_warm_start_takes_either_side_across_a_basin_boundary():
    """Where a frame's solved neighbours differ by 1 rad or more in a coordinate (an angle
    wrap, another basin), its start takes the left neighbour's value there, or the right's for
    the second start; elsewhere it interpolates linearly in time."""
    import jax.numpy as jnp

    from simspine_jax.ik.per_frame import warm_start

    q_ext = jnp.array([[0.0, 0.2], [9.0, 9.0], [0.4, 2.7], [9.0, 9.0], [7.0, 7.0]])
    ok_ext = jnp.array([True, True, True, True, False])
    t, l1, r1, none = jnp.array(1), jnp.array(0), jnp.array(2), jnp.array(-1)
    left = warm_start(t, q_ext, ok_ext, l1, r1, none, none)
    right = warm_start(t, q_ext, ok_ext, l1, r1, none, none, from_right=True)
    np.testing.assert_allclose(left, [0.2, 0.2])  # coordinate 0 interpolated, 1 from the left
    np.testing.assert_allclose(right, [0.2, 2.7])  # coordinate 1 from the right
    # no right neighbour after t (r1 <= t): both take the left's values
    np.testing.assert_allclose(
        warm_start(t, q_ext, ok_ext, l1, l1, none, none, from_right=True), [0.0, 0.2]
    )


def test_continuity_pass_skipped_on_noise_free_data(tree):
    """Noise-free markers fit exactly: every coordinate's minimum is determined, the pass has
    nothing to settle and is skipped (no iteration, the per-frame minima returned)."""
    trial = synthetic_trial(tree, 160, noise_m=0.0, gap_fraction=0.0, seed=11)
    minima = solve_ik(tree, trial["markers"], options=IKOptions(continuity=0.0))
    cont = solve_ik(tree, trial["markers"])
    np.testing.assert_array_equal(np.asarray(cont.iterations), np.asarray(minima.iterations))
    np.testing.assert_allclose(np.asarray(cont.q), np.asarray(minima.q), rtol=0, atol=1e-12)
