"""SimpleBaseline3D (Martinez et al. 2017) in ``flax.linen``, and the normalisation around it.

The network maps normalised 2D keypoints to standardised root-relative 3D keypoints:

* inputs: pixels -> screen coordinates (``x / w * 2 - 1``, ``y / w * 2 - h / w``, as VideoPose3D
  does), then standardised per joint coordinate with the training set's mean and std; a dropped
  keypoint (confidence 0) becomes 0, the training mean;
* targets: camera-frame keypoints minus the root (``Hip``), the root itself left out, standardised
  per joint coordinate; at inference the output is un-standardised and the root reinserted at 0.

Variants: ``spine15`` (the 15 spine keypoints in and out) and ``body37`` (all 37 in and out,
scored on the spine ones). :class:`BaselineLifter` bundles the Flax module with its statistics
and exposes ``init`` / ``loss`` / ``predict``, the interface :mod:`.train` and :mod:`.evaluate`
use for both lifters.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..keypoints import SIMSPINE37, index_of, spine15_indices
from .config import ModelConfig

__all__ = [
    "BaselineLifter",
    "MLPTrunk",
    "SimpleBaseline3D",
    "compute_stats",
    "joint_indices",
    "normalise_2d",
]

ROOT = "Hip"


def joint_indices(joints: str) -> np.ndarray:
    """Indices into SIMSPINE37 of a joint set (``spine15``: SPINE15 order, ``body37``: all)."""
    if joints == "spine15":
        return spine15_indices()
    if joints == "body37":
        return np.arange(len(SIMSPINE37))
    raise ValueError(f"unknown joint set {joints!r}")


def root_position(joints: str) -> int:
    """Position of the root keypoint within the joint set."""
    return int(np.nonzero(joint_indices(joints) == index_of(ROOT))[0][0])


def screen_normalise(kp2d: jax.Array, image_size: jax.Array) -> jax.Array:
    """Pixels -> [-1, 1] along the width, aspect kept. Shape: (*b, J, 2), (*b, 2) -> (*b, J, 2)."""
    w = image_size[..., None, 0:1]
    h = image_size[..., None, 1:2]
    return jnp.concatenate([kp2d[..., 0:1] / w * 2 - 1, kp2d[..., 1:2] / w * 2 - h / w], axis=-1)


def normalise_2d(stats: dict, joints: np.ndarray, kp2d, conf, image_size) -> jax.Array:
    """Network input from pixels. Shapes: (B, 37, 2), (B, 37), (B, 2) -> (B, 2 * len(joints))."""
    u = screen_normalise(kp2d[:, joints], image_size)
    z = (u - stats["in_mean"]) / stats["in_std"]
    z = jnp.where(conf[:, joints, None] > 0, z, 0.0)
    # no -1 in the shape: the ONNX export's batch axis is symbolic
    return z.reshape(z.shape[0], 2 * len(joints)).astype(stats["in_mean"].dtype)


def root_relative(kp3d, joints: np.ndarray, root: int) -> jax.Array:
    """Keypoints of the set minus its root, root left out. Shape: (B, 37, 3) -> (B, J - 1, 3)."""
    x = kp3d[:, joints]
    rel = x - x[:, root : root + 1]
    return jnp.delete(rel, root, axis=1, assume_unique_indices=True)


def target_mse(err: jax.Array, batch, joints: np.ndarray, root: int) -> jax.Array:
    """Mean squared ``err`` (B, J - 1, 3) over the keypoints with 3D ground truth: all, or
    where ``batch["valid_3d"]`` (B, 37) marks it (and the root) as present (Human3.6M has 15)."""
    if "valid_3d" not in batch:
        return jnp.mean(err**2)
    v = batch["valid_3d"][:, joints]
    v = jnp.delete(v * v[:, root : root + 1], root, axis=1, assume_unique_indices=True)
    return jnp.sum(err**2 * v[..., None]) / jnp.maximum(3.0 * jnp.sum(v), 1.0)


def compute_stats(data, joints: str) -> dict:
    """Per joint coordinate mean and std of the inputs and targets (numpy float32 arrays).

    ``data`` is a :class:`~simspine_jax.datasets.LiftingData` (the training split). Only observed
    keypoints count for the input statistics. Shapes: in_* (J, 2), out_* (J - 1, 3).
    """
    idx = joint_indices(joints)
    root = root_position(joints)
    u = np.asarray(
        screen_normalise(
            np.asarray(data.keypoints_2d, np.float64), np.asarray(data.image_size, np.float64)
        )
    )[:, idx]
    w = (np.asarray(data.confidence)[:, idx] > 0)[..., None].astype(np.float64)
    n = np.maximum(w.sum(0), 1.0)
    in_mean = (u * w).sum(0) / n
    in_std = np.sqrt((((u - in_mean) ** 2) * w).sum(0) / n)
    x = np.asarray(data.keypoints_3d, np.float64)[:, idx]
    rel = np.delete(x - x[:, root : root + 1], root, axis=1)
    v = np.ones(x.shape[:2]) if data.valid_3d is None else np.asarray(data.valid_3d)[:, idx]
    v = np.delete(v * v[:, root : root + 1], root, axis=1)[..., None]  # (N, J - 1, 1)
    m = np.maximum(v.sum(0), 1.0)
    out_mean = (rel * v).sum(0) / m
    out_std = np.sqrt((((rel - out_mean) ** 2) * v).sum(0) / m)
    stats = {
        "in_mean": in_mean,
        "in_std": np.maximum(in_std, 1e-3),
        "out_mean": out_mean,
        "out_std": np.maximum(out_std, 1e-4),
    }
    return {k: v.astype(np.float32) for k, v in stats.items()}


class MLPTrunk(nn.Module):
    """Linear(hidden) -> BN -> ReLU -> dropout, then ``blocks`` residual blocks of two such layers.

    Shape: (B, F) -> (B, hidden).
    """

    hidden: int
    blocks: int
    dropout: float

    def _layer(self, x, train: bool):
        x = nn.Dense(self.hidden, kernel_init=nn.initializers.kaiming_normal())(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = nn.relu(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = self._layer(x, train)
        for _ in range(self.blocks):
            x = x + self._layer(self._layer(x, train), train)
        return x


class SimpleBaseline3D(nn.Module):
    """Martinez et al.'s lifter: MLPTrunk, then Linear(n_out). Shape: (B, F) -> (B, n_out)."""

    n_out: int
    hidden: int
    blocks: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        h = MLPTrunk(self.hidden, self.blocks, self.dropout)(x, train=train)
        return nn.Dense(self.n_out)(h)


