"""Reproducible synthetic trials for the SimSpine model (Pose2Sim's muscles_flex model).

:func:`smooth_motion` makes a smooth multi-action movement (walking, forward bending, trunk
twisting, arm reaching, squatting) in continuous time, so the same seed gives the same motion at
any frame rate. :func:`synthetic_trial` turns it into noisy markers with a few gaps, and
:func:`write_sample_trial` writes the markers as a Pose2Sim-style TRC (millimetres) and the
ground truth as an OpenSim ``.mot``.

How the motion is built, per independent coordinate (in degrees or metres, then radians):

* a neutral standing pose (arms down, slight knee and elbow flexion);
* action offsets blended in and out with a C2 partition of unity over time: each action owns a
  segment of ``max(duration / n_actions, 1.5 s)`` with quintic blends of 35% of a segment;
* a small "fidget" (three low-frequency sinusoids, 0.15-0.7 Hz, per coordinate), so every
  coordinate moves, the lumbar ones included, whatever action is active;
* a bounded, slowly meandering pelvis path on the floor (translation and heading), like walking
  around a small room, so the pelvis translates and turns without leaving its range;
* pelvis height corrected so that the lowest foot point (a soft minimum over the heel and toe
  bodies) stays where it is in the default pose: the feet stay on the floor in a squat;
* finally a smooth clip keeps every coordinate strictly inside its range with a margin of
  ``min(5% of the range, 0.05 rad or m)``.

Lumbar coordinates in this model drive five coupled intervertebral joints (and the abdomen), so
their small ranges mean large trunk motion: ``L5_S1_Flex_Ext = -0.1 rad`` is a forward bend of
roughly 45 degrees of the trunk; negative values are flexion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

ACTIONS = ("walk", "bend", "twist", "reach", "squat")

# Neutral standing pose (degrees; metres for pelvis translations). Coordinates not listed keep
# their model default.
_NEUTRAL = {
    "hip_flexion_r": 3.0,
    "hip_flexion_l": 3.0,
    "knee_angle_r": 8.0,
    "knee_angle_l": 8.0,
    "arm_add_r": -12.0,
    "arm_add_l": -12.0,
    "arm_flex_r": 5.0,
    "arm_flex_l": 5.0,
    "elbow_flex_r": 15.0,
    "elbow_flex_l": 15.0,
    "pro_sup_r": 80.0,
    "pro_sup_l": 80.0,
}

# Fidget amplitudes (degrees, metres for translations, radians for the lumbar coordinates,
# whose ranges are a few degrees because five joints follow them).
_FIDGET = {
    "pelvis_tilt": 2.0,
    "pelvis_list": 1.5,
    "pelvis_rotation": 2.0,
    "pelvis_tx": 0.01,
    "pelvis_ty": 0.005,
    "pelvis_tz": 0.01,
    "L5_S1_Flex_Ext": 0.012,
    "L5_S1_Lat_Bending": 0.008,
    "L5_S1_axial_rotation": 0.04,
    "neck_flexion": 5.0,
    "neck_bending": 4.0,
    "neck_rotation": 8.0,
}
_LUMBAR = ("L5_S1_Flex_Ext", "L5_S1_Lat_Bending", "L5_S1_axial_rotation")
_FOOT_BODIES = ("calcn_r", "calcn_l", "toes_r", "toes_l")


# ----------------------------------------------------------------------------- helpers
def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Quintic 0 -> 1 ramp on [0, 1] (C2: zero first and second derivative at both ends)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def _bump(t: np.ndarray, t0: float, period: float) -> np.ndarray:
    """Raised cosine cycles 0 -> 1 -> 0 of ``period`` starting at ``t0`` (0 before ``t0``)."""
    return np.where(t >= t0, 0.5 - 0.5 * np.cos(2 * np.pi * (t - t0) / period), 0.0)


def _softplus(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return w * np.logaddexp(0.0, x / w)


def _smooth_clip(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Keep ``q`` strictly inside [lo, hi] with a margin, smoothly. Shape: (T, n) -> (T, n)."""
    span = hi - lo
    m = np.minimum(0.05 * span, 0.05)
    a, b = lo + m, hi - m
    w = m / 4.0
    q = a + _softplus(q - a, w)
    q = b - _softplus(b - q, w)
    return np.clip(q, lo + m / 2.0, hi - m / 2.0)  # safety net; inactive in practice


