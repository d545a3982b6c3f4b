"""Smoke test of experiments/ik_trust.py: a tiny run (32 frames, the SimSpine markers with their
setup, noise-free and 5 mm with gaps, no OpenSim) prints only JSON lines with the keys its
documentation promises, and the target logic decides pass/fail as issue 8 says (two XLA
compilations, lambda = 0 and smoothed: 1-2.5 minutes on 2 shared cores)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "ik_trust.py"


def _load():
    spec = importlib.util.spec_from_file_location("ik_trust", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ik_trust_quick_prints_json_lines(tmp_path):
    ik_trust = _load()  # for its key tables only: the run itself is a separate process
    out = tmp_path / "ik_trust"
    argv = ["--quick", "--no-opensim", "--frames", "32", "--out", str(out)]
    # a child process, as a user runs it: this pytest process may have imported opensim
    # (test_ik_opensim), and XLA compiling next to it crashed once (segfault in
    # backend_compile_and_load, CI of this change)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    recs = [json.loads(line) for line in lines]  # every stdout line is JSON
    assert (out / "results.jsonl").read_text().strip().splitlines() == lines
    for rec in recs:
        assert rec["kind"] in ik_trust.REQUIRED_KEYS, rec
        missing = set(ik_trust.REQUIRED_KEYS[rec["kind"]]) - set(rec)
        assert not missing, (rec["kind"], missing)

    assert [r["kind"] for r in recs[:1]] == ["run"] and recs[0]["opensim"] is False
    trials = [r for r in recs if r["kind"] == "trial"]
    names = {"simspine37/setup/noise0mm", "simspine37/setup/noise5mm_gaps"}
    assert {r["trial"] for r in trials} == names
    for r in trials:
        assert r["frames"] == 32 and r["n_marker"] == 37 and r["coordinate_tasks"] == 1
        assert r["frames_per_s"] > 0 and 0.0 <= r["fit_fraction"] <= 1.0
        assert r["max_iters"] + r["too_few_markers"] <= 32
        assert r["cost_mean"] >= 0 and r["truth_rms_deg_core"] >= 0
        # without OpenSim its side stays null
        assert r["opensim_cost_mean"] is None and r["cost_ratio_mean"] is None
    clean = next(r for r in trials if r["noise_mm"] == 0)
    noisy = next(r for r in trials if r["noise_mm"] == 5)
    assert clean["gap_fraction"] == 0 and noisy["gap_fraction"] == 0.02
    assert clean["marker_rms_mm"] < noisy["marker_rms_mm"]

    smooth = [r for r in recs if r["kind"] == "smooth"]
    assert [r["trial"] for r in smooth] == ["simspine37/setup/noise5mm_gaps"]
    assert smooth[0]["lambda_a"] == 0.1 and smooth[0]["truth_ratio"] is None
    # smoothing recovers the true motion better than the unsmoothed solve
    assert smooth[0]["truth_rms_deg_core"] < smooth[0]["truth_rms_deg_core_lambda0"]
    # the setup's coordinate task biases the objective's noise-free optimum: the smoothed
    # solve is nearer that optimum than the truth
    assert smooth[0]["objective_rms_deg_core"] < smooth[0]["truth_rms_deg_core"]
    assert smooth[0]["objective_ratio"] is None  # no OpenSim

    targets = {r["target"]: r for r in recs if r["kind"] == "target"}
    assert tuple(targets) == ik_trust.TARGETS
    assert targets["noisy_cost"]["pass"] is None  # nothing to compare without OpenSim
    assert targets["smoothing_truth"]["pass"] is None
    assert targets["continuity"]["pass"] is None
    assert targets["max_iters"]["trials"] == 2
    # the setup's coordinate task keeps the noise-free trial out of the exact-fit target
    assert targets["noise_free_fit"]["excluded"][0][0] == "simspine37/setup/noise0mm"
    assert (out / "trials" / "simspine37_setup_noise5mm_gaps.trc").is_file()


def _trial(name, noise, **kw):
    rec = dict(
        trial=name,
        noise_mm=noise,
        coordinate_tasks=0,
        fit_fraction=1.0,
        opensim_fit_fraction=0.2,
        cost_ratio_mean=0.99,
        fraction_within_2pct=1.0,
        max_iters_fraction=0.0,
        jump_deg_p50=20.0,
        opensim_jump_deg_p50=20.0,
    )
    return rec | kw


def test_targets_decide_as_issue_8_says():
    ik_trust = _load()
    trials = [
        _trial("clean", 0.0),
        _trial("clean_task", 0.0, coordinate_tasks=1, fit_fraction=0.3),
        _trial("ok", 5.0),
        _trial("few_within", 5.0, fraction_within_2pct=0.985),
        _trial("costly", 10.0, cost_ratio_mean=1.001),
        _trial("slow", 10.0, max_iters_fraction=0.02),
        _trial("jumpy", 5.0, jump_deg_p50=26.0),
    ]
    smooths = [
        dict(trial="ok", truth_ratio=0.9, objective_ratio=0.4),  # a task's bias: not judged
        dict(trial="few_within", truth_ratio=0.4, objective_ratio=0.6),
    ]
    t = {r["target"]: r for r in ik_trust.evaluate_targets(trials, smooths)}
    assert t["noise_free_fit"]["pass"] is True and t["noise_free_fit"]["trials"] == 1
    assert t["noise_free_fit"]["opensim_value"] == 0.2
    assert [e[0] for e in t["noise_free_fit"]["excluded"]] == ["clean_task"]
    assert t["noisy_cost"]["pass"] is False
    assert t["noisy_cost"]["failing"] == ["few_within", "costly"]
    assert t["noisy_cost"]["value"] == 0.985 and t["noisy_cost"]["cost_ratio_mean_max"] == 1.001
    assert t["max_iters"]["failing"] == ["slow"] and t["max_iters"]["value"] == 0.02
    assert t["smoothing_truth"]["failing"] == ["few_within"]
    assert t["continuity"]["failing"] == ["jumpy"] and t["continuity"]["value"] == 1.3

    unfit = ik_trust.evaluate_targets([_trial("clean", 0.0, fit_fraction=0.99)], [])
    assert unfit[0]["pass"] is False and unfit[3]["pass"] is None


def test_default_grid_and_cache_key(tmp_path):
    ik_trust = _load()
    args = ik_trust._parse([])
    grid = ik_trust.trial_grid(args)
    assert len(grid) == 12 and args.frames == 300  # the documented default
    assert {s.gaps for s in grid if s.noise_mm == 0} == {False}
    assert {s.gaps for s in grid if s.noise_mm > 0} == {True}
    assert len(ik_trust.trial_grid(ik_trust._parse(["--full"]))) == 24

    files = [tmp_path / n for n in ("a.trc", "s.xml", "m.xml", "o.osim")]
    for f in files:
        f.write_text(f.name)
    key = ik_trust.opensim_cache_key(*files)
    assert key == ik_trust.opensim_cache_key(*files)
    assert key != ik_trust.opensim_cache_key(files[0], None, files[2], files[3])
    files[0].write_text("changed")
    assert key != ik_trust.opensim_cache_key(*files)
