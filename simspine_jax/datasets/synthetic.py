"""A synthetic SimSpine-like lifting dataset: the default model moving, seen by Human3.6M cameras.

For every subject and action, a motion of the default SimSpine model (independent coordinates,
continuous in time, so the same seed gives the same motion at any sampling rate), its 37
keypoints by one jit'ed FK call per subject (the default model's markers are the SIMSPINE37
set), placed in Human3.6M's capture volume and projected through the subject's four Human3.6M
cameras (:mod:`simspine_jax.datasets.cameras`), with optional detector-like 2D noise, outliers
and dropouts. Subjects and splits are named like Human3.6M; each subject is the default model
scaled per segment (:func:`subject_tree`).

Motions: a neutral standing pose, a small per-coordinate "fidget" (three slow sinusoids), the
action's offsets (natural units: degrees, metres, and radians for the lumbar coordinates, which
drive five coupled joints each), a slow pelvis path on the floor, a clip into every
coordinate's range with a margin, and the feet put on the floor (the lowest foot keypoint,
by a soft minimum, at height 0). Frame numbers count 50 Hz frames, like Human3.6M's.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import InputError
from ..keypoints import SIMSPINE37, oks_sigmas
from ._data import LiftingData, sample_step, split_subjects
from .cameras import H36M_SUBJECTS, h36m_cameras, project, world_to_camera

__all__ = [
    "ACTIONS",
    "SOURCE_HZ",
    "action_motion",
    "generate",
    "subject_scales",
    "subject_tree",
]

SOURCE_HZ = 50.0
ACTIONS: tuple[str, ...] = (
    "Directions",
    "Discussion",
    "Eating",
    "Greeting",
    "Phoning",
    "Photo",
    "Posing",
    "Purchases",
    "Sitting",
    "SittingDown",
    "Smoking",
    "Waiting",
    "WalkDog",
    "Walking",
    "WalkTogether",
)

# body -> segment group whose scale factor it takes
_SEGMENT = {
    "pelvis": "pelvis",
    "sacrum": "pelvis",
    "femur_r": "thigh",
    "femur_l": "thigh",
    "patella_r": "thigh",
    "patella_l": "thigh",
    "tibia_r": "shank",
    "tibia_l": "shank",
    "talus_r": "shank",
    "talus_l": "shank",
    "calcn_r": "foot",
    "calcn_l": "foot",
    "toes_r": "foot",
    "toes_l": "foot",
    "lumbar5": "lumbar",
    "lumbar4": "lumbar",
    "lumbar3": "lumbar",
    "lumbar2": "lumbar",
    "lumbar1": "lumbar",
    "Abdomen": "lumbar",
    "torso": "torso",
    "head": "head",
    "humerus_r": "upper_arm",
    "humerus_l": "upper_arm",
    "ulna_r": "forearm",
    "ulna_l": "forearm",
    "radius_r": "forearm",
    "radius_l": "forearm",
    "hand_r": "hand",
    "hand_l": "hand",
}
_GROUPS = tuple(dict.fromkeys(_SEGMENT.values()))

# neutral standing pose (degrees); other coordinates keep the model default
_NEUTRAL = {
    "hip_flexion_r": 2.0,
    "hip_flexion_l": 2.0,
    "knee_angle_r": 6.0,
    "knee_angle_l": 6.0,
    "arm_add_r": -10.0,
    "arm_add_l": -10.0,
    "arm_flex_r": 4.0,
    "arm_flex_l": 4.0,
    "elbow_flex_r": 12.0,
    "elbow_flex_l": 12.0,
    "pro_sup_r": 75.0,
    "pro_sup_l": 75.0,
}
_LUMBAR = ("L5_S1_Flex_Ext", "L5_S1_Lat_Bending", "L5_S1_axial_rotation")
_FIDGET = {  # amplitudes: degrees, metres, radians for the lumbar coordinates
    "pelvis_tilt": 2.0,
    "pelvis_list": 1.5,
    "L5_S1_Flex_Ext": 0.01,
    "L5_S1_Lat_Bending": 0.006,
    "L5_S1_axial_rotation": 0.03,
    "neck_flexion": 4.0,
    "neck_bending": 3.0,
    "neck_rotation": 6.0,
}
_FOOT_KEYPOINTS = ("LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel", "RHeel")
_WALKING = ("Walking", "WalkDog", "WalkTogether")

# model ground (OpenSim: y up) -> Human3.6M world (z up): a +90 degree turn about x
_OSIM_TO_H36M = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


# ----------------------------------------------------------------------------- subjects
def _name_key(name: str) -> int:
    return zlib.crc32(name.encode())


def subject_scales(subject: str, seed: int = 0) -> dict[str, float]:
    """Per-segment scale factors of a synthetic subject (deterministic in subject and seed).

    An overall size factor in [0.9, 1.1] times a factor per segment group (pelvis, thigh,
    shank, foot, lumbar, torso, head, upper_arm, forearm, hand) in [0.94, 1.06], the same on
    both sides.
    """
    rng = np.random.default_rng([int(seed), _name_key(subject), 11])
    overall = rng.uniform(0.9, 1.1)
    return {g: float(overall * rng.uniform(0.94, 1.06)) for g in _GROUPS}


def subject_tree(tree, subject: str, seed: int = 0):
    """The default model scaled like synthetic ``subject``: each body's geometry (the joint
    offsets expressed in it, its joint's child offset, its markers) times its segment's
    factor (:func:`subject_scales`). Same topology: no recompile."""
    import jax.numpy as jnp

    scales = subject_scales(subject, seed)
    s = np.array([scales.get(_SEGMENT.get(b, ""), 1.0) for b in tree.body_names])
    s[0] = 1.0  # ground
    parent = np.maximum(tree.topology.body_parent, 0)
    dtype = tree.dtype
    return type(tree)(
        tree.topology,
        tree.joint_R_pf,
        tree.joint_p_pf * jnp.asarray(s[parent][:, None], dtype),
        tree.joint_R_cm,
        tree.joint_p_cm * jnp.asarray(s[:, None], dtype),
        tree.joint_axes,
        tree.func_x,
        tree.func_y,
        tree.func_b,
        tree.func_c,
        tree.func_d,
        tree.coord_default,
        tree.coord_range,
        tree.marker_offset * jnp.asarray(s[tree.topology.marker_body][:, None], dtype),
        tree.body_scale * jnp.asarray(s[:, None], dtype),
    )


# ----------------------------------------------------------------------------- actions
def _osc(t, hz, phase=0.0):
    return np.sin(2 * np.pi * hz * t + phase)


def _cycle(t, period, phase=0.0):
    """Raised cosine 0 -> 1 -> 0 with ``period`` seconds."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * t / period + phase)


