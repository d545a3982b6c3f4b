"""File-format layer: TRC and OpenSim Storage (.mot/.sto) readers/writers, atomic writes.

Covers exact round trips, files exchanged with OpenSim 4.6 in both directions, the TRC
variants Pose2Sim and others write, and one test per malformed-input error (each checks that
the message names the file, the 1-based line and the field).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from simspine_jax.errors import InputError
from simspine_jax.io import (
    StorageData,
    TRCData,
    atomic_open,
    atomic_write_text,
    read_storage,
    read_trc,
    write_storage,
    write_trc,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

TRC_KEYS = (
    "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\t"
    "OrigDataStartFrame\tOrigNumFrames"
)


def _markers(n_frames=40, n_markers=5, seed=0, gap_fraction=0.1):
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=0.4, size=(n_frames, n_markers, 3))
    pos[rng.random((n_frames, n_markers)) < gap_fraction] = np.nan
    if gap_fraction > 0:
        pos[3, 1, 2] = np.nan  # a single missing coordinate, not a whole marker
        pos[5, -1] = np.nan  # last marker missing: empty fields at the end of a row
    time = np.arange(n_frames) / 60.0
    names = [f"M{k}_{'abc'[k % 3]}" for k in range(n_markers)]
    return names, time, pos


def _trc_text(names, rows, *, units="m", nframes=None, eol="\n", blank=True, name_tail="\t\t"):
    """Hand-written TRC in Pose2Sim's style; ``rows`` are the data lines (without EOL)."""
    n = len(rows) if nframes is None else nframes
    lines = [
        "PathFileType\t4\t(X/Y/Z)\thand.trc",
        TRC_KEYS,
        f"30\t30\t{n}\t{len(names)}\t{units}\t30\t0\t{n}",
        "Frame#\tTime\t" + "\t\t\t".join(names) + name_tail,
        "\t\t" + "\t".join(f"X{k}\tY{k}\tZ{k}" for k in range(1, len(names) + 1)),
    ]
    if blank:
        lines.append("")
    return eol.join(lines + list(rows)) + eol


def _write(tmp_path, name, text, newline=""):
    p = tmp_path / name
    with open(p, "w", newline=newline, encoding="utf-8") as fh:
        fh.write(text)
    return p


def _error(fn, *args):
    with pytest.raises(InputError) as ei:
        fn(*args)
    return ei.value, str(ei.value)


def _assert_located(err, msg, path, line, field=None):
    assert Path(path).name in msg
    assert err.line == line, msg
    assert f"line {line}" in msg
    if field is not None:
        assert err.field == field, msg
        assert field in msg


# --------------------------------------------------------------------------------------------
# TRC round trips
# --------------------------------------------------------------------------------------------


def test_trc_roundtrip_metres_exact_with_gaps(tmp_path):
    names, time, pos = _markers()
    p = write_trc(tmp_path / "out" / "a.trc", names, time, pos)  # parent dir created
    assert p == tmp_path / "out" / "a.trc"
    d = read_trc(p)
    assert isinstance(d, TRCData)
    assert d.marker_names == tuple(names)
    assert d.orig_units == "m"
    assert d.path == str(p)
    assert d.positions.shape == pos.shape and d.positions.dtype == np.float64
    np.testing.assert_array_equal(d.positions, pos)  # NaN positions equal too
    np.testing.assert_array_equal(d.time, time)
    np.testing.assert_array_equal(d.frame_numbers, np.arange(1, len(time) + 1))
    assert d.frame_numbers.dtype.kind == "i"
    assert d.data_rate == pytest.approx(60.0) and d.camera_rate == pytest.approx(60.0)


@pytest.mark.parametrize("units,factor", [("mm", 1000.0), ("cm", 100.0)])
def test_trc_roundtrip_scaled_units(tmp_path, units, factor):
    names, time, pos = _markers(seed=1)
    p = write_trc(tmp_path / f"a_{units}.trc", names, time, pos, units=units, data_rate=60)
    text = p.read_text()
    assert text.splitlines()[2].split("\t")[4] == units
    d = read_trc(p)
    assert d.orig_units == units
    # the file holds exactly pos*factor; the reader divides by the factor
    np.testing.assert_array_equal(d.positions, (pos * factor) / factor)
    np.testing.assert_allclose(d.positions, pos, rtol=1e-15, atol=0)


