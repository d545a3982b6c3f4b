"""FK and IK at scale on whatever device JAX finds (a GPU when lent): one prepared run.

Prints one JSON line per measurement (notes go to stderr) and stops growing a batch once a
measurement takes longer than ``--step-budget`` seconds, runs out of device memory, or the
whole run passes ``--budget`` seconds, so it fits a short device lease (< 8 minutes by
default). Each line carries the device, dtype, batch and the wall times:

* ``bench: "device"``: backend, device kind, JAX version, x64 flag.
* ``bench: "fk"``: :func:`simspine_jax.forward_kinematics` of ``batch`` random poses of the
  default model (all body frames and markers), float64 and float32; ``frames_per_s`` from the
  median of >= 3 steady calls timed to ``block_until_ready``; ``compile_s`` the first call
  minus that. float32 lines also carry ``max_err_m_vs_f64`` (largest marker difference to the
  float64 FK of the same poses).
* ``bench: "ik"``: :func:`simspine_jax.ik.solve_ik_batch` on ``batch`` different synthetic
  trials of ``frames`` frames (``clean``: exact markers; ``noise5mm``: 5 mm noise and gaps),
  lambda = 0 and with smoothing (lambda_a = 0.1); float64 only (the solver refuses float32:
  its tolerances are float64-sized). ``frames_per_s`` = batch x frames / wall_s;
  ``fit_frac_1mm`` (clean) the fraction of frames whose largest marker error is < 1 mm,
  ``max_iters_frac`` the fraction that hit the iteration cap, ``rms_mm`` the mean per-frame
  RMS marker error.

    python experiments/gpu_check.py [--quick] [--budget S] [--step-budget S]

``experiments/gpu_check.sh`` runs this on the device machine (its own python3, this checkout
on PYTHONPATH, no OpenSim needed). ``--quick`` is the CPU smoke run (small batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def _note(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def _timed(fn, min_runs: int = 3, min_time: float = 0.5):
    """(first call seconds, median steady seconds, last output)."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    t_start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - t_start < min_time and len(times) < 20):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def _oom(e: BaseException) -> bool:
    s = str(e).lower()
    return "resource_exhausted" in s or "out of memory" in s or "oom" in s


def fk_part(args, dev: dict, deadline: float) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from simspine_jax import default_model_path, forward_kinematics, load_model
    from simspine_jax.ik.problem import bounds

    trees = {dt: load_model(default_model_path(), dtype=dt) for dt in ("float64", "float32")}
    t64 = trees["float64"]
    lo, hi = (np.asarray(b) for b in bounds(t64))
    rng = np.random.default_rng(0)
    fk = {dt: jax.jit(lambda q, t=t: forward_kinematics(t, q).markers) for dt, t in trees.items()}
    for batch in args.fk_batches:
        if time.perf_counter() > deadline:
            _note("FK: run budget spent")
            return
        # uniform inside the coordinate ranges (translations: +-0.5 m where unbounded)
        q64 = rng.uniform(np.maximum(lo, -0.5), np.minimum(hi, 0.5), (batch, t64.n_indep))
        ref = None
        for dt in ("float64", "float32"):
            q = jnp.asarray(q64, dtype=dt)
            try:
                first, wall, out = _timed(lambda q=q, dt=dt: fk[dt](q))
            except Exception as e:  # noqa: BLE001 - report and stop growing
                if _oom(e):
                    _note(f"FK {dt} batch {batch}: out of memory")
                    return
                raise
            line = dict(
                bench="fk",
                **dev,
                dtype=dt,
                batch=batch,
                wall_s=round(wall, 6),
                compile_s=round(max(first - wall, 0.0), 3),
                frames_per_s=round(batch / wall, 1),
            )
            if dt == "float64":
                ref = np.asarray(out)
            else:
                line["max_err_m_vs_f64"] = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
            _emit(**line)
            if wall > args.step_budget:
                _note(f"FK batch {batch} took {wall:.1f} s: not growing further")
                return


