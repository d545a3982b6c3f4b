"""OpenSim's own ``InverseKinematicsTool``, run programmatically: the reference our IK must match.

:func:`run_opensim_ik` runs the tool on a model, a TRC file and an IK task set (from a setup
file, or from weights given here) and reads its ``.mot`` and ``_ik_marker_errors.sto`` back,
with coordinates converted to radians and metres. :func:`run_opensim_ik_subprocess` does the
same in a child process, for callers that run JAX: with OpenSim imported and run in the same
process as JAX (jaxlib 0.10, 2 CPU cores), XLA CPU calls ran ~9x slower afterwards and some
never returned (Eigen thread-pool workers left waiting), so a process that solves with JAX
should never import ``opensim``.

Units OpenSim 4.6 writes to the IK ``.mot`` (header ``inDegrees=yes``; checked on the SimSpine
model, see ``tests/test_synth.py``): coordinates of motion type Rotational are in degrees,
Translational in metres, and Coupled ones (``knee_angle_r_beta``, whose joint axes are spline
functions of it) in radians: ``convertRadiansToDegrees`` only converts Rotational coordinates.
The dependent lumbar coordinates of SimSpine (``L4_L5_Flex_Ext`` ...) are Rotational, so they
are in degrees like the rest.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError
from ._common import import_opensim

ROTATIONAL, TRANSLATIONAL, COUPLED = 1, 2, 3  # OpenSim::Coordinate::MotionType


def _coordinate_task_tuple(task) -> tuple[str, float, str, float]:
    """(name, weight, value_type, value) from a CoordinateTask or a tuple."""
    if hasattr(task, "value_type"):
        return task.name, float(task.weight), task.value_type, float(task.value)
    name, weight, *rest = task
    vt = rest[0] if rest else "default_value"
    value = float(rest[1]) if len(rest) > 1 else 0.0
    return str(name), float(weight), str(vt), value


def _table_columns(table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, times (T,) and data (T, n) of an ``opensim.TimeSeriesTable``."""
    labels = list(table.getColumnLabels())
    times = np.asarray(table.getIndependentColumn(), np.float64)
    data = np.asarray(table.getMatrix().to_numpy(), np.float64).reshape(len(times), len(labels))
    return labels, times, data


def _label_to_coordinate(label: str) -> str:
    """Coordinate name of a ``.mot`` column: the name itself or a path ``/jointset/j/c/value``."""
    if "/" not in label:
        return label
    parts = [p for p in label.split("/") if p]
    return parts[-2] if parts[-1] in ("value", "speed") and len(parts) >= 2 else parts[-1]


def read_ik_motion(mot_path: str | Path, model) -> dict:
    """Read an IK ``.mot`` written by OpenSim into radians/metres, in the model's coordinate order.

    ``model`` is an ``opensim.Model``. Returns ``q_full`` (T, n_coord), ``time`` (T,),
    ``coordinate_names``, ``in_degrees`` (the header flag) and ``motion_types`` (n_coord,)
    (1 rotational, 2 translational, 3 coupled).
    """
    osim = import_opensim()
    table = osim.TimeSeriesTable(str(mot_path))
    labels, times, data = _table_columns(table)
    in_degrees = False
    if table.hasTableMetaDataKey("inDegrees"):
        in_degrees = table.getTableMetaDataAsString("inDegrees").strip().lower() == "yes"
    cs = model.getCoordinateSet()
    names = [cs.get(i).getName() for i in range(cs.getSize())]
    mtypes = np.array([int(cs.get(i).getMotionType()) for i in range(cs.getSize())])
    col = {_label_to_coordinate(lab): j for j, lab in enumerate(labels)}
    missing = [n for n in names if n not in col]
    if missing:
        raise InputError(f"coordinates {missing} are not in the motion file", path=str(mot_path))
    q = data[:, [col[n] for n in names]].copy()
    if in_degrees:
        rot = mtypes == ROTATIONAL
        q[:, rot] = np.deg2rad(q[:, rot])
    return {
        "q_full": q,
        "time": times,
        "coordinate_names": tuple(names),
        "in_degrees": in_degrees,
        "motion_types": mtypes,
    }


