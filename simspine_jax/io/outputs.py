"""Where outputs go, and how a set of them appears: checked before writing, moved in together.

Rules every command follows (each raises :class:`OutputError`, exit code 2 in the CLI):

- **Never overwrite an input.** An output that is the same file as an input (same path after
  resolving links, or the same inode) is refused: :func:`refuse_inputs`.
- **Only regular files are replaced.** A FIFO, symlink, socket, device node or directory where a
  file is to be written is refused, as is a path under a file: :func:`check_output_file`.
- **``-o DIR/`` means inside DIR.** A path that ends with a separator, or names an existing
  directory, gets the command's default file name inside it: :func:`output_file`.
- **Duplicate trial stems are refused** (``a/trial.trc b/trial.trc`` would both write
  ``trial.mot``): :func:`unique_stems`. Refused rather than renamed, so every output keeps the
  name OpenSim and Pose2Sim expect from its input.
- **A set of files appears together or not at all**: :func:`output_set`.
- **A write that fails** (disk full, permission denied, read-only file system) is reported on one
  line naming the path: :func:`writing_to`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError

__all__ = [
    "OutputError",
    "check_output_dir",
    "check_output_file",
    "output_file",
    "output_set",
    "refuse_inputs",
    "unique_stems",
    "writing_to",
]

STAGING_PREFIX = ".simspine-staging-"  # temporary folders of output_set, inside the output folder


class OutputError(InputError):
    """An output cannot be written where asked (it would replace an input or a non-regular file,
    its folder is a file, the disk is full, permission is denied...). The message names the path."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _fail(message: str, path, field: str | None) -> OutputError:
    return OutputError(message, path=os.fspath(path), field=field)


def _check_parents(path: Path, field: str | None) -> None:
    """The nearest existing ancestor of ``path`` must be a directory (not a file)."""
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:  # e.g. ENOTDIR: a component above is a file
            raise _fail(f"cannot create the output here: {e.strerror}", path, field) from None
        if not stat.S_ISDIR(st.st_mode):
            raise _fail(f"cannot create the output: {parent} is a file, not a folder", path, field)
        return


def check_output_file(path: str | os.PathLike[str], *, field: str | None = None) -> Path:
    """Refuse a path that cannot take a new regular file: an existing non-regular file (FIFO,
    symlink, device, socket, directory) or a path under a file. Returns the path unchanged."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        _check_parents(p, field)
        return p
    except OSError as e:
        raise _fail(f"cannot write here: {e.strerror}", p, field) from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(
            f"is {_kind(st.st_mode)}, not a regular file; refusing to replace it "
            "(give another output path)",
            p,
            field,
        )
    return p


def check_output_dir(path: str | os.PathLike[str], *, field: str | None = None) -> Path:
    """Refuse an output folder that is a file (or lies under one). Returns the path unchanged.
    An existing folder, or a symbolic link to one, is accepted; a missing one will be created."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        _check_parents(p, field)
        return p
    except OSError as e:
        raise _fail(f"cannot use this output folder: {e.strerror}", p, field) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(f"is {_kind(st.st_mode)}, not a folder; an output folder is needed", p, field)
    return p


def output_file(
    out: str | os.PathLike[str], default_name: str, *, field: str | None = None
) -> Path:
    """The file a ``-o OUT`` argument names: ``OUT`` itself, or ``OUT/default_name`` when
    ``OUT`` ends with a path separator or is an existing directory. Checked with
    :func:`check_output_file`."""
    text = os.fspath(out)
    if not text:
        raise _fail("the output path is empty", text, field)
    seps = {os.sep} | ({os.altsep} if os.altsep else set())
    if text[-1] in seps or os.path.isdir(text):
        p = Path(text) / default_name
        check_output_dir(text, field=field)
    else:
        p = Path(text)
    return check_output_file(p, field=field)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_inputs(
    outputs: Iterable[str | os.PathLike[str]],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    field: str | None = None,
    what: str = "the input",
) -> None:
    """Raise if an output would replace an input (same path after resolving links, or the same
    file through a hard link). ``None`` inputs are skipped; ``what`` names them in the message
    (e.g. "the TRC output" when checking two outputs against each other)."""
    ins = [Path(i) for i in inputs if i is not None]
    for o in outputs:
        for i in ins:
            if _same_file(Path(o), i):
                raise _fail(
                    f"this output would overwrite {what} {os.fspath(i)}; give another output path",
                    o,
                    field,
                )


def unique_stems(paths: Iterable[str | os.PathLike[str]], *, field: str | None = None) -> list[str]:
    """The stems of ``paths`` (their output names), refusing two that coincide (case-insensitively,
    as on macOS and Windows file systems): their outputs would overwrite each other."""
    seen: dict[str, str] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem
        key = stem.casefold()
        if key in seen:
            raise _fail(
                f"two inputs have the same name '{stem}' ({seen[key]} and {os.fspath(p)}): their "
                "outputs would overwrite each other; rename one or run them into different folders",
                p,
                field,
            )
        seen[key] = os.fspath(p)
        stems.append(stem)
    return stems


