"""Merging known markers and pseudo-markers: time bases (rates, offsets, overlap), resampling,
duplicate rules, weights, the IK setup (read back by our reader and by OpenSim 4.6, which runs
it), and the ``merge`` command."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from simspine_jax.cli import main
from simspine_jax.errors import InputError
from simspine_jax.filtering import to_opensim_axes
from simspine_jax.ik_setup import read_ik_setup
from simspine_jax.io import TRCData, read_trc, write_trc
from simspine_jax.merging import (
    ik_setup_xml,
    marker_weights,
    merge_markers,
    merge_trc_files,
    resample_markers,
)

TWO_LINK = Path(__file__).parent / "data" / "two_link.osim"
RNG = np.random.default_rng(3)
VEL = RNG.normal(size=(4, 3))  # marker velocities, m/s: positions are linear in time
X0 = RNG.normal(size=(4, 3))


def _linear(names, idx, time):
    """TRCData of markers moving on straight lines (exact under linear resampling)."""
    pos = X0[idx] + time[:, None, None] * VEL[idx]
    return TRCData(tuple(names), time, np.arange(1, time.size + 1), pos, 0.0, 0.0, "m")


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_resample_exact_linear_and_nan_rules(method):
    t = np.arange(6) * 0.1
    p = np.stack([t, 2 * t, -t], -1)[:, None, :]  # (6, 1, 3)
    p[3] = np.nan
    new = np.array([-0.05, 0.0, 0.05, 0.1 + 1e-12, 0.25, 0.3, 0.45, 0.5, 0.55])
    got = resample_markers(t, p, new, method=method)
    want = np.stack([new, 2 * new, -new], -1)[:, None, :]
    ok = [1, 2, 3, 6, 7]  # exact frames and frames between valid ones
    np.testing.assert_allclose(got[ok], want[ok], atol=1e-11)
    assert got[3, 0, 0] == p[1, 0, 0]  # within 1e-9 s of a frame: its values exactly
    # before the first, after the last frame, next to the missing frame 3 (0.25, 0.3)
    assert np.isnan(got[[0, 4, 5, 8]]).all()


def test_cubic_resampling_per_run():
    """Cubic: scipy's not-a-knot spline through each gap-free run (cubics exact, runs
    independent, NaN exactly where linear gives NaN); on a 2 Hz, 10 cm sine sampled at 60 Hz
    and read at 50 Hz it is ~1000x closer than linear (0.5 um vs 0.5 mm)."""
    t = np.arange(40) / 60.0
    cubic = np.stack([t**3 - t, 2 * t**2, np.ones_like(t)], -1)[:, None, :]
    p = cubic.copy()
    p[20:23] = np.nan  # two runs: frames 0-19 and 23-39
    tn = np.arange(0.0, 0.7, 1 / 50.0)
    got = resample_markers(t, p, tn)
    lin = resample_markers(t, p, tn, method="linear")
    assert np.array_equal(np.isnan(got), np.isnan(lin))
    ok = ~np.isnan(got[:, 0, 0])
    assert ok.sum() > 25
    want = np.stack([tn**3 - tn, 2 * tn**2, np.ones_like(tn)], -1)[:, None, :]
    np.testing.assert_allclose(got[ok], want[ok], atol=1e-13)
    q = p.copy()
    q[23:] += 1.0  # the second run moves: the first run's values do not
    first = tn < t[19] + 1e-9
    np.testing.assert_array_equal(resample_markers(t, q, tn)[first], got[first])

    ts, tn = np.arange(0, 3, 1 / 60), np.arange(0.1, 2.9, 1 / 50)
    sine = 0.1 * np.sin(2 * np.pi * 2.0 * ts)[:, None]
    truth = 0.1 * np.sin(2 * np.pi * 2.0 * tn)[:, None]
    err_c = np.abs(resample_markers(ts, sine, tn) - truth).max()
    err_l = np.abs(resample_markers(ts, sine, tn, method="linear") - truth).max()
    assert err_c < 1e-6 and err_l > 3e-4


def test_merge_time_base_offset_and_rate():
    tk = np.arange(0, 101) / 50.0  # 50 Hz, [0, 2] s
    tp = np.arange(0, 151) / 60.0  # 60 Hz, [0, 2.5] s, recorded 0.3 s late
    known = _linear(["A", "B"], [0, 1], tk)
    pseudo = _linear(["C", "D"], [2, 3], tp + 0.3)  # positions at true time tp + 0.3
    pseudo = TRCData(pseudo.marker_names, tp, pseudo.frame_numbers, pseudo.positions, 0, 0, "m")
    m = merge_markers(known, pseudo, pseudo_offset_s=0.3)
    # the known frames inside the overlap [0.3, 2.0]
    np.testing.assert_array_equal(m.time, tk[(tk >= 0.3 - 1e-9) & (tk <= 2.0 + 1e-9)])
    assert m.marker_names == ("A", "B", "C", "D") and m.source == ("known",) * 2 + ("pseudo",) * 2
    want = X0 + m.time[:, None, None] * VEL
    np.testing.assert_allclose(m.positions, want, atol=1e-12)
    # onto the pseudo frames, and onto a new rate
    mp = merge_markers(known, pseudo, pseudo_offset_s=0.3, time_base="pseudo")
    np.testing.assert_allclose(mp.time, tp[tp + 0.3 <= 2.0 + 1e-9] + 0.3, atol=1e-15)
    mr = merge_markers(known, pseudo, pseudo_offset_s=0.3, rate_hz=100.0)
    np.testing.assert_allclose(mr.time, 0.3 + np.arange(171) / 100.0, atol=1e-12)
    np.testing.assert_allclose(mr.positions, X0 + mr.time[:, None, None] * VEL, atol=1e-12)
    with pytest.raises(InputError, match="do not overlap"):
        merge_markers(known, pseudo, pseudo_offset_s=5.0)


def test_duplicate_rules():
    t = np.arange(20) / 10.0
    known = _linear(["A", "B"], [0, 1], t)
    pseudo = _linear(["B", "C"], [2, 3], t)  # B in both, with other positions
    m = merge_markers(known, pseudo)
    assert m.marker_names == ("A", "B", "C") and m.duplicates == ("B",)
    np.testing.assert_allclose(m.positions[:, 1], known.positions[:, 1])
    m = merge_markers(known, pseudo, on_duplicate="prefer_pseudo")
    assert m.marker_names == ("A", "B", "C") and m.source == ("known", "pseudo", "pseudo")
    np.testing.assert_allclose(m.positions[:, 1], pseudo.positions[:, 0])
    m = merge_markers(known, pseudo, on_duplicate="rename")
    assert m.marker_names == ("A", "B", "B_pseudo", "C") and m.renamed == {"B_pseudo": "B"}
    np.testing.assert_allclose(m.positions[:, 2], pseudo.positions[:, 0])
    with pytest.raises(InputError, match="in both files") as e:
        merge_markers(known, pseudo, on_duplicate="error")
    assert e.value.field == "B"
    taken = _linear(["B", "B_pseudo"], [2, 3], t)
    with pytest.raises(InputError, match="taken"):
        merge_markers(known, taken, on_duplicate="rename")


def test_axes_and_weights():
    t = np.arange(10) / 10.0
    known, pseudo = _linear(["A"], [0], t), _linear(["P"], [1], t)
    m = merge_markers(known, pseudo, pseudo_up="z")
    np.testing.assert_allclose(m.positions[:, 1], to_opensim_axes(pseudo.positions[:, 0], "z"))
    np.testing.assert_allclose(m.positions[:, 0], known.positions[:, 0])
    assert marker_weights(m) == {"A": 1.0, "P": 0.5}
    assert marker_weights(m, 10.0, 1.0, {"P": 2.0}) == {"A": 10.0, "P": 2.0}
    with pytest.raises(InputError, match="no merged marker"):
        marker_weights(m, weights={"Z": 1.0})
    with pytest.raises(InputError, match=">= 0"):
        marker_weights(m, pseudo_weight=-1.0)


@pytest.fixture(scope="module")
def merged_files(tmp_path_factory):
    """Known 'tip' at 50 Hz, pseudo 'mid' and 'tip' at 60 Hz, merged with a setup for the
    two-link test model (markers tip and mid)."""
    d = tmp_path_factory.mktemp("merge")
    tk, tp = np.arange(0, 51) / 50.0, np.arange(0, 73) / 60.0
    k = np.array([0.6, 0.4, 0.0]) + 0.05 * np.sin(tk)[:, None, None]
    p = np.stack(
        [np.broadcast_to([0.25, 0.0, 0.0], (tp.size, 3)), np.full((tp.size, 3), 9.0)], axis=1
    )
    write_trc(d / "known.trc", ["tip"], tk, k, units="mm")
    write_trc(d / "pseudo.trc", ["mid", "tip"], tp, p)
    (d / "out").mkdir()
    summary = merge_trc_files(
        d / "known.trc",
        d / "pseudo.trc",
        d / "out" / "merged.trc",
        d / "out" / "IK_Setup.xml",
        known_weight=5.0,
        pseudo_weight=0.25,
        model_file=TWO_LINK,
        output_motion_file="merged_ik.mot",
    )
    return d, summary


def test_merged_files_read_back(merged_files):
    d, summary = merged_files
    trc = read_trc(d / "out" / "merged.trc")
    assert trc.marker_names == ("tip", "mid") and trc.time.size == 51
    np.testing.assert_allclose(trc.positions[:, 0], read_trc(d / "known.trc").positions[:, 0])
    assert summary["duplicates"] == ["tip"] and summary["weights"] == {"tip": 5.0, "mid": 0.25}
    setup = read_ik_setup(d / "out" / "IK_Setup.xml")
    assert setup.marker_weights == {"tip": 5.0, "mid": 0.25}
    assert setup.resolve(setup.marker_file) == (d / "out" / "merged.trc").resolve()
    assert setup.resolve(setup.model_file) == TWO_LINK.resolve()
    assert setup.time_range == (0.0, 1.0) and setup.coordinate_tasks == ()


_OPENSIM_RUN = textwrap.dedent(
    """
    import json, sys
    import opensim as osim
    osim.Logger.setLevelString("Error")
    tool = osim.InverseKinematicsTool(sys.argv[1])
    ts = tool.getIKTaskSet()
    tasks = {ts.get(i).getName(): [ts.get(i).getWeight(), ts.get(i).getApply()]
             for i in range(ts.getSize())}
    info = dict(tasks=tasks, marker_file=tool.getMarkerDataFileName(),
                time=[tool.getStartTime(), tool.getEndTime()])
    info["ran"] = bool(tool.run())
    print("RESULT " + json.dumps(info))
    """
)


@pytest.mark.opensim
@pytest.mark.skipif(importlib.util.find_spec("opensim") is None, reason="needs opensim")
def test_opensim_loads_and_runs_the_setup(merged_files):
    """OpenSim 4.6 reads the tasks and weights, finds the model and the merged TRC from the
    setup's folder, and solves the trial (in a child process: no OpenSim next to JAX)."""
    d, _ = merged_files
    out = d / "out"
    r = subprocess.run(
        [sys.executable, "-c", _OPENSIM_RUN, str(Path("out", "IK_Setup.xml"))],
        cwd=d,  # not the setup's folder: its file names are relative to the setup
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("RESULT "))
    info = json.loads(line[len("RESULT ") :])
    assert info["tasks"] == {"tip": [5.0, True], "mid": [0.25, True]}
    assert info["time"] == [0.0, 1.0] and info["ran"]
    mot = (out / "merged_ik.mot").read_text()
    assert "nRows=51" in mot and "q1" in mot


