"""TRC marker files (OpenSim 4 / Pose2Sim layout), read in any length unit, returned in metres.

Layout (tab separated)::

    1  PathFileType  4  (X/Y/Z)  <name>
    2  DataRate  CameraRate  NumFrames  NumMarkers  Units  OrigDataRate  OrigDataStartFrame ...
    3  100       100         250        22          mm     100           1                  ...
    4  Frame#  Time  M1  <tab><tab>  M2  ...
    5  <tab><tab>  X1  Y1  Z1  X2  Y2  Z2  ...
    6  (optional blank line)
       frame  time  x1  y1  z1  x2 ...

Missing coordinates are empty fields or ``nan``; rows may stop early (the trailing markers are
then missing) or end in extra tabs. The header's ``NumFrames`` is not trusted: the rows are.

Refused, each with the line and field (ambiguous or corrupt input is never guessed at): a
space-separated row with fewer values than the header (the blank fields of its gaps cannot be
located); a last line without line end that is cut short (fewer fields, or a value ending in
``.``); time that repeats or goes back; ``inf`` or a coordinate beyond
:data:`MAX_ABS_POSITION_M`; marker spans that do not fit the declared ``Units``
(:data:`MAX_FRAME_SPAN_M`, e.g. millimetres labelled ``m`` or ``cm``).

OpenSim quirks (TRCFileAdapter, 4.6), which this module follows so that both read a file into
the same numbers:

* an *empty* field makes the whole marker missing (all three coordinates NaN), while a ``nan``
  token makes only that coordinate NaN;
* OpenSim writes missing values as ``nan`` and ends every data row with a tab; when reading,
  it drops the *last* field of a row if it is empty and not followed by a tab, and then rejects
  the row for having too few columns.

:func:`write_trc` therefore writes a wholly missing marker as three empty fields, a partly
missing one with ``nan`` in its missing coordinates, and ends every row with a tab.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_open
from .storage import (
    _bad_value_message,
    _check_time,
    _first_bad_value,
    _format_rows,
    _parse_float_rows,
    _read_lines,
    _refuse_cut_last_line,
)

__all__ = ["TRCData", "read_trc", "write_trc"]

# Plausibility bounds of marker data, in metres after the Units conversion (see
# _check_marker_scale). A person spans at most ~2.5 m in any frame (stature or arm span of the
# tallest adults, arms raised); markers on props or lab references seldom add much. A median
# per-frame span above 10 m (4x that) means a wrong Units value: millimetres labelled 'm'
# make a 1.7 m body 1,700 m, labelled 'cm' 17 m. Small spans are not checked: one marker, a
# rigid cluster or a hand set legitimately span a few centimetres.
MAX_FRAME_SPAN_M = 10.0
# No capture volume reaches 10 km from its origin: a coordinate beyond is a corrupt number.
MAX_ABS_POSITION_M = 1e4

# divide a value in these units by the factor to get metres
_UNITS_PER_METRE = {
    "m": 1.0,
    "meter": 1.0,
    "meters": 1.0,
    "metre": 1.0,
    "metres": 1.0,
    "cm": 100.0,
    "centimeters": 100.0,
    "centimetres": 100.0,
    "mm": 1000.0,
    "millimeters": 1000.0,
    "millimetres": 1000.0,
}
_WRITE_UNITS = ("m", "mm", "cm")
_HEADER_KEYS = (
    "DataRate",
    "CameraRate",
    "NumFrames",
    "NumMarkers",
    "Units",
    "OrigDataRate",
    "OrigDataStartFrame",
    "OrigNumFrames",
)


@dataclass(frozen=True)
class TRCData:
    """Marker trajectories of one TRC file; ``positions`` are in metres whatever the file's unit."""

    marker_names: tuple[str, ...]
    time: np.ndarray  # (T,) float64, seconds
    frame_numbers: np.ndarray  # (T,) int64, as in the file
    positions: np.ndarray  # (T, M, 3) float64, metres, NaN where missing
    data_rate: float
    camera_rate: float
    orig_units: str  # the Units string as written in the file, e.g. 'mm'
    path: str | None = None


