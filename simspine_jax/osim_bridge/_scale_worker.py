"""Child process of :func:`simspine_jax.osim_bridge.scale.run_scale_jobs`.

    python -m simspine_jax.osim_bridge._scale_worker JOB.json

``JOB.json`` holds ``jobs`` (a list, run in order) and ``result`` (the JSON file to write).
Each job is a dict with ``op``:

* ``"manual"``: :func:`~simspine_jax.osim_bridge.scale.scale_model` with ``osim``, ``out``,
  ``factors`` ({body: [sx, sy, sz]}) and optional ``markers``;
* ``"setup"``: OpenSim's ``ScaleTool`` run on the setup file ``setup`` (success is judged by
  the setup's output model appearing: ``ScaleTool.run`` reports False when the MarkerPlacer is
  off although it wrote the model);
* ``"evaluate"``: load ``osim`` (plus optional ``markers``) and report, at the default state
  after ``initSystem``, every body's origin and every marker in ground (metres), with the
  coordinate values.

The result is ``{"results": [...]}``, one entry per job. Nothing here runs JAX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import import_opensim
from .scale import scale_model


def _evaluate(osim, path: str, markers: str | None) -> dict:
    model = osim.Model(path)
    if markers:
        model.updateMarkerSet(osim.MarkerSet(markers))
    state = model.initSystem()
    model.realizePosition(state)
    bodies = {}
    for i in range(model.getBodySet().getSize()):
        b = model.getBodySet().get(i)
        p = b.getPositionInGround(state)
        bodies[b.getName()] = [p.get(k) for k in range(3)]
    mk = {}
    for i in range(model.getMarkerSet().getSize()):
        m = model.getMarkerSet().get(i)
        p = m.getLocationInGround(state)
        mk[m.getName()] = [p.get(k) for k in range(3)]
    coords = {}
    for i in range(model.getCoordinateSet().getSize()):
        c = model.getCoordinateSet().get(i)
        coords[c.getName()] = c.getValue(state)
    return dict(bodies=bodies, markers=mk, coordinates=coords)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    job = json.loads(Path(argv[0]).read_text())
    osim = import_opensim()
    results = []
    for j in job["jobs"]:
        if j["op"] == "manual":
            scale_model(j["osim"], j["out"], j["factors"], j.get("markers"))
            results.append(dict(out=j["out"]))
        elif j["op"] == "setup":
            out = j.get("expect")
            if out:
                Path(out).unlink(missing_ok=True)
            ok = bool(osim.ScaleTool(j["setup"]).run())
            if out and not Path(out).is_file():
                raise RuntimeError(f"ScaleTool did not write {out}")
            results.append(dict(ok=ok))
        elif j["op"] == "evaluate":
            results.append(_evaluate(osim, j["osim"], j.get("markers")))
        else:
            raise ValueError(f"unknown op {j['op']!r}")
    Path(job["result"]).write_text(json.dumps(dict(results=results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