def _is_translational(tree, name: str) -> bool:
    for c in tree.meta["coordinates"]:
        if c["name"] == name:
            return c["motion_type"] == "translational"
    return False


# ----------------------------------------------------------------------------- actions
# Each action maps (t, seg_start, seg_len, rng draws) to offsets from the neutral pose in
# natural units (degrees / metres / radians for the lumbar coordinates).
def _walk(t, t0, seg, p):
    ph = 2 * np.pi * p["gait_hz"] * t + p["gait_phase"]
    s, c = np.sin(ph), np.cos(ph)
    a = p["amp"]
    return {
        "hip_flexion_r": a * (10.0 + 22.0 * s),
        "hip_flexion_l": a * (10.0 - 22.0 * s),
        "knee_angle_r": a * 50.0 * ((1.0 + np.sin(ph + 0.6)) / 2.0) ** 3,
        "knee_angle_l": a * 50.0 * ((1.0 - np.sin(ph + 0.6)) / 2.0) ** 3,
        "ankle_angle_r": a * 6.0 * np.sin(ph - 1.0),
        "ankle_angle_l": -a * 6.0 * np.sin(ph - 1.0),
        "hip_adduction_r": a * 3.0 * c,
        "hip_adduction_l": -a * 3.0 * c,
        "hip_rotation_r": a * 4.0 * s,
        "hip_rotation_l": -a * 4.0 * s,
        "pelvis_rotation": a * 5.0 * s,
        "pelvis_list": a * 3.0 * c,
        "pelvis_tilt": a * 2.0 * np.sin(2 * ph),
        "pelvis_ty": a * 0.012 * np.cos(2 * ph),
        "arm_flex_r": -a * 18.0 * s,
        "arm_flex_l": a * 18.0 * s,
        "elbow_flex_r": a * (8.0 - 8.0 * s),
        "elbow_flex_l": a * (8.0 + 8.0 * s),
        "L5_S1_axial_rotation": -a * 0.03 * s,
        "L5_S1_Lat_Bending": a * 0.004 * c,
        "neck_rotation": a * 4.0 * s,
    }


def _cycles(seg: float, typical: float) -> float:
    """Period giving a whole number (>= 1) of cycles of about ``typical`` seconds in ``seg``."""
    return seg / max(1, round(seg / typical))


def _bend(t, t0, seg, p):
    c = _bump(t, t0, _cycles(seg, 3.0)) * p["amp"]
    return {
        "L5_S1_Flex_Ext": -0.10 * c,
        "pelvis_tilt": -20.0 * c,
        "hip_flexion_r": 20.0 * c,
        "hip_flexion_l": 20.0 * c,
        "knee_angle_r": 8.0 * c,
        "knee_angle_l": 8.0 * c,
        "pelvis_tx": -0.08 * c,
        "neck_flexion": 12.0 * c,
        "arm_flex_r": 45.0 * c,
        "arm_flex_l": 45.0 * c,
        "elbow_flex_r": 10.0 * c,
        "elbow_flex_l": 10.0 * c,
    }


def _twist(t, t0, seg, p):
    per = _cycles(seg, 2.5)
    s = np.sin(2 * np.pi * (t - t0) / per) * p["amp"]
    lat = np.sin(np.pi * (t - t0) / per + p["lat_phase"]) * p["amp"]
    return {
        "L5_S1_axial_rotation": 0.16 * s,
        "L5_S1_Lat_Bending": 0.022 * lat,
        "pelvis_rotation": -6.0 * s,
        "neck_rotation": 20.0 * s,
        "neck_bending": -6.0 * lat,
        "arm_flex_r": -25.0 * s,
        "arm_flex_l": 25.0 * s,
        "arm_add_r": -15.0 * s * s,
        "arm_add_l": -15.0 * s * s,
        "elbow_flex_r": 45.0 * s * s,
        "elbow_flex_l": 45.0 * s * s,
    }