@contextlib.contextmanager
def writing_to(
    path: str | os.PathLike[str], *, field: str | None = None, exact: bool = False
) -> Iterator[None]:
    """Turn an OSError raised while writing (disk full, permission denied, read-only file system,
    a folder that cannot be created) into a one-line :class:`OutputError` naming the file the
    error names, else ``path`` (always ``path`` if ``exact``: a temporary file's name would
    mean nothing to a user)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        where = e.filename if e.filename is not None and not exact else path
        reason = e.strerror or type(e).__name__
        raise _fail(f"cannot write: {reason}", where, field) from e


# ----------------------------------------------------------------------------- signals
class _Terminated(BaseException):
    """SIGTERM arrived while a set of outputs was being written (see :func:`output_set`)."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM with its default action (die at once) raises :class:`_Terminated`
    instead, so ``finally`` blocks remove temporary files; the caller re-sends it afterwards.
    A handler the program installed itself is left alone."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_terminated(signum, frame):
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside are held and delivered on leaving (a handful of
    renames), so an interruption cannot split them."""
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        if pending:
            _deliver(pending[0], old[pending[0]])


def _deliver(signum: int, handler) -> None:
    """Act on a held signal as its handler would have."""
    if callable(handler):
        handler(signum, None)
    elif handler is signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise _Terminated(signum)


# ----------------------------------------------------------------------------- output sets
def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsync'ed everywhere
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise
    finally:
        os.close(fd)


def _commit(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move ``staging/name`` to ``out_dir/name`` for every name; on any failure put every old
    file back and remove the new ones (the old set stays whole)."""
    backup = staging / ".previous"
    backup.mkdir()
    kept: list[str] = []  # old files saved in backup
    placed: list[str] = []  # new files moved in
    try:
        for n in names:
            target = out_dir / n
            if os.path.lexists(target):
                try:  # a second name for the old file: the target never goes missing
                    os.link(target, backup / n)
                except OSError:  # file systems without hard links: move it aside
                    os.rename(target, backup / n)
                kept.append(n)
            os.replace(staging / n, target)
            placed.append(n)
    except BaseException:
        for n in placed:
            if n not in kept:
                with contextlib.suppress(OSError):
                    os.unlink(out_dir / n)
        for n in kept:
            with contextlib.suppress(OSError):
                os.replace(backup / n, out_dir / n)
        raise


@contextlib.contextmanager
def output_set(out_dir: str | os.PathLike[str], *, field: str | None = None) -> Iterator[Path]:
    """Write a set of files that must appear together: yields a staging folder; write the
    files there (plain files, no sub-folders), and on leaving they replace their namesakes in
    ``out_dir`` together.

    Guarantee: whatever happens, ``out_dir`` holds either the complete old set or the
    complete new one, and no temporary files:

    - an exception while writing (a disk-full ``OSError``, a bad value, ``KeyboardInterrupt``)
      or SIGTERM (which, when the program has no handler of its own, is turned into an
      exception while here and re-sent once the staging folder is gone): the staging folder
      (``out_dir/.simspine-staging-*``) is removed, nothing in ``out_dir`` changed;
    - the files are fsync'ed before any is moved; the move is a few renames in one file system
      with SIGINT/SIGTERM held until it ends, and a rename that fails puts the old files back.

    Only a hard kill (SIGKILL, power loss) during those renames can leave a mixed set, with the
    staging folder still present to show it. Existing targets must be regular files
    (:func:`check_output_file`); OSErrors become :class:`OutputError` naming the path.
    """
    out = Path(out_dir)
    check_output_dir(out, field=field)
    with writing_to(out, field=field):
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    terminated: int | None = None
    try:
        with _sigterm_raises():
            with writing_to(out, field=field):
                yield staging
                names = sorted(os.listdir(staging))
                for n in names:
                    check_output_file(out / n, field=field)
                    st = os.lstat(staging / n)
                    if not stat.S_ISREG(st.st_mode):
                        raise _fail(f"only files can be staged, not {_kind(st.st_mode)}", n, field)
                    _fsync_path(staging / n)
                _fsync_path(staging)
                with _signals_deferred():
                    _commit(staging, out, names)
                    _fsync_path(out)
    except _Terminated as e:
        terminated = int(e.args[0]) if e.args else signal.SIGTERM
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if terminated is not None:
        # the default action, now that the temporary files are gone
        signal.signal(terminated, signal.SIG_DFL)
        os.kill(os.getpid(), terminated)
        raise SystemExit(128 + terminated)  # reached only if the signal was blocked
