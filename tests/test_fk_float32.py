"""float32 forward kinematics: outputs stay in the tree's dtype, and float32 FK of long trials
agrees with float64 FK, with x64 on (this session) and off (a subprocess, since conftest.py
turns x64 on for the whole session).

On CPU, jaxlib 0.10.2 miscompiled the float32 multiply + reduce_sum of the 3x3 products once
a batch passed about 32k output elements: 0.6 m off from frame 352 of a 500-frame trial.
"""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simspine_jax
from simspine_jax.fk import (
    _fk_one,
    _full_one,
    forward_kinematics,
    full_coordinates,
    marker_jacobian_one,
    marker_positions,
)
from simspine_jax.model import load_model
from simspine_jax.synth import synthetic_trial

DEFAULT = simspine_jax.default_model_path()
TOL_M = 1e-5  # float32 vs float64 marker positions, metres (measured: 5e-7 m)
TOL_J = 1e-4  # float32 vs float64 marker Jacobian, m/rad or m/m (measured: 4e-6; max |J| 7)
FRAMES = (500, 5000)  # 5000 > 4 * FK_BLOCK: the blocked lax.map path


@pytest.fixture(scope="module")
def trees():
    return load_model(DEFAULT), load_model(DEFAULT, dtype=jnp.float32)


@pytest.fixture(scope="module")
def motions(trees):
    """Poses and their float64 markers: a smooth 500-frame motion, and the same motion repeated
    to 5000 frames (what goes wrong depends on a frame's place in the batch, not on the pose).
    Shapes: {n: ((n, n_indep), (n, M, 3))}."""
    trial = synthetic_trial(trees[0], 500, noise_m=0.0, gap_fraction=0.0)
    q, markers = trial["q_true"], trial["markers_clean"]
    return {
        n: (np.resize(q, (n,) + q.shape[1:]), np.resize(markers, (n,) + markers.shape[1:]))
        for n in FRAMES
    }


def _max_error(a, b) -> float:
    """Largest distance between two point sets (metres). Shapes: (..., 3)."""
    return float(np.max(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b), axis=-1)))


def _float64_ops(jaxpr) -> set[str]:
    """Primitives in ``jaxpr`` (and the jaxprs nested in its equations) that make a float64
    value."""
    found = set()

    def walk(j):
        for eqn in getattr(j, "jaxpr", j).eqns:
            if any(getattr(v.aval, "dtype", None) == np.float64 for v in eqn.outvars):
                found.add(eqn.primitive.name)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                        walk(sub)

    walk(jaxpr)
    return found


@pytest.mark.parametrize("q_dtype", [np.float32, np.float64])
def test_outputs_in_tree_dtype(trees, motions, q_dtype):
    """float32 tree, x64 on: no float64 value inside the programs, outputs in float32."""
    tree = trees[1]
    q = motions[500][0][:2].astype(q_dtype)
    q_full = np.zeros((2, tree.n_coord), q_dtype)
    calls = {
        "forward_kinematics": (forward_kinematics, q),
        "forward_kinematics(full=True)": (partial(forward_kinematics, full=True), q_full),
        "full_coordinates": (full_coordinates, q),
        "marker_positions": (marker_positions, q),
        "marker_jacobian_one": (marker_jacobian_one, q[0]),
    }
    for name, (f, arg) in calls.items():
        jaxpr, out = jax.make_jaxpr(f, return_shape=True)(tree, arg)  # traced, not run
        leaks = _float64_ops(jaxpr)
        assert not leaks, f"{name}: float64 values from {sorted(leaks)} in a float32 program"
        wrong = [str(o.dtype) for o in jax.tree_util.tree_leaves(out) if o.dtype != tree.dtype]
        assert not wrong, f"{name}: outputs {wrong}, tree {tree.dtype}"


def test_float32_vmapped_kernels_x64_on(trees, motions):
    """The per-frame kernels vmapped over a trial, as forward_kinematics and IK use them."""
    tree64, tree32 = trees
    q = motions[500][0]

    def run(tree):
        def one(x):
            x_m, J, _, _ = marker_jacobian_one(tree, x)
            return _fk_one(tree, _full_one(tree, x)).markers, x_m, J

        return jax.jit(jax.vmap(one))(jnp.asarray(q, tree.dtype))

    (m32, x32, J32), (m64, x64, J64) = run(tree32), run(tree64)
    for name, a, b in (("_fk_one markers", m32, m64), ("marker_jacobian_one x", x32, x64)):
        err = _max_error(a, b)
        assert err < TOL_M, f"float32 {name} over 500 frames is {err:.3g} m off float64"
    err_J = float(np.max(np.abs(np.asarray(J32, np.float64) - np.asarray(J64))))
    assert err_J < TOL_J, f"float32 marker Jacobian is {err_J:.3g} off float64"


_X64_OFF = """
import sys
import jax
import numpy as np
from simspine_jax.fk import forward_kinematics
from simspine_jax.model import load_model

assert not jax.config.jax_enable_x64
tree = load_model(sys.argv[1])
assert tree.dtype == np.float32
data = np.load(sys.argv[2])
out = {k: np.asarray(forward_kinematics(tree, q).markers) for k, q in data.items()}
np.savez(sys.argv[3], **out)
"""


def test_float32_matches_float64_x64_off(trees, motions, tmp_path):
    """Default JAX (x64 off): the float32 tree of load_model, 500 and 5000 frames at once."""
    qs, out = tmp_path / "q.npz", tmp_path / "markers.npz"
    np.savez(qs, **{str(n): q for n, (q, _) in motions.items()})
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    # the child imports the same simspine_jax as this session
    package_root = str(Path(simspine_jax.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _X64_OFF, str(DEFAULT), str(qs), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    for n, (_, ref) in motions.items():
        m = got[str(n)]
        assert m.dtype == np.float32
        err = _max_error(m, ref)
        assert err < TOL_M, f"x64 off: float32 FK of {n} frames is {err:.3g} m off float64"