def _reach(t, t0, seg, p):
    half = seg / 2.0
    cr = _bump(t, t0, half) * (t < t0 + half) * p["amp"]
    cl = _bump(t, t0 + half, half) * (t >= t0 + half) * p["amp"]
    return {
        "arm_flex_r": 85.0 * cr,
        "arm_flex_l": 85.0 * cl,
        "arm_add_r": -12.0 * cr,
        "arm_add_l": -12.0 * cl,
        "elbow_flex_r": -5.0 * cr,
        "elbow_flex_l": -5.0 * cl,
        "wrist_flex_r": -20.0 * cr,
        "wrist_flex_l": -20.0 * cl,
        "L5_S1_Flex_Ext": -0.03 * (cr + cl),
        "L5_S1_Lat_Bending": 0.015 * (cl - cr),
        "L5_S1_axial_rotation": 0.07 * (cl - cr),
        "neck_flexion": -10.0 * (cr + cl),
        "pelvis_rotation": 5.0 * (cl - cr),
    }


def _squat(t, t0, seg, p):
    c = _bump(t, t0, _cycles(seg, 3.0)) * p["amp"]
    return {
        "knee_angle_r": 90.0 * c,
        "knee_angle_l": 90.0 * c,
        "hip_flexion_r": 80.0 * c,
        "hip_flexion_l": 80.0 * c,
        "ankle_angle_r": 25.0 * c,
        "ankle_angle_l": 25.0 * c,
        "pelvis_tilt": -15.0 * c,
        "pelvis_tx": -0.10 * c,
        "L5_S1_Flex_Ext": -0.05 * c,
        "arm_flex_r": 70.0 * c,
        "arm_flex_l": 70.0 * c,
        "elbow_flex_r": -5.0 * c,
        "elbow_flex_l": -5.0 * c,
        "neck_flexion": -8.0 * c,
    }


_ACTION_FUNCS = {"walk": _walk, "bend": _bend, "twist": _twist, "reach": _reach, "squat": _squat}


# ----------------------------------------------------------------------------- motion
def smooth_motion(
    tree,
    n_frames: int,
    rate: float = 60.0,
    seed: int = 0,
    actions=ACTIONS,
) -> np.ndarray:
    """A smooth, plausible multi-action motion of the SimSpine model.

    Independent coordinates in the tree's order (``tree.independent_names``), radians and
    metres, strictly inside their ranges. Coordinates the actions do not know (another model)
    stay near their defaults with a small fidget. Shape: () -> (n_frames, n_indep).
    """
    n_frames = int(n_frames)
    if n_frames < 1:
        raise InputError(f"n_frames must be >= 1, got {n_frames}", field="n_frames")
    if not rate > 0:
        raise InputError(f"rate must be > 0, got {rate}", field="rate")
    actions = tuple(actions)
    bad = [a for a in actions if a not in _ACTION_FUNCS]
    if bad:
        raise InputError(f"unknown actions {bad}; known: {', '.join(ACTIONS)}", field="actions")
    rng = np.random.default_rng(seed)
    names = list(tree.independent_names)
    idx = {n: i for i, n in enumerate(names)}
    trans = np.array([_is_translational(tree, n) for n in names])
    rng_lo_hi = np.asarray(tree.coord_range, np.float64)[tree.topology.indep_coord]
    default = np.asarray(tree.coord_default, np.float64)[tree.topology.indep_coord]
    t = np.arange(n_frames) / float(rate)
    T = n_frames

    # natural units: degrees for rotations, metres for translations, radians for lumbar
    def to_internal(name, v):
        if trans[idx[name]] or name in _LUMBAR:
            return v
        return np.deg2rad(v)

    q = np.tile(default, (T, 1))
    for n, v in _NEUTRAL.items():
        if n in idx:
            q[:, idx[n]] = to_internal(n, v)

    # fidget: three low-frequency sinusoids per coordinate
    for j, n in enumerate(names):
        freq = rng.uniform(0.15, 0.7, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        w = rng.uniform(0.5, 1.0, 3)
        wave = (w[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)
        wave /= w.sum()
        if n in _FIDGET:
            amp = to_internal(n, _FIDGET[n])
        elif trans[j]:
            amp = 0.005
        else:
            amp = np.deg2rad(3.0)
        lo, hi = rng_lo_hi[j]
        amp = min(amp, 0.1 * (hi - lo))
        q[:, j] += amp * wave

    # actions, blended with a C2 partition of unity
    duration = T / float(rate)
    if actions:
        seg = max(duration / len(actions), 1.5)
        blend = 0.35 * seg
        steps = [np.ones(T)]
        for k in range(1, len(actions)):
            steps.append(_smoothstep((t - k * seg) / blend + 0.5))
        steps.append(np.zeros(T))
        for k, a in enumerate(actions):
            params = {  # drawn for every action, so the random stream does not depend on T
                "amp": rng.uniform(0.85, 1.1),
                "gait_hz": rng.uniform(0.85, 1.0),
                "gait_phase": rng.uniform(0, 2 * np.pi),
                "lat_phase": rng.uniform(-0.5, 0.5),
            }
            env = steps[k] - steps[k + 1]
            if not env.any():
                continue
            for n, v in _ACTION_FUNCS[a](t, k * seg, seg, params).items():
                if n in idx:
                    q[:, idx[n]] += env * to_internal(n, v)
    # pelvis: a bounded meandering path on the floor and a slowly turning heading
    path = {
        "pelvis_tx": (1.0, 1.0 / 20.0),
        "pelvis_tz": (0.5, 1.0 / 31.0),
        "pelvis_rotation": (np.deg2rad(15.0), 1.0 / 17.0),
    }
    for n, (amp, hz) in path.items():
        if n in idx:
            q[:, idx[n]] += amp * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))

    q = _ground_feet(tree, q, idx)
    return _smooth_clip(q, rng_lo_hi[:, 0], rng_lo_hi[:, 1])


