"""Test-session setup: float64 JAX everywhere (golden comparisons need it).

Must run before any test module builds a jax array; a tree built with ``dtype=jnp.float32``
is still float32.
"""

import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

# the pipeline's persistent caches (XLA executables, traced solvers) in a folder of this test
# session, unless the caller chose one: a user's cache shared with other processes running at
# the same time is no place for tests (twice here an XLA compile crashed in a pytest run while
# another simspine-jax process wrote the same cache)
os.environ.setdefault("SIMSPINE_JAX_CACHE", tempfile.mkdtemp(prefix="simspine-jax-test-cache-"))
# and no persistent XLA cache in this long-lived process: after ~200 tests (OpenSim loaded in
# the process, many programs compiled) XLA segfaulted serializing an executable into it, in
# the same test on every run (jaxlib 0.10.2; child processes inherit the setting)
os.environ.setdefault("SIMSPINE_JAX_XLA_CACHE", "0")
# JAX's backend starts now, with the XLA flags this session was given (JAX's defaults unless
# the caller set XLA_FLAGS): the CLI's in-process tests (``cli.main`` tunes XLA_FLAGS when the
# backend has not started) can no longer change the flags of the tests after them, so every
# test sees the same compiled code whichever module a worker runs first. (A Halpe26 frame
# landed in a different local minimum under the CLI's flags: rounding-level differences.)
jax.devices()

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


@pytest.fixture(autouse=True)
def _restore_xla_flags():
    """``cli.main`` called in-process writes the CLI's flags into ``XLA_FLAGS``; restored after
    each test, so child processes of later tests inherit the session's flags."""
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. XLA CPU maps every compiled
    kernel into memory separately: tests/test_ik.py alone left this process with 43,000 of
    the kernel's 65,530 allowed memory maps (vm.max_map_count), and the whole suite ran out:
    the next compile segfaulted inside XLA."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