def test_trc_writer_layout_matches_opensim(tmp_path):
    names, time, pos = _markers(n_frames=3, n_markers=2, gap_fraction=0)
    pos[1, 0] = np.nan
    p = write_trc(tmp_path / "lay.trc", names, time, pos, name="trial")
    lines = p.read_text().split("\n")
    assert lines[0] == "PathFileType\t4\t(X/Y/Z)\ttrial"
    assert lines[1] == TRC_KEYS
    assert lines[2].split("\t") == ["60", "60", "3", "2", "m", "60", "1", "3"]
    assert lines[3] == f"Frame#\tTime\t{names[0]}\t\t\t{names[1]}\t\t\t"
    assert lines[4] == "\t\tX1\tY1\tZ1\tX2\tY2\tZ2\t"
    assert lines[5] == ""
    row = lines[7].split("\t")
    assert row[:2] == ["2", repr(float(time[1]))]
    assert row[2:5] == ["", "", ""]  # NaN -> empty fields
    assert row[-1] == ""  # every row ends with a tab
    assert len(lines) == 6 + 3 + 1  # header, blank, 3 rows, final newline


def test_trc_writer_partly_missing_marker_uses_nan_token(tmp_path):
    names, time, pos = _markers(n_frames=3, n_markers=2, gap_fraction=0)
    pos[1, 0] = np.nan
    pos[2, 1, 1] = np.nan
    p = write_trc(tmp_path / "part.trc", names, time, pos)
    rows = [r.split("\t") for r in p.read_text().split("\n")[6:9]]
    assert rows[1][2:5] == ["", "", ""] and rows[1][5] == repr(float(pos[1, 1, 0]))
    assert rows[2][5:8] == [repr(float(pos[2, 1, 0])), "nan", repr(float(pos[2, 1, 2]))]
    np.testing.assert_array_equal(read_trc(p).positions, pos)


def test_trc_data_rate_default_is_inverse_median_dt(tmp_path):
    names, _, pos = _markers(n_frames=5, gap_fraction=0)
    time = np.array([0.0, 0.01, 0.02, 0.035, 0.045])
    d = read_trc(write_trc(tmp_path / "r.trc", names, time, pos))
    assert d.data_rate == pytest.approx(100.0)


def test_trc_writer_rejects_bad_input(tmp_path):
    names, time, pos = _markers(n_frames=4, gap_fraction=0)
    p = tmp_path / "bad.trc"
    with pytest.raises(InputError, match="units"):
        write_trc(p, names, time, pos, units="in")
    with pytest.raises(InputError, match="shape"):
        write_trc(p, names[:-1], time, pos)
    with pytest.raises(InputError, match="duplicate"):
        write_trc(p, [names[0]] * len(names), time, pos)
    with pytest.raises(InputError, match="increase"):
        write_trc(p, names, time[::-1], pos)
    with pytest.raises(InputError, match="data_rate"):
        write_trc(p, names, time[:1], pos[:1])
    assert not p.exists()


# --------------------------------------------------------------------------------------------
# TRC variants (Pose2Sim and friends)
# --------------------------------------------------------------------------------------------


