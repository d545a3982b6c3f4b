"""Property-based fuzzing of every parser (issue 9): TRC, Storage (.mot/.sto), .osim, IK setup
XML and the exported .npz kinematic tree.

Properties, each a hypothesis strategy plus a check function (tests/test_fuzz_parsers.py runs
the same ones with a small budget in CI; this script runs them with a large one):

* ``*_roundtrip``: random valid data written by our writer reads back exactly (TRC in m, mm
  and cm with gaps; Storage with NaN/inf; a kinematic tree with random geometry);
  ``osim_random``: a random valid model (1-4 bodies, every joint type, random ranges, flags,
  offsets and markers) exports, and every number written in it reaches the loaded tree
  exactly.
* ``*_mutated``: a random valid file (or a shipped one) mutated by byte flips, truncation,
  deleted, duplicated and swapped lines, deleted and duplicated fields, swapped columns, odd
  numbers (1e308, nan, inf, 1e-320, '72.', '1_000', '0x10', Unicode digits...) and odd words,
  and for the .npz, replaced, missing and extra entries, odd dtypes and shapes, out-of-range
  indices and broken meta JSON. The reader must either return a result that satisfies the
  format's invariants (finite strictly increasing time, values within their bounds, shapes that
  agree; for .osim, an export that passes the .npz loader's typed check; for .npz, a tree
  whose topology tables compute) or raise our :class:`~simspine_jax.errors.InputError`. Any
  other exception is a failure.

Run by hand (needs the ``test`` extra for hypothesis)::

    python experiments/fuzz_parsers.py                 # 2,000 examples per property
    python experiments/fuzz_parsers.py --examples 20000 --only trc_mutated npz_mutated

Prints one JSON line per property: examples run, how many were refused with InputError and
how many were read, seconds, and ``failure`` (the falsifying example's exception, or null).
Exit code 1 when a property fails.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PACKAGE_DATA = ROOT / "simspine_jax" / "data"

# tallies of the last run of each check (read / refused), for the JSON lines
TALLY: Counter = Counter()
_TMP = Path(tempfile.mkdtemp(prefix="simspine-fuzz-"))


def _file(name: str, raw: bytes) -> Path:
    p = _TMP / name
    p.write_bytes(raw)
    return p


# --------------------------------------------------------------------------------------------
# mutations
# --------------------------------------------------------------------------------------------

ODD_NUMBERS = (
    "1e308",
    "-1e308",
    "1e300",
    "1e400",
    "-1e30",
    "1e-320",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-Infinity",
    "72.",
    ".",
    "-",
    "+",
    "1e",
    "1_000",
    "0x10",
    "\u0661\u0662",  # Arabic-Indic digits: Python's float() reads them
    "\uff11",  # a full-width 1
    "",
    " ",
    "-0",
    "0",
    "1e15",
    "9007199254740993",
    "3.14abc",
)
ODD_WORDS = (
    "",
    "perhaps",
    "true",
    "false",
    "TRUE",
    "0",
    "-1",
    "nan",
    "inf",
    "Unassigned",
    "ground",
    "..",
    "../..",
    "/",
    "&amp;",
    "x" * 300,
    "\u00e9\u00e8",
    "a&#10;b",  # a line break inside a name or value
    "&#9;",
)
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)
_WORD = re.compile(rb"(?<=>)[A-Za-z_][\w./-]*(?=<)|(?<=\")[A-Za-z_][\w./-]*(?=\")")

OPS = (
    "flip",
    "truncate",
    "delete_line",
    "duplicate_line",
    "swap_lines",
    "delete_field",
    "duplicate_field",
    "swap_columns",
    "odd_number",
    "odd_word",
    "tabs_to_spaces",
)


def _fields(line: bytes) -> tuple[list[bytes], bytes]:
    sep = b"\t" if b"\t" in line else b" "
    return line.split(sep), sep


def mutate(raw: bytes, ops) -> bytes:
    """Apply ``ops`` [(name, a, b, c), ...] (integers pick positions) to the bytes of a file."""
    for name, a, b, c in ops:
        lines = raw.split(b"\n")
        k = a % max(len(lines), 1)
        if name == "flip" and raw:
            i = a % len(raw)
            raw = raw[:i] + bytes([b % 256]) + raw[i + 1 :]
        elif name == "truncate":
            raw = raw[: a % (len(raw) + 1)]
        elif name == "delete_line" and lines:
            raw = b"\n".join(lines[:k] + lines[k + 1 :])
        elif name == "duplicate_line" and lines:
            raw = b"\n".join(lines[: k + 1] + lines[k:])
        elif name == "swap_lines" and len(lines) > 1:
            j = (k + 1) % len(lines)
            lines[k], lines[j] = lines[j], lines[k]
            raw = b"\n".join(lines)
        elif name in ("delete_field", "duplicate_field") and lines:
            cells, sep = _fields(lines[k])
            j = b % len(cells)
            cells = (
                cells[:j] + cells[j + 1 :] if name == "delete_field" else cells[: j + 1] + cells[j:]
            )
            lines[k] = sep.join(cells)
            raw = b"\n".join(lines)
        elif name == "swap_columns" and lines:
            out = []
            for i, line in enumerate(lines):
                cells, sep = _fields(line)
                if i >= k and len(cells) > 1:
                    x, y = b % len(cells), c % len(cells)
                    cells[x], cells[y] = cells[y], cells[x]
                out.append(sep.join(cells))
            raw = b"\n".join(out)
        elif name == "odd_number":
            hits = list(_NUMBER.finditer(raw))
            if hits:
                m = hits[a % len(hits)]
                odd = ODD_NUMBERS[b % len(ODD_NUMBERS)].encode()
                raw = raw[: m.start()] + odd + raw[m.end() :]
        elif name == "odd_word":
            hits = list(_WORD.finditer(raw))
            if hits:
                m = hits[a % len(hits)]
                raw = raw[: m.start()] + ODD_WORDS[b % len(ODD_WORDS)].encode() + raw[m.end() :]
        elif name == "tabs_to_spaces" and lines:
            lines[k] = lines[k].replace(b"\t", b" " * (1 + b % 3))
            raw = b"\n".join(lines)
    return raw


def _refused(e, raw: bytes) -> None:
    """Checks on an InputError of a text parser: one line, and a line number inside the file
    (lines end at LF, CRLF or CR, as the readers count them; one past the end for "the file
    ends before ...")."""
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    n_lines = len(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))
    assert e.line is None or 1 <= e.line <= n_lines + 1, (e.line, n_lines, msg)
    TALLY["refused"] += 1


