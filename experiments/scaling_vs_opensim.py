"""Scaling against OpenSim's ScaleTool with every Pose2Sim scaling setup that fits the default
SimSpine model's markers; prints one JSON line per setup and variant.

For each setup: OpenSim scales the default model with known factors (one random factor per
measurement group, uniform XYZ: the "truth"); our FK puts the truth model's markers at its
default pose, shifted by ``--offset`` m; ``--noise`` m Gaussian noise on ``--frames``
frames makes the static TRC. Then, on the generic model:

* ``measurements``: OpenSim's ScaleTool and :func:`simspine_jax.scaling.scale_subject` on
  the same setup; factors (ours vs OpenSim's 6 written digits), body origins and markers of
  both written models at the default pose as OpenSim evaluates them, IK of ``--ik-frames``
  random poses of the truth model on both scaled models (max |dq|);
* ``placement``: the same with the MarkerPlacer on and the setup's IK markers not fixed:
  markers OpenSim and we placed (after IK of the averaged static pose), both in OpenSim;
* ``optimise``: our joint fit of group factors and pose; the factors' error against the truth
  (measurement-based factors cannot recover it where marker pairs span two groups).

    python experiments/scaling_vs_opensim.py [--frames 30] [--noise 0.002] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import simspine_jax as ssj  # noqa: E402
from simspine_jax import scaling as sc  # noqa: E402
from simspine_jax.export import read_osim  # noqa: E402
from simspine_jax.io import write_trc  # noqa: E402
from simspine_jax.io.scale_setup import read_scale_setup  # noqa: E402
from simspine_jax.model import tree_from_export  # noqa: E402
from simspine_jax.osim_bridge import pose2sim_setup_dir  # noqa: E402
from simspine_jax.osim_bridge.scale import run_scale_jobs  # noqa: E402


def write_setup(template, dst, osim, markers, trc, out, scale_file, time_range, place):
    doc = ET.parse(template)
    tool = doc.getroot().find("ScaleTool")
    tool.find("GenericModelMaker/model_file").text = str(osim)
    tool.find("GenericModelMaker/marker_set_file").text = str(markers)
    ms = tool.find("ModelScaler")
    for tag, val in (
        ("marker_file", trc.name),
        ("time_range", time_range),
        ("output_model_file", out.name),
        ("output_scale_file", scale_file.name),
    ):
        ms.find(tag).text = val
    mp = tool.find("MarkerPlacer")
    mp.find("apply").text = "true" if place else "false"
    mp.find("marker_file").text = trc.name
    mp.find("time_range").text = time_range
    mp.find("output_model_file").text = out.name
    mp.find("output_motion_file").text = out.stem + "_static.mot"
    doc.write(dst)


def unfixed_markers(src, dst, names):
    doc = ET.parse(src)
    for m in doc.getroot().iter("Marker"):
        if m.get("name") in names:
            m.find("fixed").text = "false"
    doc.write(dst)


def placer_costs(osim, markers, res, su, trc, os_mot) -> dict:
    """The placer's IK objective (weighted squared marker errors + coordinate tasks, on the
    scaled model before placement) at OpenSim's static pose and at ours."""
    from simspine_jax.ik_setup import coordinate_task_arrays, marker_weight_vector
    from simspine_jax.io import read_storage, read_trc

    scaled = sc.scale_tree(tree_from_export(read_osim(osim, markers=markers)), res.factors.factors)
    w, _ = marker_weight_vector(su.placer.ik, scaled, scaled.marker_names)
    ci, cw, ct = coordinate_task_arrays(su.placer.ik, scaled, times=np.array([0.0]))
    avg = sc.average_static(read_trc(trc), su.placer.time_range)
    st = read_storage(os_mot)
    q_os = np.array([st.values[0, next(k for k, lab in enumerate(st.labels)
                                       if lab.endswith(f"/{c}/value"))]
                     for c in scaled.coordinate_names])  # fmt: skip
    q_ours = np.asarray(ssj.full_coordinates(scaled, jnp.asarray(res.placement.q)))
    idx = scaled.topology.indep_coord

    def cost(qf):
        mk = np.asarray(ssj.marker_positions(scaled, jnp.asarray(qf[idx])))
        e = np.where(np.isfinite(avg), mk - avg, 0.0)
        return float(np.sum(w * np.sum(e**2, -1)) + np.sum(cw * (qf[ci] - ct) ** 2))

    return dict(
        placer_cost_opensim=cost(q_os),
        placer_cost_ours=cost(q_ours),
        static_pose_dq_max=float(np.abs(q_os - q_ours).max()),
    )


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.subtract(a[k], b[k])).max()) for k in a)


