#!/usr/bin/env bash
# FK and IK at scale on the device machine, in one call of < 8 minutes:
#   device.run command: bash experiments/gpu_check.sh > $OUT/gpu_check.jsonl
# The machine's own python3 has jax (CUDA), numpy and scipy; this checkout goes on PYTHONPATH
# (no install, no OpenSim). JSON lines on stdout (one per measurement), notes on stderr.
# On a CPU machine it runs the smoke sizes: bash experiments/gpu_check.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SIMSPINE_JAX_XLA_CACHE=0
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader >&2 || true
# 420 s of measurements, growing batches until one step passes 30 s or memory runs out
exec timeout 460 "$PY" experiments/gpu_check.py --budget 420 --step-budget 30 "$@"
