"""The guard against XLA CPU's memory-map exhaustion (``simspine_jax._xla``)."""

from __future__ import annotations

import sys

import pytest

from simspine_jax import _xla
from simspine_jax._xla import release_if_near_map_limit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_releases_compiled_programs_past_the_fraction():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: x * 2.0)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    assert release_if_near_map_limit(1.0) is False  # never past the whole limit here
    assert f._cache_size() == 1
    with pytest.warns(RuntimeWarning, match="memory maps"):
        assert release_if_near_map_limit(0.0) is True
    assert f._cache_size() == 0


def test_throttled_check_reads_at_most_once_per_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(_xla, "release_if_near_map_limit", lambda f: calls.append(f) or False)
    monkeypatch.setattr(_xla, "_last_check", [-float("inf")])
    assert _xla.release_if_near_map_limit_throttled(0.5) is False
    assert _xla.release_if_near_map_limit_throttled(0.5) is False  # within the interval
    assert calls == [0.5]
    _xla._last_check[0] -= _xla.CHECK_INTERVAL_S
    _xla.release_if_near_map_limit_throttled(0.5)
    assert calls == [0.5, 0.5]
