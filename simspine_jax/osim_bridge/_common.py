"""Shared helpers: the lazy ``opensim`` import and the Pose2Sim model folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

POSE2SIM_PIN = "pose2sim==0.10.49"

_LOG_LEVEL_SET = False


def import_opensim(quiet: bool = True):
    """Import and return the ``opensim`` module (raises ImportError with a hint if missing).

    With ``quiet`` (the default) OpenSim's logger is set to 'Error' the first time, so loading
    a model prints neither its progress nor a warning per missing display mesh (models copied
    away from their Geometry folder), and the log file OpenSim would create in the current
    directory (``opensim.log``) is switched off; later calls leave the logger alone.
    """
    global _LOG_LEVEL_SET
    try:
        import opensim
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this function needs the 'opensim' package (pip install opensim==4.6)"
        ) from e
    if quiet and not _LOG_LEVEL_SET:
        opensim.Logger.removeFileSink()  # else every process writes ./opensim.log
        opensim.Logger.setLevelString("Error")
        _LOG_LEVEL_SET = True
    return opensim


def pose2sim_setup_dir() -> Path:
    """The ``OpenSim_Setup`` folder shipped inside the Pose2Sim package (models, marker sets).

    Located with ``importlib.util.find_spec`` so Pose2Sim itself (and its heavy dependencies) is
    never imported.
    """
    spec = importlib.util.find_spec("Pose2Sim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Pose2Sim package is not installed; its OpenSim models are needed here. "
            f"Install just the files with: pip install --no-deps {POSE2SIM_PIN}"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "OpenSim_Setup"
    if not d.is_dir():
        raise FileNotFoundError(
            f"Pose2Sim is installed but has no OpenSim_Setup folder at {d}; "
            f"install the tested version with: pip install --no-deps {POSE2SIM_PIN}"
        )
    return d