def ops_strategy(max_ops: int = 4):
    u = st.integers(0, 2**31)
    return st.lists(st.tuples(st.sampled_from(OPS), u, u, u), min_size=1, max_size=max_ops)


# --------------------------------------------------------------------------------------------
# TRC
# --------------------------------------------------------------------------------------------

_NAME = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-."),
    min_size=1,
    max_size=8,
).filter(lambda s: s.lower() not in ("time", "frame#", "frame"))


@st.composite
def trc_data(draw):
    """(names, time, positions in metres with whole and partial gaps, units)."""
    n_m = draw(st.integers(1, 5))
    n_t = draw(st.integers(1, 6))
    names = draw(st.lists(_NAME, min_size=n_m, max_size=n_m, unique=True))
    coord = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)
    pos = np.array(
        draw(st.lists(coord, min_size=3 * n_m * n_t, max_size=3 * n_m * n_t)), np.float64
    ).reshape(n_t, n_m, 3)
    gaps = draw(st.lists(st.tuples(st.integers(0, n_t - 1), st.integers(0, n_m - 1),
                                   st.integers(0, 3)), max_size=4))  # fmt: skip
    for t, m, axis in gaps:
        if axis == 3:
            pos[t, m] = np.nan
        else:
            pos[t, m, axis] = np.nan
    start = draw(st.floats(-100.0, 100.0, allow_nan=False))
    steps = draw(st.lists(st.floats(1e-4, 1.0), min_size=n_t, max_size=n_t))
    time_s = start + np.cumsum(steps)
    if not np.all(np.diff(time_s) > 0):  # rounding could merge two times
        time_s = start + np.arange(1, n_t + 1) * 0.01
    units = draw(st.sampled_from(["m", "mm", "cm"]))
    return names, time_s, pos, units


