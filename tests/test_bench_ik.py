"""Smoke test of experiments/bench_ik.py: a quick run prints only JSON lines with the keys
its documentation promises (64 frames, float64 lambda = 0, no OpenSim: about 20-40 s on 2 cores,
most of it one XLA compilation)."""

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "experiments" / "bench_ik.py"

# keys asked of every measurement line (bench == "ik")
MEASUREMENT_KEYS = {
    "bench", "impl", "trial", "frames", "batch", "dtype", "lambda_v", "lambda_a", "compile_s",
    "wall_s", "frames_per_s", "marker_rms_mm", "device",
}  # fmt: skip
RATIO_KEYS = {"bench", "trial", "frames", "opensim_frames_per_s", "ratio_lambda0", "ratio_smooth"}


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_ik", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_ik_quick_prints_json_lines(capsys):
    bench_ik = _load_bench()
    assert bench_ik.main(["--quick", "--frames", "64", "--no-opensim"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines
    recs = [json.loads(line) for line in lines]  # every stdout line is JSON
    for rec in recs:
        assert rec["bench"] in bench_ik.REQUIRED_KEYS, rec
        missing = set(bench_ik.REQUIRED_KEYS[rec["bench"]]) - set(rec)
        assert not missing, (rec["bench"], missing)

    meas = [r for r in recs if r["bench"] == "ik"]
    assert {r["trial"] for r in meas} == {"clean", "noise5mm"}
    for r in meas:
        assert not MEASUREMENT_KEYS - set(r), MEASUREMENT_KEYS - set(r)
        assert r["impl"] == "jax" and r["frames"] == 64 and r["batch"] == 1
        assert r["dtype"] == "float64" and r["lambda_v"] == 0.0 and r["lambda_a"] == 0.0
        assert r["wall_s"] > 0 and r["frames_per_s"] > 0 and r["repeats"] >= 3
        assert r["frames_per_s_best"] >= r["frames_per_s"]
        assert math.isfinite(r["compile_s"]) and r["device"].startswith(("cpu", "gpu", "cuda"))
        assert r["marker_rms_mm"] >= 0
    clean = next(r for r in meas if r["trial"] == "clean")
    assert clean["marker_rms_mm"] < 0.01  # exact markers are fitted exactly

    ratios = [r for r in recs if r["bench"] == "ik_ratio"]
    assert {r["trial"] for r in ratios} == {"clean", "noise5mm"}
    for r in ratios:
        assert not RATIO_KEYS - set(r), RATIO_KEYS - set(r)
        assert r["opensim_frames_per_s"] is None and r["ratio_lambda0"] is None
        assert r["jax_frames_per_s_lambda0"] > 0
