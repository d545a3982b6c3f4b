"""IK: ground-truth recovery, limits, gaps, batching, implicit gradients, bad input."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simspine_jax import InputError, forward_kinematics, load_model, read_osim, tree_from_export
from simspine_jax.ik import (
    FEW_MARKERS,
    WEAK_SENSITIVITY,
    IKOptions,
    ik_layer,
    solve_ik,
    solve_ik_batch,
)
from simspine_jax.synth import synthetic_trial

ROOT = Path(__file__).parent.parent
DEFAULT = ROOT / "simspine_jax" / "data" / "simspine_default.npz"


@pytest.fixture(scope="module")
def tree():
    return load_model(DEFAULT)


@pytest.fixture(scope="module")
def clean_trial(tree):
    return synthetic_trial(tree, 200, noise_m=0.0, gap_fraction=0.0, seed=3)


def _observed(res, limit=WEAK_SENSITIVITY):
    """Coordinates whose sensitivity (coordinate units per metre of marker noise) is small."""
    s = np.asarray(res.sensitivity)
    return np.all(np.isfinite(s) & (s < limit), axis=0)


def test_recovers_truth_clean(tree, clean_trial):
    res = solve_ik(tree, clean_trial["markers"])
    assert np.all(np.asarray(res.status) == 0)
    assert np.nanmax(res.rms_error) < 1e-6
    obs = _observed(res)
    must = [
        n
        for n in tree.independent_names
        if n.startswith(("pelvis", "hip", "knee", "L5_S1", "neck"))
    ]
    names = np.array(tree.independent_names)
    assert set(must) <= set(names[obs]), set(must) - set(names[obs])
    err = np.abs(np.asarray(res.q) - clean_trial["q_true"])[:, obs]
    assert err.max() < np.deg2rad(0.01), err.max()


def test_unobserved_stay_at_default(tree, clean_trial):
    res = solve_ik(tree, clean_trial["markers"])
    sens = np.asarray(res.sensitivity)
    unobs = np.all(~np.isfinite(sens), axis=0)
    names = np.array(tree.independent_names)[unobs]
    assert {"wrist_flex_r", "wrist_flex_l"} <= set(names), names
    default = np.asarray(tree.coord_default)[tree.topology.indep_coord]
    np.testing.assert_array_equal(
        np.asarray(res.q)[:, unobs], np.broadcast_to(default[unobs], (200, unobs.sum()))
    )


def test_noise_gaps_and_smoothing(tree):
    trial = synthetic_trial(tree, 200, noise_m=0.005, gap_fraction=0.03, seed=4)
    raw = solve_ik(tree, trial["markers"])
    smooth = solve_ik(tree, trial["markers"], options=IKOptions(smooth_acc=0.3))
    obs = _observed(raw)
    e_raw = np.rad2deg(np.sqrt(np.mean((np.asarray(raw.q) - trial["q_true"])[:, obs] ** 2)))
    e_smooth = np.rad2deg(np.sqrt(np.mean((np.asarray(smooth.q) - trial["q_true"])[:, obs] ** 2)))
    # 5 mm noise: a few degrees at most per frame, and smoothing must help
    assert e_raw < 3.0, e_raw
    assert e_smooth < e_raw, (e_smooth, e_raw)
    assert 2e-3 < float(np.nanmean(raw.rms_error)) < 8e-3
    # gaps are masked, not invented
    gaps = trial["gaps"]
    assert gaps.any() and np.all(np.isnan(np.asarray(raw.marker_error)[gaps]))


def test_clamped_limits_hold(tree, clean_trial):
    names = list(tree.independent_names)
    i = names.index("knee_angle_r")
    idx = tree.topology.indep_coord[i]
    lo, hi = np.asarray(tree.coord_range)[idx]
    assert tree.topology.coord_clamped[idx]
    q = clean_trial["q_true"][:50].copy()
    q[:, i] = hi + 0.3  # markers made by a pose beyond the knee's range
    mk = np.asarray(forward_kinematics(tree, q).markers)
    res = solve_ik(tree, mk)
    qi = np.asarray(res.q)[:, i]
    assert np.all(qi <= hi + 1e-12) and np.all(qi >= lo - 1e-12)
    assert np.allclose(qi, hi, atol=1e-6)


def test_too_few_markers_reported(tree, clean_trial):
    mk = clean_trial["markers"][:40].copy()
    mk[10:13] = np.nan
    mk[20, 2:] = np.nan  # two markers left
    res = solve_ik(tree, mk)
    st = np.asarray(res.status)
    assert list(np.nonzero(st == FEW_MARKERS)[0]) == [10, 11, 12, 20]
    assert np.all(np.isnan(np.asarray(res.q)[[10, 11, 12, 20]]))
    assert np.all(np.isfinite(np.asarray(res.q)[st != FEW_MARKERS]))
    sm = solve_ik(tree, mk, options=IKOptions(smooth_vel=0.1))
    assert np.all(np.isfinite(np.asarray(sm.q)))  # filled by the smoothness prior, and flagged
    assert list(np.nonzero(np.asarray(sm.status) == FEW_MARKERS)[0]) == [10, 11, 12, 20]


def test_batch_of_mixed_lengths_equals_single(tree, clean_trial):
    # lengths within one padding bucket (64 frames): one compile for the single solves
    seqs = [
        clean_trial["markers"][:50],
        clean_trial["markers"][100:164],
        clean_trial["markers"][5:9],
    ]
    batch = solve_ik_batch(tree, seqs)
    for s, b in zip(seqs, batch, strict=True):
        one = solve_ik(tree, s)
        assert b.q.shape == (s.shape[0], tree.n_indep)
        np.testing.assert_allclose(b.q, one.q, atol=1e-9)


def test_arbitrary_lab_orientation(tree, clean_trial):
    """A trial rotated 150 deg about the vertical and tipped 90 deg (Z-up lab) still converges."""
    mk = clean_trial["markers"][:40]
    c, s = np.cos(np.deg2rad(150)), np.sin(np.deg2rad(150))
    Ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    Rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    res = solve_ik(tree, mk @ (Rx @ Ry).T + np.array([2.0, -1.0, 0.5]))
    assert np.nanmax(res.rms_error) < 1e-5


def test_float32_tree_refused_clearly(tree):
    with pytest.raises(InputError, match="float64"):
        solve_ik(tree.astype(jnp.float32), np.zeros((10, tree.n_marker, 3)))


def test_bad_marker_shape(tree):
    with pytest.raises(InputError, match=r"\(T, 37, 3\)"):
        solve_ik(tree, np.zeros((10, 5, 3)))
    with pytest.raises(InputError, match="no frames"):
        solve_ik(tree, np.zeros((0, tree.n_marker, 3)))


def test_ik_layer_implicit_gradient_matches_fd():
    tree = tree_from_export(read_osim(ROOT / "tests" / "data" / "two_link.osim"))
    q_true = jnp.array([[0.4, -0.9], [0.1, 0.6]])
    z = forward_kinematics(tree, q_true).markers + 0.01 * jnp.array(
        np.random.default_rng(0).normal(size=(2, 2, 3))
    )
    tight = IKOptions(min_markers=2, tol_cost=1e-16, max_iters=200)
    q0 = solve_ik(tree, np.asarray(z), options=tight).q
    assert np.all(np.isfinite(np.asarray(q0)))

    @jax.jit
    def loss(zz):
        q = ik_layer(tree, zz, q0, iterations=20)
        return jnp.sum(jnp.sin(q) * jnp.array([1.0, 2.0]))

    g = jax.grad(loss)(z)
    # central differences through re-solved IK; their error is set by the solver's tolerance
    h = 1e-4
    for m, k in [(0, 0), (0, 1), (1, 0), (1, 2)]:
        e = jnp.zeros_like(z).at[:, m, k].set(h)
        fd = float((loss(z + e) - loss(z - e)) / (2 * h))
        assert abs(float(g[:, m, k].sum()) - fd) < 1e-4 * max(1.0, abs(fd)), (m, k, fd)


@pytest.fixture(scope="module")
def two_link_trial():
    tree = tree_from_export(read_osim(ROOT / "tests" / "data" / "two_link.osim"))
    t = np.linspace(0.0, 2.0, 150)
    q_true = np.stack([0.8 * np.sin(2.1 * t), -0.5 + 0.7 * np.cos(1.3 * t)], -1)
    z = np.asarray(forward_kinematics(tree, jnp.asarray(q_true)).markers)
    z = z + 0.002 * np.random.default_rng(1).normal(size=z.shape)
    return tree, q_true, z


def test_batch_in_groups_with_remainder_equals_single(two_link_trial):
    """More sequences than one vmapped group (CPU: groups of CPU_SEQUENCE_GROUP, then the
    remainder): each result equals its solve alone, whatever group finishes first."""
    from simspine_jax.ik import CPU_SEQUENCE_GROUP

    tree, _, z = two_link_trial
    opts = IKOptions(min_markers=2)
    seqs = [z[k : k + 40 + 7 * k] for k in range(CPU_SEQUENCE_GROUP + 3)]
    out = solve_ik_batch(tree, seqs, options=opts)
    for s, b in zip(seqs, out, strict=True):
        one = solve_ik(tree, s, options=opts)
        assert b.q.shape == one.q.shape
        np.testing.assert_allclose(b.q, one.q, atol=1e-9)
        np.testing.assert_array_equal(b.iterations, one.iterations)


def test_schedule_orders_coarse_to_fine():
    from simspine_jax.ik import _schedule

    level, left, right, left2, right2 = _schedule(256, 16)
    assert np.all(level[::16] == 0) and level.max() == 4
    for t in range(256):
        for dep in (left[t], right[t], left2[t], right2[t]):
            # every warm start comes from an earlier frame in the chain or a coarser level
            assert dep == -1 or level[dep] < level[t] or (level[t] == 0 and dep == t - 16)
        if level[t] > 0:
            h = 16 >> level[t]
            assert left[t] == t - h and right[t] in (t + h, t - h)
            # the cubic start's outer frames, where both exist
            assert (left2[t], right2[t]) in ((t - 3 * h, t + 3 * h), (-1, -1))
            assert left2[t] >= 0 or t - 3 * h < 0 or t + 3 * h >= 256


def test_lanes_and_rounds_do_not_change_the_solution(two_link_trial):
    """The scheduler only decides when a frame is iterated, not what it converges to."""
    tree, _, z = two_link_trial
    base = dict(min_markers=2, chunk=16)
    a = solve_ik(tree, z, options=IKOptions(**base))
    b = solve_ik(tree, z, options=IKOptions(**base, lanes=3, round_iters=1))
    np.testing.assert_allclose(np.asarray(a.q), np.asarray(b.q), atol=1e-9)
    np.testing.assert_array_equal(np.asarray(a.iterations), np.asarray(b.iterations))


def test_cyclic_reduction_matches_thomas_in_smoothing(two_link_trial):
    tree, q_true, z = two_link_trial
    opts = dict(min_markers=2, smooth_vel=0.05, smooth_acc=0.5)
    a = solve_ik(tree, z, options=IKOptions(**opts, banded="thomas"))
    b = solve_ik(tree, z, options=IKOptions(**opts, banded="cyclic"))
    np.testing.assert_allclose(np.asarray(a.q), np.asarray(b.q), atol=1e-9)
    assert np.sqrt(np.mean((np.asarray(a.q) - q_true) ** 2)) < 0.02
    with pytest.raises(InputError, match="banded"):
        solve_ik(tree, z, options=IKOptions(banded="dense"))


def test_per_frame_coordinate_task_targets(two_link_trial):
    """A from_file-style task: targets per frame pull coordinate 0 onto them (strong weight),
    and the batch API takes one task tuple per sequence."""
    tree, q_true, z = two_link_trial
    T = len(z)
    target = q_true[:, 0] + 0.3  # off the markers' answer, so the task visibly wins
    ci = np.array([tree.coordinate_names.index(tree.independent_names[0])])
    tasks = (ci, np.array([1e4]), target[:, None])
    res = solve_ik(tree, z, coord_tasks=tasks, options=IKOptions(min_markers=2))
    np.testing.assert_allclose(np.asarray(res.q)[:, 0], target, atol=2e-3)
    free = solve_ik(tree, z, options=IKOptions(min_markers=2))
    assert np.max(np.abs(np.asarray(free.q)[:, 0] - q_true[:, 0])) < 0.05
    # batch: per-sequence targets; the second sequence is a 100-frame excerpt
    out = solve_ik_batch(
        tree,
        [z, z[:100]],
        coord_tasks=[tasks, (ci, np.array([1e4]), target[:100, None])],
        options=IKOptions(min_markers=2),
    )
    np.testing.assert_allclose(np.asarray(out[0].q), np.asarray(res.q), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out[1].q)[:, 0], target[:100], atol=2e-3)
    with pytest.raises(InputError, match="shape"):
        solve_ik(tree, z, coord_tasks=(ci, np.array([1.0]), np.zeros((T - 1, 1))))


def test_new_lambda_tolerance_or_weights_reuse_the_compiled_solver(two_link_trial, monkeypatch):
    """Only structural options are static: a new lambda, tolerance, damping or weight is a
    traced number and must not trace the solver again."""
    from simspine_jax.ik import solve as solve_mod
    from simspine_jax.ik.solve import _program_jit

    # counting traces needs the caches kept: drop them once now (memory-map headroom), and
    # keep the solver from dropping them near the limit during the count
    jax.clear_caches()
    monkeypatch.setattr(solve_mod, "release_if_near_map_limit_throttled", lambda: False)
    tree, _, z = two_link_trial
    solve_ik(tree, z, options=IKOptions(min_markers=2, smooth_acc=0.1))
    n = _program_jit._cache_size()
    for opts, w in [
        (IKOptions(min_markers=2, smooth_acc=0.237), None),
        (IKOptions(min_markers=2, smooth_acc=0.1, smooth_vel=0.02, tol_cost=1e-8), None),
        (IKOptions(min_markers=2, smooth_acc=3.0, mu_init=1e-2, max_step=0.3), [1.0, 0.5]),
    ]:
        solve_ik(tree, z, marker_weight=w, options=opts)
    assert _program_jit._cache_size() == n
    solve_ik(tree, z, options=IKOptions(min_markers=2, smooth_acc=0.1, max_iters=7))
    assert _program_jit._cache_size() == n + 1  # a structural option does compile
    # lambda = 0: the continuity pass's weight and guard are traced too; off is structural
    solve_ik(tree, z, options=IKOptions(min_markers=2))
    n = _program_jit._cache_size()
    solve_ik(tree, z, options=IKOptions(min_markers=2, continuity=3e-3, continuity_guard=0.05))
    assert _program_jit._cache_size() == n
    solve_ik(tree, z, options=IKOptions(min_markers=2, continuity=0.0))
    assert _program_jit._cache_size() == n + 1


def test_segmented_long_trial_equals_whole(two_link_trial):
    """A trial longer than ``segment`` is solved in segments (per-frame stage) and
    overlapping windows (smoothing, continuity pass): the same answer as one whole-trial
    solve."""
    tree, _, z = two_link_trial
    z = np.concatenate([z, z[::-1], z], 0)  # 450 frames
    z[200:203] = np.nan  # a gap across nothing in particular
    for lam, cont in ((0.0, 0.0), (0.05, 0.0), (0.0, 1e-4)):
        base = dict(min_markers=2, smooth_acc=lam, chunk=8, continuity=cont, tol_cost=1e-6)
        whole = solve_ik(tree, z, options=IKOptions(**base, segment=1024))
        seg = solve_ik(tree, z, options=IKOptions(**base, segment=128))
        assert seg.q.shape == whole.q.shape == (450, 2)
        np.testing.assert_array_equal(np.isnan(seg.q), np.isnan(whole.q))
        # equal to within what the stop test (tol_cost 1e-6 of the cost) leaves open
        np.testing.assert_allclose(seg.q, whole.q, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(seg.cost, whole.cost, rtol=1e-4, atol=1e-12)


def test_bounds_active_set_reaches_the_constrained_optimum(tmp_path):
    """Markers that pull a clamped coordinate past its limit: the solution sits exactly on
    the limit, the free coordinate at its constrained optimum (a 1-D minimisation), status
    converged in a few iterations (a projected step used to stall at bounds)."""
    from scipy.optimize import minimize_scalar

    from simspine_jax.pipeline import frame_costs

    src = (ROOT / "tests" / "data" / "two_link.osim").read_text()
    osim = tmp_path / "clamped.osim"
    osim.write_text(
        src.replace(
            '<Coordinate name="q2"><range>-3 3</range>',
            '<Coordinate name="q2"><range>-3 0.3</range><clamped>true</clamped>',
        )
    )
    tree = tree_from_export(read_osim(osim))
    assert np.isclose(
        float(np.asarray(tree.coord_range)[tree.coordinate_names.index("q2"), 1]), 0.3
    )
    q_true = np.stack([np.linspace(-0.5, 0.5, 64), np.linspace(0.5, 1.2, 64)], -1)
    z = np.asarray(forward_kinematics(tree, jnp.asarray(q_true)).markers)
    z = z + 0.003 * np.random.default_rng(2).normal(size=z.shape)
    res = solve_ik(tree, z, options=IKOptions(min_markers=2, tol_cost=1e-6))
    assert np.all(np.asarray(res.status) == 0)
    assert np.max(np.asarray(res.iterations)) < 30
    q = np.asarray(res.q)
    np.testing.assert_array_equal(q[:, 1], 0.3)  # exactly on the limit
    w = np.ones(tree.n_marker)
    for t in (0, 31, 63):

        def cost(a, t=t):
            return frame_costs(tree, np.array([[a, 0.3]]), z[t : t + 1], w, None)[0]

        best = minimize_scalar(cost, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10})
        # the stop test leaves cost within tol_cost (1e-6) relative, so q within about
        # sqrt(1e-6 * cost / curvature) ~ 5e-5 here; cost is the criterion
        assert abs(q[t, 0] - best.x) < 2e-4, (t, q[t, 0], best.x)
        assert float(np.asarray(res.cost)[t]) <= best.fun * (1 + 1e-6) + 1e-15  # tol_cost


def test_last_frame_that_is_coarse_keeps_its_iterations(two_link_trial):
    """The last valid frame joins the coarse chain; when it is a coarse frame already (a
    one-frame trial, or T = k * chunk + 1) it is not solved twice, and its iteration count is
    that of its own solve (was 0: a second, converged-at-once solve overwrote it)."""
    tree, _, z = two_link_trial
    for T in (1, 17):
        res = solve_ik(tree, z[:T], options=IKOptions(min_markers=2, chunk=16))
        assert np.asarray(res.status)[-1] == 0 and np.asarray(res.iterations)[-1] > 0, T


def test_trial_ending_on_a_coarse_frame_keeps_frame_zero(two_link_trial):
    """T = k * chunk + 1: the chain's extra slot (the last frame, already coarse) was scattered
    into row T of the (2T,) state arrays, which is frame 0's second start, so frame 0 was
    replaced by the chain's end (SimSpine37, 5 mm, 257 frames: frame 0 cost 9500x OpenSim's,
    status converged). Every frame must equal its solve in a trial one frame longer."""
    tree, q_true, z = two_link_trial
    opts = IKOptions(min_markers=2, chunk=16, continuity=0.0)
    for T in (17, 33):
        a = solve_ik(tree, z[:T], options=opts)
        b = solve_ik(tree, z[: T + 1], options=opts)
        assert np.all(np.asarray(a.status) == 0), T
        np.testing.assert_allclose(np.asarray(a.q), np.asarray(b.q)[:T], atol=1e-6)
        assert np.abs(np.asarray(a.q) - q_true[:T]).max() < 0.05, T
    one = solve_ik(tree, z[:9], options=IKOptions(min_markers=2, chunk=1, continuity=0.0))
    assert np.abs(np.asarray(one.q) - q_true[:9]).max() < 0.05


def test_robust_start_root_only_evaluation_equals_full_fk(tree, clean_trial, monkeypatch):
    """The robust start fits the root alone: markers rigid in the root body's frame, one joint
    transform per evaluation. It must give the start the full FK + Jacobian pass gives, on
    frames in arbitrary lab orientations, and fall back to the full pass where a coupler reads
    a root coordinate."""
    import simspine_jax.ik.per_frame as pf
    from simspine_jax.fk import axis_angle_matrix
    from simspine_jax.ik.problem import bounds, frame_inputs

    rb, moves = pf.root_rigid(tree)
    assert tree.body_names[rb] == "pelvis" and moves.all()
    params = IKOptions().params()
    lo, hi = bounds(tree)
    q_def = jnp.clip(tree.coord_default[tree.topology.indep_coord], lo, hi)
    # a default pose with the root turned and moved: the rigid markers are placed from it
    rot, trans = pf.root_coords(tree)
    q_def = (
        q_def.at[rot].set(jnp.array([0.3, -0.2, 0.5])).at[trans].set(jnp.array([0.1, 0.9, -0.2]))
    )
    none = jnp.zeros(0, jnp.int32), jnp.zeros(0), jnp.zeros(0)
    rng = np.random.default_rng(0)

    def starts(frames):
        f = jax.jit(lambda z0, w0: pf.robust_start(tree, params, q_def, z0, w0, *none, lo, hi))
        out = []
        for z in frames:
            z0, w0, _ = frame_inputs(jnp.asarray(z), jnp.ones(tree.n_marker))
            out.append(np.asarray(f(z0, w0)))
        return out

    frames = []
    for t in (0, 77, 150):
        a = rng.normal(size=3)
        R = np.asarray(axis_angle_matrix(jnp.asarray(a / np.linalg.norm(a)), 2.0))
        frames.append(clean_trial["markers"][t] @ R.T + rng.normal(size=3))
    fast = starts(frames)
    monkeypatch.setattr(pf, "root_rigid", lambda tree: None)
    full = starts(frames)
    np.testing.assert_allclose(fast, full, atol=1e-9)
    assert np.isfinite(fast).all()


@pytest.mark.parametrize("gaps", ["none", "first", "last", "middle", "alternate", "coarse"])
def test_every_length_and_gap_pattern_matches_frame_by_frame(two_link_trial, gaps):
    """The coarse-to-fine schedule decides only where a frame starts: on a model whose frames
    each have one minimum, every frame of every length (around multiples of the stride: the
    chain's last frame, padding) and gap pattern equals the frame solved alone, within what the
    stop test leaves (costs within 1e-3, coordinates within 1e-3 rad: measured up to 3e-4 rad
    between starts; the frame-0 bug was 0.1-1 rad off), and frames without markers are
    reported as such."""
    tree, _, z = two_link_trial
    opts = IKOptions(min_markers=2, chunk=8, continuity=0.0)
    alone = solve_ik_batch(tree, [z[t : t + 1] for t in range(50)], options=opts)
    q_alone = np.concatenate([np.asarray(r.q) for r in alone])
    c_alone = np.concatenate([np.asarray(r.cost) for r in alone])
    for T in (1, 2, 7, 8, 9, 15, 16, 17, 24, 25, 33, 49, 50):
        zz = z[:T].copy()
        missing = {
            "none": [],
            "first": [0, 1],
            "last": [T - 1],
            "middle": list(range(T // 3, 2 * T // 3)),
            "alternate": list(range(0, T, 2)),
            "coarse": list(range(0, T, 8)),
        }[gaps]
        missing = [t for t in missing if t < T]
        zz[missing] = np.nan
        res = solve_ik(tree, zz, options=opts)
        st = np.asarray(res.status)
        ok = np.ones(T, bool)
        ok[missing] = False
        assert np.all(st[ok] == 0) and np.all(st[~ok] == 2), (T, st)
        np.testing.assert_allclose(
            np.asarray(res.cost)[ok], c_alone[:T][ok], rtol=1e-3, err_msg=str(T)
        )
        np.testing.assert_allclose(
            np.asarray(res.q)[ok], q_alone[:T][ok], atol=1e-3, err_msg=str(T)
        )
