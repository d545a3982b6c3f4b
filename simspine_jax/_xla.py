"""XLA CPU settings the command line applies before JAX starts its backend."""

from __future__ import annotations

import os
import time

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


# XLA CPU maps every compiled kernel into memory on its own (about 3 maps per fusion; one IK
# program of the SimSpine model: 2,600-3,800 maps), and the kernel allows a process 65,530
# (vm.max_map_count): a long-lived process compiling many programs (a test session, a
# notebook) segfaults inside XLA's compiler once it runs out. Past this fraction of the limit,
# JAX's compiled programs are dropped before the next IK compile.
MAP_FRACTION = 0.7


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return None


def release_if_near_map_limit(fraction: float = MAP_FRACTION) -> bool:
    """Drop JAX's compiled programs (``jax.clear_caches``) when this process holds more than
    ``fraction`` of the kernel's memory-map limit; returns whether it did. Linux only (elsewhere
    nothing is read and nothing happens)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    used = _count_lines("/proc/self/maps")
    if used is None or used <= fraction * limit:
        return False
    import gc
    import warnings

    import jax

    warnings.warn(
        f"this process holds {used} of the kernel's {limit} memory maps (vm.max_map_count; "
        "XLA CPU maps each compiled kernel separately): dropping JAX's compiled programs "
        "before compiling more, which would crash the process at the limit",
        RuntimeWarning,
        stacklevel=3,
    )
    jax.clear_caches()
    gc.collect()
    return True


CHECK_INTERVAL_S = 1.0
_last_check = [-float("inf")]


def release_if_near_map_limit_throttled(fraction: float = MAP_FRACTION) -> bool:
    """:func:`release_if_near_map_limit` at most once per ``CHECK_INTERVAL_S`` seconds: reading
    ``/proc/self/maps`` of a process with thousands of maps takes ~2-4 ms, a noticeable share of
    a warm IK call of a few hundred frames, while maps only grow by compiling, which takes
    seconds per program (one IK program adds ~3,000 maps; the threshold leaves ~19,000)."""
    now = time.monotonic()
    if now - _last_check[0] < CHECK_INTERVAL_S:
        return False
    _last_check[0] = now
    return release_if_near_map_limit(fraction)