def test_trc_pose2sim_variants(tmp_path):
    names = ["Hip", "LShoulder", "RShoulder"]
    rows = [
        "0\t0.0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t",  # trailing tab
        "1\t0.033333\t1.5\t\t3\t\t\t\t7\t8\t9\t\t",  # empty fields, two trailing tabs
        "2\t0.066667\t1\t2\t3\tNaN\tnan\tNAN",  # short row: last marker missing, NaN spellings
        "3\t0.1\t1\t2\t3",  # shorter still
        "4\t0.133333\t 1 \t2\t3\t4\tnan\t6\t7\t8\t9",  # spaces; a lone 'nan' coordinate
        "",  # blank line at the end
    ]
    text = _trc_text(names, rows, units="mm", nframes=99, eol="\r\n")  # NumFrames is wrong
    p = _write(tmp_path, "p2s.trc", text)
    d = read_trc(p)
    assert d.marker_names == tuple(names)
    assert d.positions.shape == (5, 3, 3)
    np.testing.assert_array_equal(d.frame_numbers, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(d.time, [0.0, 0.033333, 0.066667, 0.1, 0.133333])
    nan = np.nan
    expect_mm = np.array(
        [
            [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
            [[nan, nan, nan], [nan, nan, nan], [7, 8, 9]],  # partly missing = missing
            [[1, 2, 3], [nan, nan, nan], [nan, nan, nan]],
            [[1, 2, 3], [nan, nan, nan], [nan, nan, nan]],
            [[1, 2, 3], [4, nan, 6], [7, 8, 9]],
        ]
    )
    np.testing.assert_array_equal(d.positions, expect_mm / 1000.0)
    assert d.data_rate == 30.0 and d.orig_units == "mm"


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("blank", [True, False])
def test_trc_line_endings_and_optional_blank_line(tmp_path, eol, blank):
    rows = ["1\t0\t1\t2\t3", "2\t0.5\t4\t5\t6"]
    p = _write(tmp_path, "e.trc", _trc_text(["A"], rows, eol=eol, blank=blank, units="cm"))
    d = read_trc(p)
    np.testing.assert_array_equal(d.positions[:, 0], [[0.01, 0.02, 0.03], [0.04, 0.05, 0.06]])
    np.testing.assert_array_equal(d.time, [0.0, 0.5])


def test_trc_bom_and_space_separated_rows(tmp_path):
    text = _trc_text(["A", "B"], ["1  0.0  1 2 3  4 5 6", "2\t0.1\t1\t2\t3\t4\t5\t6"])
    p = tmp_path / "bom.trc"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    d = read_trc(p)
    np.testing.assert_array_equal(d.positions[0], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(d.positions[1], [[1, 2, 3], [4, 5, 6]])


def test_trc_error_literal_infinity_with_empty_fields(tmp_path):
    # 'inf' in the file sends the parser down its slow path; an infinite marker coordinate is
    # refused (issue 9: NaN or an empty field marks a missing marker, inf means nothing)
    rows = ["1\t0\t1\t\t3\tinf\t5\t6", "2\t0.1\t1\t2\t3\t-Infinity\t5\t"]
    p = _write(tmp_path, "inf.trc", _trc_text(["A", "B"], rows))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 7, "B.X")
    assert "finite" in msg


def test_trc_large_file_parses(tmp_path):
    names, time, pos = _markers(n_frames=20000, n_markers=10, seed=3)
    d = read_trc(write_trc(tmp_path / "big.trc", names, time, pos, units="mm"))
    np.testing.assert_array_equal(d.positions, (pos * 1000.0) / 1000.0)


# --------------------------------------------------------------------------------------------
# TRC errors: each names the file, the line and the field
# --------------------------------------------------------------------------------------------


def test_trc_error_empty_file(tmp_path):
    p = _write(tmp_path, "empty.trc", "\n \n")
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 1)
    assert "empty" in msg


def test_trc_error_missing_file(tmp_path):
    p = tmp_path / "nope.trc"
    err, msg = _error(read_trc, p)
    assert "nope.trc" in msg


@pytest.mark.parametrize("keep", [1, 2, 3, 4])
def test_trc_error_missing_header_lines(tmp_path, keep):
    full = _trc_text(["A"], ["1\t0\t1\t2\t3"], blank=False).split("\n")
    p = _write(tmp_path, "short.trc", "\n".join(full[:keep]) + "\n")
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, keep + 1)


def test_trc_error_missing_coordinate_line(tmp_path):
    lines = _trc_text(["A"], ["1\t0\t1\t2\t3"], blank=False).split("\n")
    del lines[4]
    p = _write(tmp_path, "nocoord.trc", "\n".join(lines))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 5)
    assert "X1" in msg


def test_trc_error_not_a_trc(tmp_path):
    p = _write(tmp_path, "x.trc", "hello\nworld\n")
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 1)
    assert "PathFileType" in msg


def test_trc_error_non_numeric_names_line_and_marker_column(tmp_path):
    names = ["Hip", "LShoulder", "RShoulder"]
    rows = ["1\t0\t1\t2\t3\t4\t5\t6\t7\t8\t9", "2\t0.1\t1\t2\t3\t4\tabc\t6\t7\t8\t9"]
    p = _write(tmp_path, "nn.trc", _trc_text(names, rows))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 8, "LShoulder.Y")
    assert "'abc'" in msg


