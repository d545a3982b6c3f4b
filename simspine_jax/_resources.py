"""Paths of the bundled default data: the SimSpine model, its 37-keypoint marker set, the IK setup.

They are package data in ``simspine_jax/data/`` (shipped in the wheel, see ``pyproject.toml``)
found with ``importlib.resources``, so they work from a source checkout, an editable install and
an installed wheel alike. How they were made: ``models/README.md`` in the source repository.

A wheel installed by pip unpacks into a real directory, where these are the files themselves.
Only when the package is imported from a zip archive is a file first copied out to a temporary
file, which lives until the process exits (once per file and process).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib.resources import as_file, files
from pathlib import Path

DEFAULT_MODEL_FILE = "simspine_default.npz"
DEFAULT_OSIM_FILE = "simspine_default.osim"
DEFAULT_MARKERS_FILE = "simspine37_markers.xml"
DEFAULT_IK_SETUP_FILE = "IK_Setup_SimSpine37.xml"

# contexts of files copied out of a zip archive, closed (files removed) at exit
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


@functools.cache
def data_path(name: str) -> Path:
    """A real filesystem path of ``simspine_jax/data/<name>``; raises if the package lacks it."""
    resource = files("simspine_jax") / "data" / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"simspine_jax/data/{name} is missing from the installed package "
            f"({files('simspine_jax')}); reinstall simspine-jax"
        )
    if isinstance(resource, Path):  # a plain directory: the usual case
        return resource
    return _extracted.enter_context(as_file(resource))


def default_model_path() -> Path:
    """The bundled SimSpine kinematic tree (``.npz``; loads without OpenSim)."""
    return data_path(DEFAULT_MODEL_FILE)


def default_osim_path() -> Path:
    """The bundled SimSpine OpenSim model (``.osim``, kinematics only)."""
    return data_path(DEFAULT_OSIM_FILE)


def default_markers_path() -> Path:
    """The bundled OpenSim MarkerSet of the 37 SimSpine keypoints (``.xml``)."""
    return data_path(DEFAULT_MARKERS_FILE)


def default_ik_setup_path() -> Path:
    """The bundled OpenSim IK setup for the 37 keypoints (Pose2Sim-style weights, L5_S1 task)."""
    return data_path(DEFAULT_IK_SETUP_FILE)