def check_trc_roundtrip(data) -> None:
    from simspine_jax.io import read_trc, write_trc

    names, time_s, pos, units = data
    rate = None if len(time_s) > 1 else 100.0
    p = write_trc(_TMP / "rt.trc", names, time_s, pos, units=units, data_rate=rate)
    d = read_trc(p)
    factor = {"m": 1.0, "cm": 100.0, "mm": 1000.0}[units]
    assert d.marker_names == tuple(names)
    np.testing.assert_array_equal(d.time, time_s)
    expect = pos if units == "m" else (pos * factor) / factor
    np.testing.assert_array_equal(d.positions, expect)
    TALLY["read"] += 1


def _trc_seed(data) -> bytes:
    from simspine_jax.io import write_trc

    names, time_s, pos, units = data
    rate = None if len(time_s) > 1 else 100.0
    return write_trc(
        _TMP / "seed.trc", names, time_s, pos, units=units, data_rate=rate
    ).read_bytes()


def check_trc_mutated(data, ops) -> None:
    """A mutated TRC reads into a valid TRCData or raises InputError."""
    from simspine_jax.errors import InputError
    from simspine_jax.io import read_trc
    from simspine_jax.io.trc import MAX_ABS_POSITION_M

    raw = mutate(_trc_seed(data), ops)
    try:
        d = read_trc(_file("m.trc", raw))
    except InputError as e:
        _refused(e, raw)
        return
    T, M = len(d.time), len(d.marker_names)
    assert T >= 1 and M >= 1 and len(set(d.marker_names)) == M
    assert all(n and "\t" not in n for n in d.marker_names)
    assert d.positions.shape == (T, M, 3) and d.positions.dtype == np.float64
    assert d.frame_numbers.shape == (T,)
    assert np.all(np.isfinite(d.time)) and np.all(np.diff(d.time) > 0)
    seen = d.positions[~np.isnan(d.positions)]
    assert np.all(np.abs(seen) <= MAX_ABS_POSITION_M)
    assert math.isfinite(d.data_rate) and d.data_rate > 0
    TALLY["read"] += 1


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------

_LABEL = _NAME.filter(lambda s: s.lower() != "time")


@st.composite
def storage_data(draw):
    n_c = draw(st.integers(1, 5))
    n_t = draw(st.integers(1, 6))
    labels = draw(st.lists(_LABEL, min_size=n_c, max_size=n_c, unique=True))
    value = st.one_of(
        st.floats(-1e15, 1e15, allow_nan=False),
        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324]),
    )
    values = np.array(
        draw(st.lists(value, min_size=n_c * n_t, max_size=n_c * n_t)), np.float64
    ).reshape(n_t, n_c)
    start = draw(st.floats(-1e3, 1e3, allow_nan=False))
    steps = draw(st.lists(st.floats(1e-6, 10.0), min_size=n_t, max_size=n_t))
    time_s = start + np.cumsum(steps)
    if not np.all(np.diff(time_s) > 0):
        time_s = start + np.arange(1, n_t + 1) * 0.01
    in_degrees = draw(st.sampled_from([None, True, False]))
    kind = draw(st.sampled_from(["mot", "sto"]))
    return labels, time_s, values, in_degrees, kind


