"""The guard against XLA CPU's memory-map exhaustion (``simspine_jax._xla``)."""

from __future__ import annotations

import sys

import pytest

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
