"""A kinematics-constrained lifter: the network predicts the default SimSpine model's coordinates,
and keypoints come out of our differentiable FK inside the network.

Head outputs per sample, after the :class:`~.models.MLPTrunk`:

* the independent coordinates of the model except the six pelvis ones, each squashed into its
  range by a sigmoid (:meth:`KinematicLifter.coordinates`): joint limits hold by construction,
  and the coupled lumbar joints follow their couplers because FK applies them;
* the root orientation, as the rotation from the pelvis frame to the camera (6D representation of
  Zhou et al. 2019, Gram-Schmidt): the model's pelvis angles are world-frame, and the camera's
  extrinsics are no input of a lifter, so the orientation is predicted camera-relative;
* optionally one uniform scale factor of the skeleton, in ``[1 / max_scale, max_scale]``.

Keypoints = ``s * R_cam_pelvis @ (FK(q) - FK(q)[Hip])``: root-relative, in metres, the 37 model
markers (SIMSPINE37 order) restricted to the configured joint set. Bone lengths are the model's
(times ``s``). Trained end to end through FK with the same standardised keypoint loss as the
plain lifter, plus ``angle_weight`` times the squared coordinate error when the data has
coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .._resources import default_model_path
from ..fk import marker_positions
from ..keypoints import SIMSPINE37
from ..model import KinematicTree, load_model
from .config import ModelConfig
from .models import (
    MLPTrunk,
    joint_indices,
    normalise_2d,
    root_position,
    root_relative,
    target_mse,
)

__all__ = ["KinematicHead", "KinematicLifter", "default_tree", "rotation_6d"]

PELVIS = ("pelvis_tilt", "pelvis_list", "pelvis_rotation", "pelvis_tx", "pelvis_ty", "pelvis_tz")


def default_tree(dtype=jnp.float32) -> KinematicTree:
    """The bundled SimSpine model (float32 unless asked), its 37 markers in SIMSPINE37 order."""
    tree = load_model(default_model_path(), dtype=dtype)
    if tuple(tree.marker_names) != SIMSPINE37:
        raise RuntimeError("the default model's markers are not the SIMSPINE37 keypoints in order")
    return tree


def rotation_6d(a: jax.Array) -> jax.Array:
    """Rotation matrices from two 3-vectors (Gram-Schmidt; columns b1, b2, b1 x b2).

    Shape: (*b, 6) -> (*b, 3, 3).
    """
    a1, a2 = a[..., 0:3], a[..., 3:6]
    b1 = a1 / jnp.sqrt(jnp.sum(a1 * a1, -1, keepdims=True) + 1e-12)
    a2 = a2 - jnp.sum(b1 * a2, -1, keepdims=True) * b1
    b2 = a2 / jnp.sqrt(jnp.sum(a2 * a2, -1, keepdims=True) + 1e-12)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-1)


# 6D start of the pelvis -> camera rotation: columns R e_x = (0, 0, -1), R e_y = (0, -1, 0)
_UPRIGHT_6D = (0.0, 0.0, -1.0, 0.0, -1.0, 0.0)


class KinematicHead(nn.Module):
    """Trunk + linear head. Shape: (B, F) -> raw coordinates (B, n_free), 6D (B, 6), scale (B,).

    The head starts from a small kernel and biases that give the model's default pose (clipped
    inside its range), scale 1 and the orientation of a person upright before an upright camera
    facing it (image y points down: pelvis up -> camera -y, pelvis forward -> camera -z). The
    identity start put the up axis antipodal to every target, through Gram-Schmidt's singular
    point: a 2,000-step run stalled at a keypoint loss of 1.5 with MPJPE 151 mm against
    P-MPJPE 27 mm (its orientations were wrong).
    """

    n_free: int
    bias_q: tuple  # logits of the initial coordinates (static, from the model)
    hidden: int
    blocks: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        h = MLPTrunk(self.hidden, self.blocks, self.dropout)(x, train=train)
        bias0 = np.concatenate([np.asarray(self.bias_q), _UPRIGHT_6D, [0.0]])
        out = nn.Dense(
            self.n_free + 7,
            kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal"),
            bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias0, dtype),
        )(h)
        return out[:, : self.n_free], out[:, self.n_free : self.n_free + 6], out[:, -1]


@dataclass(frozen=True, eq=False)
class KinematicLifter:
    """The constrained lifter, with the same interface as :class:`~.models.BaselineLifter`."""

    config: ModelConfig
    stats: dict
    angle_weight: float  # TrainConfig.angle_weight
    dtype: object = jnp.float32  # of the model and the head's outputs (float64 for gradient checks)

    def __post_init__(self):
        # model constants are made here, outside any trace (jit of a step may be the first use)
        _ = self.tree, self.free, self.limits, self.q_init

    @property
    def joints(self) -> np.ndarray:
        return joint_indices(self.config.joints)

    @property
    def root(self) -> int:
        return root_position(self.config.joints)

    @cached_property
    def tree(self) -> KinematicTree:
        return default_tree(self.dtype)

    @cached_property
    def free(self) -> np.ndarray:
        """Positions among the independent coordinates of the predicted (non-pelvis) ones."""
        names = self.tree.independent_names
        return np.array([i for i, n in enumerate(names) if n not in PELVIS], np.int64)

    @cached_property
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Ranges (lo, hi) of the predicted coordinates. Shape: (n_free,) each."""
        rng = np.asarray(self.tree.coord_range)[self.tree.topology.indep_coord[self.free]]
        dt = np.dtype(self.dtype)
        return rng[:, 0].astype(dt), rng[:, 1].astype(dt)

    @cached_property
    def q_init(self) -> np.ndarray:
        """Logits of the head's initial coordinates: the model defaults, kept 5 % inside range."""
        lo, hi = self.limits
        q0 = np.asarray(self.tree.coord_default)[self.tree.topology.indep_coord[self.free]]
        f = np.clip((q0 - lo) / (hi - lo), 0.05, 0.95)
        return np.log(f / (1 - f))

    @property
    def module(self) -> KinematicHead:
        c = self.config
        return KinematicHead(
            len(self.free), tuple(self.q_init.tolist()), c.hidden, c.blocks, c.dropout
        )

    def init(self, rng: jax.Array) -> dict:
        x = jnp.zeros((2, 2 * len(self.joints)), self.dtype)
        variables = self.module.init({"params": rng}, x, train=False)
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.dtype), dict(variables))

    # -- the network
    def _forward(self, variables, batch, *, train: bool, rng=None):
        """Coordinates (B, n_free), root-relative keypoints of the set (B, J, 3), batch stats."""
        x = normalise_2d(
            self.stats, self.joints, batch["keypoints_2d"], batch["confidence"], batch["image_size"]
        )
        if train:
            (raw, r6, rs), upd = self.module.apply(
                variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
            )
            new_stats = upd["batch_stats"]
        else:
            raw, r6, rs = self.module.apply(variables, x, train=False)
            new_stats = variables["batch_stats"]
        q_free, kp = self.keypoints_from_head(raw, r6, rs)
        return q_free, kp, new_stats

    def coordinates(self, raw: jax.Array) -> jax.Array:
        """Squashed coordinates inside their ranges. Shape: (B, n_free).

        ``lo (1 - s) + hi s`` with ``s = sigmoid(raw)``, clipped against rounding (the clip's
        gradient is 1 inside the range): ``lo + (hi - lo) s`` overshot ``hi`` in float64.
        """
        lo, hi = self.limits
        s = jax.nn.sigmoid(raw)
        return jnp.clip(lo * (1 - s) + hi * s, lo, hi)

    def keypoints_from_head(self, raw, r6, rs):
        """Head outputs -> (coordinates (B, n_free), keypoints (B, J, 3) root-relative, metres)."""
        q_free = self.coordinates(raw)
        q = jnp.zeros((raw.shape[0], self.tree.n_indep), q_free.dtype).at[:, self.free].set(q_free)
        # one frame's FK vmapped over the batch: the batch size stays out of FK's Python code
        # (its block size switch), so a symbolic ONNX batch axis traces through
        markers = jax.vmap(lambda qi: marker_positions(self.tree, qi))(q)  # (B, 37, 3), pelvis
        assert markers.shape == (raw.shape[0], len(SIMSPINE37), 3)
        x = markers[:, self.joints]
        rel = x - x[:, self.root : self.root + 1]
        R = rotation_6d(r6)  # (B, 3, 3) pelvis -> camera
        out = jnp.einsum("bij,bkj->bki", R, rel)
        if self.config.predict_scale:
            out = out * (self.config.max_scale ** jnp.tanh(rs))[:, None, None]
        return q_free, out

    # -- the lifter interface
    def loss(self, params, batch_stats, batch, rng):
        q_free, kp, new_stats = self._forward(
            {"params": params, "batch_stats": batch_stats}, batch, train=True, rng=rng
        )
        pred = jnp.delete(kp, self.root, axis=1, assume_unique_indices=True)
        rel = root_relative(batch["keypoints_3d"], self.joints, self.root)
        err = (pred - rel) / self.stats["out_std"]
        kp_loss = target_mse(err, batch, self.joints, self.root)
        loss = kp_loss
        metrics = {"keypoint_loss": kp_loss}
        if self.angle_weight > 0 and "coordinates" in batch:
            angle_loss = jnp.mean((q_free - batch["coordinates"][:, self.free]) ** 2)
            loss = loss + self.angle_weight * angle_loss
            metrics["angle_loss"] = angle_loss
        metrics["loss"] = loss
        return loss, (new_stats, metrics)

    def predict(self, variables, kp2d, conf, image_size) -> jax.Array:
        """Root-relative keypoints of the joint set in metres, root at 0. Shape: (B, J, 3)."""
        batch = {"keypoints_2d": kp2d, "confidence": conf, "image_size": image_size}
        return self._forward(variables, batch, train=False)[1]

    def predict_coordinates(self, variables, kp2d, conf, image_size) -> jax.Array:
        """The predicted independent coordinates (pelvis ones 0). Shape: (B, n_indep)."""
        batch = {"keypoints_2d": kp2d, "confidence": conf, "image_size": image_size}
        q_free = self._forward(variables, batch, train=False)[0]
        n = q_free.shape[0]
        return jnp.zeros((n, self.tree.n_indep), q_free.dtype).at[:, self.free].set(q_free)
