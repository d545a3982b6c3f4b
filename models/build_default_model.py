"""Rebuild the bundled default SimSpine model from the pose2sim wheel (reproducible).

    pip install --no-deps pose2sim==0.10.49      # BSD-3; ships the OpenSim models and meshes
    python models/build_default_model.py

1. locates ``Pose2Sim/OpenSim_Setup/Model_Pose2Sim_muscles_flex.osim`` in the installed wheel
   (without importing Pose2Sim), or takes ``--setup-dir``;
2. strips it to kinematics (no muscles, forces, contact geometry) with OpenSim and checks the
   stripped model has the same coordinates -> ``simspine_jax/data/simspine_default.osim``;
3. exports it with the SimSpine 37-keypoint marker set ``simspine_jax/data/simspine37_markers.xml``
   -> ``simspine_jax/data/simspine_default.npz`` (no OpenSim needed to load).

The outputs are package data (found with ``importlib.resources``, shipped in the wheel); this
folder keeps only how they were made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "simspine_jax" / "data"  # package data: the built files go here


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup-dir", help="Pose2Sim's OpenSim_Setup folder")
    args = ap.parse_args()
    from simspine_jax.export import read_osim
    from simspine_jax.model import save_tree
    from simspine_jax.osim_bridge import pose2sim_setup_dir, strip_to_kinematics

    setup = Path(args.setup_dir) if args.setup_dir else pose2sim_setup_dir()
    src = setup / "Model_Pose2Sim_muscles_flex.osim"
    osim_out = DATA / "simspine_default.osim"
    strip_to_kinematics(str(src), str(osim_out))
    ex = read_osim(osim_out, markers=DATA / "simspine37_markers.xml")
    out = save_tree(ex, DATA / "simspine_default.npz")
    print(
        json.dumps(
            dict(
                source=str(src),
                osim=str(osim_out),
                tree=str(out),
                coordinates=len(ex.meta["coordinates"]),
                independent=len(ex.meta["independent"]),
                markers=len(ex.meta["markers"]),
            )
        )
    )


if __name__ == "__main__":
    main()
