"""XLA CPU settings the command line applies before JAX starts its backend."""

from __future__ import annotations

import os

# YNNPACK/XNNPACK fusions of XLA CPU (jaxlib 0.10): off. On the IK's small tensors the LM loop
# ran ~20% faster without them (500-frame trials, 2 cores: per-frame stage 188 -> 149 ms clean,
# 358 -> 297 ms noisy), and in float32 the YNN fusions returned wrong sums past ~32k outputs
# (tests/test_fk_float32.py). Flags a user already set win.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_use_xnnpack=false")


def tune_xla_cpu(environ=os.environ) -> str:
    """Append :data:`CPU_FLAGS` to ``XLA_FLAGS`` where the user did not set them; returns the
    result. Acts only if called before JAX's first computation (flags are read when the
    backend starts). Set ``SIMSPINE_JAX_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` alone."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("SIMSPINE_JAX_KEEP_XLA_FLAGS"):
        return flags
    have = {f.split("=")[0] for f in flags.split()}
    add = [f for f in CPU_FLAGS if f.split("=")[0] not in have]
    flags = " ".join([flags, *add]).strip()
    environ["XLA_FLAGS"] = flags
    return flags