def check_storage_roundtrip(data) -> None:
    from simspine_jax.io import read_storage, write_storage

    labels, time_s, values, in_degrees, kind = data
    p = write_storage(_TMP / f"rt.{kind}", labels, time_s, values, in_degrees=in_degrees, kind=kind)
    d = read_storage(p)
    assert d.labels == tuple(labels) and d.in_degrees is in_degrees
    np.testing.assert_array_equal(d.time, time_s)
    np.testing.assert_array_equal(d.values, values)
    TALLY["read"] += 1


def check_storage_mutated(data, ops) -> None:
    from simspine_jax.errors import InputError
    from simspine_jax.io import read_storage, write_storage
    from simspine_jax.io.storage import STORAGE_MAX_ABS

    labels, time_s, values, in_degrees, kind = data
    seed = write_storage(
        _TMP / f"seed.{kind}", labels, time_s, values, in_degrees=in_degrees, kind=kind
    )
    raw = mutate(seed.read_bytes(), ops)
    try:
        d = read_storage(_file(f"m.{kind}", raw))
    except InputError as e:
        _refused(e, raw)
        return
    T, C = len(d.time), len(d.labels)
    assert T >= 1 and d.values.shape == (T, C) and len(set(d.labels)) == C
    assert all(lab and "\t" not in lab for lab in d.labels)
    assert np.all(np.isfinite(d.time)) and np.all(np.diff(d.time) > 0)
    finite = d.values[np.isfinite(d.values)]
    assert np.all(np.abs(finite) <= STORAGE_MAX_ABS)
    TALLY["read"] += 1


# --------------------------------------------------------------------------------------------
# .osim
# --------------------------------------------------------------------------------------------

OSIM_SEEDS = ("two_link.osim", "joint_zoo.osim")


def check_osim_mutated(seed: str, ops) -> None:
    """A mutated .osim exports to a tree that passes the .npz loader's typed check, or raises
    ModelError (an InputError)."""
    from simspine_jax.errors import InputError
    from simspine_jax.export import read_osim
    from simspine_jax.model import load_tree, save_tree

    raw = mutate((DATA / seed).read_bytes(), ops)
    try:
        exported = read_osim(_file("m.osim", raw))
    except InputError as e:
        _refused(e, raw)
        return
    # the exporter's output must satisfy every check of the loader (an oracle written apart)
    tree = load_tree(save_tree(exported, _TMP / "m.npz"))
    assert tree.n_coord >= 1
    TALLY["read"] += 1


_N_COORDS = {
    "WeldJoint": 0,
    "PinJoint": 1,
    "SliderJoint": 1,
    "UniversalJoint": 2,
    "GimbalJoint": 3,
    "BallJoint": 3,
    "FreeJoint": 6,
}


