"""OpenSim Storage files (``.mot`` motions, ``.sto`` results), read and written.

Layout understood by :func:`read_storage`::

    <name>                      optional first line without '='
    version=1                   key=value lines, any order (OpenSim 4 writes DataType=double,
    nRows=120                   version=3, OpenSimVersion=... instead; older SIMM-era files
    nColumns=5                  use 'datarows 120' / 'datacolumns 5'); free text is ignored
    inDegrees=yes
    endheader
    time    q1  q2  q3  q4      labels, tab or whitespace separated, first is 'time'
    0.000   ...                 numeric rows

``nColumns``/``datacolumns`` count the time column (OpenSim's convention). A header row count
that disagrees with the data is ignored (the rows are trusted); a column count that disagrees
with the label row is an error. So are a file without data rows, time that is not finite or
does not increase strictly, a finite value beyond :data:`STORAGE_MAX_ABS` (NaN and inf are
read as written) and a last line without line end that is cut short; each error names the
file, the line and the column.

OpenSim quirk handled by :func:`write_storage`: OpenSim 4.6's ``Storage`` parses ``version=1``
files with its legacy reader, which cannot read ``nan``/``inf`` and silently stops at the first
such row. Files holding non-finite values are therefore written with ``version=3``, which makes
``Storage`` go through ``STOFileAdapter`` (reads ``nan`` fine); finite files keep ``version=1``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_open

__all__ = ["StorageData", "read_storage", "write_storage"]


# --------------------------------------------------------------------------------------------
# helpers shared with trc.py
# --------------------------------------------------------------------------------------------


def _read_lines(path: str | os.PathLike[str], what: str) -> tuple[str, list[str]]:
    """Return (path as str, lines) with any line ending (LF, CRLF, CR) and a UTF-8 BOM removed.

    Only ``\\n``, ``\\r\\n`` and ``\\r`` end lines, so line numbers match what an editor shows.
    """
    p = os.fspath(path)
    try:
        raw = Path(p).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} file: {e.strerror or e}", path=p) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if text.startswith("\ufeff"):
        text = text[1:]
    return p, text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _fill_empty_fields(text: str, token: str) -> str:
    """Write ``token`` into every empty field of tab-separated ``text`` (lines joined by LF)."""
    text = "\n" + text + "\n"
    text = text.replace("\n\t", f"\n{token}\t").replace("\t\n", f"\t{token}\n")
    # two passes: a run of k tabs holds k-1 empty fields, one pass fills every other one
    text = text.replace("\t\t", f"\t{token}\t").replace("\t\t", f"\t{token}\t")
    return text[1:-1]


def _parse_float_rows(
    rows: list[str],
    line_numbers: Sequence[int],
    ncols: int,
    column_name: Callable[[int], str],
    path: str,
    *,
    allow_empty: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse tab-separated rows, each holding exactly ``ncols`` fields, into (len(rows), ncols).

    Returns ``(values, empty)``: ``empty`` marks the empty (or blank) fields, which hold NaN in
    ``values``; it is None when there are none. Empty fields are an error unless
    ``allow_empty``. The bulk is handed to numpy's C parser; only when that fails is the file
    parsed field by field in Python, which locates the first bad field and reports it with its
    1-based line number and column name.
    """
    if not rows:
        return np.zeros((0, ncols), np.float64), None
    text = "\n".join(rows)
    has_empty = "\t\t" in text or "\n\t" in text or "\t\n" in text
    has_empty = has_empty or rows[0].startswith("\t") or rows[-1].endswith("\t")
    # empty fields become 'inf' for numpy, told apart from real values afterwards; a file that
    # spells out infinities somewhere takes the slow path instead
    # ('f' is in every spelling of infinity and in no other number; memchr makes this cheap)
    fast = not has_empty or (allow_empty and "f" not in text and "F" not in text)
    if fast:
        if has_empty:
            text = _fill_empty_fields(text, "inf")
        try:
            out = np.loadtxt(
                io.StringIO(text),
                delimiter="\t",
                comments=None,
                dtype=np.float64,
                ndmin=2,
                quotechar=None,
            )
        except ValueError:
            pass
        else:
            if out.shape == (len(rows), ncols):
                if not has_empty:
                    return out, None
                empty = np.isposinf(out)
                out[empty] = np.nan
                return out, empty
    return _parse_rows_slowly(rows, line_numbers, column_name, path, allow_empty=allow_empty)