def _gait(t, p, amp=1.0, hz=None, arm=1.0):
    ph = 2 * np.pi * (p["gait_hz"] if hz is None else hz) * t + p["phase"]
    s, c = np.sin(ph), np.cos(ph)
    a = amp * p["amp"]
    return {
        "hip_flexion_r": a * (12.0 + 22.0 * s),
        "hip_flexion_l": a * (12.0 - 22.0 * s),
        "knee_angle_r": a * 55.0 * ((1.0 + np.sin(ph + 0.6)) / 2.0) ** 3,
        "knee_angle_l": a * 55.0 * ((1.0 - np.sin(ph + 0.6)) / 2.0) ** 3,
        "ankle_angle_r": a * 7.0 * np.sin(ph - 1.0),
        "ankle_angle_l": -a * 7.0 * np.sin(ph - 1.0),
        "hip_adduction_r": a * 3.0 * c,
        "hip_adduction_l": -a * 3.0 * c,
        "pelvis_rotation": a * 5.0 * s,
        "pelvis_list": a * 3.0 * c,
        "pelvis_ty": a * 0.01 * np.cos(2 * ph),
        "arm_flex_r": -arm * a * 20.0 * s,
        "arm_flex_l": arm * a * 20.0 * s,
        "elbow_flex_r": arm * a * (10.0 - 8.0 * s),
        "elbow_flex_l": arm * a * (10.0 + 8.0 * s),
        "L5_S1_axial_rotation": -a * 0.03 * s,
        "L5_S1_Lat_Bending": a * 0.004 * c,
    }


