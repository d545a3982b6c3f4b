"""File formats OpenSim and Pose2Sim use: TRC marker files, .mot/.sto Storage files, camera
calibrations (Pose2Sim/Anipose TOML, Human3.6M) and OpenPose-style 2D keypoint JSONs.

Readers raise :class:`simspine_jax.errors.InputError` naming the file, the 1-based line and the
column for any malformed input; writers are atomic and produce files OpenSim 4.6 reads back
bit-identically.
"""

from ._atomic import atomic_open, atomic_write_text
from .calibration import Camera, camera_from_h36m, read_calibration, write_calibration
from .openpose import Keypoints2D, read_pose_dir
from .storage import StorageData, read_storage, write_storage
from .trc import TRCData, read_trc, write_trc

__all__ = [
    "Camera",
    "Keypoints2D",
    "StorageData",
    "TRCData",
    "atomic_open",
    "atomic_write_text",
    "camera_from_h36m",
    "read_calibration",
    "read_pose_dir",
    "read_storage",
    "read_trc",
    "write_calibration",
    "write_storage",
    "write_trc",
]