def test_trc_error_non_numeric_time(tmp_path):
    p = _write(
        tmp_path, "nt.trc", _trc_text(["A"], ["1\t0\t1\t2\t3", "2\tt1\t1\t2\t3"], blank=False)
    )
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 7, "Time")


def test_trc_error_missing_time(tmp_path):
    p = _write(tmp_path, "mt.trc", _trc_text(["A"], ["1\t0\t1\t2\t3", "2\t\t1\t2\t3"]))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 8, "Time")


def test_trc_error_row_with_too_many_values(tmp_path):
    rows = ["1\t0\t1\t2\t3\t4\t5\t6", "2\t0.1\t1\t2\t3\t4\t5\t6\t7\t"]
    p = _write(tmp_path, "long.trc", _trc_text(["A", "B"], rows))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 8)
    assert "7 coordinate values" in msg and "2 markers" in msg


def test_trc_error_unknown_units(tmp_path):
    p = _write(tmp_path, "u.trc", _trc_text(["A"], ["1\t0\t1\t2\t3"], units="inch"))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 3, "Units")
    assert "inch" in msg


def test_trc_error_bad_data_rate(tmp_path):
    text = _trc_text(["A"], ["1\t0\t1\t2\t3"]).replace("\n30\t30\t", "\nfast\t30\t", 1)
    p = _write(tmp_path, "dr.trc", text)
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 3, "DataRate")


def test_trc_error_duplicate_marker_names(tmp_path):
    p = _write(tmp_path, "dup.trc", _trc_text(["A", "B", "A"], ["1\t0" + "\t1" * 9]))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 4, "A")
    assert "duplicate" in msg


def test_trc_error_zero_frames(tmp_path):
    p = _write(tmp_path, "zero.trc", _trc_text(["A"], []))
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 6)
    assert "zero frames" in msg


def test_trc_error_marker_name_missing(tmp_path):
    text = _trc_text(["A", "B"], ["1\t0\t1\t2\t3\t4\t5\t6"]).replace("\tB\t", "\t\t", 1)
    p = _write(tmp_path, "noname.trc", text)
    err, msg = _error(read_trc, p)
    _assert_located(err, msg, p, 5)


# --------------------------------------------------------------------------------------------
# Storage round trips and variants
# --------------------------------------------------------------------------------------------