def _sitting(c=1.0):
    return {
        "hip_flexion_r": 85.0 * c,
        "hip_flexion_l": 85.0 * c,
        "knee_angle_r": 85.0 * c,
        "knee_angle_l": 85.0 * c,
        "ankle_angle_r": 5.0 * c,
        "ankle_angle_l": 5.0 * c,
        "L5_S1_Flex_Ext": -0.04 * c,
        "pelvis_tilt": 8.0 * c,
    }


def _add(*parts):
    out = {}
    for d in parts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _directions(t, p):
    right = _cycle(t, 4.0 * p["slow"], p["phase"])
    left = _cycle(t, 5.5 * p["slow"], p["phase"] + 2.0)
    turn = _osc(t, 0.12, p["phase"])
    return {
        "arm_flex_r": 65.0 * right,
        "arm_add_r": -25.0 * right,
        "elbow_flex_r": -8.0 * right,
        "arm_flex_l": 50.0 * left,
        "arm_add_l": -35.0 * left,
        "L5_S1_axial_rotation": 0.09 * turn,
        "neck_rotation": 25.0 * turn,
        "pelvis_rotation": 12.0 * turn,
        "neck_flexion": 5.0 * _osc(t, 0.2),
    }


def _discussion(t, p):
    g = _osc(t, 1.1 * p["fast"], p["phase"])
    return {
        "elbow_flex_r": 60.0 + 30.0 * g,
        "elbow_flex_l": 55.0 - 25.0 * _osc(t, 0.9 * p["fast"], p["phase"] + 1.0),
        "arm_flex_r": 25.0 + 10.0 * g,
        "arm_flex_l": 20.0,
        "arm_add_r": -10.0,
        "pro_sup_r": -30.0,
        "L5_S1_Lat_Bending": 0.012 * _osc(t, 0.3, p["phase"]),
        "L5_S1_axial_rotation": 0.06 * _osc(t, 0.25, 1.0),
        "neck_rotation": 22.0 * _osc(t, 0.2, p["phase"]),
        "neck_flexion": 8.0 * _osc(t, 0.35),
    }


def _eating(t, p):
    bite = _cycle(t, 3.5 * p["slow"], p["phase"])
    return _add(
        _sitting(),
        {
            "elbow_flex_r": 60.0 + 70.0 * bite,
            "arm_flex_r": 25.0 + 20.0 * bite,
            "arm_add_r": -5.0,
            "elbow_flex_l": 75.0,
            "arm_flex_l": 30.0,
            "neck_flexion": 10.0 + 8.0 * bite,
            "L5_S1_Flex_Ext": -0.03 * bite,
        },
    )


def _greeting(t, p):
    wave = _cycle(t, 6.0 * p["slow"], p["phase"])
    bow = _cycle(t, 7.0 * p["slow"], p["phase"] + 3.0)
    return {
        "arm_add_r": -70.0 * wave,
        "arm_flex_r": 30.0 * wave,
        "elbow_flex_r": 70.0 * wave + 20.0 * wave * _osc(t, 2.0),
        "L5_S1_Flex_Ext": -0.08 * bow,
        "pelvis_tilt": -12.0 * bow,
        "hip_flexion_r": 12.0 * bow,
        "hip_flexion_l": 12.0 * bow,
        "neck_flexion": 15.0 * bow,
        "arm_flex_l": 35.0 * bow,
        "elbow_flex_l": 40.0 * bow,
    }


def _phoning(t, p):
    walk = _cycle(t, 9.0 * p["slow"], p["phase"])
    return _add(
        _gait(t, p, amp=0.5 * walk, hz=0.7, arm=0.0),
        {
            "arm_flex_r": 25.0,
            "arm_add_r": -30.0,
            "elbow_flex_r": 130.0,
            "pro_sup_r": -20.0,
            "neck_bending": 10.0,
            "neck_flexion": 6.0 * _osc(t, 0.2, p["phase"]),
            "arm_flex_l": 8.0 * _osc(t, 0.3),
            "L5_S1_Lat_Bending": 0.01 * _osc(t, 0.15, p["phase"]),
        },
    )


