"""Optional bridge to the ``opensim`` package: a reference FK, ScaleTool scaling, model stripping.

Nothing here is needed to export or run a model: :mod:`simspine_jax.export` reads ``.osim`` XML
directly. This subpackage exists to cross-check our kinematics against OpenSim's own and to
prepare models with OpenSim's tools. ``opensim`` is imported lazily inside the functions, so
``import simspine_jax`` (and even ``import simspine_jax.osim_bridge``) never imports it.
"""

from __future__ import annotations

from ._common import import_opensim, pose2sim_setup_dir
from .reference import OpenSimReference
from .scale import scale_model
from .strip import strip_to_kinematics

__all__ = [
    "OpenSimReference",
    "import_opensim",
    "pose2sim_setup_dir",
    "scale_model",
    "strip_to_kinematics",
]
