"""Child process of :func:`simspine_jax.osim_bridge.ik.run_opensim_ik_subprocess`.

    python -m simspine_jax.osim_bridge._ik_worker JOB.json

``JOB.json`` holds ``kwargs`` (the arguments of :func:`run_opensim_ik`, paths absolute),
``result`` (the ``.npz`` to write) and ``error`` (the ``.json`` to write if the inputs are bad).
On success the arrays of the result are written to ``result`` atomically, with the scalars and
names as a JSON string under ``meta``; exit code 0. An :class:`InputError` is written to
``error`` (type, message, fields) and exits with code 2; any other failure leaves its
traceback on stderr and exits with code 1. Nothing here runs JAX: OpenSim has the process to
itself.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_open, atomic_write_text
from .ik import run_opensim_ik

ARRAY_KEYS = ("q_full", "motion_types", "time", "marker_rms", "marker_max")
META_KEYS = (
    "coordinate_names", "wall_s", "cpu_s", "total_s", "frames_per_s", "n_frames", "accuracy",
    "mot_path", "errors_path",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    job = json.loads(Path(argv[0]).read_text())
    kwargs = job["kwargs"]
    if kwargs.get("time_range") is not None:  # JSON made the tuple a list
        kwargs["time_range"] = tuple(kwargs["time_range"])
    try:
        r = run_opensim_ik(**kwargs)
    except InputError as e:
        fields = dict(path=e.path, line=e.line, frame=e.frame, field=e.field)
        info = dict(type=type(e).__name__, message=str(e), **fields)
        atomic_write_text(job["error"], json.dumps(info))
        traceback.print_exc()
        return 2
    arrays = {k: np.asarray(r[k]) for k in ARRAY_KEYS}
    arrays.update({f"marker_errors_{k}": np.asarray(v) for k, v in r["marker_errors"].items()})
    meta = {k: r[k] for k in META_KEYS}
    meta["coordinate_names"] = list(meta["coordinate_names"])
    with atomic_open(job["result"], "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
