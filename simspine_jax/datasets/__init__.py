"""Datasets for 2D-to-3D spine lifting, all in one array layout (:class:`LiftingData`).

Sources (:func:`load_dataset`):

* ``"synthetic"``: the default model moving through Human3.6M-named actions, seen by the
  Human3.6M cameras (:mod:`.synthetic`; no files needed);
* ``"simspine"``: the SimSpine release, its HDF5 (``simspine.h5``) or its MMPose-style
  annotation files (``annotations/simspine_{split}.npz``) (:mod:`.simspine`);
* ``"simspine_trc"``: SimSpine's per-subject TRC/MOT folders (:mod:`.simspine`);
* ``"h36m"``: VideoPose3D's Human3.6M files ``data_3d_h36m.npz`` + ``data_2d_h36m_*.npz``
  (:mod:`.h36m`), the 15 of our 37 keypoints Human3.6M has.

Only numpy is imported here; JAX is needed by the synthetic generator and :class:`Batcher`'s
device transfer.
"""

from __future__ import annotations

from ._data import SPLITS, TEST_SUBJECTS, TRAIN_SUBJECTS, LiftingData, concatenate
from .batcher import Batcher

__all__ = [
    "SOURCES",
    "SPLITS",
    "TEST_SUBJECTS",
    "TRAIN_SUBJECTS",
    "Batcher",
    "LiftingData",
    "concatenate",
    "load_dataset",
]

SOURCES = ("synthetic", "simspine", "simspine_trc", "h36m")


def load_dataset(
    source: str,
    root=None,
    split: str = "train",
    *,
    sample_hz: float | None = None,
    seed: int = 0,
    subjects=None,
    **kw,
) -> LiftingData:
    """Load ``split`` ("train": S1, S5, S6, S7, S8; "test": S9, S11) of a lifting dataset.

    ``sample_hz``: frames per second kept. None means the source's default: for the real
    datasets 1 Hz for "train" (as the paper trains) and every frame for "test", for
    ``"synthetic"`` 2 Hz. ``subjects`` overrides the split's subjects. Other keywords go to
    the source's loader (:func:`.synthetic.generate`, :func:`.simspine.load_simspine`,
    :func:`.simspine.load_simspine_trc`, :func:`.h36m.load_h36m`).
    """
    from ..errors import InputError

    if source == "synthetic":
        from .synthetic import generate

        if sample_hz is not None:
            kw["sample_hz"] = sample_hz
        return generate(split, subjects=subjects, seed=seed, **kw)
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; known: {', '.join(SOURCES)}", field="source")
    if root is None:
        raise InputError(f"the {source!r} dataset needs a root path", field="root")
    if sample_hz is None and split == "train":
        sample_hz = 1.0
    if source == "simspine":
        from .simspine import load_simspine

        return load_simspine(root, split, sample_hz=sample_hz, subjects=subjects, **kw)
    if source == "simspine_trc":
        from .simspine import load_simspine_trc

        return load_simspine_trc(root, split, sample_hz=sample_hz, subjects=subjects, **kw)
    from .h36m import load_h36m

    return load_h36m(root, split, sample_hz=sample_hz, subjects=subjects, **kw)