def _coords(n_rows=30, n_cols=4, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(n_rows) * 0.01
    values = rng.normal(scale=50.0, size=(n_rows, n_cols))
    values[0, 0] = 1e-300
    values[1, 1] = -123456789.123456789
    values[2, 2] = 1.0 / 3.0
    labels = [f"q{k}" for k in range(n_cols)]
    return labels, time, values


@pytest.mark.parametrize("kind,in_degrees", [("mot", True), ("mot", False), ("sto", None)])
def test_storage_roundtrip_exact(tmp_path, kind, in_degrees):
    labels, time, values = _coords()
    p = write_storage(
        tmp_path / f"c.{kind}",
        labels,
        time,
        values,
        in_degrees=in_degrees,
        name="Coords",
        kind=kind,
    )
    d = read_storage(p)
    assert isinstance(d, StorageData)
    assert d.labels == tuple(labels)
    assert d.name == "Coords"
    assert d.in_degrees is in_degrees
    assert d.header["version"] == "1"
    assert d.header["nRows"] == str(len(time)) and d.header["nColumns"] == str(len(labels) + 1)
    np.testing.assert_array_equal(d.time, time)
    np.testing.assert_array_equal(d.values, values)
    np.testing.assert_array_equal(d.column("q2"), values[:, 2])
    np.testing.assert_array_equal(d.column("time"), time)
    text = p.read_text().split("\n")
    assert text[:4] == ["Coords", "version=1", f"nRows={len(time)}", f"nColumns={len(labels) + 1}"]
    assert ("inDegrees=yes" in text) is (in_degrees is True)
    assert ("inDegrees=no" in text) is (in_degrees is False)
    assert not any(s.startswith("inDegrees") for s in text) or in_degrees is not None


def test_storage_nan_switches_to_version3(tmp_path):
    labels, time, values = _coords(n_rows=5)
    values[2, 1] = np.nan
    d = read_storage(write_storage(tmp_path / "n.sto", labels, time, values, in_degrees=None))
    assert d.header["version"] == "3"
    np.testing.assert_array_equal(d.values, values)


def test_storage_column_missing_label(tmp_path):
    labels, time, values = _coords(n_rows=3)
    p = write_storage(tmp_path / "c.mot", labels, time, values, in_degrees=True)
    err, msg = _error(read_storage(p).column, "pelvis_tilt")
    assert "c.mot" in msg and "pelvis_tilt" in msg and err.field == "pelvis_tilt"


def test_storage_legacy_simm_header_and_whitespace(tmp_path):
    text = (
        "walk.mot\n"
        "datacolumns 3\n"
        "datarows 7\n"  # wrong: the data is trusted
        "range 0 0.02\n"
        "Units are S.I. units (second, meters, Newtons, ...)\n"
        "endheader\n"
        "\n"
        "TIME   hip_flexion   knee_angle\n"
        "  0.00000000      10.5    -3\n"
        "  0.01000000\t11.5\t-4\t\n"
        "  0.02000000      12.5    -5\n"
    )
    d = read_storage(_write(tmp_path, "walk.mot", text))
    assert d.name == "walk.mot" and d.in_degrees is None
    assert d.labels == ("hip_flexion", "knee_angle")
    assert d.header["datacolumns"] == "3" and d.header["range"] == "0 0.02"
    np.testing.assert_array_equal(d.time, [0.0, 0.01, 0.02])
    np.testing.assert_array_equal(d.values, [[10.5, -3], [11.5, -4], [12.5, -5]])


def test_storage_opensim4_header_without_name(tmp_path):
    text = (
        "inDegrees=no\r\nDataType=double\r\nversion=3\r\nOpenSimVersion=4.6\r\nendheader\r\n"
        "time\ta\tb\r\n0\t1\tnan\r\n0.5\t2\t-inf\r\n"
    )
    d = read_storage(_write(tmp_path, "v4.sto", text))
    assert d.name == "" and d.in_degrees is False
    assert d.header == {
        "inDegrees": "no",
        "DataType": "double",
        "version": "3",
        "OpenSimVersion": "4.6",
    }
    np.testing.assert_array_equal(d.values, [[1.0, np.nan], [2.0, -np.inf]])


def test_storage_zero_rows(tmp_path):
    # written as OpenSim writes an empty table; reading one is an error naming the file and
    # the line after the labels (issue 9: every use of a motion needs a frame)
    p = write_storage(tmp_path / "z.sto", ["a"], np.zeros(0), np.zeros((0, 1)), in_degrees=None)
    err, msg = _error(read_storage, p)
    _assert_located(err, msg, p, 7)
    assert "no data rows" in msg


def test_storage_writer_rejects_bad_input(tmp_path):
    labels, time, values = _coords(n_rows=3)
    p = tmp_path / "w.mot"
    with pytest.raises(InputError, match="shape"):
        write_storage(p, labels[:-1], time, values, in_degrees=True)
    with pytest.raises(InputError, match="duplicate"):
        write_storage(p, ["a", "a", "b", "c"], time, values, in_degrees=True)
    with pytest.raises(InputError, match="kind"):
        write_storage(p, labels, time, values, in_degrees=True, kind="csv")
    with pytest.raises(InputError, match="tabs"):
        write_storage(p, ["a\tb", "c", "d", "e"], time, values, in_degrees=True)
    assert not p.exists()


# --------------------------------------------------------------------------------------------
# Storage errors
# --------------------------------------------------------------------------------------------

GOOD_MOT = (
    "m\nversion=1\nnRows=2\nnColumns=3\ninDegrees=yes\nendheader\ntime\ta\tb\n0\t1\t2\n1\t3\t4\n"
)


def _mot_error(tmp_path, text, name="bad.mot"):
    p = _write(tmp_path, name, text)
    err, msg = _error(read_storage, p)
    assert name in msg, msg
    return err, msg


def test_storage_good_text_reads(tmp_path):
    d = read_storage(_write(tmp_path, "good.mot", GOOD_MOT))
    np.testing.assert_array_equal(d.values, [[1, 2], [3, 4]])


def test_storage_error_missing_endheader(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("endheader\n", ""))
    assert "endheader" in msg and err.line == 8


def test_storage_error_empty(tmp_path):
    err, msg = _mot_error(tmp_path, "")
    assert err.line == 1 and "empty" in msg


def test_storage_error_no_label_row(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.split("time")[0] + "\n\n")
    assert err.line == 7 and "label" in msg


def test_storage_error_label_row_not_time(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("time\ta\tb\n", ""))
    assert err.line == 7 and "'time'" in msg


def test_storage_error_wrong_column_count(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("1\t3\t4\n", "1\t3\n"))
    _assert_located(err, msg, "bad.mot", 9)
    assert "expected 3" in msg and "found 2" in msg


def test_storage_error_non_numeric_names_column(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("1\t3\t4\n", "1\t3\tx4\n"))
    _assert_located(err, msg, "bad.mot", 9, "b")
    assert "'x4'" in msg


def test_storage_error_empty_value(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("0\t1\t2\n", "0\t\t2\n"))
    _assert_located(err, msg, "bad.mot", 8, "a")


def test_storage_error_ncolumns_mismatch(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("nColumns=3", "nColumns=4"))
    _assert_located(err, msg, "bad.mot", 4, "nColumns")
    assert "nColumns=4" in msg and "3 columns" in msg


def test_storage_error_datacolumns_mismatch(tmp_path):
    text = "x\ndatacolumns 2\nendheader\ntime a b\n0 1 2\n"
    err, msg = _mot_error(tmp_path, text)
    _assert_located(err, msg, "bad.mot", 2, "datacolumns")
    assert "datacolumns=2" in msg and "3 columns" in msg


def test_storage_nrows_mismatch_trusts_data(tmp_path):
    d = read_storage(_write(tmp_path, "r.mot", GOOD_MOT.replace("nRows=2", "nRows=50")))
    assert d.values.shape == (2, 2)


def test_storage_error_duplicate_labels(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("time\ta\tb", "time\ta\ta"))
    _assert_located(err, msg, "bad.mot", 7, "a")
    assert "duplicate" in msg


def test_storage_error_bad_in_degrees(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("inDegrees=yes", "inDegrees=maybe"))
    _assert_located(err, msg, "bad.mot", 5, "inDegrees")


def test_storage_error_bad_nrows(tmp_path):
    err, msg = _mot_error(tmp_path, GOOD_MOT.replace("nRows=2", "nRows=two"))
    _assert_located(err, msg, "bad.mot", 3, "nRows")


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_write_text_creates_parents_and_replaces(tmp_path):
    p = tmp_path / "a" / "b" / "f.txt"
    atomic_write_text(p, "one\n")
    assert p.read_text() == "one\n"
    atomic_write_text(p, "two\n")
    assert p.read_text() == "two\n"
    assert os.listdir(p.parent) == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_atomic_open_failure_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as fh:
            fh.write("half of the new conte")
            raise RuntimeError("interrupted")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_atomic_open_binary(tmp_path):
    with atomic_open(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_writer_failure_keeps_previous_file(tmp_path):
    names, time, pos = _markers(n_frames=4, gap_fraction=0)
    p = write_trc(tmp_path / "t.trc", names, time, pos)
    before = p.read_bytes()
    bad = pos.copy()
    bad[1, 1, 1] = np.inf
    with pytest.raises(InputError):
        write_trc(p, names, time, bad)
    assert p.read_bytes() == before


# --------------------------------------------------------------------------------------------
# OpenSim 4.6 interoperability
# --------------------------------------------------------------------------------------------


def _osim():
    return pytest.importorskip("opensim")


def _vec3_table_to_numpy(table):
    """(labels, time, (T, M, 3) values) of an OpenSim TimeSeriesTableVec3, row by row."""
    n_rows, n_cols = table.getNumRows(), table.getNumColumns()
    out = np.empty((n_rows, n_cols, 3))
    for i in range(n_rows):
        row = table.getRowAtIndex(i)
        for j in range(n_cols):
            v = row[j]
            out[i, j] = (v[0], v[1], v[2])
    return (
        list(table.getColumnLabels()),
        np.asarray(table.getIndependentColumn(), np.float64),
        out,
    )


def _table_to_numpy(table):
    n_rows, n_cols = table.getNumRows(), table.getNumColumns()
    out = np.empty((n_rows, n_cols))
    for i in range(n_rows):
        row = table.getRowAtIndex(i)
        for j in range(n_cols):
            out[i, j] = row[j]
    return (
        list(table.getColumnLabels()),
        np.asarray(table.getIndependentColumn(), np.float64),
        out,
    )


def _storage_to_numpy(sto):
    labels = sto.getColumnLabels()
    labels = [labels.get(k) for k in range(labels.getSize())]
    time = np.empty(sto.getSize())
    out = np.empty((sto.getSize(), len(labels) - 1))
    for i in range(sto.getSize()):
        sv = sto.getStateVector(i)
        data = sv.getData()
        time[i] = sv.getTime()
        out[i] = [data.get(k) for k in range(data.getSize())]
    return labels, time, out


@pytest.mark.opensim
@pytest.mark.parametrize("units,factor", [("m", 1.0), ("mm", 1000.0)])
def test_opensim_reads_our_trc(tmp_path, units, factor):
    osim = _osim()
    names, time, pos = _markers(n_frames=25, n_markers=4, seed=5)
    p = write_trc(tmp_path / f"ours_{units}.trc", names, time, pos, units=units, data_rate=60)
    labels, t, raw = _vec3_table_to_numpy(osim.TimeSeriesTableVec3(str(p)))
    assert labels == names
    np.testing.assert_array_equal(t, time)
    np.testing.assert_array_equal(raw, pos * factor)  # empty fields and 'nan' read as NaN
    ours = read_trc(p)
    np.testing.assert_array_equal(ours.time, t)
    np.testing.assert_array_equal(ours.positions, raw / factor)
    tables = osim.TRCFileAdapter().read(str(p))
    markers = tables["markers"]
    assert markers.getNumRows() == len(time) and markers.getNumColumns() == len(names)
    assert markers.getTableMetaDataAsString("Units") == units
    assert float(markers.getTableMetaDataAsString("DataRate")) == 60.0


def _opensim_trc(osim, path, names, time, raw, units):
    table = osim.TimeSeriesTableVec3()
    table.setColumnLabels(names)
    for i, t in enumerate(time):
        row = osim.RowVectorVec3(len(names))
        for j in range(len(names)):
            row[j] = osim.Vec3(*(float(x) for x in raw[i, j]))
        table.appendRow(float(t), row)
    table.addTableMetaDataString("DataRate", "60")
    table.addTableMetaDataString("Units", units)
    osim.TRCFileAdapter().write(table, str(path))


@pytest.mark.opensim
@pytest.mark.parametrize("units,factor", [("m", 1.0), ("mm", 1000.0)])
def test_we_read_opensims_trc(tmp_path, units, factor):
    osim = _osim()
    names, time, pos = _markers(n_frames=20, n_markers=3, seed=6)
    p = tmp_path / f"osim_{units}.trc"
    _opensim_trc(osim, p, names, time, pos * factor, units)
    assert "\tnan\t" in p.read_text()  # OpenSim spells a missing value 'nan'
    d = read_trc(p)
    assert d.marker_names == tuple(names)
    assert d.orig_units == units and d.data_rate == 60.0
    # OpenSim writes about 16 significant digits, so compare with what OpenSim reads back
    labels, t, raw = _vec3_table_to_numpy(osim.TimeSeriesTableVec3(str(p)))
    np.testing.assert_array_equal(d.time, t)
    np.testing.assert_array_equal(d.positions, raw / factor)
    np.testing.assert_allclose(d.positions, pos, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(d.time, time, rtol=1e-14, atol=0)


@pytest.mark.opensim
def test_empty_field_hides_whole_marker_like_opensim(tmp_path):
    osim = _osim()
    rows = ["1\t0\t1\t2\t3\t4\t\t6\t", "2\t0.1\t1\tnan\t3\t4\t5\t6\t"]
    p = _write(tmp_path, "partial.trc", _trc_text(["A", "B"], rows))
    _, _, raw = _vec3_table_to_numpy(osim.TimeSeriesTableVec3(str(p)))
    assert np.isnan(raw[0, 1]).all() and not np.isnan(raw[0, 0]).any()  # empty: whole marker
    assert np.isnan(raw[1]).tolist() == [[False, True, False], [False] * 3]  # 'nan': one value
    np.testing.assert_array_equal(read_trc(p).positions, raw)


@pytest.mark.opensim
@pytest.mark.parametrize("kind", ["mot", "sto"])
@pytest.mark.parametrize("with_nan", [False, True])
def test_opensim_reads_our_storage(tmp_path, kind, with_nan):
    osim = _osim()
    labels, time, values = _coords(n_rows=12, n_cols=3, seed=7)
    if with_nan:
        values[4, 1] = np.nan
    p = write_storage(
        tmp_path / f"ours.{kind}", labels, time, values, in_degrees=True, name="IK", kind=kind
    )
    table = osim.TimeSeriesTable(str(p))
    t_labels, t_time, t_values = _table_to_numpy(table)
    assert t_labels == labels
    np.testing.assert_array_equal(t_time, time)
    np.testing.assert_array_equal(t_values, values)
    assert table.getTableMetaDataAsString("inDegrees") == "yes"
    sto = osim.Storage(str(p))
    assert sto.getSize() == len(time)  # legacy Storage drops rows at a 'nan' in version=1
    assert sto.isInDegrees()
    assert sto.getName() == "IK"
    s_labels, s_time, s_values = _storage_to_numpy(sto)
    assert s_labels == ["time", *labels]
    np.testing.assert_array_equal(s_time, time)
    np.testing.assert_array_equal(s_values, values)


@pytest.mark.opensim
def test_opensim_legacy_storage_cannot_read_nan_in_version1(tmp_path):
    """Why write_storage switches to version=3 for non-finite values (documents the quirk)."""
    osim = _osim()
    text = GOOD_MOT.replace("0\t1\t2\n", "0\t1\tnan\n")
    p = _write(tmp_path, "v1nan.mot", text)
    assert osim.Storage(str(p)).getSize() == 1  # silently truncated by OpenSim 4.6
    assert read_storage(p).values.shape == (2, 2)


@pytest.mark.opensim
@pytest.mark.parametrize("ext", ["mot", "sto"])
def test_we_read_opensims_storage(tmp_path, ext):
    osim = _osim()
    labels, time, values = _coords(n_rows=10, n_cols=3, seed=8)
    values[3, 0] = np.nan
    table = osim.TimeSeriesTable()
    table.setColumnLabels(labels)
    for i, t in enumerate(time):
        row = osim.RowVector(len(labels))
        for j in range(len(labels)):
            row[j] = float(values[i, j])
        table.appendRow(float(t), row)
    table.addTableMetaDataString("inDegrees", "no")
    p = tmp_path / f"osim.{ext}"
    osim.STOFileAdapter.write(table, str(p))
    d = read_storage(p)
    assert d.labels == tuple(labels)
    assert d.in_degrees is False
    assert d.header.get("DataType") == "double"
    # identical to OpenSim's own reading of the file (which holds ~16 significant digits)
    _, t_time, t_values = _table_to_numpy(osim.TimeSeriesTable(str(p)))
    np.testing.assert_array_equal(d.time, t_time)
    np.testing.assert_array_equal(d.values, t_values)
    np.testing.assert_allclose(d.values, values, rtol=1e-15, atol=0)


@pytest.mark.opensim
def test_we_read_legacy_storage_print(tmp_path):
    osim = _osim()
    labels, time, values = _coords(n_rows=6, n_cols=3, seed=9)
    values = np.round(values, 6)
    src = write_storage(tmp_path / "src.mot", labels, time, values, in_degrees=True, name="src")
    out = tmp_path / "printed.mot"
    osim.Storage(str(src)).printToFile(str(out), "w")
    text = out.read_text()
    assert re.search(r"^version=1$", text, re.M)
    d = read_storage(out)
    assert d.labels == tuple(labels) and d.in_degrees is True and d.name == "src"
    s_labels, s_time, s_values = _storage_to_numpy(osim.Storage(str(out)))
    np.testing.assert_array_equal(d.time, s_time)
    np.testing.assert_array_equal(d.values, s_values)
    np.testing.assert_allclose(d.values, values, atol=1e-6, rtol=1e-8)