@st.composite
def osim_model(draw):
    """A random valid OpenSim 4 model: a tree of 1-4 bodies, each joined to ground or an
    earlier body by a random joint type through a translated offset frame; coordinates with
    random defaults, ranges and flags; markers fixed on random bodies. Returns (xml, spec)."""
    num = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)
    n_b = draw(st.integers(1, 4))
    bodies, joints, coords, markers, parent_t = [], [], [], [], {}
    for i in range(n_b):
        parent = draw(st.sampled_from(["ground"] + bodies))
        kind = draw(st.sampled_from(sorted(_N_COORDS)))
        name = f"b{i}"
        t = [draw(num) for _ in range(3)]
        parent_t[name] = t
        cxml = []
        for k in range(_N_COORDS[kind]):
            lo, hi = sorted([draw(num), draw(num)])
            default, clamped, locked = draw(num), draw(st.booleans()), draw(st.booleans())
            coords.append((f"q{i}_{k}", default, lo, hi, clamped, locked))
            cxml.append(
                f'<Coordinate name="q{i}_{k}"><default_value>{default!r}</default_value>'
                f"<range>{lo!r} {hi!r}</range><clamped>{str(clamped).lower()}</clamped>"
                f"<locked>{str(locked).lower()}</locked></Coordinate>"
            )
        psock = "/ground" if parent == "ground" else f"/bodyset/{parent}"
        joints.append(
            f'<{kind} name="j{i}"><socket_parent_frame>p</socket_parent_frame>'
            f"<socket_child_frame>c</socket_child_frame>"
            f"<coordinates>{''.join(cxml)}</coordinates><frames>"
            f'<PhysicalOffsetFrame name="p"><socket_parent>{psock}</socket_parent>'
            f"<translation>{' '.join(map(repr, t))}</translation>"
            "<orientation>0 0 0</orientation></PhysicalOffsetFrame>"
            f'<PhysicalOffsetFrame name="c"><socket_parent>/bodyset/{name}</socket_parent>'
            "</PhysicalOffsetFrame></frames></" + kind + ">"
        )
        bodies.append(name)
    for m in range(draw(st.integers(0, 4))):
        loc = [draw(num) for _ in range(3)]
        markers.append((f"m{m}", draw(st.sampled_from(bodies)), loc))
    body_xml = [f'<Body name="{b}"><mass>1</mass></Body>' for b in draw(st.permutations(bodies))]
    marker_xml = [
        f'<Marker name="{m}"><socket_parent_frame>/bodyset/{b}</socket_parent_frame>'
        f"<location>{' '.join(map(repr, loc))}</location></Marker>"
        for m, b, loc in markers
    ]
    xml = (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<OpenSimDocument Version="40000">'
        '<Model name="random"><Ground name="ground"/>'
        f"<BodySet><objects>{''.join(body_xml)}</objects></BodySet>"
        f"<JointSet><objects>{''.join(joints)}</objects></JointSet>"
        f"<MarkerSet><objects>{''.join(marker_xml)}</objects></MarkerSet>"
        "</Model></OpenSimDocument>\n"
    )
    return xml, dict(coords=coords, markers=markers, parent_t=parent_t)


def check_osim_random(model) -> None:
    """A random valid model exports (or is refused only for having no coordinates), and every
    number written in it reaches the loaded tree exactly."""
    from simspine_jax.errors import ModelError
    from simspine_jax.export import read_osim
    from simspine_jax.model import load_tree, save_tree

    xml, spec = model
    try:
        exported = read_osim(_file("random.osim", xml.encode()))
    except ModelError as e:
        assert not spec["coords"] and "no coordinates" in str(e), str(e)
        TALLY["refused"] += 1
        return
    tree = load_tree(save_tree(exported, _TMP / "random.npz"))
    names = [c[0] for c in spec["coords"]]
    assert list(tree.coordinate_names) == names
    assert list(tree.independent_names) == [c[0] for c in spec["coords"] if not c[5]]
    np.testing.assert_array_equal(np.asarray(tree.coord_default), [c[1] for c in spec["coords"]])
    np.testing.assert_array_equal(
        np.asarray(tree.coord_range), np.array([c[2:4] for c in spec["coords"]]).reshape(-1, 2)
    )
    assert tree.topology.coord_clamped.tolist() == [c[4] for c in spec["coords"]]
    assert tree.topology.coord_locked.tolist() == [c[5] for c in spec["coords"]]
    assert list(tree.marker_names) == [m[0] for m in spec["markers"]]
    assert list(tree.meta["marker_bodies"]) == [m[1] for m in spec["markers"]]
    np.testing.assert_array_equal(
        np.asarray(tree.marker_offset), np.array([m[2] for m in spec["markers"]]).reshape(-1, 3)
    )
    parent = tree.topology.body_parent
    assert all(parent[i] < i for i in range(1, tree.n_body))
    for i, b in enumerate(tree.body_names[1:], start=1):
        np.testing.assert_array_equal(np.asarray(tree.joint_p_pf)[i], spec["parent_t"][b])
    TALLY["read"] += 1


# --------------------------------------------------------------------------------------------
# IK setup
# --------------------------------------------------------------------------------------------

