"""simspine-jax: fast, differentiable, OpenSim-exact spine kinematics in JAX.

Import stays light: no OpenSim, no Flax, no plotting at import time.
"""

from ._resources import (
    default_ik_setup_path,
    default_markers_path,
    default_model_path,
    default_osim_path,
)
from .errors import InputError, ModelError, SimSpineError
from .export import read_osim
from .filtering import (
    butterworth_filtfilt,
    fill_gaps,
    filter_trc,
    from_opensim_axes,
    to_opensim_axes,
)
from .fk import (
    FKResult,
    forward_kinematics,
    full_coordinates,
    independent_coordinates,
    marker_positions,
)
from .merging import ik_setup_xml, merge_markers, merge_trc_files
from .model import KinematicTree, load_model, load_tree, save_tree, tree_from_export
from .scaling import fit_scales, measurement_scale_factors, scale_subject, scale_tree
from .skeletons import get_skeleton
from .triangulation import (
    TriangulationResult,
    dlt_triangulate,
    triangulate,
    triangulate_recording,
)

__version__ = "0.1.0"

__all__ = [
    "FKResult",
    "InputError",
    "KinematicTree",
    "ModelError",
    "SimSpineError",
    "TriangulationResult",
    "butterworth_filtfilt",
    "default_ik_setup_path",
    "default_markers_path",
    "default_model_path",
    "default_osim_path",
    "dlt_triangulate",
    "fill_gaps",
    "filter_trc",
    "fit_scales",
    "forward_kinematics",
    "from_opensim_axes",
    "full_coordinates",
    "get_skeleton",
    "ik_setup_xml",
    "independent_coordinates",
    "load_model",
    "load_tree",
    "marker_positions",
    "measurement_scale_factors",
    "merge_markers",
    "merge_trc_files",
    "read_osim",
    "save_tree",
    "scale_subject",
    "scale_tree",
    "to_opensim_axes",
    "tree_from_export",
    "triangulate",
    "triangulate_recording",
]
