"""Block-tridiagonal SPD solvers: cyclic reduction against dense numpy and against Thomas.

Compiling dominates the run time here: a cyclic-reduction solver for N blocks compiles log2(N)
levels of about ten kernels each. So the solvers are compiled once per shape for the file, the
tests share shapes where they can, and XLA compiles them with LLVM optimisation off
(``_compiled``), which takes about half the time and computes the same operations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simspine_jax import _banded
from simspine_jax._banded import banded_solve, block_tridiag_solve, cyclic_reduction_solve


def _compiled(fn):
    """``jax.jit(fn)`` compiled once per argument shape and dtype, without LLVM optimisation."""
    cache = {}

    def call(*args):
        key = tuple((a.shape, a.dtype) for a in args)
        if key not in cache:
            lowered = jax.jit(fn).lower(*args)
            cache[key] = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
        return cache[key](*args)

    return call


cyclic = _compiled(cyclic_reduction_solve)
thomas = _compiled(block_tridiag_solve)


def _random_blocks(rng: np.random.Generator, N: int, m: int, ridge: float = 0.1):
    """A random SPD block-tridiagonal matrix J^T J + ridge I in banded form.

    Block row i of J is [P_i Q_i] on the blocks i, i+1 (P_{N-1} alone), so J^T J couples
    neighbours only: B_i = P_i^T P_i + Q_{i-1}^T Q_{i-1}, C_i = P_i^T Q_i = A_{i+1}^T. The ignored
    corners A_0 and C_{N-1} are NaN: a solver that reads them fails.

    Shapes: A, B, C (N, m, m).
    """
    P = rng.normal(size=(N, 2 * m, m))
    Q = rng.normal(size=(N, 2 * m, m))
    Q[-1] = 0.0
    B = np.einsum("nri,nrj->nij", P, P) + ridge * np.eye(m)
    B[1:] += np.einsum("nri,nrj->nij", Q[:-1], Q[:-1])
    C = np.einsum("nri,nrj->nij", P, Q)
    A = np.full_like(C, np.nan)
    A[1:] = C[:-1].transpose(0, 2, 1)
    C[-1] = np.nan
    return A, B, C


def _dense(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """The (N m x N m) matrix of banded blocks (corners ignored). Shape: (N m, N m)."""
    N, m = B.shape[0], B.shape[-1]
    K = np.zeros((N * m, N * m))
    for i in range(N):
        r = slice(i * m, (i + 1) * m)
        K[r, r] = B[i]
        if i + 1 < N:
            s = slice((i + 1) * m, (i + 2) * m)
            K[r, s], K[s, r] = C[i], A[i + 1]
    return K


def _system(seed: int, N: int, m: int, dtype=np.float64, ridge: float = 0.1):
    """A random SPD system (A, B, C, d) in ``dtype``. Shapes: A, B, C (N, m, m); d (N, m)."""
    rng = np.random.default_rng(seed)
    A, B, C = _random_blocks(rng, N, m, ridge)
    d = rng.normal(size=(N, m))
    return tuple(X.astype(dtype) for X in (A, B, C, d))


def _dense_solve(A, B, C, d) -> np.ndarray:
    """numpy's dense solution in float64. Shape: (N, m)."""
    K = _dense(*(np.asarray(X, np.float64) for X in (A, B, C)))
    return np.linalg.solve(K, np.asarray(d, np.float64).ravel()).reshape(d.shape)