def run_opensim_ik(
    osim_path: str | Path,
    trc_path: str | Path,
    setup_xml: str | Path | None = None,
    marker_weights: Mapping[str, float] | None = None,
    coordinate_tasks: Iterable | None = None,
    *,
    out_dir: str | Path,
    markers: str | Path | None = None,
    time_range: tuple[float, float] | None = None,
    accuracy: float | None = None,
    name: str | None = None,
) -> dict:
    """Run OpenSim's ``InverseKinematicsTool`` and read its results back.

    ``osim_path``: the model; ``markers``: an optional OpenSim ``MarkerSet`` file whose markers
    replace the model's (Pose2Sim ships its model and marker files apart). Tasks come from
    ``setup_xml`` (its ``IKTaskSet``, parsed by OpenSim itself; its file names, time range and
    output names are ignored: everything runs on the files given here), or else from
    ``marker_weights`` (name -> weight) and ``coordinate_tasks`` (``CoordinateTask`` objects or
    ``(name, weight[, value_type[, value]])`` tuples); with neither, every model marker gets
    weight 1. ``time_range`` defaults to the whole trial; ``accuracy`` to the setup file's value,
    or 1e-5. Results are written in ``out_dir`` as ``{name}.mot`` and
    ``{name}_ik_marker_errors.sto``.

    Returns a dict: ``q_full`` (T, n_coord) radians/metres in OpenSim's coordinate order,
    ``coordinate_names``, ``time`` (T,), ``marker_rms`` and ``marker_max`` (T,) (OpenSim's
    weighted-marker error report, metres), ``marker_errors`` (the same as a dict, with
    ``total_squared``), ``wall_s`` (the ``tool.run()`` call only, which includes OpenSim's
    ``initSystem``), ``cpu_s`` (its process CPU time: a steadier speed figure on a busy
    machine), ``total_s`` (everything: loading the model, the run, reading back),
    ``frames_per_s`` (frames / ``wall_s``), ``n_frames``, ``mot_path``, ``errors_path``.
    """
    t_start = time.perf_counter()
    osim = import_opensim()
    osim_path, trc_path = Path(osim_path).resolve(), Path(trc_path).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # OpenSim names the error report after the tool and cuts it at a '.', dropping ".sto"
    name = (name or trc_path.stem).replace(".", "_")
    if setup_xml is not None and (marker_weights is not None or coordinate_tasks is not None):
        raise InputError(
            "give either setup_xml or marker_weights/coordinate_tasks, not both",
            path=str(setup_xml),
        )
    for p in (osim_path, trc_path) + ((Path(setup_xml),) if setup_xml is not None else ()):
        if not Path(p).is_file():
            raise InputError("file not found", path=str(p))

    model = osim.Model(str(osim_path))
    if markers is not None:  # replace the model's markers, as load_model(markers=...) does
        model.updMarkerSet().clearAndDestroy()
        mset = osim.MarkerSet(str(Path(markers).resolve()))
        for i in range(mset.getSize()):
            model.addMarker(mset.get(i).clone())
    model.finalizeConnections()

    if setup_xml is not None:
        tool = osim.InverseKinematicsTool(str(Path(setup_xml).resolve()), False)
        if accuracy is None:
            accuracy = tool.get_accuracy()
    else:
        tool = osim.InverseKinematicsTool()
        tasks = tool.getIKTaskSet()
        if marker_weights is None:
            ms = model.getMarkerSet()
            marker_weights = {ms.get(i).getName(): 1.0 for i in range(ms.getSize())}
        for mname, w in marker_weights.items():
            task = osim.IKMarkerTask()
            task.setName(str(mname))
            task.setApply(True)
            task.setWeight(float(w))
            tasks.cloneAndAppend(task)
        value_types = {
            "default_value": osim.IKCoordinateTask.DefaultValue,
            "manual_value": osim.IKCoordinateTask.ManualValue,
            "from_file": osim.IKCoordinateTask.FromFile,
        }
        for ct in coordinate_tasks or ():
            cname, w, vt, value = _coordinate_task_tuple(ct)
            if vt not in value_types:
                raise InputError(f"unknown value_type {vt!r}", field=f"coordinate task {cname}")
            task = osim.IKCoordinateTask()
            task.setName(cname)
            task.setApply(True)
            task.setWeight(w)
            task.setValueType(value_types[vt])
            task.setValue(value)
            tasks.cloneAndAppend(task)
    if accuracy is None:
        accuracy = 1e-5

    if time_range is None:
        trc_times = np.asarray(osim.TimeSeriesTableVec3(str(trc_path)).getIndependentColumn())
        time_range = (float(trc_times[0]), float(trc_times[-1]))
    t0, t1 = (float(x) for x in time_range)
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
        raise InputError(f"bad time range {time_range}", field="time_range")

    mot_path = out_dir / f"{name}.mot"
    tool.setName(name)
    tool.setModel(model)
    tool.set_model_file(str(osim_path))
    tool.setMarkerDataFileName(str(trc_path))
    coord_file = ""
    if setup_xml is not None:  # from_file coordinate tasks read it: keep it, made absolute
        from ..ik_setup import read_ik_setup

        setup = read_ik_setup(setup_xml)
        if setup.coordinate_file is not None:
            coord_file = str(setup.resolve(setup.coordinate_file))
    tool.setCoordinateFileName(coord_file)
    tool.setStartTime(t0)
    tool.setEndTime(t1)
    tool.set_accuracy(float(accuracy))
    tool.set_report_errors(True)
    tool.set_report_marker_locations(False)
    tool.setResultsDir(str(out_dir))
    tool.setOutputMotionFileName(str(mot_path))

    t_run, c_run = time.perf_counter(), time.process_time()
    ok = tool.run()
    wall_s = time.perf_counter() - t_run
    cpu_s = time.process_time() - c_run
    if not ok or not mot_path.is_file():
        raise RuntimeError(f"OpenSim InverseKinematicsTool failed on {trc_path}")

    motion = read_ik_motion(mot_path, model)
    errors_path = out_dir / f"{name}_ik_marker_errors.sto"
    labels, err_t, err = _table_columns(osim.TimeSeriesTable(str(errors_path)))
    col = {lab: j for j, lab in enumerate(labels)}
    marker_errors = {
        "time": err_t,
        "total_squared": err[:, col["total_squared_error"]],
        "rms": err[:, col["marker_error_RMS"]],
        "max": err[:, col["marker_error_max"]],
    }
    n_frames = len(motion["time"])
    return {
        "q_full": motion["q_full"],
        "coordinate_names": motion["coordinate_names"],
        "motion_types": motion["motion_types"],
        "time": motion["time"],
        "marker_rms": marker_errors["rms"],
        "marker_max": marker_errors["max"],
        "marker_errors": marker_errors,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "total_s": time.perf_counter() - t_start,
        "frames_per_s": n_frames / wall_s if wall_s > 0 else math.inf,
        "n_frames": n_frames,
        "accuracy": float(accuracy),
        "mot_path": str(mot_path),
        "errors_path": str(errors_path),
    }