def test_merge_cli(tmp_path, capsys):
    t = np.arange(30) / 30.0
    known, pseudo = _linear(["A", "B"], [0, 1], t), _linear(["B", "C"], [2, 3], t)
    for name, d in (("known", known), ("pseudo", pseudo)):
        write_trc(tmp_path / f"{name}.trc", d.marker_names, d.time, d.positions)
    args = [
        "merge",
        "--known",
        str(tmp_path / "known.trc"),
        "--pseudo",
        str(tmp_path / "pseudo.trc"),
    ]
    out, setup = tmp_path / "m.trc", tmp_path / "IK_Setup.xml"
    rc = main(
        args
        + ["-o", str(out), "--setup-out", str(setup), "--pseudo-weight", "0.2"]
        + ["--weight", "C=3", "--on-duplicate", "rename", "--rate", "60"]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights"] == {"A": 1.0, "B": 1.0, "B_pseudo": 0.2, "C": 3.0}
    trc = read_trc(out)
    assert trc.marker_names == ("A", "B", "B_pseudo", "C") and trc.time.size == 59
    np.testing.assert_allclose(trc.positions[:, 3], X0[3] + trc.time[:, None] * VEL[3], atol=1e-9)
    assert read_ik_setup(setup).marker_weights == summary["weights"]
    assert main(args + ["-o", str(out), "--on-duplicate", "error"]) == 2
    assert "in both files" in capsys.readouterr().err
    # outputs never replace inputs or each other; -o DIR/ means DIR/merged.trc
    assert main(args + ["-o", str(tmp_path / "known.trc")]) == 2
    assert main(args + ["-o", str(out), "--setup-out", str(out)]) == 2
    assert "would overwrite the TRC output" in capsys.readouterr().err
    assert main(args + ["-o", f"{tmp_path / 'd'}/", "--setup-out", f"{tmp_path / 'd'}/"]) == 0
    setup = read_ik_setup(tmp_path / "d" / "IK_Setup_merged.xml")
    assert setup.resolve(setup.marker_file) == (tmp_path / "d" / "merged.trc").resolve()


def test_setup_writer_refuses_bad_weights(tmp_path):
    with pytest.raises(InputError, match=">= 0"):
        ik_setup_xml(tmp_path / "s.xml", {"A": float("nan")})
    with pytest.raises(InputError, match="no marker"):
        ik_setup_xml(tmp_path / "s.xml", {})
