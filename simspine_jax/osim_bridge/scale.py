"""Scale a model with OpenSim's own ScaleTool (manual per-body scale factors)."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ModelError
from ._common import import_opensim


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _factors(
    scale_factors: Mapping[str, float | Sequence[float]] | float, bodies: list[str], path: str
) -> dict[str, tuple[float, float, float]]:
    if isinstance(scale_factors, int | float):
        return {b: (float(scale_factors),) * 3 for b in bodies}
    unknown = [b for b in scale_factors if b not in bodies]
    if unknown:
        raise ModelError(
            f"scale factors for unknown bodies {unknown} (bodies: {bodies})", path=path
        )
    out = {}
    for b, f in scale_factors.items():
        if isinstance(f, int | float):
            f = (f, f, f)
        f = tuple(float(v) for v in f)
        if len(f) != 3 or min(f) <= 0:
            raise ModelError(
                f"body '{b}': scale factors must be 3 positive numbers, got {f}", path=path
            )
        out[b] = f
    return out


def scale_setup_xml(
    osim_path: str | Path,
    out_path: str | Path,
    factors: Mapping[str, tuple[float, float, float]],
    *,
    mass: float,
    markers_xml: str | Path | None = None,
    preserve_mass_distribution: bool = True,
    name: str = "scaled",
) -> ET.ElementTree:
    """A ScaleTool setup document: manual scaling only, no measurements, no marker placement.

    All paths are written absolute, so the setup can live anywhere.
    """
    doc = ET.Element("OpenSimDocument", Version="40000")
    tool = _sub(doc, "ScaleTool", name=name)
    _sub(tool, "mass", repr(float(mass)))
    _sub(tool, "height", "-1")
    _sub(tool, "age", "-1")
    _sub(tool, "notes", "written by simspine_jax.osim_bridge.scale_model")
    gmm = _sub(tool, "GenericModelMaker")
    _sub(gmm, "model_file", str(Path(osim_path).resolve()))
    _sub(
        gmm,
        "marker_set_file",
        "Unassigned" if markers_xml is None else str(Path(markers_xml).resolve()),
    )
    ms = _sub(tool, "ModelScaler")
    _sub(ms, "apply", "true")
    _sub(ms, "scaling_order", " manualScale")
    mset = _sub(ms, "MeasurementSet")
    _sub(mset, "objects")
    _sub(mset, "groups")
    sset = _sub(ms, "ScaleSet")
    objs = _sub(sset, "objects")
    for body, (sx, sy, sz) in factors.items():
        sc = _sub(objs, "Scale", name=body)
        _sub(sc, "scales", f" {sx!r} {sy!r} {sz!r}")
        _sub(sc, "segment", body)
        _sub(sc, "apply", "true")
    _sub(sset, "groups")
    _sub(ms, "marker_file", "Unassigned")
    _sub(ms, "time_range", " -1 -1")
    _sub(ms, "preserve_mass_distribution", "true" if preserve_mass_distribution else "false")
    _sub(ms, "output_model_file", str(Path(out_path).resolve()))
    _sub(ms, "output_scale_file", "Unassigned")
    mp = _sub(tool, "MarkerPlacer")
    _sub(mp, "apply", "false")
    tree = ET.ElementTree(doc)
    ET.indent(tree, space="\t")
    return tree


def scale_model(
    osim_path: str | Path,
    out_path: str | Path,
    scale_factors: Mapping[str, float | Sequence[float]] | float,
    markers_xml: str | Path | None = None,
    *,
    mass: float | None = None,
    preserve_mass_distribution: bool = True,
    setup_path: str | Path | None = None,
) -> Path:
    """Scale ``osim_path`` with OpenSim's ScaleTool and write the scaled model to ``out_path``.

    ``scale_factors``: one number (every body, all axes) or ``{body: s | (sx, sy, sz)}``;
    bodies not listed keep scale 1. The ModelScaler runs with ``scaling_order = manualScale``
    and ``preserve_mass_distribution``; the MarkerPlacer is off. With ``markers_xml`` the
    MarkerSet file is added to the model first (as ScaleTool's GenericModelMaker does), so the
    scaled model carries the scaled markers. ``mass`` defaults to the generic model's total
    mass (kinematics does not depend on it). The setup document is written to ``setup_path``
    if given (kept, for reproducing the run with ``opensim-cmd run-tool``), else to a temporary
    folder. Returns ``out_path``.
    """
    osim = import_opensim()
    osim_path, out_path = str(osim_path), Path(out_path)
    model = osim.Model(osim_path)
    state = model.initSystem()
    bodies = [model.getBodySet().get(i).getName() for i in range(model.getBodySet().getSize())]
    if mass is None:
        mass = model.getTotalMass(state)
    factors = _factors(scale_factors, bodies, osim_path)
    setup = scale_setup_xml(
        osim_path,
        out_path,
        factors,
        mass=mass,
        markers_xml=markers_xml,
        preserve_mass_distribution=preserve_mass_distribution,
        name=out_path.stem,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.exists():
        out_path.unlink()
    with tempfile.TemporaryDirectory(prefix="simspine_scale_") as tmp:
        sp = Path(setup_path) if setup_path is not None else Path(tmp) / "scale_setup.xml"
        sp.parent.mkdir(parents=True, exist_ok=True)
        setup.write(sp, encoding="UTF-8", xml_declaration=True)
        # ScaleTool.run() returns False whenever the MarkerPlacer is off (its processModel
        # reports "not applied" as failure) even though the scaled model was written, so
        # success is judged by the output file (removed above) appearing.
        try:
            osim.ScaleTool(str(sp)).run()
        except Exception as e:  # OpenSim raises its own exception types
            raise ModelError(f"OpenSim ScaleTool failed: {e}", path=osim_path) from e
    if not out_path.is_file():
        raise ModelError(f"OpenSim ScaleTool did not write {out_path}", path=osim_path)
    return out_path


def run_scale_jobs(jobs: list[dict], *, cwd: str | Path | None = None, timeout_s: float = 300.0):
    """Run OpenSim scaling jobs in a child process (this process never imports ``opensim``).

    ``jobs``: dicts as :mod:`simspine_jax.osim_bridge._scale_worker` describes (``manual``
    scaling with factors, a ``setup`` run of OpenSim's ScaleTool, ``evaluate`` a model's body
    origins and markers at its default pose); paths should be absolute. Returns the list of
    per-job results. Raises ``RuntimeError`` with the end of the child's output if it fails.
    """
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="simspine_scale_jobs_") as tmp:
        job_path, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(dict(jobs=jobs, result=str(result))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        p = subprocess.run(
            [sys.executable, "-m", "simspine_jax.osim_bridge._scale_worker", str(job_path)],
            cwd=str(cwd) if cwd is not None else tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if p.returncode != 0 or not result.is_file():
            raise RuntimeError(
                f"OpenSim scaling child failed (exit code {p.returncode}):\n"
                f"{p.stderr[-3000:]}\n{p.stdout[-1000:]}"
            )
        return json.loads(result.read_text())["results"]
