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
import re
import shutil
import signal
import socket
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
    "recover_output_sets",
    "refuse_inputs",
    "unique_stems",
    "writing_to",
]

STAGING_PREFIX = ".simspine-staging-"  # temporary folders of output_set, inside the output folder
_JOURNAL = ".simspine-journal"  # in a staging folder: its files are complete, being moved in
_ACTIVE: set[str] = set()  # staging folders of this process in use now


class OutputError(InputError):
    """An output cannot be written where asked (it would replace an input or a non-regular file,
    its folder is a file, the disk is full, permission is denied...). The message names the path."""


_KINDS = (
    (stat.S_ISREG, "a file"),
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
    backup = staging / ".simspine-previous"
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _owner_gone(name: str) -> bool:
    """Whether the process that made staging folder ``name`` has ended (only knowable for
    folders made on this host)."""
    try:
        host, pid, _ = name[len(STAGING_PREFIX) :].rsplit("-", 2)
        pid_n = int(pid)
    except ValueError:
        return False  # not named by us
    if host != _host():
        return False
    if pid_n == os.getpid():
        return name not in _ACTIVE
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: alive, another user's
        return False
    return False


def recover_output_sets(out_dir: str | os.PathLike[str]) -> list[str]:
    """Finish what a hard-killed :func:`output_set` left in ``out_dir`` (SIGKILL, power loss):
    a staging folder whose process has ended is either moved in (its files were complete and
    the move had begun: the journal says so) or deleted (they were not: the old set was never
    touched). Folders of live processes, or made on another host, are left alone. Called by
    :func:`output_set` on entry. Returns one line per folder handled."""
    out = Path(out_dir)
    done = []
    try:
        entries = [e for e in os.scandir(out) if e.name.startswith(STAGING_PREFIX)]
    except FileNotFoundError:
        return done
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or not _owner_gone(entry.name):
            continue
        staging = Path(entry.path)
        journal = staging / _JOURNAL
        if journal.is_file():
            names = journal.read_text(encoding="utf-8").splitlines()
            for n in names:
                plain = n and n not in (".", "..") and "/" not in n and os.sep not in n
                if plain and (staging / n).is_file() and not (staging / n).is_symlink():
                    os.replace(staging / n, out / n)
            _fsync_path(out)
            done.append(f"{staging}: moved in {len(names)} complete files")
        else:
            done.append(f"{staging}: removed (unfinished, the old files were untouched)")
        shutil.rmtree(staging, ignore_errors=True)
    return done


def _write_journal(staging: Path, names: list[str]) -> None:
    fd = os.open(staging / _JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(n + "\n" for n in names))
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_path(staging)


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
    - the files are fsync'ed, then a journal naming them, before any is moved; the move is a
      few renames in one file system with SIGINT/SIGTERM held until it ends, and a rename
      that fails puts the old files back.

    A hard kill (SIGKILL, power loss) cannot run cleanup code: it can leave the staging folder
    and, during the renames, a mixed set. The next ``output_set`` in that folder (or
    :func:`recover_output_sets`) completes the move if the journal was written, or else deletes
    the unfinished folder. Existing targets must be regular files (:func:`check_output_file`);
    OSErrors become :class:`OutputError` naming the path.
    """
    out = Path(out_dir)
    check_output_dir(out, field=field)
    with writing_to(out, field=field):
        out.mkdir(parents=True, exist_ok=True)
        recover_output_sets(out)
        prefix = f"{STAGING_PREFIX}{_host()}-{os.getpid()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    _ACTIVE.add(staging.name)
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
                _write_journal(staging, names)
                with _signals_deferred():
                    try:
                        _commit(staging, out, names)
                    except BaseException:
                        # rolled back: nothing for a later recovery to move in
                        with contextlib.suppress(OSError):
                            os.unlink(staging / _JOURNAL)
                        raise
                    _fsync_path(out)
    except _Terminated as e:
        terminated = int(e.args[0]) if e.args else signal.SIGTERM
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _ACTIVE.discard(staging.name)
    if terminated is not None:
        # the default action, now that the temporary files are gone
        signal.signal(terminated, signal.SIG_DFL)
        os.kill(os.getpid(), terminated)
        raise SystemExit(128 + terminated)  # reached only if the signal was blocked