def _photo(t, p):
    crouch = _cycle(t, 8.0 * p["slow"], p["phase"])
    aim = _osc(t, 0.15, p["phase"])
    return {
        "arm_flex_r": 55.0,
        "arm_flex_l": 55.0,
        "arm_add_r": -15.0,
        "arm_add_l": 5.0,
        "elbow_flex_r": 110.0,
        "elbow_flex_l": 115.0,
        "knee_angle_r": 45.0 * crouch,
        "knee_angle_l": 45.0 * crouch,
        "hip_flexion_r": 40.0 * crouch,
        "hip_flexion_l": 40.0 * crouch,
        "ankle_angle_r": 15.0 * crouch,
        "ankle_angle_l": 15.0 * crouch,
        "L5_S1_Flex_Ext": -0.05 * crouch,
        "L5_S1_axial_rotation": 0.1 * aim,
        "pelvis_rotation": 15.0 * aim,
        "neck_flexion": 8.0,
    }


def _posing(t, p):
    a = _cycle(t, 7.0 * p["slow"], p["phase"])
    b = _cycle(t, 9.0 * p["slow"], p["phase"] + 2.0)
    side = _osc(t, 0.11, p["phase"])
    return {
        "arm_add_r": -85.0 * a - 35.0 * b,
        "arm_add_l": -85.0 * a - 35.0 * b,
        "elbow_flex_r": 100.0 * b,
        "elbow_flex_l": 100.0 * b,
        "arm_rot_r": 30.0 * b,
        "arm_rot_l": 30.0 * b,
        "L5_S1_Lat_Bending": 0.03 * side,
        "pelvis_list": 4.0 * side,
        "knee_angle_r": 20.0 * (1 + side) / 2,
        "neck_bending": 12.0 * side,
        "neck_rotation": 15.0 * a,
        "L5_S1_Flex_Ext": 0.02 * a,
    }


def _purchases(t, p):
    pick = _cycle(t, 6.0 * p["slow"], p["phase"])
    walk = 1.0 - pick
    return _add(
        _gait(t, p, amp=0.5 * walk, arm=0.4),
        {
            "L5_S1_Flex_Ext": -0.13 * pick,
            "pelvis_tilt": -25.0 * pick,
            "hip_flexion_r": 30.0 * pick,
            "hip_flexion_l": 30.0 * pick,
            "knee_angle_r": 20.0 * pick,
            "knee_angle_l": 20.0 * pick,
            "arm_flex_r": 60.0 * pick,
            "arm_flex_l": 25.0,
            "elbow_flex_l": 80.0,
            "neck_flexion": 12.0 * pick,
        },
    )


def _sitting_action(t, p):
    twist = _osc(t, 0.1, p["phase"])
    cross = _cycle(t, 12.0 * p["slow"], p["phase"])
    return _add(
        _sitting(),
        {
            "L5_S1_Flex_Ext": -0.05,
            "L5_S1_axial_rotation": 0.1 * twist,
            "neck_rotation": 25.0 * twist,
            "neck_flexion": 10.0,
            "arm_flex_r": 30.0,
            "arm_flex_l": 30.0,
            "elbow_flex_r": 60.0,
            "elbow_flex_l": 60.0 + 40.0 * cross,
            "hip_adduction_l": 12.0 * cross,
            "hip_flexion_l": 10.0 * cross,
        },
    )