@dataclass(frozen=True, eq=False)
class BaselineLifter:
    """SimpleBaseline3D with its normalisation: the lifter interface of train/evaluate/onnx.

    ``stats`` comes from :func:`compute_stats` on the training split (saved in the checkpoint).
    """

    config: ModelConfig
    stats: dict

    @property
    def joints(self) -> np.ndarray:
        return joint_indices(self.config.joints)

    @property
    def root(self) -> int:
        return root_position(self.config.joints)

    @property
    def module(self) -> SimpleBaseline3D:
        c = self.config
        return SimpleBaseline3D((len(self.joints) - 1) * 3, c.hidden, c.blocks, c.dropout)

    def init(self, rng: jax.Array) -> dict:
        """Parameters and batch-norm statistics: {"params": ..., "batch_stats": ...}."""
        x = jnp.zeros((2, 2 * len(self.joints)), jnp.float32)
        return dict(self.module.init({"params": rng}, x, train=False))

    def _standardised(self, variables, batch, *, train: bool, rng=None):
        x = normalise_2d(
            self.stats, self.joints, batch["keypoints_2d"], batch["confidence"], batch["image_size"]
        )
        if train:
            out, upd = self.module.apply(
                variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
            )
            return out.reshape(x.shape[0], len(self.joints) - 1, 3), upd["batch_stats"]
        out = self.module.apply(variables, x, train=False)
        return out.reshape(x.shape[0], len(self.joints) - 1, 3), variables["batch_stats"]

    def target(self, batch) -> jax.Array:
        """Standardised root-relative targets. Shape: (B, J - 1, 3)."""
        rel = root_relative(batch["keypoints_3d"], self.joints, self.root)
        return (rel - self.stats["out_mean"]) / self.stats["out_std"]

    def loss(self, params, batch_stats, batch, rng):
        """Mean squared error of the standardised targets: (loss, (batch_stats, metrics))."""
        pred, new_stats = self._standardised(
            {"params": params, "batch_stats": batch_stats}, batch, train=True, rng=rng
        )
        loss = target_mse(pred - self.target(batch), batch, self.joints, self.root)
        return loss, (new_stats, {"loss": loss})

    def predict(self, variables, kp2d, conf, image_size) -> jax.Array:
        """Root-relative keypoints of the joint set in metres, root at 0. Shape: (B, J, 3)."""
        batch = {"keypoints_2d": kp2d, "confidence": conf, "image_size": image_size}
        z, _ = self._standardised(variables, batch, train=False)
        rel = z * self.stats["out_std"] + self.stats["out_mean"]
        return jnp.insert(rel, self.root, 0.0, axis=1)