def run_setup(template: Path, args, tmp: Path) -> list[dict]:
    osim, mk = ssj.default_osim_path(), ssj.default_markers_path()
    su = read_scale_setup(template)
    rng = np.random.default_rng(args.seed)
    truth = {}
    for m in su.measurements:
        f = float(rng.uniform(0.88, 1.15))
        truth.update({b: [f] * 3 for b in m.bodies})
    truth_osim = tmp / "truth.osim"
    run_scale_jobs([dict(op="manual", osim=str(osim), out=str(truth_osim), factors=truth,
                         markers=str(mk))])  # fmt: skip
    t_truth = tree_from_export(read_osim(truth_osim))
    q_def = np.asarray(t_truth.coord_default)[t_truth.topology.indep_coord]
    base = np.asarray(ssj.marker_positions(t_truth, jnp.asarray(q_def)))
    T = args.frames
    # the subject stands --offset m away from the model's default position, so the placer's
    # IK has work to do (OpenSim's assembler leaves a pose it finds within its tolerance)
    shift = np.array([args.offset, 0.0, 0.5 * args.offset])
    pos = base[None] + shift + rng.normal(0, args.noise, (T, t_truth.n_marker, 3))
    trc = write_trc(tmp / "static.trc", t_truth.marker_names, np.arange(T) / 60.0, pos, units="mm")
    tr = f" 0 {(T - 1) / 60.0!r}"
    q_ik = q_def + rng.normal(0, 0.15, (args.ik_frames, t_truth.n_indep))
    rngs = np.asarray(t_truth.coord_range)[t_truth.topology.indep_coord]
    q_ik = np.clip(q_ik, rngs[:, 0] + 0.05, rngs[:, 1] - 0.05)
    z_ik = np.asarray(ssj.marker_positions(t_truth, jnp.asarray(q_ik)))
    lines = []
    ik_names = set(su.placer.ik.marker_weights) if su.placer else set()
    unfixed = tmp / "markers_unfixed.xml"
    unfixed_markers(mk, unfixed, ik_names)
    for variant in ("measurements", "placement", "optimise"):
        place = variant == "placement"
        markers = unfixed if place else mk
        os_out, ours_out = tmp / f"os_{variant}.osim", tmp / f"ours_{variant}.osim"
        scale_file, setup = tmp / f"os_{variant}_scales.xml", tmp / f"setup_{variant}.xml"
        write_setup(template, setup, osim, markers, trc, os_out, scale_file, tr, place)
        t0 = time.perf_counter()
        res = sc.scale_subject(
            osim, trc, setup, ours_out, markers=markers,
            mode="optimise" if variant == "optimise" else "measurements",
        )  # fmt: skip
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = run_scale_jobs(
            [
                dict(op="setup", setup=str(setup), expect=str(os_out)),
                dict(op="evaluate", osim=str(os_out)),
                dict(op="evaluate", osim=str(ours_out)),
            ],
            cwd=tmp,
        )
        os_s = time.perf_counter() - t0
        ours_f = res.factors.as_dict()
        line = dict(
            setup=template.name,
            variant=variant,
            frames=T,
            noise_m=args.noise,
            offset_m=args.offset,
            ours_s=round(ours_s, 2),
            opensim_child_s=round(os_s, 2),
            truth_factor_err_max=max(abs(ours_f[b][0] - f[0]) for b, f in truth.items()),
        )
        if variant != "optimise":
            os_f = {}
            for s in ET.parse(scale_file).getroot().iter("Scale"):
                os_f[s.findtext("segment").strip()] = np.array(s.findtext("scales").split(), float)
            line["factor_rel_diff_max"] = max(
                float(np.abs(np.asarray(f) / os_f[b] - 1).max())
                for b, f in ours_f.items()
                if b != "ground"
            )
            line["body_origin_diff_max_m"] = max_diff(ev[1]["bodies"], ev[2]["bodies"])
            line["marker_diff_max_m"] = max_diff(ev[1]["markers"], ev[2]["markers"])
            theirs = tree_from_export(read_osim(os_out))
            ours = res.tree
            if theirs.marker_names == ours.marker_names:
                theirs = sc._replace(ours, **{k: getattr(theirs, k) for k in (
                    "joint_p_pf", "joint_p_cm", "func_y", "func_b", "func_c", "func_d",
                    "marker_offset")})  # fmt: skip
                from simspine_jax.ik import solve_ik

                sel = [t_truth.marker_names.index(n) for n in ours.marker_names]
                ra, rb = solve_ik(ours, z_ik[:, sel]), solve_ik(theirs, z_ik[:, sel])
                line["ik_dq_max"] = float(np.abs(ra.q - rb.q).max())
                line["ik_rms_diff_max_m"] = float(np.abs(ra.rms_error - rb.rms_error).max())
        if res.placement is not None:
            line.update(
                placer_costs(osim, markers, res, su, trc, tmp / f"{os_out.stem}_static.mot")
            )
            line["placed"] = len(res.placement.moved)
            line["static_rms_before_m"] = res.placement.rms_before
            line["static_rms_after_m"] = res.placement.rms_after
        if res.fit is not None:
            line["fit_rms_m"] = res.fit.rms
        lines.append(line)
        print(json.dumps(line), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--noise", type=float, default=0.002)
    ap.add_argument("--ik-frames", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offset", type=float, default=0.05, help="subject position offset, m")
    ap.add_argument("--only", help="run only setups whose name contains this")
    args = ap.parse_args()
    tree = ssj.load_model(ssj.default_model_path())
    have = set(tree.marker_names)
    for template in sorted(pose2sim_setup_dir().glob("Scaling_Setup_Pose2Sim_*.xml")):
        if args.only and args.only not in template.name:
            continue
        su = read_scale_setup(template)
        need = {n for m in su.measurements if m.apply for p in m.marker_pairs for n in p}
        if not need <= have:
            print(json.dumps(dict(setup=template.name, skipped="markers not in the model",
                                  missing=sorted(need - have)[:5])))  # fmt: skip
            continue
        with tempfile.TemporaryDirectory(prefix="scaling_vs_opensim_") as d:
            run_setup(template, args, Path(d))


if __name__ == "__main__":
    main()