def _sitting_down(t, p):
    c = _cycle(t, 7.0 * p["slow"], p["phase"])
    return {
        "hip_flexion_r": 100.0 * c,
        "hip_flexion_l": 100.0 * c,
        "knee_angle_r": 120.0 * c,
        "knee_angle_l": 120.0 * c,
        "ankle_angle_r": 25.0 * c,
        "ankle_angle_l": 25.0 * c,
        "pelvis_tilt": -20.0 * c,
        "L5_S1_Flex_Ext": -0.1 * c,
        "arm_flex_r": 40.0 * c,
        "arm_flex_l": 40.0 * c,
        "elbow_flex_r": 30.0 * c,
        "neck_flexion": 10.0 * c,
    }


def _smoking(t, p):
    puff = _cycle(t, 5.0 * p["slow"], p["phase"])
    shift = _osc(t, 0.1, p["phase"])
    return {
        "elbow_flex_l": 60.0 + 75.0 * puff,
        "arm_flex_l": 15.0 + 30.0 * puff,
        "arm_add_l": -10.0 * puff,
        "elbow_flex_r": 90.0,
        "arm_flex_r": 20.0,
        "arm_add_r": 10.0,
        "pelvis_list": 3.0 * shift,
        "hip_adduction_r": 4.0 * shift,
        "hip_adduction_l": -4.0 * shift,
        "knee_angle_l": 10.0 * (1 + shift),
        "neck_rotation": 20.0 * _osc(t, 0.13),
        "neck_flexion": -5.0 * puff,
    }


def _waiting(t, p):
    shift = _osc(t, 0.15, p["phase"])
    return {
        "pelvis_list": 4.0 * shift,
        "hip_adduction_r": 5.0 * shift,
        "hip_adduction_l": -5.0 * shift,
        "L5_S1_Lat_Bending": -0.02 * shift,
        "arm_flex_r": 25.0,
        "arm_flex_l": 25.0,
        "arm_add_r": 15.0,
        "arm_add_l": 15.0,
        "elbow_flex_r": 100.0,
        "elbow_flex_l": 100.0,
        "neck_rotation": 30.0 * _osc(t, 0.1, 1.0),
        "neck_bending": 8.0 * shift,
    }


def _walk_dog(t, p):
    return _add(
        _gait(t, p, hz=0.8, arm=0.5),
        {
            "arm_flex_r": 35.0,
            "elbow_flex_r": 25.0,
            "L5_S1_Flex_Ext": -0.04,
            "neck_flexion": 14.0,
            "neck_rotation": 10.0 * _osc(t, 0.2, p["phase"]),
        },
    )


def _walking(t, p):
    return _gait(t, p)


def _walk_together(t, p):
    return _add(
        _gait(t, p, amp=0.85, arm=0.6),
        {"neck_rotation": 25.0, "L5_S1_axial_rotation": 0.05, "neck_flexion": 5.0},
    )


_ACTION_FUNCS = {
    "Directions": _directions,
    "Discussion": _discussion,
    "Eating": _eating,
    "Greeting": _greeting,
    "Phoning": _phoning,
    "Photo": _photo,
    "Posing": _posing,
    "Purchases": _purchases,
    "Sitting": _sitting_action,
    "SittingDown": _sitting_down,
    "Smoking": _smoking,
    "Waiting": _waiting,
    "WalkDog": _walk_dog,
    "Walking": _walking,
    "WalkTogether": _walk_together,
}
assert tuple(_ACTION_FUNCS) == ACTIONS


