"""Gap filling, zero-phase Butterworth filtering per contiguous run, axis conventions, and the
``filter`` command: against scipy (butter + filtfilt, CubicSpline), closed forms (polynomials
in time) and Pose2Sim's own Z-up to Y-up function."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.signal import butter, filtfilt

from simspine_jax.cli import main
from simspine_jax.errors import InputError
from simspine_jax.filtering import (
    UP_AXES,
    axes_rotation,
    butterworth_filtfilt,
    fill_gaps,
    filter_trc,
    filtfilt_min_frames,
    from_opensim_axes,
    to_opensim_axes,
)
from simspine_jax.io import read_trc, write_trc

RNG = np.random.default_rng(7)


def _poly_markers(T: int, M: int) -> np.ndarray:
    """(T, M, 3) cubic polynomials in the frame index, different per marker and axis."""
    t = np.arange(T, dtype=np.float64)[:, None, None]
    c = RNG.normal(size=(4, M, 3))
    return c[0] + c[1] * t * 1e-2 + c[2] * t**2 * 1e-4 + c[3] * t**3 * 1e-6


# ----------------------------------------------------------------------------- Butterworth
@pytest.mark.parametrize("order", [1, 2, 4, 6])
def test_filtfilt_equals_scipy_on_contiguous_data(order):
    x = RNG.normal(size=(300, 5, 3))
    b, a = butter(order, 8.0 / 50.0)
    want = filtfilt(b, a, x, axis=0)
    got = butterworth_filtfilt(x, 100.0, 8.0, order)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # time along another axis
    got1 = butterworth_filtfilt(np.moveaxis(x, 0, 1), 100.0, 8.0, order, axis=1)
    np.testing.assert_allclose(np.moveaxis(got1, 1, 0), want, rtol=0, atol=1e-10)


def test_filtfilt_never_crosses_a_gap():
    x = RNG.normal(size=(200, 2, 3))
    x[60:65, 0] = np.nan  # marker 0: runs [0, 60) and [65, 200)
    x[120, 1, 2] = np.nan  # marker 1, Z only: runs [0, 120) and [121, 200)
    b, a = butter(4, 6.0 / 50.0)
    got, rep = butterworth_filtfilt(x, 100.0, 6.0, return_report=True)
    assert np.array_equal(np.isnan(got), np.isnan(x))
    for m, k, runs in [(0, 0, [(0, 60), (65, 200)]), (1, 2, [(0, 120), (121, 200)])]:
        for s, e in runs:
            np.testing.assert_allclose(got[s:e, m, k], filtfilt(b, a, x[s:e, m, k]), atol=1e-10)
    np.testing.assert_allclose(got[:, 1, :2], filtfilt(b, a, x[:, 1, :2], axis=0), atol=1e-10)
    # data after the gap has no say on the filtered data before it
    y = x.copy()
    y[65:, 0] += 5.0
    np.testing.assert_array_equal(butterworth_filtfilt(y, 100.0, 6.0)[:60, 0], got[:60, 0])
    assert rep.runs_skipped.sum() == 0 and rep.runs_filtered.sum() == 6 + 1 * 2 + 2


def test_short_runs_are_kept_and_reported_or_refused():
    n = filtfilt_min_frames(4)
    assert n == 16
    x = RNG.normal(size=(100, 3))
    x[n - 1, 0] = np.nan  # channel 0: a run of n - 1 samples, then one of 100 - n
    x[40 : 40 + 1, 1] = np.nan
    got, rep = butterworth_filtfilt(x, 100.0, 6.0, return_report=True)
    np.testing.assert_array_equal(got[: n - 1, 0], x[: n - 1, 0])  # too short: as it was
    b, a = butter(4, 6.0 / 50.0)
    np.testing.assert_allclose(got[n:, 0], filtfilt(b, a, x[n:, 0]), atol=1e-10)
    assert rep.runs_skipped.tolist() == [1, 0, 0]
    assert rep.frames_unfiltered.tolist() == [n - 1, 0, 0]
    assert rep.to_dict(["a", "b", "c"])["skipped"] == {"a": [[0, n - 1]]}
    with pytest.raises(InputError, match="needs at least 16") as e:
        butterworth_filtfilt(x, 100.0, 6.0, on_short="error")
    assert e.value.frame == 0 and e.value.field == "channel 0"
    with pytest.raises(InputError, match="needs at least"):  # a whole trial too short
        butterworth_filtfilt(np.zeros((10, 3)), 100.0, 6.0, on_short="error")


@pytest.mark.parametrize(
    "kw", [dict(cutoff_hz=50.0), dict(cutoff_hz=0.0), dict(rate_hz=-1.0), dict(order=0)]
)
def test_bad_filter_arguments(kw):
    args = dict(rate_hz=100.0, cutoff_hz=6.0, order=4) | kw
    with pytest.raises(InputError):
        butterworth_filtfilt(np.zeros((50, 3)), **args)


# ----------------------------------------------------------------------------- gaps
def test_gaps_filled_and_left_by_the_rules():
    T = 120
    truth = _poly_markers(T, 5)
    x = truth.copy()
    x[20:23, 0] = np.nan  # interior, 3 frames: filled
    x[40:50, 1] = np.nan  # interior, 10 frames = max_gap: filled
    x[40:51, 2] = np.nan  # interior, 11 frames: left
    x[:3, 3] = np.nan  # leading: left
    x[115:, 3] = np.nan  # trailing: left
    x[60, 3] = np.nan  # interior single frame: filled
    x[:, 4] = np.nan  # no data: left
    for method in ("cubic", "linear"):
        got, rep = fill_gaps(x, 10, method=method)
        assert rep.gaps_filled.tolist() == [1, 1, 0, 1, 0]
        assert rep.gaps_left.tolist() == [0, 0, 1, 2, 1]
        assert rep.frames_filled.tolist() == [3, 10, 0, 1, 0]
        assert rep.frames_left.tolist() == [0, 0, 11, 8, T]
        d = rep.to_dict(["m0", "m1", "m2", "m3", "m4"])
        assert d["channels"]["m3"]["left"] == [[0, 3, "leading"], [115, 5, "trailing"]]
        assert d["channels"]["m4"]["left"] == [[0, T, "all"]]
        assert np.array_equal(np.isnan(got), np.isnan(x) & ~_filled_mask(T))
        valid = ~np.isnan(x)
        np.testing.assert_array_equal(got[valid], x[valid])  # valid samples untouched
    # cubic polynomials in time are reproduced exactly by the not-a-knot spline
    got, _ = fill_gaps(x, 10, method="cubic")
    ok = ~np.isnan(got)
    np.testing.assert_allclose(got[ok], truth[ok], rtol=0, atol=1e-12)
    # a straight line by linear interpolation
    line = np.linspace(0, 1, T)[:, None] * np.array([1.0, -2.0, 3.0]) + 0.5
    gap = line.copy()
    gap[30:38] = np.nan
    np.testing.assert_allclose(fill_gaps(gap, 8, method="linear")[0], line, atol=1e-14)


def _filled_mask(T):
    m = np.zeros((T, 5, 3), bool)
    m[20:23, 0] = m[40:50, 1] = m[60, 3] = True
    return m


def test_cubic_is_scipys_spline_of_the_segment():
    """The fill is scipy's not-a-knot CubicSpline through the valid frames between gaps that
    are left; data past a gap that is left has no say."""
    T = 150
    x = np.cumsum(RNG.normal(size=(T, 1, 3)), axis=0)
    x[30:34, 0] = np.nan  # filled
    x[70:90, 0] = np.nan  # left: splits the channel into [0, 70) and [90, T)
    x[100:102, 0] = np.nan  # filled, in the second segment
    got, _ = fill_gaps(x, 5)
    for lo, hi, gap in [(0, 70, slice(30, 34)), (90, T, slice(100, 102))]:
        f = np.arange(lo, hi)
        f = f[~np.isnan(x[lo:hi, 0, 0])]
        cs = CubicSpline(f, x[f, 0], bc_type="not-a-knot")
        np.testing.assert_allclose(got[gap, 0], cs(np.arange(T)[gap]), atol=1e-10)
    y = x.copy()
    y[90:, 0] += 10.0 * np.arange(T - 90)[:, None] ** 2
    np.testing.assert_array_equal(fill_gaps(y, 5)[0][:70], got[:70])


def test_point_is_missing_when_one_coordinate_is():
    x = _poly_markers(40, 1)
    x[10, 0, 1] = np.nan
    got, rep = fill_gaps(x, 3)
    assert rep.frames_filled.tolist() == [1]
    np.testing.assert_allclose(got[10, 0], _poly_markers_again(x)[10, 0], atol=1e-12)
    # as scalar channels: only Y had a gap
    _, rep3 = fill_gaps(x, 3, points=False)
    assert rep3.channel_shape == (1, 3) and rep3.frames_filled.tolist() == [0, 1, 0]


def _poly_markers_again(x):
    """The polynomial through the frames of ``x`` without NaN (x is exactly cubic there)."""
    f = np.flatnonzero(~np.isnan(x).any(axis=(1, 2)))
    coef = np.polynomial.polynomial.polyfit(f, x[f].reshape(len(f), -1), 3)
    t = np.arange(x.shape[0])
    return np.polynomial.polynomial.polyval(t, coef).T.reshape(x.shape)


def test_gap_arguments():
    with pytest.raises(InputError, match="max_gap"):
        fill_gaps(np.zeros((5, 3)), -1)
    with pytest.raises(InputError, match="method"):
        fill_gaps(np.zeros((5, 3)), 2, method="quintic")
    with pytest.raises(InputError, match="infinite"):
        fill_gaps(np.array([0.0, np.inf, 1.0]), 2)
    # too few frames for a cubic: linear
    x = np.array([0.0, np.nan, 2.0, 3.0])
    np.testing.assert_allclose(fill_gaps(x, 1)[0], [0, 1, 2, 3])


# ----------------------------------------------------------------------------- axes
def _pose2sim_zup2yup():
    """Pose2Sim's own ``zup2yup`` from the installed wheel (the function's source compiled
    alone: importing Pose2Sim needs pandas, OpenCV ...)."""
    spec = importlib.util.find_spec("Pose2Sim")
    if spec is None:
        pytest.skip("Pose2Sim is not installed (pip install --no-deps pose2sim==0.10.49)")
    src = Path(list(spec.submodule_search_locations)[0], "common.py").read_text()
    fn = next(
        n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "zup2yup"
    )
    ns = {"np": np}
    exec(compile(ast.Module([fn], []), "Pose2Sim/common.py", "exec"), ns)
    return ns["zup2yup"]


class _Frame:
    """The part of a pandas DataFrame that zup2yup uses: ``columns`` and ``df[list]``."""

    def __init__(self, columns, values):
        self.columns = list(columns)
        self.values = values

    def __getitem__(self, cols):
        idx = [self.columns.index(c) for c in cols]
        return _Frame(cols, self.values[:, idx])


def test_z_up_is_pose2sims_zup2yup():
    p = RNG.normal(size=(6, 4, 3))
    cols = [f"m{i}_{a}" for i in range(4) for a in "XYZ"]
    theirs = _pose2sim_zup2yup()(_Frame(cols, p.reshape(6, 12))).values.reshape(6, 4, 3)
    np.testing.assert_array_equal(to_opensim_axes(p, "z"), theirs)


@pytest.mark.parametrize("up", UP_AXES)
def test_axes_rotation_takes_up_to_y(up):
    R = axes_rotation(up)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-15)
    assert np.linalg.det(R) == pytest.approx(1.0)
    u = np.zeros(3)
    u["xyz".index(up[-1])] = -1.0 if up.startswith("-") else 1.0
    np.testing.assert_allclose(to_opensim_axes(u, up), [0.0, 1.0, 0.0], atol=1e-15)
    p = RNG.normal(size=(5, 2, 3))
    p[1, 0] = np.nan
    back = from_opensim_axes(to_opensim_axes(p, up), up)
    np.testing.assert_allclose(back, p, atol=1e-15)
    assert np.array_equal(np.isnan(back), np.isnan(p))


def test_bad_axes():
    with pytest.raises(InputError, match="up must be"):
        axes_rotation("w")
    with pytest.raises(InputError, match="reflection"):
        axes_rotation(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(InputError, match=r"\(\.\.\., 3\)"):
        to_opensim_axes(np.zeros((4, 2)), "z")


# ----------------------------------------------------------------------------- TRC and CLI
def test_filter_trc_and_cli(tmp_path, capsys):
    T, rate = 150, 60.0
    time = np.arange(T) / rate
    pos = _poly_markers(T, 3) + 1e-3 * RNG.normal(size=(T, 3, 3))
    pos[50:53, 0] = np.nan  # filled
    pos[80:100, 1] = np.nan  # left (max_gap 5)
    src = write_trc(tmp_path / "in.trc", ["A", "B", "C"], time, pos, units="mm")
    out = tmp_path / "out.trc"
    s = filter_trc(src, out, cutoff_hz=6.0, order=4, max_gap=5, up="z")
    # same as the library calls one by one (through the mm file: compare to its numbers)
    p_in = read_trc(src).positions
    want = to_opensim_axes(butterworth_filtfilt(fill_gaps(p_in, 5)[0], rate, 6.0), "z")
    got = read_trc(out)
    assert got.orig_units == "mm" and got.marker_names == ("A", "B", "C")
    np.testing.assert_allclose(got.positions, want, atol=1e-9, equal_nan=True)
    assert s["gaps"]["channels"]["B"]["left"] == [[80, 20, "interior"]]
    assert s["gaps"]["frames_filled"] == 3 and s["filter"]["runs_skipped"] == 0

    out2 = tmp_path / "cli.trc"
    argv = ["filter", "--trc", str(src), "-o", str(out2), "--cutoff", "6", "--max-gap", "5"]
    assert main(argv + ["--up", "z"]) == 0
    np.testing.assert_allclose(read_trc(out2).positions, got.positions, atol=1e-12, equal_nan=True)
    assert '"frames_filled": 3' in capsys.readouterr().out
    # a cutoff above Nyquist: exit code 2 with a one-line message
    assert main(["filter", "--trc", str(src), "-o", str(out2), "--cutoff", "40"]) == 2
    assert "Nyquist" in capsys.readouterr().err
    # never over the input; -o DIR/ means DIR/<stem>_filtered.trc
    assert main(["filter", "--trc", str(src), "-o", str(src)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["filter", "--trc", str(src), "-o", f"{tmp_path / 'd'}/", "--strict"]) == 0
    assert (tmp_path / "d" / "in_filtered.trc").is_file()
    # --strict: a marker with a stretch too short to filter is an error
    short = pos.copy()
    short[10, 2] = np.nan  # marker C: frames 0-9 cannot be filtered (with no gap filling)
    write_trc(tmp_path / "short.trc", ["A", "B", "C"], time, short)
    argv = ["filter", "--trc", str(tmp_path / "short.trc"), "-o", str(out2), "--max-gap", "0"]
    assert main(argv + ["--strict"]) == 2
    assert "needs at least 16" in capsys.readouterr().err
