"""TRC marker files (OpenSim / Pose2Sim layout), read in any length unit, returned in metres."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_open

UNIT_TO_M = {"m": 1.0, "mm": 1e-3, "cm": 1e-2, "meters": 1.0, "millimeters": 1e-3}


@dataclass(frozen=True)
class TRCData:
    marker_names: tuple[str, ...]
    time: np.ndarray  # (T,)
    frame_numbers: np.ndarray  # (T,)
    positions: np.ndarray  # (T, M, 3) metres, NaN = missing
    data_rate: float
    camera_rate: float
    orig_units: str
    path: str | None = None


def _lines(path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read TRC file: {e}", path=str(path)) from e
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_trc(path) -> TRCData:
    """Read a TRC file. Header: 5 lines (PathFileType, keys, values, names, X1 Y1 Z1 ...)."""
    p = str(path)
    lines = _lines(path)
    if not any(s.strip() for s in lines):
        raise InputError("empty TRC file", path=p)
    if len(lines) < 5:
        raise InputError("TRC header needs 5 lines", path=p, line=len(lines))
    keys = lines[1].strip().split("\t")
    vals = lines[2].strip().split("\t")
    header = dict(zip([k.strip() for k in keys], [v.strip() for v in vals], strict=False))
    if "Units" not in header:
        raise InputError("no 'Units' in the header (line 2/3)", path=p, line=2)
    units = header["Units"]
    if units.lower() not in UNIT_TO_M:
        raise InputError(f"unknown units '{units}' (m, mm or cm)", path=p, line=3, field="Units")
    try:
        rate = float(header.get("DataRate", "nan"))
        cam = float(header.get("CameraRate", rate))
    except ValueError as e:
        raise InputError(f"bad DataRate/CameraRate: {e}", path=p, line=3) from None
    name_cells = lines[3].rstrip("\n").split("\t")
    if len(name_cells) < 3 or name_cells[0].strip().lower() not in ("frame#", "frame"):
        raise InputError("line 4 must start with 'Frame#\\tTime'", path=p, line=4)
    names = [c.strip() for c in name_cells[2:] if c.strip()]
    if not names:
        raise InputError("no marker names on line 4", path=p, line=4)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"duplicate marker names {sorted(dup)}", path=p, line=4)
    M = len(names)
    scale = UNIT_TO_M[units.lower()]
    rows, lnums = [], []
    for i, ln in enumerate(lines[5:], start=6):
        if not ln.strip():
            continue
        cells = ln.rstrip("\t ").split("\t") if "\t" in ln else ln.split()
        if len(cells) > 2 + 3 * M:
            extra = [c for c in cells[2 + 3 * M :] if c.strip()]
            if extra:
                raise InputError(
                    f"{len(cells)} values but {M} markers need at most {2 + 3 * M}",
                    path=p,
                    line=i,
                )
            cells = cells[: 2 + 3 * M]
        cells = cells + [""] * (2 + 3 * M - len(cells))
        row = np.empty(2 + 3 * M)
        for j, c in enumerate(cells):
            c = c.strip()
            if c == "" or c.lower() == "nan":
                row[j] = np.nan
                continue
            try:
                row[j] = float(c)
            except ValueError:
                col = (
                    ("Frame#", "Time")[j]
                    if j < 2
                    else f"{names[(j - 2) // 3]}.{'XYZ'[(j - 2) % 3]}"
                )
                raise InputError(f"not a number: {c!r}", path=p, line=i, field=col) from None
        rows.append(row)
        lnums.append(i)
    if not rows:
        raise InputError("no data rows", path=p, line=len(lines))
    data = np.vstack(rows)
    if np.any(~np.isfinite(data[:, 1])):
        bad = int(np.nonzero(~np.isfinite(data[:, 1]))[0][0])
        raise InputError("missing time value", path=p, line=lnums[bad], field="Time")
    pos = data[:, 2:].reshape(-1, M, 3) * scale
    return TRCData(
        marker_names=tuple(names),
        time=data[:, 1].copy(),
        frame_numbers=np.nan_to_num(data[:, 0], nan=-1).astype(np.int64),
        positions=pos,
        data_rate=rate,
        camera_rate=cam,
        orig_units=units,
        path=p,
    )


def write_trc(path, marker_names, time, positions_m, *, units="m", data_rate=None, name=None):
    """Write a TRC (OpenSim 4 layout); NaN is written as an empty field. Atomic."""
    if units not in ("m", "mm"):
        raise InputError(f"units must be 'm' or 'mm', got {units!r}", field="units")
    time = np.asarray(time, np.float64)
    pos = np.asarray(positions_m, np.float64) / UNIT_TO_M[units]
    T, M = pos.shape[:2]
    if len(marker_names) != M or time.shape != (T,):
        raise InputError("marker_names/time do not match positions' shape")
    if data_rate is None:
        data_rate = 1.0 / float(np.median(np.diff(time))) if T > 1 else 1.0
    name = name or Path(path).name
    out = [
        f"PathFileType\t4\t(X/Y/Z)\t{name}",
        "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\t"
        "OrigDataStartFrame\tOrigNumFrames",
        f"{data_rate:g}\t{data_rate:g}\t{T}\t{M}\t{units}\t{data_rate:g}\t1\t{T}",
        "Frame#\tTime\t" + "\t\t\t".join(marker_names) + "\t\t",
        "\t\t" + "\t".join(f"X{i + 1}\tY{i + 1}\tZ{i + 1}" for i in range(M)),
        "",
    ]
    flat = pos.reshape(T, -1)
    for t in range(T):
        cells = ["" if not np.isfinite(v) else repr(float(v)) for v in flat[t]]
        out.append(f"{t + 1}\t{time[t]!r}\t" + "\t".join(cells))
    with atomic_open(path) as f:
        f.write("\n".join(out) + "\n")
    return Path(path)