def _split(line: str) -> list[str]:
    """Fields of a header line: tab separated, or whitespace separated if it has no tab."""
    s = line.strip()
    return [c.strip() for c in (s.split("\t") if "\t" in s else s.split())]


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_trc(path: str | os.PathLike[str]) -> TRCData:
    """Read a TRC file written by OpenSim, Pose2Sim, Vicon/Mokka-style tools; see module doc."""
    p, lines = _read_lines(path, "TRC")
    if not any(s.strip() for s in lines):
        raise InputError("empty TRC file", path=p, line=1)
    n_lines = len(lines) - (1 if lines and lines[-1] == "" else 0)

    def need(k: int, what: str) -> str:
        if k > n_lines:
            raise InputError(f"file ends before header line {k} ({what})", path=p, line=k)
        return lines[k - 1]

    # line 1
    first = need(1, "PathFileType")
    if not first.strip().lower().startswith("pathfiletype"):
        raise InputError(
            f"not a TRC file: line 1 should start with 'PathFileType', found {first[:40]!r}",
            path=p,
            line=1,
        )

    # lines 2-3: header keys and values
    keys = _split(need(2, "header names DataRate CameraRate ..."))
    if not any(k.lower() == "datarate" for k in keys):
        raise InputError(
            "line 2 should name the header fields (DataRate CameraRate NumFrames NumMarkers "
            f"Units ...), found {lines[1][:60]!r}",
            path=p,
            line=2,
        )
    vals_line = need(3, "header values")
    vals = vals_line.strip().split("\t") if "\t" in vals_line.strip() else vals_line.split()
    vals = [v.strip() for v in vals]
    header = {k: (vals[i] if i < len(vals) else "") for i, k in enumerate(keys) if k}
    lower = {k.lower(): k for k in header}

    def hval(key: str) -> str | None:
        k = lower.get(key.lower())
        return None if k is None else header[k]

    def rate(key: str, default: float | None) -> float:
        v = hval(key)
        if v is None or v == "":
            if default is None:
                raise InputError(f"no {key} value", path=p, line=3, field=key)
            return default
        try:
            r = float(v)
        except ValueError:
            raise InputError(f"{key} is not a number: {v!r}", path=p, line=3, field=key) from None
        if not (math.isfinite(r) and r > 0):
            raise InputError(
                f"{key} must be a positive number, got {v!r}", path=p, line=3, field=key
            )
        return r

    data_rate = rate("DataRate", None)
    camera_rate = rate("CameraRate", data_rate)
    units = hval("Units")
    if units is None or units == "":
        raise InputError("no Units value (expected m, cm or mm)", path=p, line=3, field="Units")
    scale = _UNITS_PER_METRE.get(units.lower())
    if scale is None:
        raise InputError(
            f"unknown units {units!r} (expected m, cm or mm)", path=p, line=3, field="Units"
        )

    # line 4: marker names
    name_line = need(4, "Frame# Time marker names")
    cells = name_line.split("\t") if "\t" in name_line else name_line.split()
    if not cells or cells[0].strip().lower() not in ("frame#", "frame"):
        raise InputError(
            f"line 4 should start with 'Frame#<TAB>Time', found {name_line[:40]!r}",
            path=p,
            line=4,
        )
    names = [c.strip() for c in cells[2:] if c.strip()]
    if not names:
        raise InputError("no marker names on line 4", path=p, line=4)
    seen: set[str] = set()
    for nm in names:
        if nm in seen:
            raise InputError("duplicate marker name", path=p, line=4, field=nm)
        seen.add(nm)
    n_markers = len(names)
    ncols = 2 + 3 * n_markers

    # line 5: X1 Y1 Z1 ...
    coord_line = need(5, "X1 Y1 Z1 ...")
    coord = [c for c in _split(coord_line) if c]
    if coord_line[:1] not in ("\t", " ") and coord and _looks_numeric(coord[0]):
        raise InputError(
            "line 5 should hold the coordinate labels (X1 Y1 Z1 ...), found a data row",
            path=p,
            line=5,
        )
    if coord and len(coord) != 3 * n_markers:
        raise InputError(
            f"line 5 has {len(coord)} coordinate labels but line 4 names {n_markers} markers "
            f"(expected {3 * n_markers}); is a marker name missing on line 4?",
            path=p,
            line=5,
        )

    # data rows
    rows: list[str] = []
    numbers: list[int] = []
    for i in range(5, len(lines)):
        s = lines[i].rstrip()
        if not s.strip():
            continue
        spaced = "\t" not in s
        if spaced:
            s = "\t".join(s.split())
        n = s.count("\t") + 1
        if n > ncols:
            raise InputError(
                f"row has {n - 2} coordinate values but line 4 names {n_markers} markers "
                f"({3 * n_markers} values)",
                path=p,
                line=i + 1,
            )
        if n < ncols:
            if spaced:  # runs of spaces hide where the blank (missing) fields were
                # a last line cut short (no line end) is that, whatever its separators
                _refuse_cut_last_line(lines, i, ncols, p)
                raise InputError(
                    f"space-separated row with {n} of {ncols} values: with spaces as "
                    "separators the missing (blank) fields cannot be located, so the markers "
                    "after a gap would shift; separate fields by tabs or write missing values "
                    "as NaN",
                    path=p,
                    line=i + 1,
                )
            s += "\t" * (ncols - n)
        rows.append(s)
        numbers.append(i + 1)
    if not rows:
        raise InputError(
            "no data rows (zero frames) after the header", path=p, line=min(6, n_lines + 1)
        )

    _refuse_cut_last_line(lines, numbers[-1] - 1, ncols, p)

    def column_name(j: int) -> str:
        if j < 2:
            return ("Frame#", "Time")[j]
        return f"{names[(j - 2) // 3]}.{'XYZ'[(j - 2) % 3]}"

    data, empty = _parse_float_rows(rows, numbers, ncols, column_name, p, allow_empty=True)
    bad = _first_bad_value(data[:, 2:], MAX_ABS_POSITION_M * scale, allow_inf=False)
    if bad is not None:
        r, c = bad
        msg = _bad_value_message(data[r, c + 2], MAX_ABS_POSITION_M * scale, f" {units}")
        raise InputError(
            f"marker coordinate: {msg} (NaN or an empty field marks a missing marker)",
            path=p,
            line=numbers[r],
            field=column_name(c + 2),
        )

    frames = data[:, 0]
    bad = ~np.isfinite(frames) | (frames != np.round(frames))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(
            "frame number missing or not an integer", path=p, line=numbers[r], field="Frame#"
        )
    time = np.ascontiguousarray(data[:, 1])
    _check_time(time, numbers, p, "Time")
    positions = data[:, 2:].reshape(len(rows), n_markers, 3)
    if scale != 1.0:
        positions = positions / scale
    if empty is not None:
        # like OpenSim: one empty coordinate field makes the whole marker missing
        positions[empty[:, 2:].reshape(len(rows), n_markers, 3).any(axis=2)] = np.nan
    _check_marker_scale(positions, units, p)
    return TRCData(
        marker_names=tuple(names),
        time=time,
        frame_numbers=frames.astype(np.int64),
        positions=np.ascontiguousarray(positions),
        data_rate=data_rate,
        camera_rate=camera_rate,
        orig_units=units,
        path=p,
    )