SETUP_SEED = b"""<?xml version="1.0" encoding="UTF-8" ?>
<OpenSimDocument Version="40000">
  <InverseKinematicsTool name="fuzz">
    <model_file>model.osim</model_file>
    <constraint_weight>Inf</constraint_weight>
    <accuracy>1e-05</accuracy>
    <time_range>0.1 0.5</time_range>
    <report_errors>true</report_errors>
    <report_marker_locations>false</report_marker_locations>
    <coordinate_file>Unassigned</coordinate_file>
    <IKTaskSet>
      <objects>
        <IKMarkerTask name="tip"><apply>true</apply><weight>2</weight></IKMarkerTask>
        <IKMarkerTask name="mid"><apply>false</apply><weight>1</weight></IKMarkerTask>
        <IKCoordinateTask name="q1"><apply>true</apply><weight>0.1</weight>
          <value_type>manual_value</value_type><value>0.25</value></IKCoordinateTask>
        <IKCoordinateTask name="q2"><apply>true</apply><weight>1</weight>
          <value_type>default_value</value_type></IKCoordinateTask>
      </objects>
    </IKTaskSet>
  </InverseKinematicsTool>
</OpenSimDocument>
"""
SETUP_SEEDS = ("inline", "IK_Setup_SimSpine37.xml")


def check_ik_setup_mutated(seed: str, ops) -> None:
    from simspine_jax.errors import InputError
    from simspine_jax.ik_setup import VALUE_TYPES, read_ik_setup

    base = SETUP_SEED if seed == "inline" else (PACKAGE_DATA / seed).read_bytes()
    raw = mutate(base, ops)
    try:
        s = read_ik_setup(_file("setup.xml", raw))
    except InputError as e:
        _refused(e, raw)
        return
    assert math.isfinite(s.accuracy) and s.accuracy > 0
    if s.time_range is not None:
        t0, t1 = s.time_range
        assert not (math.isnan(t0) or math.isnan(t1)) and t0 <= t1
    assert all(not math.isnan(w) for w in s.marker_weights.values())
    for task in s.coordinate_tasks:
        assert task.value_type in VALUE_TYPES
        assert not math.isnan(task.weight) and not math.isnan(task.value)
    TALLY["read"] += 1


# --------------------------------------------------------------------------------------------
# .npz kinematic tree
# --------------------------------------------------------------------------------------------

NPZ_SEEDS = ("two_link", "simspine_default")
_SEED_BYTES: dict[str, bytes] = {}


def _npz_seed(seed: str) -> bytes:
    """The seed tree as an uncompressed .npz (byte flips then reach headers and data)."""
    if seed not in _SEED_BYTES:
        if seed == "two_link":
            from simspine_jax.export import read_osim
            from simspine_jax.model import save_tree

            src = save_tree(read_osim(DATA / "two_link.osim"), _TMP / "seed_two_link.npz")
        else:
            src = PACKAGE_DATA / "simspine_default.npz"
        with np.load(src) as z:
            arrays = {k: z[k] for k in z.files}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _SEED_BYTES[seed] = buf.getvalue()
    return _SEED_BYTES[seed]


def _entries(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw)) as z:
        return {k: z[k] for k in z.files}


def _odd_array(kind: int, like: np.ndarray, pick: int) -> np.ndarray:
    n = like.shape[0] if like.ndim else 1
    ints = (-2, -1, 0, 1, n - 1, n, 10**9, 2**62)
    floats = (np.nan, np.inf, -np.inf, 1e308, -0.0, 5e-324)

    def cast(v):  # wraps or saturates like a corrupted file would, never raises
        with np.errstate(all="ignore"):
            return np.array(v).astype(like.dtype)

    if kind == 0:  # one element moved to an odd value
        a = like.copy()
        if a.size:
            v = ints[pick % len(ints)] if a.dtype.kind in "iub" else floats[pick % len(floats)]
            a.reshape(-1)[pick % a.size] = cast(v)
        return a
    if kind == 1:  # another dtype
        dt = (np.int32, np.float32, np.float64, np.bool_, np.uint8, np.complex128, np.int64)
        with np.errstate(all="ignore"):
            return like.astype(dt[pick % len(dt)])
    if kind == 2:  # another shape
        shapes = ((), (0,), (n + 1,), like.shape[::-1], (*like.shape, 1), (n, 7))
        return np.zeros(shapes[pick % len(shapes)], like.dtype)
    if kind == 3:  # a row less
        return like[:-1] if like.ndim else like
    return np.full(like.shape, cast(ints[pick % len(ints)]), like.dtype)