def ik_part(args, dev: dict, deadline: float) -> None:
    import numpy as np

    from simspine_jax import default_model_path, load_model
    from simspine_jax.ik import IKOptions, IKStatus, solve_ik_batch
    from simspine_jax.synth import synthetic_trial

    tree = load_model(default_model_path(), dtype="float64")
    T = args.frames
    pool = {}
    for trial, noise, gaps in (("clean", 0.0, 0.0), ("noise5mm", 0.005, 0.02)):
        # a handful of distinct motions, tiled into larger batches (every sequence is solved
        # on its own; repeating one costs the same as a new one)
        seqs = [
            synthetic_trial(tree, T, noise_m=noise, gap_fraction=gaps, seed=s)
            for s in range(min(8, max(args.ik_batches)))
        ]
        pool[trial] = seqs
    for trial, seqs in pool.items():
        for smooth in (0.0, 0.1):
            opts = IKOptions(smooth_acc=smooth)
            for batch in args.ik_batches:
                if time.perf_counter() > deadline:
                    _note("IK: run budget spent")
                    return
                batch_seqs = [seqs[i % len(seqs)]["markers"] for i in range(batch)]
                try:
                    first, wall, res = _timed(
                        lambda b=batch_seqs, o=opts: solve_ik_batch(tree, b, options=o),
                        min_runs=2,
                        min_time=0.0,
                    )
                except Exception as e:  # noqa: BLE001 - report and stop growing
                    if _oom(e):
                        _note(f"IK {trial} batch {batch}: out of memory")
                        break
                    raise
                status = np.concatenate([np.asarray(r.status) for r in res])
                line = dict(
                    bench="ik",
                    **dev,
                    dtype="float64",
                    trial=trial,
                    frames=T,
                    batch=batch,
                    smooth_acc=smooth,
                    wall_s=round(wall, 4),
                    compile_s=round(max(first - wall, 0.0), 2),
                    frames_per_s=round(batch * T / wall, 1),
                    max_iters_frac=round(float(np.mean(status == int(IKStatus.MAX_ITERS))), 5),
                    rms_mm=round(1e3 * float(np.mean([np.nanmean(r.rms_error) for r in res])), 4),
                )
                if trial == "clean":
                    worst = np.concatenate([np.asarray(r.max_error) for r in res])
                    line["fit_frac_1mm"] = round(float(np.mean(worst < 1e-3)), 5)
                _emit(**line)
                if wall > args.step_budget:
                    _note(f"IK {trial} batch {batch} took {wall:.1f} s: not growing further")
                    break


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: small batches")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    ap.add_argument("--step-budget", type=float, default=30.0, help="stop growing past this")
    ap.add_argument("--frames", type=int, help="frames per IK trial (500; --quick 60)")
    ap.add_argument("--fk-batches", type=int, nargs="+")
    ap.add_argument("--ik-batches", type=int, nargs="+")
    ap.add_argument("--parts", nargs="+", default=["fk", "ik"], choices=["fk", "ik"])
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 60 if args.quick else 500
    if args.fk_batches is None:
        args.fk_batches = [1000, 10000] if args.quick else [1000, 10000, 100000, 1000000, 4000000]
    if args.ik_batches is None:
        args.ik_batches = [1, 2] if args.quick else [1, 8, 32, 128, 512, 2048]
    import jax

    jax.config.update("jax_enable_x64", True)
    d = jax.devices()[0]
    dev = dict(backend=jax.default_backend(), device=str(getattr(d, "device_kind", d.platform)))
    _emit(
        bench="device",
        **dev,
        n_devices=len(jax.devices()),
        jax=jax.__version__,
        python=sys.version.split()[0],
    )
    deadline = time.perf_counter() + args.budget
    if "fk" in args.parts:
        fk_part(args, dev, deadline)
    if "ik" in args.parts:
        ik_part(args, dev, deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
