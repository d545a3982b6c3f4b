"""Outputs (issue 9): never an input or a non-regular file replaced, ``-o DIR/`` means inside DIR,
the path given is the path written, duplicate trial stems refused, a trial's files appear
together or not at all (disk full, KeyboardInterrupt, SIGTERM), failed writes are one line."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import simspine_jax.io as sio
from simspine_jax.cli import main
from simspine_jax.io import write_storage, write_trc
from simspine_jax.io.outputs import (
    STAGING_PREFIX,
    OutputError,
    output_file,
    output_set,
    refuse_inputs,
    unique_stems,
)
from simspine_jax.model import load_model
from simspine_jax.pipeline import IK_OUTPUT_SUFFIXES, write_ik_outputs

ROOT = Path(__file__).parent.parent
TWO_LINK = ROOT / "tests" / "data" / "two_link.osim"


@pytest.fixture(scope="module")
def tree():
    return load_model(TWO_LINK)


def _mot(path: Path) -> Path:
    """A two-link motion (q1, q2 in degrees), 5 frames."""
    t = np.linspace(0.0, 0.4, 5)
    return write_storage(path, ["q1", "q2"], t, np.stack([10 * t, -20 * t], 1), in_degrees=True)


def _trc(path: Path, tree) -> Path:
    t = np.linspace(0.0, 0.4, 5)
    pos = np.random.default_rng(0).normal(size=(5, tree.n_marker, 3))
    return write_trc(path, tree.marker_names, t, pos)


def _fake_ik_result(tree, value: float, frames: int = 4):
    """What write_ik_outputs reads of an IK result, filled with ``value``."""
    T, M = frames, tree.n_marker
    return SimpleNamespace(
        q_full=np.full((T, tree.n_coord), value),
        marker_error=np.full((T, M), value),
        rms_error=np.full(T, value),
        max_error=np.full(T, value),
        model_markers=np.full((T, M, 3), value),
        status=np.zeros(T, int),
        sensitivity=np.ones((T, tree.n_indep)),
        iterations=np.ones(T),
        smooth_status=np.zeros(T, int),
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (names starting with '.' included) -> its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simspine-jax: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- never an input
def test_fk_refuses_to_overwrite_its_input(tmp_path, capsys):
    mot = _mot(tmp_path / "keep.mot")
    before = mot.read_bytes()
    assert main(["fk", "--model", str(TWO_LINK), "--mot", str(mot), "-o", str(mot)]) == 2
    line = _error_line(capsys)
    assert "would overwrite the input" in line and str(mot) in line
    assert mot.read_bytes() == before
    # the same file by another path, a hard link, and the plot onto the TRC
    (tmp_path / "sub").mkdir()
    alias = tmp_path / "sub" / ".." / "keep.mot"
    assert main(["fk", "--model", str(TWO_LINK), "--mot", str(mot), "-o", str(alias)]) == 2
    assert "would overwrite the input" in _error_line(capsys)
    os.link(mot, tmp_path / "hard.mot")
    with pytest.raises(OutputError, match="would overwrite the input"):
        refuse_inputs([tmp_path / "hard.mot"], [mot])
    argv = ["fk", "--model", str(TWO_LINK), "--mot", str(mot), "-o", str(tmp_path / "x.trc")]
    assert main([*argv, "--plot", str(tmp_path / "x.trc")]) == 2
    assert "would overwrite the TRC output" in _error_line(capsys)
    assert mot.read_bytes() == before and not (tmp_path / "x.trc").exists()


def test_export_refuses_to_overwrite_model_or_markers(tmp_path, capsys):
    osim = tmp_path / "m.osim"
    osim.write_bytes(TWO_LINK.read_bytes())
    assert main(["export", str(osim), "-o", str(osim)]) == 2
    assert "would overwrite the input" in _error_line(capsys)
    assert osim.read_bytes() == TWO_LINK.read_bytes()


def test_ik_refuses_outputs_onto_inputs_and_duplicate_stems(tmp_path, tree, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _trc(tmp_path / "a" / "trial.trc", tree), _trc(tmp_path / "b" / "trial.trc", tree)
    out = tmp_path / "out"
    argv = ["ik", "--model", str(TWO_LINK), "--trc", str(a), str(b), "-o", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "same name 'trial'" in line and str(a) in line and str(b) in line
    assert not out.exists()  # refused before any work
    with pytest.raises(OutputError, match="same name"):
        unique_stems(["x/Trial.trc", "y/trial.trc"])  # one file on macOS/Windows
    assert unique_stems(["x/t1.trc", "x/t2.trc"]) == ["t1", "t2"]
    # an output that lands on an input (here the setup file) is refused
    setup = tmp_path / "a" / "trial_marker_errors.sto"
    setup.write_text("precious")
    argv = ["ik", "--model", str(TWO_LINK), "--trc", str(a), "--setup", str(setup)]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 2
    assert "would overwrite the input" in _error_line(capsys)
    assert setup.read_text() == "precious"
    # an output folder that is a file
    assert main(["ik", "--model", str(TWO_LINK), "--trc", str(a), "-o", str(a)]) == 2
    assert "not a folder" in _error_line(capsys)


def test_crosscheck_and_demo_refuse_a_file_as_output_folder(tmp_path, tree, capsys):
    trc = _trc(tmp_path / "t.trc", tree)
    before = trc.read_bytes()
    argv = ["crosscheck", "--osim", str(TWO_LINK), "--trc", str(trc), "-o", str(trc)]
    assert main(argv) == 2
    assert "not a folder" in _error_line(capsys)
    (tmp_path / "cc" / "opensim").mkdir(parents=True)
    os.mkfifo(tmp_path / "cc" / "opensim" / "t.mot")  # where OpenSim's child would write
    assert main([*argv[:-1], str(tmp_path / "cc")]) == 2
    assert "FIFO" in _error_line(capsys)
    assert main(["demo", "-o", str(trc), "--frames", "8", "--no-opensim"]) == 2
    assert "not a folder" in _error_line(capsys)
    assert trc.read_bytes() == before


# ----------------------------------------------------------------------------- non-regular files
@pytest.mark.parametrize("kind", ["fifo", "symlink", "device", "directory"])
def test_non_regular_targets_are_refused(tmp_path, kind, capsys):
    arg = victim = tmp_path / "target.npz"  # the -o argument, the path it would replace
    if kind == "fifo":
        os.mkfifo(victim)
    elif kind == "symlink":
        (tmp_path / "real.npz").write_text("keep")
        victim.symlink_to(tmp_path / "real.npz")
    elif kind == "directory":
        arg.mkdir()  # export -o DIR means DIR/two_link.npz ...
        victim = arg / "two_link.npz"
        victim.mkdir()  # ... which is a directory here
    else:
        arg = victim = Path(os.devnull)
    mode = os.lstat(victim).st_mode
    assert main(["export", str(TWO_LINK), "-o", str(arg)]) == 2
    line = _error_line(capsys)
    assert "not a regular file; refusing to replace it" in line and str(victim) in line
    assert os.lstat(victim).st_mode == mode
    if kind == "symlink":
        assert (tmp_path / "real.npz").read_text() == "keep"
    # every writer refuses, not only the CLI
    with pytest.raises(OutputError, match="not a regular file"):
        sio.atomic_write_text(victim, "x")


def test_output_under_a_file_or_proc_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    assert main(["export", str(TWO_LINK), "-o", str(tmp_path / "f" / "sub" / "m.npz")]) == 2
    line = _error_line(capsys)
    assert "is a file, not a folder" in line and str(tmp_path / "f") in line
    assert (tmp_path / "f").read_text() == "a file"
    assert main(["export", str(TWO_LINK), "-o", "/proc/simspine_test.npz"]) == 2
    assert "/proc/simspine_test.npz" in _error_line(capsys)


# ----------------------------------------------------------------------------- names
def test_export_path_given_is_path_written_and_dir_rule(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert main(["export", str(TWO_LINK), "-o", str(tmp_path / "x.export")]) == 0
    finally:
        os.umask(old)
    written = tmp_path / "x.export"
    assert sorted(os.listdir(tmp_path)) == ["x.export"]
    assert stat.S_IMODE(written.stat().st_mode) == 0o640  # the umask's, not 0600
    assert load_model(written).n_coord == 3  # the loader reads it under that name
    assert main(["info", str(written)]) == 0
    # "-o DIR/" (created) and "-o EXISTING_DIR" both mean DIR/<osim stem>.npz
    assert main(["export", str(TWO_LINK), "-o", str(tmp_path / "new") + os.sep]) == 0
    assert os.listdir(tmp_path / "new") == ["two_link.npz"]
    assert main(["export", str(TWO_LINK), "-o", str(tmp_path / "new")]) == 0
    assert os.listdir(tmp_path / "new") == ["two_link.npz"]
    assert not (tmp_path / "new.npz").exists()
    assert output_file(tmp_path / "new", "d.trc") == tmp_path / "new" / "d.trc"
    assert output_file(tmp_path / "plain.trc", "d.trc") == tmp_path / "plain.trc"
    capsys.readouterr()


def test_fk_into_a_folder(tmp_path, capsys):
    mot = _mot(tmp_path / "walk.mot")
    (tmp_path / "res").mkdir()
    argv = ["fk", "--model", str(TWO_LINK), "--mot", str(mot), "-o", str(tmp_path / "res")]
    assert main([*argv, "--plot", str(tmp_path / "res") + os.sep]) == 0
    assert sorted(os.listdir(tmp_path / "res")) == ["walk.trc", "walk_markers.png"]
    assert sio.read_trc(tmp_path / "res" / "walk.trc").positions.shape[0] == 5
    capsys.readouterr()


# ----------------------------------------------------------------------------- failed writes
@pytest.mark.parametrize(
    "where, code, text",
    [
        ("fsync", errno.ENOSPC, "No space left on device"),
        ("mkstemp", errno.EACCES, "Permission denied"),
        ("mkstemp", errno.EROFS, "Read-only file system"),
    ],
)
def test_failed_write_is_one_line_and_leaves_the_old_file(
    tmp_path, monkeypatch, capsys, where, code, text
):
    out = tmp_path / "m.npz"
    out.write_bytes(b"old model")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os if where == "fsync" else tempfile, where, fail)
    assert main(["export", str(TWO_LINK), "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert str(out) in line and text in line
    assert out.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["m.npz"]


# ----------------------------------------------------------------------------- trial sets
def _write_trial(tree, out, value):
    return write_ik_outputs(
        tree, out, "trial", np.arange(4) / 60.0, _fake_ik_result(tree, value), [1.0] * tree.n_marker
    )


@pytest.fixture()
def old_set(tmp_path, tree):
    out = tmp_path / "out"
    _write_trial(tree, out, 1.0)
    names = sorted(os.listdir(out))
    assert names == sorted(f"trial{s}" for s in IK_OUTPUT_SUFFIXES)
    return out, _snapshot(out)


def test_trial_set_is_replaced_whole(tree, old_set):
    out, before = old_set
    _write_trial(tree, out, 2.0)
    after = _snapshot(out)
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in after)  # every file is the new one
    assert stat.S_IMODE((out / "trial.mot").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("failure", ["disk_full", "keyboard_interrupt"])
def test_trial_set_interrupted_while_writing_keeps_old_set(tree, old_set, monkeypatch, failure):
    out, before = old_set
    real = sio.write_storage
    calls = []

    def writer(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second file: half written, then the disk is full
            Path(path).write_text("half of a fi")
            if failure == "disk_full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sio, "write_storage", writer)
    if failure == "disk_full":
        with pytest.raises(OutputError, match="No space left on device"):
            _write_trial(tree, out, 2.0)
    else:
        with pytest.raises(KeyboardInterrupt):
            _write_trial(tree, out, 2.0)
    assert _snapshot(out) == before  # the old set, whole, and no temporary files


def test_trial_set_failed_rename_rolls_back(tree, old_set, monkeypatch):
    out, before = old_set
    real = os.replace
    moves = []

    def replace(src, dst):
        if Path(dst).parent == out and STAGING_PREFIX in str(src):
            moves.append(dst)
            if len(moves) == 2:  # the first new file is in place already
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="Input/output error"):
        _write_trial(tree, out, 2.0)
    assert _snapshot(out) == before


def test_sigint_during_the_move_is_held_until_the_set_is_whole(tree, old_set, monkeypatch):
    out, before = old_set
    real = os.replace
    # Python's own Ctrl-C handler for this test: in the full suite an earlier module left
    # another SIGINT handler installed (a held signal is delivered to whatever is installed)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def replace(src, dst):
        real(src, dst)
        if Path(dst).parent == out and STAGING_PREFIX in str(src):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first file moved (this thread)

    monkeypatch.setattr(os, "replace", replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            _write_trial(tree, out, 2.0)
    finally:
        signal.signal(signal.SIGINT, previous)
    after = _snapshot(out)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)


_SIGTERM_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from simspine_jax.io.outputs import STAGING_PREFIX, output_set

    out, when, sig = Path(sys.argv[1]), sys.argv[2], getattr(signal, sys.argv[3])
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if when == "move" and STAGING_PREFIX in str(src):
            os.kill(os.getpid(), sig)

    os.replace = replace
    with output_set(out) as stage:
        (stage / "trial.mot").write_text("new mot")
        if when == "write":
            os.kill(os.getpid(), sig)
        (stage / "trial_model_marker_locations.sto").write_text("new sto")
    print("not reached")
    """
)


