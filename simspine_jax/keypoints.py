"""The SimSpine 37-keypoint definition (SimSpine, CVPR 2026, Table B3).

The first 26 keypoints are the AlphaPose Halpe26 set; the last 11 (``Spine_01`` ...
``Neck_03``) add vertebra-level detail along the spine. Pure Python + numpy: importing this
module pulls in neither JAX nor OpenSim.

Conventions
-----------
* ``SIMSPINE37`` fixes the keypoint order used for every ``(..., 37, 3)`` array.
* ``SIMSPINE37_PARENT`` maps each keypoint to its parent in the skeleton tree (root ``Hip``,
  parent ``None``); ``bones()`` lists the ``(child, parent)`` pairs in keypoint order.
* ``SPINE15`` is the subset scored by the spine metrics; ``REGIONS`` splits it into
  lumbar / thoracic / cervical.
* ``KEYPOINT_BODY`` names the OpenSim body (of Pose2Sim's ``Model_Pose2Sim_muscles_flex.osim``)
  each keypoint is attached to in the reference marker set ``data/simspine37_markers.xml``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "KEYPOINT_BODY",
    "REGIONS",
    "SIMSPINE37",
    "SIMSPINE37_PARENT",
    "SIMSPINE37_SIGMAS",
    "SPINE15",
    "bones",
    "index_of",
    "oks_sigmas",
    "parent_indices",
    "spine15_indices",
]

SIMSPINE37: tuple[str, ...] = (
    "Nose",
    "LEye",
    "REye",
    "LEar",
    "REar",
    "LShoulder",
    "RShoulder",
    "LElbow",
    "RElbow",
    "LWrist",
    "RWrist",
    "LHip",
    "RHip",
    "LKnee",
    "RKnee",
    "LAnkle",
    "RAnkle",
    "Head",
    "Neck",
    "Hip",
    "LBigToe",
    "RBigToe",
    "LSmallToe",
    "RSmallToe",
    "LHeel",
    "RHeel",
    "Spine_01",
    "Spine_02",
    "Spine_03",
    "Spine_04",
    "Spine_05",
    "LLatissimus",
    "RLatissimus",
    "LClavicle",
    "RClavicle",
    "Neck_02",
    "Neck_03",
)

SIMSPINE37_PARENT: dict[str, str | None] = {
    "Nose": "Head",
    "LEye": "Nose",
    "REye": "Nose",
    "LEar": "LEye",
    "REar": "REye",
    "LShoulder": "LClavicle",
    "RShoulder": "RClavicle",
    "LElbow": "LShoulder",
    "RElbow": "RShoulder",
    "LWrist": "LElbow",
    "RWrist": "RElbow",
    "LHip": "Hip",
    "RHip": "Hip",
    "LKnee": "LHip",
    "RKnee": "RHip",
    "LAnkle": "LKnee",
    "RAnkle": "RKnee",
    "Head": "Neck_03",
    "Neck": "Spine_05",
    "Hip": None,
    "LBigToe": "LAnkle",
    "RBigToe": "RAnkle",
    "LSmallToe": "LBigToe",
    "RSmallToe": "RBigToe",
    "LHeel": "LAnkle",
    "RHeel": "RAnkle",
    "Spine_01": "Hip",
    "Spine_02": "Spine_01",
    "Spine_03": "Spine_02",
    "Spine_04": "Spine_03",
    "Spine_05": "Spine_04",
    "LLatissimus": "Spine_04",
    "RLatissimus": "Spine_04",
    "LClavicle": "Spine_05",
    "RClavicle": "Spine_05",
    "Neck_02": "Neck",
    "Neck_03": "Neck_02",
}

SPINE15: tuple[str, ...] = (
    "Hip",
    "Spine_01",
    "Spine_02",
    "Spine_03",
    "Spine_04",
    "Spine_05",
    "LLatissimus",
    "RLatissimus",
    "LClavicle",
    "RClavicle",
    "Nose",
    "Head",
    "Neck",
    "Neck_02",
    "Neck_03",
)

REGIONS: dict[str, tuple[str, ...]] = {
    "lumbar": ("Hip", "Spine_01", "Spine_02", "Spine_03"),
    "thoracic": ("Spine_04", "Spine_05", "LLatissimus", "RLatissimus", "LClavicle", "RClavicle"),
    "cervical": ("Nose", "Head", "Neck", "Neck_02", "Neck_03"),
}

# OpenSim body of Model_Pose2Sim_muscles_flex.osim carrying each keypoint in
# data/simspine37_markers.xml. The 22 markers present in Pose2Sim's Markers_Halpe26.xml keep
# its bodies; eyes and ears sit on the head.
KEYPOINT_BODY: dict[str, str] = {
    "Nose": "head",
    "LEye": "head",
    "REye": "head",
    "LEar": "head",
    "REar": "head",
    "LShoulder": "torso",
    "RShoulder": "torso",
    "LElbow": "humerus_l",
    "RElbow": "humerus_r",
    "LWrist": "radius_l",
    "RWrist": "radius_r",
    "LHip": "pelvis",
    "RHip": "pelvis",
    "LKnee": "femur_l",
    "RKnee": "femur_r",
    "LAnkle": "tibia_l",
    "RAnkle": "tibia_r",
    "Head": "head",
    "Neck": "torso",
    "Hip": "pelvis",
    "LBigToe": "toes_l",
    "RBigToe": "toes_r",
    "LSmallToe": "toes_l",
    "RSmallToe": "toes_r",
    "LHeel": "calcn_l",
    "RHeel": "calcn_r",
    "Spine_01": "lumbar5",
    "Spine_02": "lumbar3",
    "Spine_03": "lumbar1",
    "Spine_04": "torso",
    "Spine_05": "torso",
    "LLatissimus": "torso",
    "RLatissimus": "torso",
    "LClavicle": "torso",
    "RClavicle": "torso",
    "Neck_02": "torso",
    "Neck_03": "torso",
}

# Per-keypoint OKS sigmas in SIMSPINE37 order, from SpinePose (the detector of the SimSpine
# authors): wheel spinepose-2.1.0-py3-none-any.whl (PyPI), file spinepose/metainfo.py, list
# ``sigmas`` of its "spinetrack" metainfo, whose keypoint order is this one. The first 17 are
# COCO's; head, neck (C7), hip (sacrum) Halpe's with neck 0.026 -> 0.04 and hip 0.066 -> 0.07;
# feet 0.079; then SpinePose's own choices for the spine, latissimus, clavicle and neck points.
SIMSPINE37_SIGMAS: tuple[float, ...] = (
    # Nose, LEye, REye, LEar, REar, LShoulder, RShoulder, LElbow, RElbow, LWrist, RWrist
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    # LHip, RHip, LKnee, RKnee, LAnkle, RAnkle
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    # Head, Neck, Hip
    0.026, 0.04, 0.07,
    # LBigToe, RBigToe, LSmallToe, RSmallToe, LHeel, RHeel
    0.079, 0.079, 0.079, 0.079, 0.079, 0.079,
    # Spine_01 (L5), Spine_02 (L3), Spine_03 (T12/L1), Spine_04 (T8), Spine_05 (T3)
    0.10, 0.10, 0.10, 0.08, 0.08,
    # LLatissimus, RLatissimus, LClavicle, RClavicle, Neck_02 (C3/C4), Neck_03 (C1)
    0.12, 0.12, 0.07, 0.07, 0.07, 0.06,
)  # fmt: skip

_INDEX: dict[str, int] = {name: i for i, name in enumerate(SIMSPINE37)}


def index_of(name: str) -> int:
    """Position of keypoint ``name`` in ``SIMSPINE37`` (KeyError naming it if unknown)."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown SimSpine keypoint {name!r}") from None


def oks_sigmas(names=None) -> np.ndarray:
    """OKS sigmas (:data:`SIMSPINE37_SIGMAS`) of ``names`` (default all 37, in order)."""
    if names is None:
        return np.asarray(SIMSPINE37_SIGMAS, np.float64)
    return np.asarray([SIMSPINE37_SIGMAS[index_of(n)] for n in names], np.float64)


def parent_indices() -> np.ndarray:
    """Parent index of every keypoint in ``SIMSPINE37`` order (int array, -1 for the root)."""
    return np.array(
        [-1 if SIMSPINE37_PARENT[n] is None else _INDEX[SIMSPINE37_PARENT[n]] for n in SIMSPINE37],
        dtype=np.int64,
    )


def spine15_indices() -> np.ndarray:
    """Indices into ``SIMSPINE37`` of the ``SPINE15`` keypoints, in ``SPINE15`` order."""
    return np.array([_INDEX[n] for n in SPINE15], dtype=np.int64)


def bones() -> list[tuple[str, str]]:
    """``(child, parent)`` pairs of the skeleton tree, in ``SIMSPINE37`` order of the child."""
    return [(n, p) for n in SIMSPINE37 if (p := SIMSPINE37_PARENT[n]) is not None]
