"""OpenSim Storage files (.mot coordinates, .sto marker errors / locations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_open


@dataclass(frozen=True)
class StorageData:
    labels: tuple[str, ...]  # columns without 'time'
    time: np.ndarray  # (T,)
    values: np.ndarray  # (T, C)
    in_degrees: bool | None
    name: str
    header: dict = field(default_factory=dict)
    path: str | None = None

    def column(self, label: str) -> np.ndarray:
        if label not in self.labels:
            raise InputError(f"no column '{label}'", path=self.path, field=label)
        return self.values[:, self.labels.index(label)]


def read_storage(path) -> StorageData:
    p = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read storage file: {e}", path=p) from e
    lines = text.replace("\r\n", "\n").split("\n")
    if not any(s.strip() for s in lines):
        raise InputError("empty file", path=p)
    end = next((i for i, s in enumerate(lines) if s.strip().lower() == "endheader"), None)
    if end is None:
        raise InputError("no 'endheader' line", path=p)
    header = {}
    for s in lines[:end]:
        if "=" in s:
            k, v = s.split("=", 1)
            header[k.strip()] = v.strip()
    name = lines[0].strip() if "=" not in lines[0] else ""
    deg = header.get("inDegrees")
    in_degrees = None if deg is None else deg.lower() == "yes"
    li = next((i for i in range(end + 1, len(lines)) if lines[i].strip()), None)
    if li is None:
        raise InputError("no column label row after endheader", path=p, line=end + 2)
    labels = lines[li].strip().split("\t") if "\t" in lines[li] else lines[li].split()
    labels = [x.strip() for x in labels]
    if labels[0].lower() != "time":
        raise InputError(f"first column must be 'time', got {labels[0]!r}", path=p, line=li + 1)
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise InputError(f"duplicate column labels {sorted(dup)}", path=p, line=li + 1)
    ncol = header.get("nColumns", header.get("datacolumns"))
    if ncol is not None and ncol.isdigit() and int(ncol) != len(labels):
        raise InputError(
            f"header says nColumns={ncol} but the label row has {len(labels)} columns",
            path=p,
            line=li + 1,
        )
    rows = []
    for i in range(li + 1, len(lines)):
        s = lines[i]
        if not s.strip():
            continue
        cells = s.strip().split("\t") if "\t" in s else s.split()
        if len(cells) != len(labels):
            raise InputError(
                f"expected {len(labels)} columns, found {len(cells)}", path=p, line=i + 1
            )
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            bad = next(j for j, c in enumerate(cells) if not _isfloat(c))
            raise InputError(
                f"not a number: {cells[bad]!r}", path=p, line=i + 1, field=labels[bad]
            ) from None
    data = np.array(rows, np.float64).reshape(-1, len(labels))
    return StorageData(
        labels=tuple(labels[1:]),
        time=data[:, 0].copy(),
        values=data[:, 1:].copy(),
        in_degrees=in_degrees,
        name=name,
        header=header,
        path=p,
    )


def _isfloat(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


def write_storage(path, labels, time, values, *, in_degrees, name="simspine-jax", kind="mot"):
    """Write an OpenSim 4 Storage file that OpenSim and the GUI read back. Atomic."""
    time = np.asarray(time, np.float64)
    values = np.asarray(values, np.float64).reshape(time.shape[0], -1)
    if values.shape[1] != len(labels):
        raise InputError(f"{len(labels)} labels for {values.shape[1]} columns")
    head = [name, "version=1", f"nRows={time.shape[0]}", f"nColumns={len(labels) + 1}"]
    if in_degrees is not None:
        head.append(f"inDegrees={'yes' if in_degrees else 'no'}")
    head += ["endheader", "time\t" + "\t".join(labels)]
    body = [
        "\t".join(f"{v:.12g}" for v in np.concatenate([[t], row]))
        for t, row in zip(time, values, strict=True)
    ]
    with atomic_open(path) as f:
        f.write("\n".join(head + body) + "\n")
    return Path(path)