def _killed_child(out: Path, when: str, sig: str) -> None:
    """Old two-file set in ``out``; a child writes a new one and gets ``sig`` while writing
    or after the first of the two files was moved in."""
    out.mkdir()
    for n in ("trial.mot", "trial_model_marker_locations.sto"):
        (out / n).write_text("old " + n.split(".")[-1])
    p = subprocess.run(
        [sys.executable, "-c", _SIGTERM_CHILD, str(out), when, sig],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == -getattr(signal, sig), p.stderr
    assert "not reached" not in p.stdout


def _assert_whole_set(out: Path, expected: str, extra=()) -> None:
    names = ["trial.mot", "trial_model_marker_locations.sto", *extra]
    assert sorted(os.listdir(out)) == sorted(names)  # no staging folder left
    assert (out / "trial.mot").read_text() == f"{expected} mot"
    assert (out / "trial_model_marker_locations.sto").read_text() == f"{expected} sto"


def test_sigterm_leaves_a_whole_set_and_no_temporary_files(tmp_path):
    """In a child: SIGTERM's default action would kill at once, leaving the staging folder."""
    for when, expected in (("write", "old"), ("move", "new")):
        _killed_child(tmp_path / when, when, "SIGTERM")
        _assert_whole_set(tmp_path / when, expected)


def test_sigkill_leftovers_are_completed_by_the_next_write(tmp_path):
    """SIGKILL runs no cleanup: the next output_set in the folder moves in a set whose
    journal was written and deletes an unfinished one."""
    for when, expected in (("write", "old"), ("move", "new")):
        out = tmp_path / when
        _killed_child(out, when, "SIGKILL")
        assert any(n.startswith(STAGING_PREFIX) for n in os.listdir(out))
        if when == "move":  # the mixed set a hard kill leaves until recovery
            assert (out / "trial.mot").read_text() == "new mot"
            assert (out / "trial_model_marker_locations.sto").read_text() == "old sto"
        with output_set(out) as stage:  # another trial written into the same folder
            (stage / "other.mot").write_text("other")
        _assert_whole_set(out, expected, extra=["other.mot"])


def test_output_set_refuses_a_non_regular_target_before_moving(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mot").write_text("old")
    os.mkfifo(out / "b.sto")
    with pytest.raises(OutputError, match="FIFO"):
        with output_set(out) as stage:
            (stage / "a.mot").write_text("new")
            (stage / "b.sto").write_text("new")
    assert (out / "a.mot").read_text() == "old"
    assert sorted(os.listdir(out)) == ["a.mot", "b.sto"]