def _rel(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def test_random_blocks_are_spd():
    A, B, C = _random_blocks(np.random.default_rng(0), 4, 3)
    K = _dense(A, B, C)
    np.testing.assert_array_equal(K, K.T)
    assert np.linalg.eigvalsh(K).min() > 0.09


# N = 1 (no level), a power of two, and non-powers padded with identity rows (1000: 24 rows)
@pytest.mark.parametrize("N, m", [(1, 8), (2, 1), (3, 3), (5, 8), (100, 3), (1000, 1)])
def test_cyclic_matches_dense_solve(N, m):
    system = _system(N * 10 + m, N, m)
    x = cyclic(*system)
    assert x.shape == (N, m) and x.dtype == jnp.float64
    assert _rel(x, _dense_solve(*system)) < 1e-12


def test_cyclic_agrees_with_thomas():
    system = _system(3, 300, 12)
    assert _rel(cyclic(*system), thomas(*system)) < 1e-10


def test_batch_vmap_and_leading_axes():
    N, m, n_seq = 11, 3, 4
    systems = [_system(100 + s, N, m) for s in range(n_seq)]
    A, B, C, d = (np.stack(parts) for parts in zip(*systems, strict=True))
    x_vmap = _compiled(jax.vmap(cyclic_reduction_solve))(A, B, C, d)
    assert x_vmap.shape == (n_seq, N, m)
    for s in range(n_seq):
        assert _rel(x_vmap[s], _dense_solve(*systems[s])) < 1e-12
    # leading batch axes (2, 2) without vmap give the same answers
    lead = lambda X: X.reshape(2, 2, *X.shape[1:])
    x_lead = cyclic(lead(A), lead(B), lead(C), lead(d))
    assert x_lead.shape == (2, 2, N, m)
    np.testing.assert_allclose(x_lead, lead(np.asarray(x_vmap)), rtol=0, atol=1e-13)


def test_float32():
    # well conditioned (ridge 1): float32 cyclic reduction within 1e-4 relative of the exact
    # answer (observed 2e-7), within 10x of float32 Thomas (observed 1.6e-7)
    system = _system(5, 100, 3, np.float32, ridge=1.0)
    x_ref = _dense_solve(*system)
    x_cr = cyclic(*system)
    assert x_cr.dtype == jnp.float32
    assert _rel(x_cr, x_ref) < 1e-4
    assert _rel(x_cr, x_ref) < 10 * _rel(thomas(*system), x_ref)


def test_jit_traces_once_per_shape():
    traces = []

    def solve(A, B, C, d):
        traces.append(A.shape)
        return cyclic_reduction_solve(A, B, C, d)

    f = jax.jit(solve)
    f(*_system(1, 2, 1))
    f(*_system(2, 2, 1))
    assert len(traces) == 1
    system = _system(3, 3, 1)
    x = f(*system)
    assert len(traces) == 2
    assert _rel(x, _dense_solve(*system)) < 1e-12


def test_strongly_smoothed_ill_conditioned():
    # the IK smoothing stage's matrix: per-frame normal blocks H_t (tiny: the markers barely
    # constrain the pose) plus lam (D1^T D1 + D2^T D2) kron I_n over T frames, frames paired
    # into (2n x 2n) blocks; lam = 1e3, so K is nearly singular along slow trajectories
    rng = np.random.default_rng(11)
    T, n, lam = 128, 4, 1e3
    D1 = np.diff(np.eye(T), axis=0)
    D2 = np.diff(np.eye(T), n=2, axis=0)
    K = np.kron(lam * (D1.T @ D1 + D2.T @ D2), np.eye(n))
    G = rng.normal(size=(T, n, n))
    H = 1e-6 * (G @ G.transpose(0, 2, 1) + 1e-2 * np.eye(n))
    for t in range(T):
        K[t * n : (t + 1) * n, t * n : (t + 1) * n] += H[t]
    eig = np.linalg.eigvalsh(K)
    assert eig[-1] / eig[0] > 1e9  # eps * cond ~ 1e-6: forward errors are that large
    N, m = T // 2, 2 * n
    blocks = lambda i, j: K[i * m : (i + 1) * m, j * m : (j + 1) * m]
    B = np.stack([blocks(i, i) for i in range(N)])
    C = np.stack([blocks(i, i + 1) for i in range(N - 1)] + [np.zeros((m, m))])
    A = np.concatenate([np.zeros((1, m, m)), C[:-1].transpose(0, 2, 1)])
    x_true = rng.normal(size=(N, m))
    d = (K @ x_true.ravel()).reshape(N, m)
    x = np.asarray(cyclic(A, B, C, d))
    x_th = np.asarray(thomas(A, B, C, d))
    x_np = np.linalg.solve(K, d.ravel()).reshape(N, m)
    # backward stable: relative residual at rounding level, like LAPACK's dense solve
    for sol in (x, x_th, x_np):
        residual = np.linalg.norm(K @ sol.ravel() - d.ravel())
        assert residual / (eig[-1] * np.linalg.norm(sol)) < 1e-15
    # forward error within what the conditioning allows (observed 2e-8 for all three) and no
    # worse than Thomas or LAPACK
    assert _rel(x, x_true) < 1e-6
    assert _rel(x, x_true) < 10 * max(_rel(x_th, x_true), _rel(x_np, x_true))


def test_gradient_through_cyclic():
    # d x / d d = K^{-1}; K is symmetric, so the gradient of <w, x> w.r.t. d is K^{-1} w
    A, B, C, d = _system(4, 3, 2)
    w = np.random.default_rng(0).normal(size=d.shape)
    g = _compiled(jax.grad(lambda dd: jnp.sum(w * cyclic_reduction_solve(A, B, C, dd))))(d)
    assert _rel(g, _dense_solve(A, B, C, w)) < 1e-12


def test_banded_solve_methods(monkeypatch):
    # the solvers are swapped for their jitted versions (the same functions without eager
    # op-by-op dispatch), wrapped to record which one ``banded_solve`` picked
    used = []
    monkeypatch.setattr(
        _banded, "cyclic_reduction_solve", lambda *a: used.append("c") or cyclic(*a)
    )
    monkeypatch.setattr(_banded, "block_tridiag_solve", lambda *a: used.append("t") or thomas(*a))
    system = _system(9, 5, 8)
    x_ref = _dense_solve(*system)
    for method in ("thomas", "cyclic"):
        assert _rel(banded_solve(*system, method=method), x_ref) < 1e-12
    assert used == ["t", "c"]
    with pytest.raises(ValueError, match="unknown method"):
        banded_solve(*system, method="lu")

    # "auto" picks by backend: Thomas on a CPU, cyclic reduction on an accelerator
    for backend, expected in [("cpu", "t"), ("gpu", "c"), ("cuda", "c"), ("tpu", "c")]:
        used.clear()
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert _rel(banded_solve(*system), x_ref) < 1e-12
        assert used == [expected], backend
