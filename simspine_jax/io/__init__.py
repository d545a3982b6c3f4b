"""File formats OpenSim and Pose2Sim use: TRC markers, .mot/.sto storage files."""

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
