"""Triangulation benchmark: real multi-view OpenPose JSONs and a long synthetic recording.

Prints one JSON line per measurement (compile time separate from run time).

1. ``real``: Pose2Sim's demo (balancing trial, 100 frames x 4 cameras, BODY_25B, 2-3 people in
   two views) from the pose2sim 0.5.7 wheel, downloaded on first use with
   ``pip download --no-deps pose2sim==0.5.7 -d WHEEL_DIR`` (the last wheel shipping the demo's
   JSONs with a calibration TOML). Robust triangulation and plain DLT: frames/s, reprojection
   error, coverage, views kept; plus one common error measure for every method: per point, the
   median reprojection error over the views above the likelihood threshold (robust to one bad
   view), then the median over points.
2. ``pose2sim``: Pose2Sim 0.5.7's own personAssociation + triangulation on the same demo, in a
   child process of ``--pose2sim-python`` (a Python with numpy<2, opencv-python-headless,
   pandas, toml, anytree, scipy, tqdm, matplotlib: the pose2sim wheel installed in this
   project's venv comes without its dependencies, so it cannot run here). Skipped (and said
   so) without that option.
3. ``synthetic``: ``--frames`` (default 100,000) frames x 21 keypoints x 4 distorted cameras,
   1.5 px noise, 10 % of the points with one view off by 50-200 px, 5 % of the views below the
   likelihood threshold; 3D error against the truth, frames/s.

Usage::

    python experiments/bench_triangulation.py [--frames 100000] [--pose2sim-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "pose2sim-0.5.7-py3-none-any.whl"
DEMO = "Pose2Sim/Demo/S00_Demo_Session/"
TRIAL = DEMO + "S00_P00_Participant/S00_P00_T01_BalancingTrial/"


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def demo_dir(wheel_dir: Path) -> Path:
    """The demo session extracted from the pose2sim 0.5.7 wheel (downloaded if missing)."""
    whl = wheel_dir / WHEEL
    if not whl.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "pose2sim==0.5.7",
                "-d",
                str(wheel_dir),
            ],
            check=True,
        )
    out = wheel_dir / "extracted"
    if not (out / TRIAL).exists():
        with zipfile.ZipFile(whl) as z:
            names = [
                n
                for n in z.namelist()
                if n.startswith(DEMO) or (n.startswith("Pose2Sim/") and n.endswith(".py"))
            ]
            z.extractall(out, names)  # the demo, and Pose2Sim's code for --pose2sim-python
    return out


def common_error(cams, kp_uv, kp_conf, points, thr=0.3) -> tuple[float, float]:
    """(median over points of the per-point median view error, coverage): points (T, K, 3)."""
    from simspine_jax.triangulation import project

    ok = np.isfinite(points).all(-1)
    proj = np.asarray(project(cams, np.where(ok[..., None], points, 0.0)))  # (T, K, C, 2)
    e = np.linalg.norm(proj - kp_uv.transpose(0, 2, 1, 3), axis=-1)
    use = (kp_conf.transpose(0, 2, 1) >= thr) & np.isfinite(e)
    per_point = np.nanmedian(np.where(use, e, np.nan), axis=-1)[ok]
    return float(np.nanmedian(per_point)), float(ok.mean())


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def bench_real(wheel_dir: Path, dtype) -> tuple:
    from simspine_jax.filtering import fill_gaps
    from simspine_jax.io.calibration import read_calibration
    from simspine_jax.io.openpose import read_pose_dir
    from simspine_jax.triangulation import dlt_triangulate, triangulate

    root = demo_dir(wheel_dir)
    cams = read_calibration(root / DEMO / "S00_Calibration/Calib_qualisys.toml")
    kp, t_read = timed(read_pose_dir, root / TRIAL / "pose", cams, "BODY_25B")
    T = kp.uv.shape[0]
    from functools import partial

    methods = (
        ("robust", triangulate),
        ("robust_prune_on_mean", partial(triangulate, prune_on="mean")),
        ("dlt", dlt_triangulate),
    )
    for name, fn in methods:
        _, t_first = timed(fn, cams, kp.uv, kp.confidence, dtype=dtype)
        runs = [timed(fn, cams, kp.uv, kp.confidence, dtype=dtype) for _ in range(5)]
        r, t_run = runs[0][0], min(t for _, t in runs)  # 100 frames: best of 5
        ok = np.isfinite(r.points[..., 0])
        filled, _ = fill_gaps(r.points, 10, points=True)
        med, _ = common_error(cams, kp.uv, kp.confidence, r.points)
        emit(
            bench="real",
            method=name,
            frames=T,
            keypoints=kp.uv.shape[2],
            cameras=len(cams),
            read_s=round(t_read, 3),
            person_choice=kp.report["person_choice"],
            compile_plus_run_s=round(t_first, 3),
            run_s=round(t_run, 4),
            frames_per_s=round(T / t_run, 1),
            reprojection_px_median=round(float(np.median(r.reprojection_px[ok])), 3),
            reprojection_px_mean=round(float(np.mean(r.reprojection_px[ok])), 3),
            common_median_view_error_px=round(med, 3),
            coverage=round(float(ok.mean()), 4),
            coverage_after_gap_fill_10=round(float(np.isfinite(filled[..., 0]).mean()), 4),
            views_kept_mean=round(float(r.n_views[ok].mean()), 3),
        )
    return root, cams, kp


_P2S_RUNNER = r"""
import os, sys, time, types
stub = sys.argv[3]
sys.path.insert(0, stub); sys.path.insert(0, sys.argv[1])
m = types.ModuleType("matplotlib.backends.backend_qt5agg")
m.FigureCanvasQTAgg = object; m.NavigationToolbar2QT = object
sys.modules["matplotlib.backends.backend_qt5agg"] = m
import matplotlib; matplotlib.use("Agg")
from Pose2Sim import Pose2Sim
os.chdir(sys.argv[2])
t0 = time.perf_counter(); Pose2Sim.personAssociation(); t1 = time.perf_counter()
Pose2Sim.triangulation(); t2 = time.perf_counter()
print("P2S_TIMES", t1 - t0, t2 - t1)
"""


def bench_pose2sim(python: str, root: Path, cams, kp) -> None:
    """Pose2Sim 0.5.7's association + triangulation in a child process (its own code)."""
    import shutil

    from simspine_jax.filtering import from_opensim_axes
    from simspine_jax.io.trc import read_trc

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(root / DEMO, tmp / "S00_Demo_Session")
        trial = tmp / "S00_Demo_Session/S00_P00_Participant/S00_P00_T01_BalancingTrial"
        stub = tmp / "stub" / "PyQt5"  # common.py imports Qt widgets it never uses here
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text("")
        (stub / "QtWidgets.py").write_text(
            "".join(
                f"class {c}: pass\n"
                for c in ("QMainWindow", "QApplication", "QWidget", "QTabWidget", "QVBoxLayout")
            )
        )
        runner = tmp / "run.py"
        runner.write_text(_P2S_RUNNER)
        p = subprocess.run(
            [python, str(runner), str(root), str(trial), str(tmp / "stub")],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if p.returncode != 0:
            emit(bench="pose2sim", skipped=f"Pose2Sim failed: {p.stderr.strip()[-300:]}")
            return
        out = p.stdout + p.stderr  # Pose2Sim logs its summary through logging
        t_assoc, t_tri = map(float, re.search(r"P2S_TIMES (\S+) (\S+)", out).groups())
        # the last such lines are triangulation's (personAssociation logs similar ones first)
        mean_px = float(re.findall(r"all points on all frames is ([\d.]+) px", out)[-1])
        excluded = float(re.findall(r"In average, ([\d.]+) cameras", out)[-1])
        trc_path = next((trial / "pose-3d").glob("*.trc"))
        trc = read_trc(trc_path)
        pts = from_opensim_axes(trc.positions, "z")  # Pose2Sim wrote Y-up (zup2yup)
        names = list(kp.marker_names)
        order = [trc.marker_names.index(n) for n in names]
        pts = pts[:, order]
        med, cov = common_error(cams, kp.uv, kp.confidence, pts)
        T = pts.shape[0]
        emit(
            bench="pose2sim",
            version="0.5.7",
            frames=T,
            association_s=round(t_assoc, 3),
            triangulation_s=round(t_tri, 3),
            frames_per_s_triangulation=round(T / t_tri, 1),
            frames_per_s_association_plus_triangulation=round(T / (t_assoc + t_tri), 1),
            reported_mean_reprojection_px=mean_px,
            reported_mean_cameras_excluded=excluded,
            common_median_view_error_px=round(med, 3),
            coverage_after_its_interpolation=round(cov, 4),
        )


def ring(n: int):
    from simspine_jax.io.calibration import Camera

    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n + 0.3
        C = np.array([4 * np.cos(a), 4 * np.sin(a), 1.5])
        z = np.array([-np.cos(a), -np.sin(a), -0.1])
        z /= np.linalg.norm(z)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        K = np.array([[1400.0, 0, 960], [0, 1390.0, 540], [0, 0, 1]])
        d = np.array([-0.12, 0.03, 0.001, -0.001, 0.0])
        cams.append(Camera(f"c{i}", (1920.0, 1080.0), K, d, R, -R @ C))
    return cams


def bench_synthetic(frames: int, chunk: int, dtype) -> None:
    from simspine_jax.triangulation import dlt_triangulate, triangulate

    rng = np.random.default_rng(0)
    cams = ring(4)
    K = 21
    X = rng.uniform(-0.6, 0.6, (frames, K, 3)).astype(np.float64) + [0, 0, 1.0]
    uv = np.stack([c.project(X) for c in cams], axis=1) + rng.normal(0, 1.5, (frames, 4, K, 2))
    conf = rng.uniform(0.4, 1.0, (frames, 4, K))
    conf[rng.random(conf.shape) < 0.05] = 0.1
    bad = rng.random((frames, K)) < 0.10
    view = rng.integers(0, 4, (frames, K))
    t, k = np.nonzero(bad)
    uv[t, view[t, k], k] += rng.uniform(50, 200, (len(t), 2)) * rng.choice([-1, 1], (len(t), 2))
    for name, fn in (("robust", triangulate), ("dlt", dlt_triangulate)):
        n0 = max(1, chunk // K)  # one chunk: compile
        _, t_first = timed(fn, cams, uv[:n0], conf[:n0], chunk=chunk, dtype=dtype)
        r, t_run = timed(fn, cams, uv, conf, chunk=chunk, dtype=dtype)
        ok = np.isfinite(r.points[..., 0])
        err = np.linalg.norm(r.points - X, axis=-1)[ok] * 1000
        emit(
            bench="synthetic",
            method=name,
            frames=frames,
            keypoints=K,
            cameras=4,
            chunk_points=chunk,
            dtype=str(np.dtype(dtype)),
            compile_plus_first_chunk_s=round(t_first, 3),
            run_s=round(t_run, 3),
            frames_per_s=round(frames / t_run, 1),
            points_per_s=round(frames * K / t_run, 1),
            coverage=round(float(ok.mean()), 4),
            error_mm_median=round(float(np.median(err)), 3),
            error_mm_p99=round(float(np.percentile(err, 99)), 3),
            error_mm_corrupted_points_median=round(
                float(np.median(np.linalg.norm(r.points - X, axis=-1)[bad & ok]) * 1000), 3
            ),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="synthetic frames")
    ap.add_argument("--chunk", type=int, default=65536, help="points per jit call")
    ap.add_argument("--wheel-dir", default=os.path.join(tempfile.gettempdir(), "pose2sim-0.5.7"))
    ap.add_argument("--pose2sim-python", help="a Python that can run Pose2Sim 0.5.7 (see doc)")
    ap.add_argument("--float32", action="store_true", help="float32 (default float64)")
    args = ap.parse_args()
    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float32 if args.float32 else np.float64
    emit(
        bench="env", jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices())
    )
    root, cams, kp = bench_real(Path(args.wheel_dir), dtype)
    if args.pose2sim_python:
        bench_pose2sim(args.pose2sim_python, root, cams, kp)
    else:
        emit(
            bench="pose2sim",
            skipped="no --pose2sim-python: the installed pose2sim wheel has no dependencies "
            "(cv2, pandas, anytree, toml), so its triangulation cannot run in this venv",
        )
    bench_synthetic(args.frames, args.chunk, dtype)


if __name__ == "__main__":
    main()
