"""File formats OpenSim and Pose2Sim use: TRC marker files and .mot/.sto Storage files.

Readers raise :class:`simspine_jax.errors.InputError` naming the file, the 1-based line and the
column for any malformed input; writers are atomic and produce files OpenSim 4.6 reads back
bit-identically.
"""

from ._atomic import atomic_open, atomic_write_text
from .storage import StorageData, read_storage, write_storage
from .trc import TRCData, read_trc, write_trc

__all__ = [
    "StorageData",
    "TRCData",
    "atomic_open",
    "atomic_write_text",
    "read_storage",
    "read_trc",
    "write_storage",
    "write_trc",
]