def _check_marker_scale(positions: np.ndarray, units: str, path: str) -> None:
    """Refuse marker data whose size does not fit its declared unit (see MAX_FRAME_SPAN_M).

    The span of a frame is the largest extent along x, y or z of its observed markers; frames
    with fewer than two observed coordinates on an axis do not count. The median over frames
    is robust to a few glitches. ``positions`` (T, M, 3) metres, NaN = missing."""
    seen = ~np.isnan(positions)
    counted = seen.sum(axis=1) >= 2  # (T, 3)
    if not counted.any():
        return
    hi = np.where(seen, positions, -np.inf).max(axis=1)
    lo = np.where(seen, positions, np.inf).min(axis=1)
    span = np.where(counted, hi - lo, 0.0).max(axis=1)[counted.any(axis=1)]
    median = float(np.median(span))
    if median > MAX_FRAME_SPAN_M:
        raise InputError(
            f"the markers of a frame span {median:.4g} m (median over frames) when read in "
            f"{units!r}; a person spans about 0.5-3 m, so the Units value is likely wrong "
            "(millimetres labelled 'm' or 'cm'?); fix the Units field of line 3",
            path=path,
            line=3,
            field="Units",
        )


def _fmt_rate(r: float) -> str:
    """A rate for the header: 10 significant digits, so 1/median(dt) = 59.99999999 reads 60."""
    return f"{r:.10g}"