def _padded(q: np.ndarray) -> np.ndarray:
    """``q`` (T, n) padded with its last frame to a power of two (>= 64) frames, so trials of
    different lengths share a few compiled programs."""
    T = q.shape[0]
    n = max(64, 1 << (T - 1).bit_length())
    return np.concatenate([q, np.repeat(q[-1:], n - T, 0)], 0)


def _fk(tree, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body origins and markers (numpy float64) for independent ``q`` (T, n_indep).

    Shapes: (T, n_body, 3), (T, n_marker, 3).
    """
    from .fk import forward_kinematics

    out = forward_kinematics(tree, _padded(q))
    T = q.shape[0]
    return np.asarray(out.p_world, np.float64)[:T], np.asarray(out.markers, np.float64)[:T]


def _ground_feet(tree, q: np.ndarray, idx: dict) -> np.ndarray:
    """Shift ``pelvis_ty`` so the lowest foot point stays at its default-pose height.

    Foot points: the origins of the heel and toe bodies and every marker fixed on them.
    """
    feet = [tree.body_names.index(b) for b in _FOOT_BODIES if b in tree.body_names]
    if not feet or "pelvis_ty" not in idx:
        return q
    on_feet = np.nonzero(np.isin(tree.topology.marker_body, feet))[0]
    default = np.asarray(tree.coord_default, np.float64)[tree.topology.indep_coord]
    p_world, markers = _fk(tree, np.concatenate([default[None], q], 0))
    y = np.concatenate([p_world[:, feet, 1], markers[:, on_feet, 1]], 1)
    tau = 0.02  # soft-minimum temperature (m): smooth hand-over between the feet
    soft = -tau * np.log(np.exp(-(y - y.min(1, keepdims=True)) / tau).sum(1)) + y.min(1)
    q = q.copy()
    q[:, idx["pelvis_ty"]] += soft[0] - soft[1:]
    return q


# ----------------------------------------------------------------------------- trials
def synthetic_trial(
    tree,
    n_frames: int,
    noise_m: float = 0.005,
    gap_fraction: float = 0.02,
    seed: int = 0,
    rate: float = 60.0,
    actions=ACTIONS,
) -> dict:
    """Markers of :func:`smooth_motion` with Gaussian noise and a few contiguous NaN gaps.

    ``gap_fraction`` of all marker-frames are missing, in one contiguous gap on each of up to
    three markers (never on the first or last frame). Returns a dict with ``q_true``
    (T, n_indep), ``q_full`` (T, n_coord), ``time`` (T,), ``markers`` (T, M, 3) (metres, noisy,
    NaN in gaps), ``markers_clean`` (T, M, 3), ``gaps`` (T, M) bool, ``marker_names``, ``rate``.
    """
    from .fk import full_coordinates

    if noise_m < 0:
        raise InputError(f"noise_m must be >= 0, got {noise_m}", field="noise_m")
    if not 0 <= gap_fraction < 0.5:
        raise InputError(
            f"gap_fraction must be in [0, 0.5), got {gap_fraction}", field="gap_fraction"
        )
    q = smooth_motion(tree, n_frames, rate=rate, seed=seed, actions=actions)
    clean = _fk(tree, q)[1]
    q_full = np.asarray(full_coordinates(tree, _padded(q)), np.float64)[: q.shape[0]]
    rng = np.random.default_rng([seed, 1])
    T, M = clean.shape[:2]
    noisy = clean + rng.normal(0.0, noise_m, clean.shape) if noise_m > 0 else clean.copy()
    gaps = np.zeros((T, M), bool)
    budget = int(round(gap_fraction * T * M))
    if budget > 0 and T >= 3 and M >= 1:
        k = min(3, M)
        who = rng.choice(M, size=k, replace=False)
        length = max(1, min(T - 2, budget // k))
        for m in who:
            start = int(rng.integers(1, T - 1 - length + 1))
            gaps[start : start + length, m] = True
    noisy[gaps] = np.nan
    return {
        "q_true": q,
        "q_full": q_full,
        "time": np.arange(T) / float(rate),
        "markers": noisy,
        "markers_clean": clean,
        "gaps": gaps,
        "marker_names": tuple(tree.marker_names),
        "rate": float(rate),
    }


def coordinates_for_storage(tree, q_full: np.ndarray) -> np.ndarray:
    """Full coordinates in the units OpenSim 4.6 writes to an IK ``.mot`` with inDegrees=yes.

    Rotational coordinates in degrees; translational in metres; coupled coordinates (a
    coordinate whose joint axes are nonlinear functions of it, e.g. ``knee_angle_r_beta``) stay
    in radians, because OpenSim converts only coordinates of motion type Rotational.
    Shape: (T, n_coord) -> (T, n_coord).
    """
    out = np.array(q_full, np.float64, copy=True)
    rot = [i for i, c in enumerate(tree.meta["coordinates"]) if c["motion_type"] == "rotational"]
    out[:, rot] = np.rad2deg(out[:, rot])
    return out


def write_sample_trial(
    tree,
    out_trc: str | Path,
    out_mot_truth: str | Path,
    n_frames: int = 500,
    noise_m: float = 0.005,
    gap_fraction: float = 0.02,
    seed: int = 0,
    rate: float = 60.0,
    actions=ACTIONS,
) -> dict:
    """Write a :func:`synthetic_trial` as a TRC (millimetres, like Pose2Sim) and its truth .mot.

    The ``.mot`` holds the full coordinate vector (couplers applied) in
    ``tree.coordinate_names`` order, in OpenSim 4.6's IK output units (see
    :func:`coordinates_for_storage`), header ``inDegrees=yes``. Returns the trial dict with
    ``trc_path`` and ``mot_path`` added.
    """
    from .io import write_storage, write_trc

    trial = synthetic_trial(
        tree,
        n_frames,
        noise_m=noise_m,
        gap_fraction=gap_fraction,
        seed=seed,
        rate=rate,
        actions=actions,
    )
    trc = write_trc(
        out_trc,
        trial["marker_names"],
        trial["time"],
        trial["markers"],
        units="mm",
        data_rate=rate,
    )
    mot = write_storage(
        out_mot_truth,
        list(tree.coordinate_names),
        trial["time"],
        coordinates_for_storage(tree, trial["q_full"]),
        in_degrees=True,
        name="synthetic_truth",
    )
    return {**trial, "trc_path": str(trc), "mot_path": str(mot)}
