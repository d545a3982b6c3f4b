"""Forward-kinematics throughput: our JAX FK (batched, jit) against OpenSim's per-frame loop.

Prints one JSON line per measurement:

    {"bench": "fk", "impl": "jax" | "opensim", "device": ..., "dtype": ..., "batch": N,
     "frames_per_s": ..., "compile_s": ..., "run_s": ..., "model": ..., ...}

JAX: independent coordinates -> full coordinates (couplers) -> all body transforms and all
marker positions, one ``jit`` program per batch size. ``compile_s`` is lower + compile (no run);
``run_s`` is the median over repeated calls of the compiled program, each timed to
``block_until_ready``. Inputs are on the device before timing.

OpenSim: per frame, ``Coordinate.setValue(s, v, enforceConstraints=False)`` for every unlocked
coordinate of the full vector (the same poses, couplers already applied), ``realizePosition``,
then every marker's ``getLocationInGround``. ``run_s`` is the whole loop; ``compile_s`` is
model loading + ``initSystem``.

``impl: "jax_chunked"`` lines (``--chunk``, default 1000) time the batches larger than the chunk
as ``lax.map`` over 1000-frame blocks: on CPU one huge vmapped batch is memory-bound (each
tree level rewrites the whole (batch, n_body, 3, 3) array), blocks stay in cache.

The last lines give the ratio JAX frames/s at the largest batch / OpenSim frames/s, per dtype
(``ratio``; ``ratio_chunked`` for the chunked run).

Default model: the SimSpine model (Pose2Sim ``Model_Pose2Sim_muscles_flex.osim`` with
``Markers_Halpe26.xml``), exported on the fly. XLA flags must be set before JAX is imported:
use ``--xla-flags`` (or the XLA_FLAGS environment variable); the flags are echoed in each line.

    python experiments/bench_fk.py [--quick] [--osim M.osim --markers K.xml | --model T.npz]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--osim", help="OpenSim model (default: Pose2Sim muscles_flex)")
    ap.add_argument("--markers", help="MarkerSet .xml for --osim (default: Halpe26)")
    ap.add_argument("--model", help="exported tree (.npz) for JAX; OpenSim then needs --osim")
    ap.add_argument("--batches", type=int, nargs="+", help="JAX batch sizes (1 1000 100000)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--opensim-frames", type=int, help="frames in OpenSim's loop (2000)")
    ap.add_argument("--no-opensim", action="store_true", help="skip the OpenSim loop")
    ap.add_argument("--quick", action="store_true", help="small run (batches 1 1000, 200 frames)")
    ap.add_argument("--min-time", type=float, help="seconds of repeated runs per measurement")
    ap.add_argument(
        "--chunk",
        type=int,
        default=1000,
        help="also time batches larger than this as lax.map over blocks of it "
        "(impl 'jax_chunked'; 0: off)",
    )
    ap.add_argument("--xla-flags", help="set XLA_FLAGS before importing jax")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.batches is None:
        args.batches = [1, 1000] if args.quick else [1, 1000, 100000]
    if args.opensim_frames is None:
        args.opensim_frames = 200 if args.quick else 2000
    if args.min_time is None:
        args.min_time = 0.2 if args.quick else 1.0
    return args


def _emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def _random_indep(tree, n: int, seed: int):
    """Independent coordinates uniform in their ranges (translations clipped to +-1 m,
    rotations to +-pi). Shape: (n, n_indep)."""
    import numpy as np

    ind = tree.topology.indep_coord
    lo, hi = np.asarray(tree.coord_range, np.float64)[ind].T
    trans = [tree.meta["coordinates"][i]["motion_type"] == "translational" for i in ind]
    lim = np.where(trans, 1.0, np.pi)
    return np.random.default_rng(seed).uniform(
        np.maximum(lo, -lim), np.minimum(hi, lim), (n, len(ind))
    )


def _fk_fn(chunk: int):
    """A jittable (tree, q) -> (R_world, p_world, markers); with ``chunk`` the batch is run as
    ``lax.map`` over blocks of ``chunk`` frames (the batch must be a multiple of it)."""
    import jax

    from simspine_jax.fk import forward_kinematics

    def plain(tr, q):
        return tuple(forward_kinematics(tr, q))

    if not chunk:
        return plain

    def chunked(tr, q):
        blocks = q.reshape((-1, chunk, q.shape[-1]))
        out = jax.lax.map(lambda qb: plain(tr, qb), blocks)
        return tuple(o.reshape((-1,) + o.shape[2:]) for o in out)

    return chunked


def bench_jax(tree, q_all, batches, dtypes, min_time, base: dict, chunk: int = 0):
    import jax
    import jax.numpy as jnp
    import numpy as np

    dev = jax.devices()[0]
    device = getattr(dev, "device_kind", None) or dev.platform
    out = {}
    for dtype in dtypes:
        t = tree.astype(jnp.dtype(dtype))
        fk = jax.jit(_fk_fn(chunk))
        for n in batches:
            if chunk and (n <= chunk or n % chunk):
                continue
            reps = np.resize(np.arange(len(q_all)), n)  # cycle the poses up to n frames
            q = jax.device_put(jnp.asarray(q_all[reps], dtype))
            t0 = time.perf_counter()
            compiled = fk.lower(t, q).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(t, q))  # warm-up
            times: list[float] = []
            t_start = time.perf_counter()
            while len(times) < 3 or (time.perf_counter() - t_start < min_time and len(times) < 500):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(t, q))
                times.append(time.perf_counter() - t0)
            run_s = statistics.median(times)
            rec = dict(
                base,
                impl="jax_chunked" if chunk else "jax",
                device=device,
                dtype=dtype,
                batch=n,
                frames_per_s=n / run_s,
                compile_s=compile_s,
                run_s=run_s,
                repeats=len(times),
                **({"chunk": chunk} if chunk else {}),
            )
            out[(dtype, n)] = rec
            _emit(rec)
    return out


def bench_opensim(osim_path, markers, q_full, base: dict):
    import numpy as np

    from simspine_jax.osim_bridge import import_opensim

    osim = import_opensim()
    t0 = time.perf_counter()
    model = osim.Model(str(osim_path))
    if markers is not None:
        model.updMarkerSet().clearAndDestroy()
        ms = osim.MarkerSet(str(markers))
        for i in range(ms.getSize()):
            model.addMarker(ms.get(i).clone())
    s = model.initSystem()
    load_s = time.perf_counter() - t0
    cs = model.getCoordinateSet()
    coords = [cs.get(i) for i in range(cs.getSize())]
    free = [(i, c) for i, c in enumerate(coords) if not c.getLocked(s)]
    mset = model.getMarkerSet()
    mk = [mset.get(i) for i in range(mset.getSize())]
    out = np.empty((len(q_full), len(mk), 3))
    t0 = time.perf_counter()
    for f, q in enumerate(q_full.tolist()):
        for i, c in free:
            c.setValue(s, q[i], False)
        model.realizePosition(s)
        for j, m in enumerate(mk):
            out[f, j] = m.getLocationInGround(s).to_numpy()
    run_s = time.perf_counter() - t0
    rec = dict(
        base,
        impl="opensim",
        device=f"cpu ({platform.processor() or platform.machine()}, 1 thread)",
        dtype="float64",
        batch=len(q_full),
        frames_per_s=len(q_full) / run_s,
        compile_s=load_s,
        run_s=run_s,
        opensim_version=getattr(osim, "__version__", "?"),
    )
    _emit(rec)
    return rec, out


def main(argv=None) -> int:
    args = _parse(argv)
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from simspine_jax.fk import forward_kinematics, full_coordinates
    from simspine_jax.model import load_model

    osim_path, markers = args.osim, args.markers
    if args.model is None and osim_path is None:
        from simspine_jax.osim_bridge import pose2sim_setup_dir

        S = pose2sim_setup_dir()
        osim_path = S / "Model_Pose2Sim_muscles_flex.osim"
        markers = markers or S / "Markers_Halpe26.xml"
    t0 = time.perf_counter()
    tree = load_model(args.model or osim_path, markers=markers, dtype=np.float64)
    export_s = time.perf_counter() - t0
    base = dict(
        bench="fk",
        model=tree.meta.get("name") or Path(args.model or osim_path).stem,
        n_coord=tree.n_coord,
        n_indep=tree.n_indep,
        n_body=tree.n_body,
        n_marker=tree.n_marker,
        jax_version=jax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        cpu_count=os.cpu_count(),
    )
    print(
        f"# model {base['model']}: {tree.n_coord} coordinates ({tree.n_indep} independent), "
        f"{tree.n_body} bodies, {tree.n_marker} markers; loaded in {export_s:.2f} s; "
        f"jax {jax.__version__} on {jax.devices()[0]}",
        file=sys.stderr,
    )
    q_all = _random_indep(tree, max(args.opensim_frames, 1000), args.seed)
    res = bench_jax(tree, q_all, args.batches, args.dtypes, args.min_time, base)
    if args.chunk:
        res_c = bench_jax(tree, q_all, args.batches, args.dtypes, args.min_time, base, args.chunk)
    else:
        res_c = {}

    if args.no_opensim or osim_path is None:
        return 0
    try:
        from simspine_jax.osim_bridge import import_opensim

        import_opensim()
    except ImportError as e:
        print(f"# OpenSim loop skipped: {e}", file=sys.stderr)
        return 0
    qi = q_all[: args.opensim_frames]
    q_full = np.asarray(full_coordinates(tree, qi))
    rec, mk = bench_opensim(osim_path, markers, q_full, base)
    # The two loops computed the same thing: check it (guards against timing a wrong loop).
    ours = np.asarray(forward_kinematics(tree, qi).markers)
    err = float(np.abs(ours - mk).max())
    if err > 1e-6:
        print(f"# WARNING: JAX and OpenSim markers differ by {err:.3e} m", file=sys.stderr)
    big = max(args.batches)
    for dtype in args.dtypes:
        j = res[(dtype, big)]
        line = dict(
            bench="fk_ratio",
            model=base["model"],
            dtype=dtype,
            jax_batch=big,
            jax_frames_per_s=j["frames_per_s"],
            opensim_frames_per_s=rec["frames_per_s"],
            ratio=j["frames_per_s"] / rec["frames_per_s"],
            max_marker_diff_m=err,
            xla_flags=base["xla_flags"],
        )
        jc = res_c.get((dtype, big))
        if jc is not None:
            line["ratio_chunked"] = jc["frames_per_s"] / rec["frames_per_s"]
            line["chunk"] = args.chunk
        _emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
