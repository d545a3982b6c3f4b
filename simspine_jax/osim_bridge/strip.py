"""Strip an ``.osim`` model down to what kinematics needs (edits the XML, checks with OpenSim)."""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ._common import import_opensim

# Model-level sets whose every entry is irrelevant to kinematics.
_MODEL_SETS = ("ForceSet", "ContactGeometrySet", "ProbeSet", "ControllerSet")
# Per-frame sets used only by muscle/ligament paths (wrapping surfaces).
_FRAME_SETS = ("WrapObjectSet",)


def _clear_set(set_el: ET.Element) -> int:
    """Empty a Set element's ``objects`` and ``groups``; return how many objects it held."""
    n = 0
    for tag in ("objects", "groups"):
        sub = set_el.find(tag)
        if sub is None:
            continue
        if tag == "objects":
            n += sum(1 for c in sub if isinstance(c.tag, str))
        for c in list(sub):
            sub.remove(c)
    return n


def _strip_tree(root: ET.Element) -> dict[str, int]:
    model = root.find("Model") if root.tag == "OpenSimDocument" else root
    if model is None or model.tag != "Model":
        raise ModelError("no <Model> element (is this an .osim file?)")
    removed: dict[str, int] = {}
    for tag in _MODEL_SETS:
        el = model.find(tag)
        if el is not None:
            removed[tag] = removed.get(tag, 0) + _clear_set(el)
    for tag in _FRAME_SETS:
        for el in model.iter(tag):
            removed[tag] = removed.get(tag, 0) + _clear_set(el)
    return removed


def _kinematic_summary(osim, path: str) -> dict:
    m = osim.Model(path)
    s = m.initSystem()
    cs, bs, ms = m.getCoordinateSet(), m.getBodySet(), m.getMarkerSet()
    coords = [cs.get(i) for i in range(cs.getSize())]
    bodies = [bs.get(i) for i in range(bs.getSize())]
    X = [b.getTransformInGround(s) for b in bodies]
    return dict(
        coordinates=[c.getName() for c in coords],
        motion=[c.getMotionType() for c in coords],
        locked=[c.getLocked(s) for c in coords],
        range=np.array([[c.getRangeMin(), c.getRangeMax()] for c in coords]),
        default=np.array([c.getDefaultValue() for c in coords]),
        bodies=[b.getName() for b in bodies],
        markers=[ms.get(i).getName() for i in range(ms.getSize())],
        constraints=m.getConstraintSet().getSize(),
        body_p=np.array([x.p().to_numpy() for x in X]).reshape(-1, 3),
        n_forces=m.getForceSet().getSize(),
    )


def strip_to_kinematics(
    osim_in: str | Path, osim_out: str | Path, *, verify: bool = True
) -> dict[str, int]:
    """Write a copy of ``osim_in`` without what kinematics does not use.

    Removed: every entry of the model's ForceSet (muscles, actuators, contact and other forces),
    ContactGeometrySet, ProbeSet and ControllerSet, and every body's WrapObjectSet (wrapping
    surfaces are only used by muscle paths). Kept: bodies (with their geometry references),
    joints, coordinates, constraints, markers, everything else. XML comments are dropped.

    With ``verify`` (needs ``opensim``) both files are loaded in OpenSim and must have the same
    coordinates (names, motion types, locks, ranges, defaults), bodies, markers, constraints and
    default body positions; otherwise :class:`~simspine_jax.errors.ModelError` is raised and
    nothing is written. Returns the number of removed entries per set.
    """
    osim_in, osim_out = str(osim_in), Path(osim_out)
    try:
        tree = ET.parse(osim_in)
    except (ET.ParseError, OSError) as e:
        raise ModelError(f"cannot read model: {e}", path=osim_in) from e
    root = tree.getroot()
    try:
        removed = _strip_tree(root)
    except ModelError as e:
        raise ModelError(str(e), path=osim_in) from None
    osim_out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=osim_out.parent, prefix=f".{osim_out.name}.", suffix=".osim")
    os.close(fd)
    try:
        ET.indent(tree, space="\t")
        tree.write(tmp, encoding="UTF-8", xml_declaration=True)
        if verify:
            _verify(osim_in, tmp)
        os.replace(tmp, osim_out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return removed


def _verify(original: str, stripped: str) -> None:
    osim = import_opensim()
    try:
        a = _kinematic_summary(osim, original)
    except Exception as e:  # OpenSim raises its own exception types
        raise ModelError(f"OpenSim cannot load the original model: {e}", path=original) from e
    try:
        b = _kinematic_summary(osim, stripped)
    except Exception as e:
        raise ModelError(f"OpenSim cannot load the stripped model: {e}", path=original) from e
    for key in ("coordinates", "motion", "locked", "bodies", "markers", "constraints"):
        if a[key] != b[key]:
            raise ModelError(
                f"stripping changed the model's {key}: {a[key]} -> {b[key]}", path=original
            )
    for key in ("range", "default", "body_p"):
        if a[key].shape != b[key].shape or not np.allclose(a[key], b[key], rtol=0, atol=1e-12):
            raise ModelError(f"stripping changed the model's {key}", path=original)
    if b["n_forces"]:
        raise ModelError(f"stripped model still has {b['n_forces']} forces", path=original)