_META_ODD = (None, 1, -1, 1.5, "x", "", [], {}, True, [1, 2], {"name": 3}, float("nan"))


def _mutate_meta(meta: dict, a: int, b: int, c: int) -> dict:
    keys = sorted(meta)
    key = keys[a % len(keys)]
    v = meta[key]
    if isinstance(v, list) and v and b % 3:
        i = c % len(v)
        item = v[i]
        if isinstance(item, dict) and item:
            sub = sorted(item)[b % len(item)]
            item = dict(item)
            if b % 2:
                del item[sub]
            else:
                item[sub] = _META_ODD[c % len(_META_ODD)]
            v = v[:i] + [item] + v[i + 1 :]
        else:
            v = v[:i] + [_META_ODD[b % len(_META_ODD)]] + v[i + 1 :]
        return dict(meta, **{key: v})
    if b % 5 == 0:
        return {k: w for k, w in meta.items() if k != key}
    return dict(meta, **{key: _META_ODD[c % len(_META_ODD)]})


NPZ_OPS = ("bytes", "replace", "drop", "extra", "meta", "object")


def mutate_npz(raw: bytes, ops) -> bytes:
    """Structural mutations of an .npz ("bytes" ones go through :func:`mutate`)."""
    for name, a, b, c in ops:
        if name == "bytes":
            return mutate(raw, [(OPS[a % 2], b, c, 0)])  # flip or truncate, then stop
        try:
            e = _entries(raw)
        except Exception:  # a previous op broke the archive: nothing structural left to do
            return raw
        keys = sorted(e)
        key = keys[a % len(keys)]
        if name == "replace":
            e[key] = _odd_array(b % 5, e[key], c)
        elif name == "drop":
            del e[key]
        elif name == "extra":
            e[f"extra_{b % 3}"] = np.zeros(3)
        elif name == "meta":
            try:
                meta = json.loads(e["meta_json"].tobytes())
            except (ValueError, KeyError):  # a previous op cut or dropped it
                return raw
            if not isinstance(meta, dict) or not meta:
                return raw
            meta = _mutate_meta(meta, a, b, c)
            text = json.dumps(meta) if c % 7 else json.dumps(meta)[: b % 50]
            e["meta_json"] = np.frombuffer(text.encode(), np.uint8)
        elif name == "object":
            e[key] = np.array([None, "x"], dtype=object)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for k, v in e.items():
                arr = io.BytesIO()
                np.save(arr, v, allow_pickle=True)
                z.writestr(f"{k}.npy", arr.getvalue())
        raw = buf.getvalue()
    return raw


def npz_ops_strategy(max_ops: int = 3):
    u = st.integers(0, 2**31)
    return st.lists(st.tuples(st.sampled_from(NPZ_OPS), u, u, u), min_size=1, max_size=max_ops)


def check_npz_mutated(seed: str, ops) -> None:
    from simspine_jax.errors import InputError
    from simspine_jax.model import load_tree

    raw = mutate_npz(_npz_seed(seed), ops)
    path = _file("m.npz", raw)
    try:
        tree = load_tree(path)
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and "allow_pickle" not in msg
        TALLY["refused"] += 1
        return
    # the topology tables FK and IK use compute on what the loader accepted
    topo = tree.topology
    tables = (topo.levels, topo.marker_ancestor, topo.jacobian_entries, topo.active_axes)
    assert tables[1].shape == (tree.n_marker, tree.n_body)
    # and so does `simspine-jax info`, which reads the meta JSON
    from simspine_jax.cli import model_info

    assert model_info(str(path)).startswith("model ")
    TALLY["read"] += 1