def action_motion(tree, action: str, times: np.ndarray, seed=0) -> np.ndarray:
    """Independent coordinates of ``action`` at ``times`` (seconds), radians and metres,
    inside the coordinate ranges; feet not yet on the floor (:func:`generate` does that).

    Continuous in time: the same ``seed`` (an int or a sequence of ints) gives the same
    motion sampled at any times.
    Shape: (T,) -> (T, n_indep).
    """
    if action not in _ACTION_FUNCS:
        raise InputError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}", field="action")
    t = np.asarray(times, np.float64)
    names = list(tree.independent_names)
    idx = {n: i for i, n in enumerate(names)}
    motion = {c["name"]: c["motion_type"] for c in tree.meta["coordinates"]}
    trans = np.array([motion.get(n) == "translational" for n in names])
    lo_hi = np.asarray(tree.coord_range, np.float64)[tree.topology.indep_coord]
    q = np.tile(np.asarray(tree.coord_default, np.float64)[tree.topology.indep_coord], (len(t), 1))
    rng = np.random.default_rng([*np.atleast_1d(seed).astype(int).tolist(), _name_key(action), 3])

    def internal(name, v):
        return v if trans[idx[name]] or name in _LUMBAR else np.deg2rad(v)

    for n, v in _NEUTRAL.items():
        if n in idx:
            q[:, idx[n]] = internal(n, v)
    for j, n in enumerate(names):  # fidget: three slow sinusoids per coordinate
        hz, ph, w = rng.uniform(0.1, 0.5, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.5, 1, 3)
        wave = (w[:, None] * np.sin(2 * np.pi * hz[:, None] * t + ph[:, None])).sum(0) / w.sum()
        amp = internal(n, _FIDGET[n]) if n in _FIDGET else (0.004 if trans[j] else np.deg2rad(2.5))
        q[:, j] += min(amp, 0.1 * (lo_hi[j, 1] - lo_hi[j, 0])) * wave
    params = {
        "amp": rng.uniform(0.85, 1.1),
        "gait_hz": rng.uniform(0.85, 1.0),
        "phase": rng.uniform(0, 2 * np.pi),
        "slow": rng.uniform(0.8, 1.25),
        "fast": rng.uniform(0.8, 1.25),
    }
    for n, v in _ACTION_FUNCS[action](t, params).items():
        if n in idx:
            q[:, idx[n]] += internal(n, np.broadcast_to(v, t.shape))
    # a slow path on the floor: room-sized for the walking actions, a few steps otherwise
    reach, turn = (1.0, 35.0) if action in _WALKING else (0.15, 10.0)
    path = {"pelvis_tx": (reach, 1 / 17.0), "pelvis_tz": (reach / 2, 1 / 23.0)}
    path["pelvis_rotation"] = (np.deg2rad(turn), 1 / 13.0)
    for n, (amp, hz) in path.items():
        if n in idx:
            q[:, idx[n]] += amp * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    margin = np.minimum(0.05 * (lo_hi[:, 1] - lo_hi[:, 0]), 0.05)
    return np.clip(q, lo_hi[:, 0] + margin, lo_hi[:, 1] - margin)


# ----------------------------------------------------------------------------- dataset
def _bucket(n: int) -> int:
    """Frames padded to a power of two (>= 64) so runs of similar size share a compile."""
    return max(64, 1 << (max(n, 1) - 1).bit_length())


