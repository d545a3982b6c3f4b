"""Test-session setup: float64 JAX everywhere (golden comparisons need it).

Must run before any test module builds a jax array; a tree built with ``dtype=jnp.float32``
is still float32.
"""

import jax

jax.config.update("jax_enable_x64", True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def setup_dir() -> Path:
    """Pose2Sim's OpenSim_Setup folder from the pip-installed wheel (models, marker sets, IK
    setups); tests that need it are skipped with the install hint when it is missing."""
    from simspine_jax.errors import SimSpineError
    from simspine_jax.osim_bridge import pose2sim_setup_dir

    try:
        return pose2sim_setup_dir()
    except (SimSpineError, FileNotFoundError) as e:
        pytest.skip(str(e))