@st.composite
def npz_geometry(draw):
    """Random finite geometry for the two_link tree: (marker_offset, joint_p_pf, coord_default,
    body_scale) arrays."""
    f = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    return {
        "marker_offset": np.array(draw(st.lists(f, min_size=6, max_size=6))).reshape(2, 3),
        "joint_p_pf": np.array(draw(st.lists(f, min_size=9, max_size=9))).reshape(3, 3),
        "coord_default": np.array(draw(st.lists(f, min_size=3, max_size=3))),
        "body_scale": np.array(draw(st.lists(f, min_size=9, max_size=9))).reshape(3, 3),
    }


def check_npz_roundtrip(geometry) -> None:
    """save_tree -> load_tree is exact (topology and every leaf) for random geometry."""
    from simspine_jax.model import load_tree, save_tree

    e = _entries(_npz_seed("two_link"))
    meta = json.loads(e.pop("meta_json").tobytes())
    e.update(geometry)
    from simspine_jax.export import ExportedModel

    p = save_tree(ExportedModel(meta=meta, arrays=e), _TMP / "rt.npz")
    tree = load_tree(p)
    again = load_tree(save_tree(tree, _TMP / "rt2.npz"))
    assert again.topology == tree.topology
    for k, v in geometry.items():
        np.testing.assert_array_equal(np.asarray(getattr(tree, k)), v)
        np.testing.assert_array_equal(np.asarray(getattr(again, k)), v)
    TALLY["read"] += 1


# --------------------------------------------------------------------------------------------
# the properties: (name, strategies, check)
# --------------------------------------------------------------------------------------------

PROPERTIES = {
    "trc_roundtrip": ((trc_data(),), check_trc_roundtrip),
    "trc_mutated": ((trc_data(), ops_strategy()), check_trc_mutated),
    "storage_roundtrip": ((storage_data(),), check_storage_roundtrip),
    "storage_mutated": ((storage_data(), ops_strategy()), check_storage_mutated),
    "osim_random": ((osim_model(),), check_osim_random),
    "osim_mutated": ((st.sampled_from(OSIM_SEEDS), ops_strategy()), check_osim_mutated),
    "ik_setup_mutated": ((st.sampled_from(SETUP_SEEDS), ops_strategy()), check_ik_setup_mutated),
    "npz_mutated": ((st.sampled_from(NPZ_SEEDS), npz_ops_strategy()), check_npz_mutated),
    "npz_roundtrip": ((npz_geometry(),), check_npz_roundtrip),
}


def make_test(name: str, max_examples: int, *, derandomize: bool, seed: int | None = None):
    """A hypothesis test of property ``name`` with this budget (pytest calls it with no
    arguments; so does :func:`main`)."""
    strategies, check = PROPERTIES[name]
    if len(strategies) == 1:

        def run(a):
            check(a)
    else:

        def run(a, b):
            check(a, b)

    run.__name__ = f"fuzz_{name}"
    test = given(*strategies)(run)
    if seed is not None:
        from hypothesis import seed as hseed

        test = hseed(seed)(test)
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )(test)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="examples per property")
    ap.add_argument("--only", nargs="+", choices=sorted(PROPERTIES), help="properties to run")
    ap.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import warnings

    warnings.simplefilter("ignore")  # IK setup warnings of mutated files are expected
    failed = False
    for name in args.only or PROPERTIES:
        TALLY.clear()
        t0 = time.perf_counter()
        failure = None
        try:
            make_test(name, args.examples, derandomize=False, seed=args.seed)()
        except Exception as e:  # with the falsifying example(s) in its notes
            import traceback

            traceback.print_exception(e, file=sys.stderr)
            failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            failed = True
        print(
            json.dumps(
                dict(
                    property=name,
                    examples=args.examples,
                    read=TALLY["read"],
                    refused=TALLY["refused"],
                    seconds=round(time.perf_counter() - t0, 2),
                    failure=failure,
                )
            ),
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