def _yaw(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def generate(
    split: str = "train",
    *,
    subjects=None,
    actions=ACTIONS,
    duration_s: float = 20.0,
    sample_hz: float | None = 2.0,
    seed: int = 0,
    noise_px: float = 0.0,
    outlier_rate: float = 0.0,
    dropout: float = 0.0,
    tree=None,
) -> LiftingData:
    """The synthetic lifting dataset: every subject x action x Human3.6M camera x frame.

    ``duration_s`` seconds per (subject, action), sampled at ``sample_hz`` (None: all 50 Hz
    frames). 2D: exact projections (with lens distortion) or, with ``noise_px`` > 0,
    detector-like errors: Gaussian per keypoint with standard deviation ``noise_px`` times the
    keypoint's OKS sigma relative to the mean sigma (hips and shoulders err more than eyes);
    ``outlier_rate`` of keypoints off by ten times as much; ``dropout`` of keypoints missing
    (confidence 0, 2D set to 0), as are keypoints outside the image. Subjects: ``split``'s
    (train S1, S5-S8; test S9, S11) unless ``subjects`` is given. Deterministic in ``seed``;
    the motion does not depend on ``sample_hz``. ``tree``: the default model unless given.
    """
    import jax.numpy as jnp

    from ..fk import forward_kinematics

    if tree is None:
        from .. import default_model_path, load_model

        tree = load_model(default_model_path())
    if tuple(tree.marker_names) != SIMSPINE37:
        raise InputError("the model's markers must be the SIMSPINE37 keypoints", field="tree")
    subjects = split_subjects(split, subjects)
    unknown = [s for s in subjects if s not in H36M_SUBJECTS]
    if unknown:
        raise InputError(
            f"unknown subjects {unknown}; known: {', '.join(H36M_SUBJECTS)}", field="subjects"
        )
    actions = tuple(actions)
    bad = [a for a in actions if a not in _ACTION_FUNCS]
    if bad or not actions:
        raise InputError(f"unknown actions {bad}; known: {', '.join(ACTIONS)}", field="actions")
    if not duration_s > 0:
        raise InputError(f"duration_s must be > 0, got {duration_s}", field="duration_s")
    for name, v in (("noise_px", noise_px), ("outlier_rate", outlier_rate), ("dropout", dropout)):
        if not v >= 0 or (name != "noise_px" and v >= 1):
            raise InputError(f"{name} out of range: {v}", field=name)
    step = sample_step(SOURCE_HZ, sample_hz)
    frames = np.arange(0, int(round(duration_s * SOURCE_HZ)), step)
    T, A, K = len(frames), len(actions), len(SIMSPINE37)
    foot = [SIMSPINE37.index(n) for n in _FOOT_KEYPOINTS]
    i_ty = list(tree.independent_names).index("pelvis_ty")
    sig = oks_sigmas()
    rel_sigma = sig / sig.mean()
    parts = []
    for subject in subjects:
        sk = _name_key(subject)
        stree = subject_tree(tree, subject, seed)
        q = np.concatenate(
            [action_motion(tree, a, frames / SOURCE_HZ, [seed, sk]) for a in actions], 0
        )
        pad = np.concatenate([q, np.repeat(q[-1:], _bucket(len(q)) - len(q), 0)], 0)
        X = np.array(forward_kinematics(stree, jnp.asarray(pad)).markers, np.float64)[: len(q)]
        # feet on the floor: soft minimum (2 cm temperature) of the foot keypoints' heights
        y = X[:, foot, 1]
        lowest = y.min(1) - 0.02 * np.log(np.exp(-(y - y.min(1, keepdims=True)) / 0.02).sum(1))
        X[..., 1] -= lowest[:, None]
        q[:, i_ty] -= lowest
        X = X.reshape(A, T, K, 3)
        q = q.reshape(A, T, -1)
        cams = h36m_cameras(subject)
        for a, action in enumerate(actions):
            rng = np.random.default_rng([int(seed), sk, _name_key(action), 7])
            # placement in the capture volume: a heading and a floor offset per trial
            M = _yaw(rng.uniform(0, 2 * np.pi)) @ _OSIM_TO_H36M
            offset = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 0.0])
            for k, cam in enumerate(cams):
                R = cam.R @ M
                t = cam.R @ offset + cam.t
                X_cam = world_to_camera(X[a], R, t)
                uv = project(X_cam, cam.f, cam.c, cam.dist)
                w, h = cam.size
                conf = np.ones((T, K))
                if noise_px > 0:
                    err = rng.normal(0.0, noise_px, (T, K, 2)) * rel_sigma[None, :, None]
                    wild = rng.random((T, K)) < outlier_rate
                    uv = uv + np.where(wild[..., None], 10.0 * err, err)
                if dropout > 0:
                    conf[rng.random((T, K)) < dropout] = 0.0
                inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0)
                conf[~(inside & (uv[..., 1] < h) & (X_cam[..., 2] > 0))] = 0.0
                parts.append(
                    dict(
                        keypoints_2d=np.where(conf[..., None] > 0, uv, 0.0),
                        confidence=conf,
                        keypoints_3d=X_cam,
                        image_size=np.tile([w, h], (T, 1)),
                        subject=np.full(T, subject),
                        action=np.full(T, action),
                        camera=np.full(T, k),
                        frame=frames,
                        camera_R=np.tile(R, (T, 1, 1)),
                        camera_t=np.tile(t, (T, 1)),
                        coordinates=q[a],
                    )
                )
    return LiftingData(**{k: np.concatenate([p[k] for p in parts], 0) for k in parts[0]})