def _parse_rows_slowly(
    rows: list[str],
    line_numbers: Sequence[int],
    column_name: Callable[[int], str],
    path: str,
    *,
    allow_empty: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Field-by-field parse: raises on the first bad field (file, line, column name)."""
    shape = (len(rows), rows[0].count("\t") + 1)
    out = np.empty(shape, np.float64)
    empty = np.zeros(shape, bool)
    for r, (row, lineno) in enumerate(zip(rows, line_numbers, strict=True)):
        for j, cell in enumerate(row.split("\t")):
            s = cell.strip()
            if not s:
                if allow_empty:
                    out[r, j] = np.nan
                    empty[r, j] = True
                    continue
                raise InputError("empty value", path=path, line=lineno, field=column_name(j))
            try:
                out[r, j] = float(s)
            except ValueError:
                raise InputError(
                    f"not a number: {s!r}", path=path, line=lineno, field=column_name(j)
                ) from None
            # Python's float() takes '1_000' and non-ASCII digits ('\u0661\u0662' is 12);
            # OpenSim and numpy's loadtxt do not
            if "_" in s or not s.isascii():
                raise InputError(
                    f"not a number: {s!r}", path=path, line=lineno, field=column_name(j)
                )
    return out, (empty if empty.any() else None)


def _refuse_cut_last_line(lines: list[str], last_row: int, ncols: int, path: str) -> None:
    """Refuse a last data row that looks cut short by a truncated copy or write.

    ``lines`` are the file's lines (``_read_lines``), ``last_row`` the 0-based index of the
    last data row. Only a row that ends the file *without* a line end can be cut: refused when
    it has fewer fields than ``ncols`` (trailing empty fields included) or when its last value
    ends in ``.`` (``72.`` left of ``72.639``, which would otherwise read as 72). A cut that
    leaves a complete-looking number (``72.6``) cannot be told from data and is read as is.
    """
    if last_row != len(lines) - 1 or not lines[last_row].strip():
        return  # the file ends with a line end (split leaves '' last) or the row is not last
    raw = lines[last_row].rstrip(" \r")
    fields = raw.split("\t") if "\t" in raw else raw.split()
    last = next((f.strip() for f in reversed(fields) if f.strip()), "")
    if len(fields) < ncols:
        why = f"only {len(fields)} of {ncols} fields"
    elif last.endswith("."):
        why = f"its last value is {last!r}"
    else:
        return
    raise InputError(
        f"the last line has no line end and {why}: the file looks cut short (a truncated copy "
        "or write); restore the whole file",
        path=path,
        line=last_row + 1,
    )


def _first_bad_value(values: np.ndarray, limit: float, *, allow_inf: bool):
    """(row, column) of the first value (row-major) that is inf (unless ``allow_inf``) or
    finite with magnitude above ``limit``; NaN is fine. None when there is none."""
    big = np.abs(values) > limit
    if allow_inf:
        big &= np.isfinite(values)
    if not big.any():
        return None
    r, c = np.argwhere(big)[0]
    return int(r), int(c)


def _bad_value_message(v: float, limit: float, unit: str = "") -> str:
    if not np.isfinite(v):
        return f"value {float(v)!r} is not a finite number"
    return f"absurd value {v:.6g}{unit} (more than {limit:g}{unit} in magnitude)"


def _format_rows(mat: np.ndarray, blank_nan: bool = False) -> list[str]:
    """Rows of ``mat`` as tab-joined shortest round-trip reprs (exact when read back).

    ``blank_nan`` writes NaN as an empty field (safe: no other repr contains 'nan')."""
    out = ["\t".join(map(repr, r)) for r in mat.tolist()]
    if blank_nan:
        out = [r.replace("nan", "") if "nan" in r else r for r in out]
    return out


# --------------------------------------------------------------------------------------------
# data type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageData:
    """An OpenSim Storage table: ``values[:, k]`` is the column labelled ``labels[k]``."""

    labels: tuple[str, ...]  # column labels, 'time' excluded
    time: np.ndarray  # (T,) float64
    values: np.ndarray  # (T, C) float64
    in_degrees: bool | None  # header inDegrees=yes/no; None when absent
    name: str  # first header line ('' when the file starts with key=value lines)
    header: dict[str, str] = field(default_factory=dict)  # every key=value header line
    path: str | None = None

    def column(self, label: str) -> np.ndarray:
        """The values of column ``label`` ('time' gives the time column)."""
        try:
            return self.values[:, self.labels.index(label)]
        except ValueError:
            pass
        if label.lower() == "time":
            return self.time
        shown = ", ".join(self.labels[:12]) + (", ..." if len(self.labels) > 12 else "")
        raise InputError(
            f"no column labelled '{label}' (columns: {shown})", path=self.path, field=label
        )


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

_LEGACY_KEYS = ("datarows", "datacolumns", "range")

# Largest magnitude of a finite value a Storage file may hold. No quantity OpenSim writes in SI
# units (angles, lengths, forces, moments, powers, activations) comes near 1e15; a value beyond
# it is a corrupt number, and its square overflows float64 further down (above 1e154). NaN and
# +-inf stay allowed: OpenSim writes them on purpose (missing values, unbounded quantities) and
# the code that uses a column checks it is finite where it must be.
STORAGE_MAX_ABS = 1e15
# Largest |time| in seconds (TRC and Storage): 1e10 s is 317 years, room for absolute Unix
# timestamps (1.7e9 s) that some exporters write; beyond it time steps lose their precision.
TIME_MAX_ABS = 1e10


def _check_time(time: np.ndarray, line_numbers: Sequence[int], path: str, field: str) -> None:
    """Time must be finite, |t| <= TIME_MAX_ABS, and increase strictly from row to row (a
    repeated, swapped or decreasing time is refused at the first row where it stops
    increasing: OpenSim refuses decreasing times, and a repeated one leaves the sampling rate
    and the order of the frames undefined)."""
    bad = ~(np.abs(time) <= TIME_MAX_ABS)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        why = "missing or not finite" if not np.isfinite(time[r]) else f"absurd ({time[r]:.6g} s)"
        raise InputError(f"time is {why}", path=path, line=line_numbers[r], field=field)
    step = np.diff(time)
    if step.size and not np.all(step > 0):
        r = int(np.flatnonzero(~(step > 0))[0]) + 1
        how = "repeats" if time[r] == time[r - 1] else "goes back"
        raise InputError(
            f"time {how}: {float(time[r])!r} s after {float(time[r - 1])!r} s on line "
            f"{line_numbers[r - 1]} "
            "(time must increase strictly from row to row)",
            path=path,
            line=line_numbers[r],
            field=field,
        )


def _header_int(header: dict[str, str], where: dict[str, int], keys: tuple[str, ...], p: str):
    """(key, value, line) of the first of ``keys`` present (case-insensitive), else None."""
    lower = {k.lower(): k for k in header}
    for key in keys:
        if key.lower() in lower:
            k = lower[key.lower()]
            try:
                return k, int(header[k].strip()), where[k]
            except ValueError:
                raise InputError(
                    f"{k} must be an integer, got {header[k]!r}", path=p, line=where[k], field=k
                ) from None
    return None


def read_storage(path: str | os.PathLike[str]) -> StorageData:
    """Read an OpenSim ``.mot``/``.sto`` file (Storage ``version=1`` or OpenSim 4.x STO)."""
    p, lines = _read_lines(path, "storage")
    if not any(s.strip() for s in lines):
        raise InputError("empty file", path=p, line=1)

    end = next((i for i, s in enumerate(lines) if s.strip().lower() == "endheader"), None)
    if end is None:
        last = max(i for i, s in enumerate(lines) if s.strip()) + 1
        raise InputError(
            f"no 'endheader' line (searched lines 1-{last}); not an OpenSim Storage file?",
            path=p,
            line=last,
        )

    header: dict[str, str] = {}
    where: dict[str, int] = {}
    name = ""
    for i, raw in enumerate(lines[:end]):
        s = raw.strip()
        if not s:
            continue
        if "=" in s:
            k, v = s.split("=", 1)
            header[k.strip()] = v.strip()
            where[k.strip()] = i + 1
            continue
        tokens = s.split()
        if tokens[0].lower() in _LEGACY_KEYS:
            header[tokens[0]] = " ".join(tokens[1:])
            where[tokens[0]] = i + 1
        elif i == 0:
            name = s
        # any other free-text line ("Units are S.I. units ...") is a comment

    in_degrees: bool | None = None
    for k, v in header.items():
        if k.lower() == "indegrees":
            flag = v.strip().lower()
            if flag in ("yes", "true", "1"):
                in_degrees = True
            elif flag in ("no", "false", "0"):
                in_degrees = False
            else:
                raise InputError(
                    f"inDegrees must be 'yes' or 'no', got {v!r}", path=p, line=where[k], field=k
                )
        elif k.lower() == "datatype" and v.strip().lower() != "double":
            raise InputError(
                f"only DataType=double is supported, got {v!r}", path=p, line=where[k], field=k
            )

    li = next((i for i in range(end + 1, len(lines)) if lines[i].strip()), None)
    if li is None:
        raise InputError("no column label row after 'endheader'", path=p, line=end + 2)
    label_line = lines[li].strip()
    labels = label_line.split("\t") if "\t" in label_line else label_line.split()
    labels = [s.strip() for s in labels]
    if labels[0].lower() != "time":
        raise InputError(
            f"expected the column label row (first label 'time'), found {labels[0][:40]!r}",
            path=p,
            line=li + 1,
        )
    for j, lab in enumerate(labels):
        if not lab:
            raise InputError(f"empty column label (column {j + 1})", path=p, line=li + 1)
    seen: set[str] = set()
    for lab in labels:
        if lab in seen:
            raise InputError("duplicate column label", path=p, line=li + 1, field=lab)
        seen.add(lab)
    ncols = len(labels)

    declared = _header_int(header, where, ("nColumns", "datacolumns"), p)
    if declared is not None and declared[1] != ncols:
        k, n, at = declared
        raise InputError(
            f"header says {k}={n} but the label row (line {li + 1}) has {ncols} columns "
            "(time included)",
            path=p,
            line=at,
            field=k,
        )
    _header_int(header, where, ("nRows", "datarows"), p)  # must be an integer; value unused

    rows: list[str] = []
    numbers: list[int] = []
    for i in range(li + 1, len(lines)):
        s = lines[i].strip()
        if not s:
            continue
        if "\t" not in s:
            s = "\t".join(s.split())
        n = s.count("\t") + 1
        if n != ncols:
            raise InputError(
                f"wrong number of values: expected {ncols} (one per label), found {n}",
                path=p,
                line=i + 1,
            )
        rows.append(s)
        numbers.append(i + 1)
    if not rows:
        raise InputError("no data rows after the column labels (zero frames)", path=p, line=li + 2)
    _refuse_cut_last_line(lines, numbers[-1] - 1, ncols, p)

    data, _ = _parse_float_rows(rows, numbers, ncols, lambda j: labels[j], p, allow_empty=False)
    _check_time(data[:, 0], numbers, p, labels[0])
    bad = _first_bad_value(data[:, 1:], STORAGE_MAX_ABS, allow_inf=True)
    if bad is not None:
        r, c = bad
        raise InputError(
            _bad_value_message(data[r, c + 1], STORAGE_MAX_ABS),
            path=p,
            line=numbers[r],
            field=labels[c + 1],
        )
    return StorageData(
        labels=tuple(labels[1:]),
        time=np.ascontiguousarray(data[:, 0]),
        values=np.ascontiguousarray(data[:, 1:]),
        in_degrees=in_degrees,
        name=name,
        header=header,
        path=p,
    )


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_storage(
    path: str | os.PathLike[str],
    labels: Sequence[str],
    time,
    values,
    *,
    in_degrees: bool | None,
    name: str = "simspine-jax",
    kind: str = "mot",
) -> Path:
    """Write an OpenSim Storage file (``kind`` 'mot' or 'sto'; same layout). Atomic.

    Header: ``name``, ``version=1`` (``version=3`` when a value is NaN/inf, see the module
    docstring), ``nRows``, ``nColumns`` (time included), ``inDegrees`` (omitted when None),
    ``endheader``; then ``time<TAB>labels...`` and rows of shortest round-trip decimals, so
    OpenSim reads back bit-identical doubles. Returns the path written.
    """
    p = os.fspath(path)
    if kind not in ("mot", "sto"):
        raise InputError(f"kind must be 'mot' or 'sto', got {kind!r}", path=p, field="kind")
    labels = [str(s) for s in labels]
    time = np.asarray(time, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if time.ndim != 1:
        raise InputError(f"time must be 1-D, got shape {time.shape}", path=p, field="time")
    if values.ndim == 1 and len(labels) == 1:
        values = values[:, None]
    if values.shape != (time.shape[0], len(labels)):
        raise InputError(
            f"values has shape {values.shape}, expected (len(time), len(labels)) = "
            f"({time.shape[0]}, {len(labels)})",
            path=p,
            field="values",
        )
    if not np.all(np.isfinite(time)):
        bad = int(np.flatnonzero(~np.isfinite(time))[0])
        raise InputError("time is not finite", path=p, frame=bad, field="time")
    seen: set[str] = set()
    for lab in labels:
        if not lab or any(c in lab for c in "\t\r\n") or lab != lab.strip():
            raise InputError(
                "column labels must be non-empty, without tabs, newlines or surrounding spaces",
                path=p,
                field=repr(lab),
            )
        if lab.lower() == "time":
            raise InputError(
                "'time' is written automatically; not a value label", path=p, field=lab
            )
        if lab in seen:
            raise InputError("duplicate column label", path=p, field=lab)
        seen.add(lab)
    name = str(name).strip() or "simspine-jax"
    if "=" in name or "\n" in name or "\r" in name or name.lower() == "endheader":
        raise InputError("name must be one line without '='", path=p, field="name")

    finite = bool(np.all(np.isfinite(values)))
    head = [
        name,
        "version=1" if finite else "version=3",
        f"nRows={time.shape[0]}",
        f"nColumns={len(labels) + 1}",
    ]
    if in_degrees is not None:
        head.append(f"inDegrees={'yes' if in_degrees else 'no'}")
    head += ["endheader", "\t".join(["time", *labels])]
    body = _format_rows(np.concatenate([time[:, None], values], axis=1))
    with atomic_open(p, "w") as fh:
        fh.write("\n".join(head) + "\n")
        if body:
            fh.write("\n".join(body) + "\n")
    return Path(p)
