"""ONNX export of a trained lifter (jax2onnx) and inference through onnxruntime.

The exported graph is the whole inference function: pixels in, root-relative keypoints in metres
out, the normalisation statistics and trained weights baked in as constants. Inputs (a dynamic
batch ``B``, float32): ``keypoints_2d`` (B, 37, 2), ``confidence`` (B, 37), ``image_size``
(B, 2); output ``keypoints_3d`` (B, J, 3) for the lifter's joint set. The constrained lifter is
exported the same way, its FK included (gathers, scatters, sines and cosines of the level-by-level
composition of the model's joint transforms).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..keypoints import SIMSPINE37

__all__ = ["ONNX_INPUTS", "export_lifter", "export_workdir", "onnx_predict"]

ONNX_INPUTS = ("keypoints_2d", "confidence", "image_size")


def export_lifter(lifter, variables, path: str | Path) -> Path:
    """Write the lifter's inference function as an ONNX model at ``path`` (float32)."""
    import jax
    import jax.numpy as jnp
    from jax2onnx import to_onnx

    _load_jax_plugins()

    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables)

    def infer(kp2d, conf, image_size):
        return lifter.predict(variables, kp2d, conf, image_size).astype(jnp.float32)

    k = len(SIMSPINE37)
    specs = [("B", k, 2), ("B", k), ("B", 2)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_onnx(
        infer,
        specs,
        model_name=f"simspine_{type(lifter).__name__}_{lifter.config.joints}",
        input_names=list(ONNX_INPUTS),
        output_names=["keypoints_3d"],
        return_mode="file",
        output_path=str(path),
    )
    return path


def _load_jax_plugins() -> None:
    """Register jax2onnx's plugins for JAX primitives and Flax layers, those a lifter uses.

    Its first conversion otherwise imports every plugin module, examples included, some of
    which build and compile equinox models at import: 25 s of a 26 s export of a 1024-wide MLP
    (measured, jax2onnx 0.17.1); the JAX and Flax plugins alone load in a few seconds. This uses the
    plugin system's own directory walk and flag (pyproject pins jax2onnx's minor version); if
    they are not there, the conversion loads all plugins as usual.
    """
    from jax2onnx.plugins import plugin_system as ps

    # a warning per optional plugin whose library is absent (equinox, dm_pix) is noise here
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    walk = getattr(ps, "_import_tree", None)
    if walk is None or getattr(ps, "_already_imported_plugins", True):
        return
    for tree in ("jax", "flax"):  # flax: linen's Dense checks kernel shapes against the input
        walk(Path(ps.__file__).parent / tree, f"jax2onnx.plugins.{tree}")
    ps._already_imported_plugins = True


def onnx_predict(path: str | Path, keypoints_2d, confidence, image_size) -> np.ndarray:
    """Run an exported lifter with onnxruntime (CPU). Shape: (B, J, 3), metres."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise InputError("no such ONNX file", path=str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "keypoints_2d": np.asarray(keypoints_2d, np.float32),
        "confidence": np.asarray(confidence, np.float32),
        "image_size": np.asarray(image_size, np.float32),
    }
    return sess.run(["keypoints_3d"], feeds)[0]


def export_workdir(workdir, out) -> Path:
    """Export the latest checkpoint of a ``train-lifter`` workdir to ``out`` (.onnx)."""
    from .train import load_trained

    _, lifter, variables, _ = load_trained(workdir)
    return export_lifter(lifter, variables, out)
