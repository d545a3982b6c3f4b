"""Errors raised for bad user input: each names the file, the line or frame, and the field."""

from __future__ import annotations


class SimSpineError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(SimSpineError, ValueError):
    """A user-supplied file or array is malformed.

    The message always starts with the location (file, line or frame, field) so a user can
    open the file at the right place without reading a traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        frame: int | None = None,
        field: str | None = None,
    ):
        self.path = None if path is None else str(path)
        self.line = line
        self.frame = frame
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if frame is not None:
            where.append(f"frame {frame}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ModelError(InputError):
    """An OpenSim model uses something we cannot represent exactly (or is malformed)."""


class SimSpineWarning(UserWarning):
    """Base class of the warnings this package issues: an input we accept, as OpenSim does, but
    that the user may not expect. The CLI shows each on one line."""


class IKSetupWarning(SimSpineWarning):
    """A task of an OpenSim IK setup file is skipped, or a rule of OpenSim's IK tool applies
    that changes what the setup seems to say (e.g. no applied IKMarkerTask)."""