def write_trc(
    path: str | os.PathLike[str],
    marker_names: Sequence[str],
    time,
    positions_m,
    *,
    units: str = "m",
    data_rate: float | None = None,
    name: str | None = None,
) -> Path:
    """Write markers (metres, NaN = missing) as an OpenSim 4 TRC in ``units`` ('m', 'mm', 'cm').

    A wholly missing marker is written as empty fields, a partly missing one with ``nan`` in
    the missing coordinates; every row ends with a tab (see the module doc).
    ``data_rate`` defaults to 1/median(diff(time)). Frames are numbered from 1. Atomic.
    Returns the path written.
    """
    p = os.fspath(path)
    if units not in _WRITE_UNITS:
        raise InputError(
            f"units must be one of {_WRITE_UNITS}, got {units!r}", path=p, field="units"
        )
    names = [str(n) for n in marker_names]
    time = np.asarray(time, dtype=np.float64)
    pos = np.asarray(positions_m, dtype=np.float64)
    if time.ndim != 1:
        raise InputError(f"time must be 1-D, got shape {time.shape}", path=p, field="time")
    n_frames = time.shape[0]
    if pos.shape != (n_frames, len(names), 3):
        raise InputError(
            f"positions have shape {pos.shape}, expected (len(time), len(marker_names), 3) = "
            f"({n_frames}, {len(names)}, 3)",
            path=p,
            field="positions",
        )
    if n_frames == 0:
        raise InputError("no frames to write", path=p, field="time")
    if not names:
        raise InputError("no markers to write", path=p, field="marker_names")
    seen: set[str] = set()
    for nm in names:
        if not nm or nm != nm.strip() or any(c in nm for c in "\t\r\n"):
            raise InputError(
                "marker names must be non-empty, without tabs, newlines or surrounding spaces",
                path=p,
                field=repr(nm),
            )
        if nm in seen:
            raise InputError("duplicate marker name", path=p, field=nm)
        seen.add(nm)
    if not np.all(np.isfinite(time)):
        raise InputError(
            "time is not finite",
            path=p,
            frame=int(np.flatnonzero(~np.isfinite(time))[0]),
            field="time",
        )
    if n_frames > 1 and not np.all(np.diff(time) > 0):
        raise InputError(
            "time must increase strictly",
            path=p,
            frame=int(np.flatnonzero(np.diff(time) <= 0)[0]) + 1,
            field="time",
        )
    if np.isinf(pos).any():
        raise InputError(
            "positions hold inf (use NaN for missing markers)",
            path=p,
            frame=int(np.flatnonzero(np.isinf(pos).any(axis=(1, 2)))[0]),
            field="positions",
        )
    if data_rate is None:
        if n_frames < 2:
            raise InputError("data_rate is needed for a single frame", path=p, field="data_rate")
        data_rate = 1.0 / float(np.median(np.diff(time)))
    data_rate = float(data_rate)
    if not (math.isfinite(data_rate) and data_rate > 0):
        raise InputError(f"data_rate must be positive, got {data_rate}", path=p, field="data_rate")
    if name is None:
        name = os.path.basename(p)
    if any(c in str(name) for c in "\r\n"):
        raise InputError("name must be one line", path=p, field="name")

    values = pos * _UNITS_PER_METRE[units] if units != "m" else pos
    nan = np.isnan(values)
    partly = nan.any(axis=2) & ~nan.all(axis=2)  # (T, M): written as 'nan', see module doc
    values = values.reshape(n_frames, 3 * len(names))
    rate = _fmt_rate(data_rate)
    n_m = len(names)
    head = [
        f"PathFileType\t4\t(X/Y/Z)\t{name}",
        "\t".join(_HEADER_KEYS),
        f"{rate}\t{rate}\t{n_frames}\t{n_m}\t{units}\t{rate}\t1\t{n_frames}",
        "Frame#\tTime\t" + "".join(f"{nm}\t\t\t" for nm in names),
        "\t\t" + "".join(f"X{k}\tY{k}\tZ{k}\t" for k in range(1, n_m + 1)),
        "",
    ]
    lead = [f"{k}\t{t!r}\t" for k, t in enumerate(time.tolist(), start=1)]
    body = _format_rows(values, blank_nan=True)
    for r in np.flatnonzero(partly.any(axis=1)).tolist():
        cells: list[str] = []
        for xyz in values[r].reshape(-1, 3).tolist():
            missing = all(math.isnan(v) for v in xyz)
            cells += ["", "", ""] if missing else [repr(v) for v in xyz]
        body[r] = "\t".join(cells)
    with atomic_open(p, "w") as fh:
        fh.write("\n".join(head) + "\n")
        fh.write("".join(f"{a}{b}\t\n" for a, b in zip(lead, body, strict=True)))
    return Path(p)
