"""The command line: export, info, fk (with a bad .mot), demo; errors exit with code 2 (bad
input) or 1 (OpenSim's child process failed or hung)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from simspine_jax import (
    default_markers_path,
    default_model_path,
    default_osim_path,
    forward_kinematics,
    load_model,
)
from simspine_jax.cli import main
from simspine_jax.io import read_storage, read_trc
from simspine_jax.synth import synthetic_trial, write_sample_trial

ROOT = Path(__file__).parent.parent
TWO_LINK = ROOT / "tests" / "data" / "two_link.osim"
DEFAULT = default_model_path()
OSIM = default_osim_path()
MARKERS = default_markers_path()


def test_export_and_info(tmp_path, capsys):
    out = tmp_path / "two_link.npz"
    assert main(["export", str(TWO_LINK), "-o", str(out)]) == 0
    assert out.exists()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "q2_dep" in text and "dependent on q2" in text and "tip" in text


def test_info_default(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "62; 40 independent, 20 coupled, 2 locked" in text
    assert "Spine_03         on lumbar1" in text


def test_fk_from_mot_matches_library(tmp_path):
    tree = load_model(DEFAULT)
    trc, mot = tmp_path / "truth.trc", tmp_path / "truth.mot"
    write_sample_trial(tree, trc, mot, n_frames=30, seed=5)
    out = tmp_path / "fk.trc"
    assert main(["fk", "--mot", str(mot), "-o", str(out), "--plot", str(tmp_path / "fk.png")]) == 0
    got = read_trc(out)
    assert got.marker_names == tree.marker_names
    q = synthetic_trial(tree, 30, noise_m=0.0, gap_fraction=0.0, seed=5)["q_true"]
    want = np.asarray(forward_kinematics(tree, q).markers)
    # the .mot stores degrees with limited digits: compare at 1e-6 m
    np.testing.assert_allclose(got.positions, want, atol=1e-6)
    assert (tmp_path / "fk.png").stat().st_size > 1000


def test_fk_bad_mot_is_a_clear_error(tmp_path, capsys):
    tree = load_model(DEFAULT)
    trc, mot = tmp_path / "t.trc", tmp_path / "t.mot"
    write_sample_trial(tree, trc, mot, n_frames=5, seed=1)
    lines = mot.read_text().splitlines()
    lines[-2] = "\t".join(lines[-2].split("\t")[:-3])  # a row with 3 values missing
    mot.write_text("\n".join(lines) + "\n")
    assert main(["fk", "--mot", str(mot), "-o", str(tmp_path / "x.trc")]) == 2
    err = capsys.readouterr().err
    assert str(mot) in err and f"line {len(lines) - 1}" in err and "expected 63" in err
    assert not (tmp_path / "x.trc").exists()


def test_missing_model_column(tmp_path, capsys):
    tree = load_model(DEFAULT)
    trc, mot = tmp_path / "t.trc", tmp_path / "t.mot"
    write_sample_trial(tree, trc, mot, n_frames=5, seed=1)
    d = read_storage(mot)
    keep = [i for i, n in enumerate(d.labels) if n != "hip_flexion_r"]
    from simspine_jax.io import write_storage

    write_storage(mot, [d.labels[i] for i in keep], d.time, d.values[:, keep], in_degrees=True)
    assert main(["fk", "--mot", str(mot), "-o", str(tmp_path / "x.trc")]) == 2
    assert "hip_flexion_r" in capsys.readouterr().err


def test_demo_without_opensim(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "64", "--no-opensim"]) == 0
    for f in (
        "sample_trial.trc",
        "sample_trial.mot",
        "sample_trial_marker_errors.sto",
        "sample_trial_model_marker_locations.sto",
        "sample_trial_ik.png",
    ):
        assert (out / f).exists(), f
    mot = read_storage(out / "sample_trial.mot")
    assert mot.in_degrees and mot.values.shape == (64, 62)
    assert "coordinate_error_vs_truth_deg_median" in capsys.readouterr().out


@pytest.mark.opensim
@pytest.mark.skipif(importlib.util.find_spec("opensim") is None, reason="needs opensim")
def test_crosscheck_opensim_hang_is_a_clear_error(tmp_path, capsys):
    tree = load_model(DEFAULT)
    trc, mot = tmp_path / "t.trc", tmp_path / "t.mot"
    write_sample_trial(tree, trc, mot, n_frames=3, seed=2)
    imported_before = "opensim" in sys.modules
    argv = ["crosscheck", "--osim", str(OSIM), "--markers", str(MARKERS), "--trc", str(trc)]
    # the child cannot even import OpenSim in 0.05 s: it is killed as hung
    rc = main([*argv, "--opensim-timeout", "0.05", "-o", str(tmp_path / "cc")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "did not finish within 0.05 s" in err and str(trc) in err, err
    assert not (tmp_path / "cc" / "crosscheck.json").exists()
    if not imported_before:  # (other test modules import it into this process)
        assert "opensim" not in sys.modules


def test_tune_xla_cpu_keeps_user_flags():
    from simspine_jax._xla import CPU_FLAGS, tune_xla_cpu

    env = {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true --foo=1"}
    out = tune_xla_cpu(env)
    assert "--xla_cpu_use_xnnpack=true" in out and "--xla_cpu_use_xnnpack=false" not in out
    assert CPU_FLAGS[0] in out and "--foo=1" in out and env["XLA_FLAGS"] == out
    assert tune_xla_cpu({"SIMSPINE_JAX_KEEP_XLA_FLAGS": "1"}) == ""
    assert tune_xla_cpu({}) == " ".join(CPU_FLAGS)
