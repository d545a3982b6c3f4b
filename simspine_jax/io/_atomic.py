"""Atomic file writes: the target is either the old file or the complete new one, never half.

The data goes to a temporary file in the target's directory (same filesystem, so the final
``os.replace`` is an atomic rename), is flushed and fsync'ed, and only then replaces the target.
If anything fails before that, the temporary file is removed and the target is untouched.

Only a regular file is replaced: a FIFO, symlink, device node, socket or directory at the
target, or a target under a file, is refused with an
:class:`~simspine_jax.io.outputs.OutputError` before anything is written, and an ``OSError``
while writing (disk full, permission denied, read-only file system) becomes one naming the
target (both are :class:`~simspine_jax.errors.InputError`, exit code 2 in the CLI).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .outputs import check_output_file, writing_to

__all__ = ["atomic_open", "atomic_write_text"]

_ALLOWED_MODES = {"w", "wt", "wb"}


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, only a fallback off Linux
    os.umask(mask)
    return mask


def _target_mode(path: str) -> int:
    """Permission bits the new file should get: the old file's, or what open() would give."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that the file appears complete or not at all.

    ``mode`` is ``'w'``/``'wt'`` (text, UTF-8 by default) or ``'wb'`` (binary). The parent
    directory is created if missing. The new file gets the old file's permission bits, or
    the umask's default for a new file. In text mode ``'\\n'`` is written as is on every platform.
    Raises :class:`~simspine_jax.io.outputs.OutputError` for a target that is not a regular
    file and for a failed write (see the module docstring).
    """
    if mode not in _ALLOWED_MODES:
        raise ValueError(f"atomic_open: unsupported mode {mode!r}; use 'w', 'wt' or 'wb'")
    target = os.path.abspath(os.fspath(path))
    check_output_file(target)
    with writing_to(target, exact=True):
        yield from _atomic_open(target, mode, encoding)


def _atomic_open(target: str, mode: str, encoding: str) -> Iterator[IO[Any]]:
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory
    )
    try:
        if binary:
            fh: IO[Any] = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _target_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)
