"""Test-session setup: float64 JAX everywhere (golden comparisons need it).

Must run before any test module builds a jax array; a tree built with ``dtype=jnp.float32``
is still float32.
"""

import jax

jax.config.update("jax_enable_x64", True)
