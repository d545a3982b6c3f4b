"""Inverse kinematics: whole-sequence batched Levenberg-Marquardt with smoothness penalties.

Modules: :mod:`.problem` (options, parameters, data, results, the residual in OpenSim's
objective), :mod:`.lm` (the one LM kernel with bound constraints and stop tests),
:mod:`.per_frame` (robust start and the coarse-to-fine per-frame stage), :mod:`.smooth` (the
smoothing stage), :mod:`.report` (errors, costs, sensitivities), :mod:`.layer` (the implicit
differentiable layer), :mod:`.solve` (public entry points, segments, compiled-program cache).
"""

from .._banded import banded_solve, block_tridiag_solve
from .layer import ik_layer
from .per_frame import schedule as _schedule
from .problem import (
    CONVERGED,
    FEW_MARKERS,
    MAX_ITERS,
    STALLED,
    STATUS_NAMES,
    WEAK_SENSITIVITY,
    IKOptions,
    IKParams,
    IKProblem,
    IKResult,
    IKStatus,
    bucket_length,
    make_problem,
)
from .problem import residual as _residual
from .solve import CPU_SEQUENCE_GROUP, solve_ik, solve_ik_batch

__all__ = [
    "CONVERGED",
    "CPU_SEQUENCE_GROUP",
    "FEW_MARKERS",
    "MAX_ITERS",
    "STALLED",
    "STATUS_NAMES",
    "WEAK_SENSITIVITY",
    "IKOptions",
    "IKParams",
    "IKProblem",
    "IKResult",
    "IKStatus",
    "banded_solve",
    "block_tridiag_solve",
    "bucket_length",
    "ik_layer",
    "make_problem",
    "solve_ik",
    "solve_ik_batch",
    "_residual",
    "_schedule",
]
