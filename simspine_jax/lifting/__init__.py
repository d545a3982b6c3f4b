"""2D-to-3D lifting in Flax (``flax.linen``): SimpleBaseline3D and a kinematics-constrained lifter.

Imported on demand (``import simspine_jax`` does not import Flax). The pieces:

* :mod:`.config`: the TOML config as frozen dataclasses (``configs/default.toml``);
* :mod:`.models`: SimpleBaseline3D and its normalisation (:class:`BaselineLifter`);
* :mod:`.kinematic`: the lifter whose keypoints come from our FK (:class:`KinematicLifter`);
* :mod:`.train`: ``train_and_evaluate(config, workdir)`` with orbax checkpoints;
* :mod:`.evaluate`: MPJPE / P-MPJPE per region and action, validity measures;
* :mod:`.onnx`: export to ONNX and inference through onnxruntime.
"""

from __future__ import annotations

from .config import LiftingConfig, load_config
from .kinematic import KinematicLifter
from .models import BaselineLifter, SimpleBaseline3D

__all__ = [
    "BaselineLifter",
    "KinematicLifter",
    "LiftingConfig",
    "SimpleBaseline3D",
    "load_config",
    "make_lifter",
]


def make_lifter(config: LiftingConfig, stats: dict):
    """The lifter ``config`` asks for, normalised by ``stats`` (:func:`.models.compute_stats`)."""
    if config.model.kind == "kinematic":
        return KinematicLifter(config.model, stats, config.train.angle_weight)
    return BaselineLifter(config.model, stats)
