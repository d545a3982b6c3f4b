"""Issue 9, input half: every example of bad input from the issue gets a clear one-line error
(file, line or frame, field), never a traceback or a silently wrong result.

TRC and Storage readers, the .osim exporter, the .npz loader, IK setup files, CLI arguments
and the IK entry point. Each test also checks that the well-formed neighbour of the bad input
still reads, so a check cannot pass by refusing everything.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from simspine_jax.errors import InputError, ModelError
from simspine_jax.io import read_storage, read_trc, write_trc

DATA = Path(__file__).parent / "data"
DEFAULT_NPZ = Path(__file__).parents[1] / "simspine_jax" / "data" / "simspine_default.npz"

KEYS = (
    "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\t"
    "OrigDataStartFrame\tOrigNumFrames"
)


def _trc(names, rows, units="mm", end="\n") -> str:
    head = [
        "PathFileType\t4\t(X/Y/Z)\tt.trc",
        KEYS,
        f"100\t100\t{len(rows)}\t{len(names)}\t{units}\t100\t1\t{len(rows)}",
        "Frame#\tTime\t" + "\t\t\t".join(names) + "\t\t",
        "\t\t" + "\t".join(f"X{k}\tY{k}\tZ{k}" for k in range(1, len(names) + 1)),
        "",
    ]
    return "\n".join(head + rows) + end


def _put(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def _raises(fn, *args, **kw) -> InputError:
    with pytest.raises(InputError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg  # one line
    return ei.value


# a person, in millimetres: head, two shoulders, a hip, two ankles (about 1.7 m tall)
BODY_MM = np.array(
    [[0, 1700, 0], [-200, 1450, 0], [200, 1450, 0], [0, 950, 0], [-100, 80, 0], [100, 80, 0]],
    float,
)
NAMES = ["Head", "LSho", "RSho", "Hip", "LAnk", "RAnk"]


def _rows(n=4, drop=None, sep="\t", time=None):
    """Data rows of the walking person (x advances 10 mm per frame); ``drop`` (frame,
    marker) writes that marker as empty fields."""
    out = []
    for f in range(n):
        cells = [str(f + 1), repr(f / 100 if time is None else time[f])]
        for m, xyz in enumerate(BODY_MM + [10.0 * f, 0, 0]):
            blank = drop is not None and drop == (f, m)
            cells += ["", "", ""] if blank else [repr(float(v)) for v in xyz]
        out.append(sep.join(cells))
    return out


# --------------------------------------------------------------------------------------------
# TRC
# --------------------------------------------------------------------------------------------


def test_trc_whitespace_separated_with_gap_is_refused_tab_with_gap_reads(tmp_path):
    rows = _rows(drop=(1, 1))
    good = read_trc(_put(tmp_path, "tab.trc", _trc(NAMES, rows)))
    assert np.isnan(good.positions[1, 1]).all()
    np.testing.assert_array_equal(good.positions[1, 2], (BODY_MM[2] + [10, 0, 0]) / 1000)
    spaced = [" ".join(r.split("\t")) for r in rows]  # the blank fields collapse
    p = _put(tmp_path, "space.trc", _trc(NAMES, spaced))
    err = _raises(read_trc, p)
    assert err.line == 8 and "space" in str(err) and "space.trc" in str(err)
    # a whitespace file without gaps is still read
    full = [" ".join(r.split("\t")) for r in _rows()]
    np.testing.assert_array_equal(
        read_trc(_put(tmp_path, "sp_ok.trc", _trc(NAMES, full))).positions,
        read_trc(_put(tmp_path, "tab_ok.trc", _trc(NAMES, _rows()))).positions,
    )


@pytest.mark.parametrize("cut", ["fields", "dot", "first_field"])
def test_trc_truncated_last_line_is_refused(tmp_path, cut):
    rows = _rows()
    last = rows[-1]
    if cut == "fields":  # cut in the middle: fewer fields than the header
        rows[-1] = last[: len(last) // 2]
    elif cut == "first_field":  # cut inside the frame number: no tab left on the line (read
        rows[-1] = last[:1]  # as a space-separated row, it must still say "cut short")
    else:  # all fields, but the last number stops at its decimal point
        rows[-1] = last[: last.rindex("\t") + 1] + "72."
    p = _put(tmp_path, "cut.trc", _trc(NAMES, rows, end=""))
    err = _raises(read_trc, p)
    assert err.line == 6 + len(rows) and "cut short" in str(err)
    # the same row with a line end: a short row is a row whose last markers are missing
    if cut == "fields":
        d = read_trc(_put(tmp_path, "short.trc", _trc(NAMES, rows)))
        assert np.isnan(d.positions[-1, -1]).all()


@pytest.mark.parametrize("units", ["m", "cm"])
def test_trc_millimetres_labelled_m_or_cm_are_refused(tmp_path, units):
    d = read_trc(_put(tmp_path, "mm.trc", _trc(NAMES, _rows(), units="mm")))
    span = d.positions[0].max(0) - d.positions[0].min(0)
    assert 1.5 < span.max() < 2.0  # the person, read right
    err = _raises(read_trc, _put(tmp_path, "bad.trc", _trc(NAMES, _rows(), units=units)))
    assert err.line == 3 and err.field == "Units" and "Units" in str(err)
    # the same numbers really in centimetres or metres are a plausible person
    cm = _rows()
    small = [
        "\t".join(c if k < 2 else repr(float(c) / 10) for k, c in enumerate(r.split("\t")))
        for r in cm
    ]
    read_trc(_put(tmp_path, "cm.trc", _trc(NAMES, small, units="cm")))


@pytest.mark.parametrize(
    "kind,times,line",
    [
        ("swapped", [0.0, 0.02, 0.01, 0.03], 9),
        ("duplicated", [0.0, 0.01, 0.01, 0.02], 9),
        ("constant", [0.5, 0.5, 0.5, 0.5], 8),
        ("decreasing", [0.3, 0.2, 0.1, 0.0], 8),
    ],
)
def test_trc_time_not_strictly_increasing_is_refused(tmp_path, kind, times, line):
    p = _put(tmp_path, f"{kind}.trc", _trc(NAMES, _rows(time=times)))
    err = _raises(read_trc, p)
    assert err.line == line and err.field == "Time", str(err)


@pytest.mark.parametrize(
    "value", ["1e308", "1e300", "-1e30", "inf", "-Infinity", "\u0661\u0662", "1_000"]
)
def test_trc_absurd_or_infinite_value_names_line_and_field(tmp_path, value):
    rows = _rows()
    cells = rows[2].split("\t")
    cells[2 + 3 * 3 + 1] = value  # Hip.Y of the third frame
    rows[2] = "\t".join(cells)
    err = _raises(read_trc, _put(tmp_path, "big.trc", _trc(NAMES, rows)))
    assert err.line == 9 and err.field == "Hip.Y", str(err)


def test_trc_writer_output_reads_back(tmp_path):
    pos = (BODY_MM[None] + np.arange(5)[:, None, None] * [10.0, 0, 0]) / 1000
    pos[2, 3] = np.nan
    t = np.arange(5) / 100
    for units in ("m", "mm", "cm"):
        d = read_trc(write_trc(tmp_path / f"w_{units}.trc", NAMES, t, pos, units=units))
        np.testing.assert_allclose(d.positions, pos, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------
# Storage (.mot/.sto)
# --------------------------------------------------------------------------------------------

MOT_HEAD = "Coordinates\nversion=1\nnRows=3\nnColumns=3\ninDegrees=yes\nendheader\n"


def test_storage_without_rows_names_the_input(tmp_path):
    p = _put(tmp_path, "in.mot", MOT_HEAD + "time\tpelvis_tx\tpelvis_ty\n")
    err = _raises(read_storage, p)
    assert err.path == str(p) and err.line == 8 and "no data rows" in str(err)


@pytest.mark.parametrize("times,line", [([0, 0.02, 0.01], 10), ([0.2, 0.1, 0.0], 9)])
def test_storage_time_going_back_names_the_input_line(tmp_path, times, line):
    body = "".join(f"{t}\t0.1\t0.9\n" for t in times)
    p = _put(tmp_path, "in.mot", MOT_HEAD + "time\tpelvis_tx\tpelvis_ty\n" + body)
    err = _raises(read_storage, p)
    assert err.path == str(p) and err.line == line and err.field == "time"


def test_storage_absurd_value_names_line_and_field(tmp_path):
    body = "0\t0.1\t0.9\n0.01\t1e300\t0.9\n"
    p = _put(tmp_path, "in.mot", MOT_HEAD + "time\tpelvis_tx\tpelvis_ty\n" + body)
    err = _raises(read_storage, p)
    assert err.line == 9 and err.field == "pelvis_tx"
    # nan and inf are values OpenSim writes on purpose: read as written
    ok = _put(tmp_path, "ok.sto", MOT_HEAD + "time\ta\tb\n0\tnan\t-inf\n0.1\t1e14\t2\n")
    d = read_storage(ok)
    assert np.isnan(d.values[0, 0]) and d.values[0, 1] == -np.inf and d.values[1, 0] == 1e14


def test_storage_cut_last_line_is_refused(tmp_path):
    p = _put(tmp_path, "cut.mot", MOT_HEAD + "time\ta\tb\n0\t1\t2\n0.01\t72.")
    assert _raises(read_storage, p).line == 9
    d = read_storage(_put(tmp_path, "ok.mot", MOT_HEAD + "time\ta\tb\n0\t1\t2\n0.01\t72.5\t3"))
    assert d.values[-1].tolist() == [72.5, 3.0]


def test_fk_cli_names_the_input_motion(tmp_path, capsys):
    from simspine_jax.cli import main

    mot = _put(tmp_path, "keep.mot", MOT_HEAD + "time\tpelvis_tx\tpelvis_ty\n0.1\t0\t0\n0\t0\t0\n")
    rc = main(["fk", "--model", str(DEFAULT_NPZ), "--mot", str(mot), "-o", str(tmp_path / "o.trc")])
    err = capsys.readouterr().err
    assert rc == 2 and "keep.mot" in err and "line 9" in err and "o.trc" not in err
    assert not (tmp_path / "o.trc").exists()


# --------------------------------------------------------------------------------------------
# .osim export
# --------------------------------------------------------------------------------------------


def _osim(tmp_path, old: str, new: str, count: int = 1) -> Path:
    text = (DATA / "two_link.osim").read_text()
    assert text.count(old) >= count, old
    p = tmp_path / "m.osim"
    p.write_text(text.replace(old, new, count))
    return p


@pytest.mark.parametrize(
    "old,new,says",
    [
        ("<translation>0 1 0</translation>", "<translation>0 inf 0</translation>", "finite"),
        ("<translation>0.5 0 0</translation>", "<translation>nan 0 0</translation>", "finite"),
        ("<location>0.4 0 0</location>", "<location>0.4 0 -inf</location>", "finite"),
        (
            '<Coordinate name="q1"><range>-3 3</range>',
            '<Coordinate name="q1"><range>0.3 -0.3</range>',
            "inverted",
        ),
        (
            '<Coordinate name="q1">',
            '<Coordinate name="q1"><clamped>perhaps</clamped>',
            "true or false",
        ),
        (
            '<Coordinate name="q1">',
            '<Coordinate name="q1"><prescribed>true</prescribed>',
            "prescribed",
        ),
        ('Version="40000"', 'Version="forty"', "Version"),
        (
            '<CoordinateCouplerConstraint name="slide">',
            '<PointConstraint name="pc"/><CoordinateCouplerConstraint name="slide">',
            "PointConstraint",
        ),
        ('<Body name="lower">', '<Body name="">', "no name"),
    ],
)
def test_osim_bad_values_raise_model_error(tmp_path, old, new, says):
    from simspine_jax.export import read_osim

    read_osim(DATA / "two_link.osim")  # the unmodified model exports
    with pytest.raises(ModelError) as ei:
        read_osim(_osim(tmp_path, old, new))
    assert says in str(ei.value) and "m.osim" in str(ei.value)


def test_osim_without_coordinates_raises_model_error(tmp_path):
    from simspine_jax.export import read_osim

    text = (DATA / "two_link.osim").read_text()
    text = re.sub(r"<ConstraintSet.*?</ConstraintSet>", "", text, flags=re.S)
    text = re.sub(r"<coordinates>.*?</coordinates>", "<coordinates/>", text, flags=re.S)
    text = re.sub(r"<SpatialTransform>.*?</SpatialTransform>", "", text, flags=re.S)
    text = text.replace("PinJoint", "WeldJoint").replace("CustomJoint", "WeldJoint")
    p = tmp_path / "still.osim"
    p.write_text(text)
    with pytest.raises(ModelError, match="no coordinates"):
        read_osim(p)


def test_osim_offset_frame_loop_raises_model_error(tmp_path):
    from simspine_jax.export import read_osim

    p = _osim(
        tmp_path,
        "<socket_parent>/bodyset/upper</socket_parent><translation>0 0 0</translation>",
        "<socket_parent>../upper_offset</socket_parent><translation>0 0 0</translation>",
    )
    with pytest.raises(ModelError, match="own ancestor"):
        read_osim(p)


# --------------------------------------------------------------------------------------------
# .npz kinematic tree
# --------------------------------------------------------------------------------------------


def _entries(path=DEFAULT_NPZ) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _npz(tmp_path, entries: dict[str, bytes], name="t.npz") -> Path:
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in entries.items():
            z.writestr(k, v)
    return p


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _load_error(p) -> str:
    from simspine_jax.model import load_tree

    with pytest.raises(ModelError) as ei:
        load_tree(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "allow_pickle" not in msg
    return msg


def test_npz_default_tree_loads_and_round_trips(tmp_path):
    from simspine_jax.model import load_tree, save_tree

    tree = load_tree(DEFAULT_NPZ)
    again = load_tree(save_tree(tree, tmp_path / "again.npz"))
    assert again.topology == tree.topology
    for a, b in zip(again.tree_flatten()[0], tree.tree_flatten()[0], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "make,says",
    [
        (lambda raw: raw[: len(raw) // 2], "zip"),  # truncated
        (lambda raw: b"", "zip"),  # empty
        (lambda raw: b"just some text, not a zip\n" * 10, "zip"),  # not a zip
    ],
)
def test_npz_truncated_empty_or_not_zip(tmp_path, make, says):
    p = tmp_path / "bad.npz"
    p.write_bytes(make(DEFAULT_NPZ.read_bytes()))
    assert says in _load_error(p)


def test_npz_garbled_meta_json(tmp_path):
    e = _entries()
    e["meta_json.npy"] = _npy(np.frombuffer(b'{"format": "simspine-jax-kin', np.uint8))
    assert "meta_json" in _load_error(_npz(tmp_path, e))
    meta = json.loads(np.load(DEFAULT_NPZ)["meta_json"].tobytes())
    del meta["bodies"]
    e["meta_json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    assert "bodies" in _load_error(_npz(tmp_path, e, "nobodies.npz"))


@pytest.mark.parametrize(
    "key,value,says",
    [
        ("body_parent", lambda a: np.where(np.arange(a.size) == 5, 40, a), "body_parent"),
        ("body_parent", lambda a: np.where(np.arange(a.size) == 2, 7, a), "body_parent"),
        ("marker_body", lambda a: a - 1, "marker_body"),
        ("axis_func", lambda a: a + 10_000, "axis_func"),
        ("coord_range", lambda a: a[:, ::-1], "coord_range"),
        ("joint_p_pf", lambda a: np.where(a == a.max(), np.nan, a), "finite"),
        ("body_scale", lambda a: a[:-1], "shape"),
        ("coord_locked", lambda a: a.astype(np.float64), "bool"),
        ("func_input", lambda a: np.array([object()] * a.size), "objects"),
    ],
)
def test_npz_bad_arrays(tmp_path, key, value, says):
    e = _entries()
    e[f"{key}.npy"] = _npy(value(np.load(DEFAULT_NPZ)[key]))
    msg = _load_error(_npz(tmp_path, e))
    assert says in msg and key in msg


def test_npz_unknown_or_missing_entries(tmp_path):
    e = _entries()
    e["extra.npy"] = _npy(np.zeros(3))
    assert "unknown entries" in _load_error(_npz(tmp_path, e))
    e = _entries()
    del e["func_x.npy"]
    assert "func_x" in _load_error(_npz(tmp_path, e, "missing.npz"))


def test_npz_huge_entry_is_refused_from_the_directory(tmp_path):
    # the zip directory claims 2 GB for one entry: refused before anything is decompressed
    p = _npz(tmp_path, _entries())
    raw = bytearray(p.read_bytes())
    name = b"body_scale.npy"
    k = raw.index(b"PK\x01\x02")  # the central directory's first record
    while raw[k + 46 : k + 46 + len(name)] != name:
        k = raw.index(b"PK\x01\x02", k + 4)
    struct.pack_into("<I", raw, k + 24, 2_000_000_000)  # central directory: uncompressed size
    p.write_bytes(bytes(raw))
    assert "not read" in _load_error(p)
    # a 3 GB file (sparse: no disk used) is refused from its size alone
    big = tmp_path / "big.npz"
    with open(big, "wb") as fh:
        fh.truncate(3 * 2**30)
    assert "not read" in _load_error(big)


# --------------------------------------------------------------------------------------------
# IK setup, CLI arguments, IK entry point
# --------------------------------------------------------------------------------------------


def test_ik_setup_errors_name_file_line_and_element(tmp_path):
    from simspine_jax.ik_setup import read_ik_setup

    def setup(body: str) -> Path:
        p = tmp_path / "setup.xml"
        p.write_text(
            '<?xml version="1.0" encoding="UTF-8" ?>\n<OpenSimDocument Version="40000">\n'
            f'<InverseKinematicsTool name="ik">\n{body}\n</InverseKinematicsTool>\n'
            "</OpenSimDocument>\n"
        )
        return p

    assert read_ik_setup(setup("<accuracy>1e-5</accuracy>")).accuracy == 1e-5
    tasks = "<IKTaskSet><objects>\n<IKMarkerTask name='Nose'>\n<apply>{}</apply>\n" + (
        "<weight>{}</weight></IKMarkerTask>\n</objects></IKTaskSet>"
    )
    for body, line, element in [
        ("<accuracy>-1</accuracy>", 4, "accuracy"),
        ("\n<time_range>0.3 0.2</time_range>", 5, "time_range"),
        ("<time_range>0 nan</time_range>", 4, "time_range"),
        (tasks.format("maybe", 1), 6, "IKMarkerTask Nose/apply"),
        (tasks.format("true", "heavy"), 7, "IKMarkerTask Nose/weight"),
        ("<report_errors>sometimes</report_errors>", 4, "report_errors"),
    ]:
        err = _raises(read_ik_setup, setup(body))
        assert err.path == str(tmp_path / "setup.xml"), str(err)
        assert (err.line, err.field) == (line, element), str(err)
    err = _raises(read_ik_setup, setup("<accuracy>1e-5</accur"))
    assert err.line in (4, 5) and "malformed" in str(err)  # expat: where it noticed


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--smooth-acc", "-1"),
        ("--smooth-acc", "nan"),
        ("--smooth-acc", "inf"),
        ("--smooth-vel", "-0.5"),
        ("--smooth-vel", "x"),
    ],  # fmt: skip
)
def test_cli_smoothing_weights_are_checked(tmp_path, capsys, flag, value):
    from simspine_jax.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["ik", "--trc", "a.trc", "-o", str(tmp_path), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and flag in err and ">= 0" in err


def test_cli_demo_frames_lower_bound(tmp_path, capsys):
    from simspine_jax.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["demo", "--frames", "1", "-o", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "at least 2" in err and "data_rate" not in err
    assert not (tmp_path / "d").exists()


def test_solve_ik_entry_refuses_what_the_cli_refuses():
    from simspine_jax.ik.problem import IKOptions
    from simspine_jax.ik.solve import solve_ik, solve_ik_batch
    from simspine_jax.model import load_tree

    tree = load_tree(DEFAULT_NPZ)
    markers = np.zeros((2, tree.n_marker, 3))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="smooth_acc"):
            solve_ik_batch(tree, [], options=IKOptions(smooth_acc=bad))
        with pytest.raises(InputError, match="smooth_vel"):
            solve_ik(tree, markers, options=IKOptions(smooth_vel=bad))
    with pytest.raises(InputError, match="list"):
        solve_ik_batch(tree, markers[None])
    with pytest.raises(InputError, match="IKOptions"):
        solve_ik(tree, markers, options={"smooth_acc": 1.0})


def test_osim_huge_axis_is_normalised_without_overflow(tmp_path):
    # found by experiments/fuzz_parsers.py: |(1e308, 1e308, 0)| overflowed to inf and the
    # exported axis became (0, 0, 0), which the .npz loader then refused
    from simspine_jax.export import read_osim
    from simspine_jax.model import load_tree, save_tree

    p = _osim(tmp_path, "<axis>0 0 1</axis>", "<axis>1e308 1e308 0</axis>")
    tree = load_tree(save_tree(read_osim(p), tmp_path / "m.npz"))
    np.testing.assert_allclose(np.asarray(tree.joint_axes)[2, 0], [0.5**0.5, 0.5**0.5, 0])


def test_names_with_line_breaks_keep_errors_on_one_line(tmp_path):
    # '&#10;' puts a real line break into an XML attribute: refused, shown escaped
    from simspine_jax.export import read_osim
    from simspine_jax.ik_setup import read_ik_setup

    with pytest.raises(ModelError) as ei:
        read_osim(_osim(tmp_path, '<Marker name="tip">', '<Marker name="t&#10;ip">'))
    assert "\n" not in str(ei.value) and "line break" in str(ei.value)
    p = tmp_path / "s.xml"
    p.write_text(
        "<InverseKinematicsTool><IKTaskSet><objects><IKMarkerTask name='a&#13;b'>"
        "<apply>maybe</apply></IKMarkerTask></objects></IKTaskSet></InverseKinematicsTool>"
    )
    assert "line break" in str(_raises(read_ik_setup, p))