# ----------------------------------------------------------------------------- child process
TIMEOUT_BASE_S = 120.0  # default timeout of the child: this, plus ...
TIMEOUT_PER_LINE_S = 1.0  # ... this per line of the TRC file (OpenSim: ~20-100 frames/s here)
_OUTPUT_TAIL = 3000  # characters of the child's stderr and stdout quoted in an error
_ERROR_TYPES = {"InputError": InputError, "ModelError": ModelError}


class OpenSimRunError(RuntimeError):
    """OpenSim's IK failed in its child process; the message ends with the child's output."""


class OpenSimTimeoutError(OpenSimRunError, TimeoutError):
    """OpenSim's IK child process did not finish in time and was killed."""


def _output_tail(stderr, stdout) -> str:
    """The end of a child's stderr and stdout, for an error message."""
    parts = []
    for label, text in (("stderr", stderr), ("stdout", stdout)):
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        text = (text or "").strip()
        if text:
            cut = "..." if len(text) > _OUTPUT_TAIL else ""
            parts.append(f"\n--- child {label} (end) ---\n{cut}{text[-_OUTPUT_TAIL:]}")
    return "".join(parts) or " (the child printed nothing)"


def _package_root() -> Path:
    """The folder holding the ``simspine_jax`` package, so the child imports this very copy."""
    return Path(__file__).resolve().parents[2]


