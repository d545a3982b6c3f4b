"""Plots written by the CLI (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_marker_trajectories(time_s, pos, names, path) -> Path:
    """X/Y/Z of every marker over time. pos: (T, M, 3) metres."""
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for k, ax in enumerate(axes):
        ax.plot(time_s, pos[:, :, k], lw=0.8)
        ax.set_ylabel(f"{'XYZ'[k]} (m)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{len(names)} marker trajectories (FK)")
    axes[-1].set_xlabel("time (s)")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_ik_summary(tree, trial, q, path) -> Path:
    """Marker error over time and lumbar coordinates (IK vs truth) of a synthetic trial."""
    from .fk import forward_kinematics

    plt = _plt()
    t = trial["time"]
    model = np.asarray(forward_kinematics(tree, q).markers)
    err_mm = np.linalg.norm(model - trial["markers"], axis=-1) * 1e3
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(t, np.sqrt(np.nanmean(err_mm**2, 1)), label="RMS")
    axes[0].plot(t, np.nanmax(err_mm, 1), label="max", alpha=0.7)
    axes[0].set_ylabel("marker error (mm)")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    names = tree.independent_names
    for n in ("L5_S1_Flex_Ext", "L5_S1_Lat_Bending", "L5_S1_axial_rotation"):
        if n in names:
            i = names.index(n)
            (line,) = axes[1].plot(t, np.rad2deg(q[:, i]), label=f"{n} (IK)")
            axes[1].plot(
                t, np.rad2deg(trial["q_true"][:, i]), "--", color=line.get_color(), alpha=0.7
            )
    axes[1].set_ylabel("lumbar coordinate (deg); dashed = truth")
    axes[1].set_xlabel("time (s)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_crosscheck(tree, time_s, q_ours, q_ref, coords: dict, path, top: int = 6) -> Path:
    """The coordinates where our IK and OpenSim's differ most (RMS), over time."""
    plt = _plt()
    # the well-observed coordinates that differ most first, then the worst weakly observed
    by_rms = sorted(coords, key=lambda n: -coords[n]["rms"])
    observed = [n for n in by_rms if not coords[n]["weakly_observed"]]
    weak = [n for n in by_rms if coords[n]["weakly_observed"]]
    names = (observed[: top - 2] + weak[:2])[:top] if weak else observed[:top]
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2 * len(names)), sharex=True)
    for ax, n in zip(np.atleast_1d(axes), names, strict=False):
        i = tree.independent_names.index(n)
        f = 1e3 if coords[n]["unit"] == "mm" else 180.0 / np.pi
        ax.plot(time_s, q_ref[:, i] * f, label="OpenSim", lw=1.5)
        ax.plot(time_s, q_ours[:, i] * f, "--", label="simspine-jax", lw=1.2)
        flag = " (weakly observed)" if coords[n]["weakly_observed"] else ""
        ax.set_ylabel(f"{n}\n({coords[n]['unit']})", fontsize=8)
        ax.set_title(f"{n}: RMS diff {coords[n]['rms']:.3g} {coords[n]['unit']}{flag}", fontsize=9)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    out = _save(fig, path)
    plt.close(fig)
    return out