def run_opensim_ik_subprocess(
    osim_path: str | Path,
    trc_path: str | Path,
    setup_xml: str | Path | None = None,
    marker_weights: Mapping[str, float] | None = None,
    coordinate_tasks: Iterable | None = None,
    *,
    out_dir: str | Path,
    markers: str | Path | None = None,
    time_range: tuple[float, float] | None = None,
    accuracy: float | None = None,
    name: str | None = None,
    timeout_s: float | None = None,
) -> dict:
    """:func:`run_opensim_ik` in a child process (``python -m
    simspine_jax.osim_bridge._ik_worker``); this process never imports ``opensim``.

    Arguments and the returned dict are those of :func:`run_opensim_ik`, plus ``process_s``
    (the child's whole life: Python start, imports, the run, writing results). The results
    come back through an ``.npz`` the child writes atomically in a temporary folder; OpenSim's
    own ``.mot`` and ``_ik_marker_errors.sto`` stay in ``out_dir`` as usual, which is also the
    child's working directory.

    ``timeout_s``: how long to wait before killing the child (default: ``TIMEOUT_BASE_S`` plus
    ``TIMEOUT_PER_LINE_S`` per line of the TRC file; ``math.inf``: wait forever).

    Raises: :class:`InputError` (or :class:`ModelError`) as the child raised it, for bad
    inputs; :class:`OpenSimTimeoutError` if the child ran past ``timeout_s``;
    :class:`OpenSimRunError` if it failed otherwise (both quote the end of its stderr and
    stdout); ImportError if the ``opensim`` package is not installed.
    """
    if importlib.util.find_spec("opensim") is None:
        raise ImportError("this function needs the 'opensim' package (pip install opensim==4.6)")
    trc_path = Path(trc_path).resolve()
    if not trc_path.is_file():
        raise InputError("file not found", path=str(trc_path))
    if timeout_s is None:
        with open(trc_path, "rb") as fh:
            timeout_s = TIMEOUT_BASE_S + TIMEOUT_PER_LINE_S * sum(1 for _ in fh)
    if not timeout_s > 0:
        raise InputError(f"the timeout must be positive, got {timeout_s}", field="timeout_s")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    def absolute(p):
        return None if p is None else str(Path(p).resolve())

    kwargs = dict(
        osim_path=absolute(osim_path),
        trc_path=str(trc_path),
        setup_xml=absolute(setup_xml),
        marker_weights=None
        if marker_weights is None
        else {str(k): float(w) for k, w in marker_weights.items()},
        coordinate_tasks=None
        if coordinate_tasks is None
        else [list(_coordinate_task_tuple(t)) for t in coordinate_tasks],
        out_dir=str(out_dir),
        markers=absolute(markers),
        time_range=None if time_range is None else [float(t) for t in time_range],
        accuracy=None if accuracy is None else float(accuracy),
        name=name,
    )
    what = f"OpenSim's InverseKinematicsTool on {trc_path} (model {kwargs['osim_path']})"
    with tempfile.TemporaryDirectory(prefix="simspine_opensim_ik_") as tmp:
        job_path, result, error = (Path(tmp) / f for f in ("job.json", "result.npz", "error.json"))
        job = dict(kwargs=kwargs, result=str(result), error=str(error))
        job_path.write_text(json.dumps(job))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_package_root()), env.get("PYTHONPATH", "")) if p
        )
        cmd = [sys.executable, "-m", "simspine_jax.osim_bridge._ik_worker", str(job_path)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                cmd,
                cwd=out_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=None if math.isinf(timeout_s) else timeout_s,
            )
        except subprocess.TimeoutExpired as e:  # subprocess.run has killed the child
            raise OpenSimTimeoutError(
                f"{what} did not finish within {timeout_s:g} s (timeout_s); its child process "
                f"was killed.{_output_tail(e.stderr, e.output)}"
            ) from None
        process_s = time.perf_counter() - t0
        if error.is_file():
            info = json.loads(error.read_text())
            err = _ERROR_TYPES.get(info["type"], InputError)(info["message"])
            err.path, err.line, err.frame, err.field = (
                info[k] for k in ("path", "line", "frame", "field")
            )
            raise err
        if p.returncode != 0 or not result.is_file():
            raise OpenSimRunError(
                f"{what} failed in its child process (exit code {p.returncode})."
                f"{_output_tail(p.stderr, p.stdout)}"
            )
        with np.load(result, allow_pickle=False) as z:
            out = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    prefix = "marker_errors_"
    out["marker_errors"] = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    out.update({k: v for k, v in arrays.items() if not k.startswith(prefix)})
    out["coordinate_names"] = tuple(out["coordinate_names"])
    out["process_s"] = process_s
    return out
