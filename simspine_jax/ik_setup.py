"""OpenSim inverse-kinematics setup files (``<InverseKinematicsTool>`` XML), read without OpenSim.

:func:`read_ik_setup` turns a setup file into an :class:`IKSetup`; :func:`apply_setup` maps it
onto a :class:`~simspine_jax.model.KinematicTree` and one trial (:func:`marker_weight_vector`,
:func:`coordinate_task_arrays`, :func:`select_frames`) the way OpenSim 4.6's
``InverseKinematicsTool`` does (each rule checked by running that tool, see
``tests/test_ik_setup.py``):

* only ``IKMarkerTask`` entries whose ``apply`` is true are used; a model marker in the trial
  without such a task gets weight 0 (OpenSim's marker reference drops it). A setup with no
  applied ``IKMarkerTask`` at all tracks every model marker of the trial with weight 1;
* an applied ``IKMarkerTask`` naming a marker that the model or the trial lacks is skipped
  (OpenSim runs such setups: the SimSpine ``IK_Setup.xml`` has eye and ear tasks that Pose2Sim's
  model lacks); we say so with an :class:`~simspine_jax.errors.IKSetupWarning`. If every applied
  task is skipped, OpenSim fails ("Marker data does not correspond to any model markers") or
  crashes; we raise :class:`InputError`;
* a weight is checked only where the task is used, as OpenSim does: negative or infinite
  marker weights, negative coordinate weights are errors there and nowhere else. An infinite
  coordinate weight (a hard constraint in OpenSim) is refused: we cannot solve it;
* an ``IKCoordinateTask`` naming a coordinate that is not in the model is an error (OpenSim
  refuses it too); one on a locked coordinate is skipped (OpenSim drops it: the coordinate
  stays at its default); one on a dependent (coupled) coordinate is used;
* ``time_range`` ``[start, end]`` is clipped to the trial's times; the frames solved are
  those from the frame nearest ``start`` to the frame nearest ``end`` (a tie goes to the later
  frame), both included, so frames just outside the range can be in. A range that misses the
  trial is an error, as in OpenSim;
* stricter than OpenSim, which warns and goes on: a ``time_range`` that is not two numbers
  (OpenSim truncates three to two, ignores fewer) and a task listed twice are errors here;
* an ``IKCoordinateTask`` whose ``apply`` is true adds ``weight * (q_c - target)^2`` to the cost,
  with ``target`` the model coordinate's default (``default_value``) or the task's ``value``
  (``manual_value``, in OpenSim's internal units: radians or metres), or per frame the value
  of the coordinate's column in the setup's ``coordinate_file`` (``from_file``), interpolated
  linearly at the marker frames' times. OpenSim fits a quintic GCV spline through that file:
  both give the file's own values at its sample times (the usual case: a coordinate file from
  an earlier IK of the same trial) and differ slightly between samples.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IKSetupWarning, InputError

VALUE_TYPES = ("default_value", "manual_value", "from_file")

_UNASSIGNED = ("", "unassigned")


@dataclass(frozen=True)
class CoordinateTask:
    """One applied ``IKCoordinateTask``. ``value`` matters only for ``manual_value``."""

    name: str
    weight: float
    value_type: str  # one of VALUE_TYPES
    value: float


def resolve_beside(setup_path: str | None, name: str | None) -> Path | None:
    """A file name read from a setup file, made absolute against that file's folder (as
    OpenSim resolves it); absolute names, and names of a setup with no file, stay as given."""
    if name is None:
        return None
    p = Path(name)
    if p.is_absolute() or setup_path is None:
        return p
    return (Path(setup_path).resolve().parent / p).resolve()


@dataclass(frozen=True)
class IKSetup:
    """What an OpenSim IK setup file asks for (applied tasks only).

    File names are kept as written (``None`` when absent or ``Unassigned``); use
    :meth:`resolve` to get them relative to the setup file's folder, as OpenSim does.
    """

    marker_weights: dict[str, float]
    coordinate_tasks: tuple[CoordinateTask, ...]
    accuracy: float = 1e-5
    time_range: tuple[float, float] | None = None
    model_file: str | None = None
    marker_file: str | None = None
    output_motion_file: str | None = None
    path: str | None = None
    coordinate_file: str | None = None
    constraint_weight: float = math.inf
    report_errors: bool = True
    report_marker_locations: bool = False
    results_directory: str | None = None
    disabled_tasks: tuple[str, ...] = ()  # names of tasks with apply=false (ignored)

    def resolve(self, name: str | None) -> Path | None:
        """A file name from the setup, made absolute against the setup file's folder."""
        return resolve_beside(self.path, name)


# ----------------------------------------------------------------------------- parsing
def _child_text(el: ET.Element, tag: str) -> str | None:
    c = el.find(tag)
    if c is None or c.text is None:
        return None
    return c.text.strip()


def _float(text: str, path: str, field: str, line: int | None = None) -> float:
    t = text.strip()
    low = t.lower()
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    try:
        v = float(t)
    except ValueError:
        raise InputError(
            f"expected a number, got {text!r}", path=path, line=line, field=field
        ) from None
    if math.isnan(v):
        raise InputError("NaN is not a valid value", path=path, line=line, field=field)
    return v


def _bool(text: str | None, default: bool, path: str, field: str, line: int | None = None) -> bool:
    if text is None or text == "":
        return default
    low = text.strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise InputError(f"expected true or false, got {text!r}", path=path, line=line, field=field)


def _file_name(text: str | None) -> str | None:
    if text is None or text.strip().lower() in _UNASSIGNED:
        return None
    return text.strip()


def _parse_xml(path: str) -> tuple[ET.Element, dict[int, int]]:
    """The document's root and the line each element starts on (``{id(element): line}``, for
    errors; empty when the lines cannot be told)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read IK setup file: {e.strerror or e}", path=path) from None
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        raise InputError(f"malformed XML: {e}", path=path, line=line) from None
    except (LookupError, ValueError) as e:  # an unknown or unusable encoding declaration
        raise InputError(f"cannot decode the XML: {e}", path=path) from None
    return root, _element_lines(raw, root)


def _element_lines(raw: bytes, root: ET.Element) -> dict[int, int]:
    """Start lines of the elements of ``root`` (parsed from ``raw``), by a second expat pass:
    expat reports elements in document order, as ``root.iter()`` yields them."""
    from xml.parsers import expat

    starts: list[int] = []
    parser = expat.ParserCreate()
    parser.StartElementHandler = lambda tag, attrs: starts.append(parser.CurrentLineNumber)
    try:
        parser.Parse(raw, True)
    except (expat.ExpatError, LookupError, ValueError):
        return {}
    elements = list(root.iter())
    if len(elements) != len(starts):
        return {}
    return {id(el): n for el, n in zip(elements, starts, strict=True)}


def _line(lines: dict[int, int], el: ET.Element | None, tag: str | None = None) -> int | None:
    """The line of ``el`` (or of its child ``tag``), if known."""
    if el is not None and tag is not None:
        el = el.find(tag)
    return None if el is None else lines.get(id(el))


def _find_tool(root: ET.Element, path: str) -> ET.Element:
    if root.tag == "InverseKinematicsTool":
        return root
    tool = root.find("InverseKinematicsTool")
    if tool is None:
        raise InputError(
            f"no <InverseKinematicsTool> element (root is <{root.tag}>); is this an OpenSim "
            "IK setup file?",
            path=path,
        )
    return tool


def _task_objects(tool: ET.Element, path: str, lines: dict[int, int]):
    """The task elements of ``<IKTaskSet>`` (inline or in the file its ``file`` attribute
    names), that file's path and the elements' lines."""
    ts = tool.find("IKTaskSet")
    if ts is None:
        return [], path, lines
    src = path
    ref = ts.get("file")
    if ref and ref.strip().lower() not in _UNASSIGNED:
        src = str((Path(path).resolve().parent / ref).resolve())
        root, lines = _parse_xml(src)
        ts = root if root.tag == "IKTaskSet" else root.find("IKTaskSet")
        if ts is None:
            raise InputError("no <IKTaskSet> element in the task set file", path=src)
    objs = ts.find("objects")
    if objs is None:
        return [], src, lines
    return list(objs), src, lines


def read_ik_setup(path: str | Path) -> IKSetup:
    """Parse an OpenSim ``InverseKinematicsTool`` setup file. Raises :class:`InputError`."""
    path = str(path)
    root, lines = _parse_xml(path)
    tool = _find_tool(root, path)

    acc_t = _child_text(tool, "accuracy")
    at = _line(lines, tool, "accuracy")
    accuracy = 1e-5 if not acc_t else _float(acc_t, path, "accuracy", at)
    if not accuracy > 0 or math.isinf(accuracy):
        raise InputError(
            f"accuracy must be a positive number, got {acc_t!r}",
            path=path,
            line=at,
            field="accuracy",
        )
    cw_t = _child_text(tool, "constraint_weight")
    cw_at = _line(lines, tool, "constraint_weight")
    constraint_weight = math.inf if not cw_t else _float(cw_t, path, "constraint_weight", cw_at)

    time_range = None
    tr_t = _child_text(tool, "time_range")
    if tr_t:
        at = _line(lines, tool, "time_range")
        parts = tr_t.split()
        if len(parts) != 2:
            raise InputError(
                f"expected two numbers (start end), got {tr_t!r}",
                path=path,
                line=at,
                field="time_range",
            )
        t0, t1 = (_float(p, path, "time_range", at) for p in parts)
        if not t1 >= t0:
            raise InputError(
                f"end time {t1} is before start time {t0}", path=path, line=at, field="time_range"
            )
        time_range = (t0, t1)

    marker_weights: dict[str, float] = {}
    coord_tasks: list[CoordinateTask] = []
    seen: set[tuple[str, str]] = set()
    disabled: list[str] = []
    objs, src, task_lines = _task_objects(tool, path, lines)
    for el in objs:
        at = _line(task_lines, el)
        if el.tag not in ("IKMarkerTask", "IKCoordinateTask"):
            raise InputError(
                f"unknown task type <{el.tag}> (expected IKMarkerTask or IKCoordinateTask)",
                path=src,
                line=at,
                field="IKTaskSet",
            )
        name = (el.get("name") or "").strip()
        if any(c in name for c in "\t\r\n"):
            raise InputError(
                f"<{el.tag}> name {name!r} holds a tab or line break",
                path=src,
                line=at,
                field="IKTaskSet",
            )
        if not name:
            raise InputError(f"<{el.tag}> without a name", path=src, line=at, field="IKTaskSet")
        field = f"{el.tag} {name}"
        if (el.tag, name) in seen:
            raise InputError("task is listed twice", path=src, line=at, field=field)
        seen.add((el.tag, name))
        apply_at = _line(task_lines, el, "apply")
        if not _bool(_child_text(el, "apply"), True, src, f"{field}/apply", apply_at):
            disabled.append(name)
            continue
        w_t = _child_text(el, "weight")
        # a negative or infinite weight is refused where the task is used (marker_weight_vector,
        # coordinate_task_arrays): OpenSim runs a setup whose skipped tasks have one
        w_at = _line(task_lines, el, "weight")
        weight = 0.0 if not w_t else _float(w_t, src, f"{field}/weight", w_at)
        if el.tag == "IKMarkerTask":
            marker_weights[name] = weight
            continue
        vt = (_child_text(el, "value_type") or "default_value").strip()
        if vt not in VALUE_TYPES:
            raise InputError(
                f"value_type {vt!r} is not one of {', '.join(VALUE_TYPES)}",
                path=src,
                line=_line(task_lines, el, "value_type"),
                field=f"{field}/value_type",
            )
        v_t = _child_text(el, "value")
        v_at = _line(task_lines, el, "value")
        value = 0.0 if not v_t else _float(v_t, src, f"{field}/value", v_at)
        coord_tasks.append(CoordinateTask(name, weight, vt, value))

    return IKSetup(
        marker_weights=marker_weights,
        coordinate_tasks=tuple(coord_tasks),
        accuracy=accuracy,
        time_range=time_range,
        model_file=_file_name(_child_text(tool, "model_file")),
        marker_file=_file_name(_child_text(tool, "marker_file")),
        output_motion_file=_file_name(_child_text(tool, "output_motion_file")),
        path=path,
        coordinate_file=_file_name(_child_text(tool, "coordinate_file")),
        constraint_weight=constraint_weight,
        report_errors=_bool(
            _child_text(tool, "report_errors"),
            True,
            path,
            "report_errors",
            _line(lines, tool, "report_errors"),
        ),
        report_marker_locations=_bool(
            _child_text(tool, "report_marker_locations"),
            False,
            path,
            "report_marker_locations",
            _line(lines, tool, "report_marker_locations"),
        ),
        results_directory=_file_name(_child_text(tool, "results_directory")),
        disabled_tasks=tuple(disabled),
    )


# ----------------------------------------------------------------------------- tree mapping
def _where(path: str | None, field: str) -> str:
    """The location prefix of an :class:`InputError`, for a warning's text."""
    return f"{path}, field '{field}'" if path is not None else f"field '{field}'"


def _warn(messages, stacklevel: int = 3) -> None:
    for m in messages:
        warnings.warn(m, IKSetupWarning, stacklevel=stacklevel)


def _marker_weights(setup: IKSetup, tree, trc_marker_names, trc_path=None):
    """:func:`marker_weight_vector` without emitting: (weights, present, messages)."""
    model = list(tree.marker_names)
    trc = {str(n) for n in trc_marker_names}
    midx = {n: i for i, n in enumerate(model)}
    present = np.array([n in trc for n in model], bool)
    data = "the marker data" if trc_path is None else f"the marker data ({trc_path})"
    if not setup.marker_weights:  # OpenSim's MarkersReference: no weight set, default weight 1
        if not present.any():
            raise InputError(f"no model marker is in {data}", path=setup.path, field="IKTaskSet")
        msg = (
            f"{setup.path}: no applied IKMarkerTask, so every model marker in {data} is "
            "tracked with weight 1, as OpenSim does"
        )
        return present.astype(np.float64), present, [msg]
    weights = np.zeros(len(model))
    messages = []
    for name, w in setup.marker_weights.items():
        field = f"IKMarkerTask {name}"
        if name not in midx:
            lack = "the model"
        elif name not in trc:
            lack = data
        else:
            if not (w >= 0 and math.isfinite(w)):  # Simbody's Markers::addMarker refuses it
                raise InputError(
                    f"weight must be finite and >= 0, got {w}",
                    path=setup.path,
                    field=f"{field}/weight",
                )
            weights[midx[name]] = w
            continue
        messages.append(
            f"{_where(setup.path, field)}: marker '{name}' is not in {lack}; task skipped, "
            "as OpenSim does"
        )
    if not np.any(present & np.isin(model, list(setup.marker_weights))):
        raise InputError(
            f"no applied IKMarkerTask names a marker that is both in the model and in {data} "
            "(OpenSim fails on this setup too)",
            path=setup.path,
            field="IKTaskSet",
        )
    return weights, present, messages


def marker_weight_vector(
    setup: IKSetup, tree, trc_marker_names, *, trc_path=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-model-marker task weights and which model markers the TRC has.

    Returns ``weights`` (M_tree,) float64 and ``present`` (M_tree,) bool. A marker gets its
    applied task's weight, 0 without one or when the trial lacks it; with no applied
    ``IKMarkerTask`` in the setup, 1 for every marker of the trial (OpenSim's rule). An applied
    task naming a marker that the model or the trial lacks is skipped with an
    :class:`~simspine_jax.errors.IKSetupWarning` naming the setup file and the task
    (``trc_path``, if given, is named too); :class:`InputError` if no task is left, or for a
    negative or infinite weight on a task that is used.
    """
    weights, present, messages = _marker_weights(setup, tree, trc_marker_names, trc_path)
    _warn(messages)
    return weights, present


def coordinate_task_arrays(
    setup: IKSetup, tree, times=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate tasks as arrays over the tree's full coordinate vector.

    Returns ``coord_index`` (K,) int64 into ``tree.coordinate_names``, ``weight`` (K,) and
    ``target`` float64 (radians or metres): (K,), or (T, K) when a task is ``from_file``, which
    needs the marker frames' ``times`` (T,) in seconds. A task on a locked coordinate is
    skipped with an :class:`~simspine_jax.errors.IKSetupWarning` (OpenSim drops it); one on a
    coordinate not in the model, or with a negative or infinite weight, is an
    :class:`InputError`.
    """
    arrays, messages = _coordinate_tasks(setup, tree, times)
    _warn(messages)
    return arrays


def _coordinate_tasks(setup: IKSetup, tree, times):
    """:func:`coordinate_task_arrays` without emitting: (arrays, messages)."""
    names = list(tree.coordinate_names)
    cidx = {n: i for i, n in enumerate(names)}
    default = np.asarray(tree.coord_default, np.float64)
    idx, w, tgt = [], [], []
    messages = []
    table = None
    for task in setup.coordinate_tasks:
        field = f"IKCoordinateTask {task.name}"
        if task.name not in cidx:
            raise InputError(
                f"coordinate '{task.name}' is not in the model", path=setup.path, field=field
            )
        i = cidx[task.name]
        # the target first: OpenSim reads it (and fails on a missing column) before it drops
        # the tasks of locked coordinates
        if task.value_type == "from_file":
            if table is None:
                table = _coordinate_file(setup, times, field)
            target = _file_targets(table, task.name, tree, i, np.asarray(times, np.float64))
        else:
            target = default[i] if task.value_type == "default_value" else task.value
        if tree.meta["coordinates"][i]["locked"]:
            messages.append(
                f"{_where(setup.path, field)}: coordinate '{task.name}' is locked; task "
                "skipped, as OpenSim does (the coordinate keeps its default value)"
            )
            continue
        if math.isinf(task.weight):
            raise InputError(
                "an infinite weight (OpenSim holds the coordinate at its target as a "
                "constraint) is not supported; give a finite weight",
                path=setup.path,
                field=f"{field}/weight",
            )
        if task.weight < 0:  # Simbody's Assembler::adoptAssemblyGoal refuses it
            raise InputError(
                f"weight must be >= 0, got {task.weight}", path=setup.path, field=f"{field}/weight"
            )
        idx.append(i)
        w.append(task.weight)
        tgt.append(target)
    if table is not None:  # per frame: constant targets repeat
        T = len(times)
        tgt = [np.broadcast_to(np.asarray(t, np.float64), (T,)) for t in tgt]
        arrays = (
            np.asarray(idx, np.int64),
            np.asarray(w, np.float64),
            np.stack(tgt, -1) if tgt else np.zeros((T, 0)),
        )
    else:
        arrays = (
            np.asarray(idx, np.int64),
            np.asarray(w, np.float64),
            np.asarray(tgt, np.float64),
        )
    return arrays, messages


def _coordinate_file(setup: IKSetup, times, field: str):
    """The setup's ``coordinate_file`` as a StorageData (for from_file tasks)."""
    from .io import read_storage

    path = setup.resolve(setup.coordinate_file)
    if path is None:
        raise InputError(
            "value_type from_file needs the setup's coordinate_file, which is not set",
            path=setup.path,
            field=f"{field}/value_type",
        )
    if times is None:
        raise InputError(
            "value_type from_file needs the marker frames' times to read coordinate_file at",
            path=setup.path,
            field=f"{field}/value_type",
        )
    if not path.is_file():
        raise InputError(
            f"coordinate_file {path} not found", path=setup.path, field="coordinate_file"
        )
    return read_storage(path)


def _file_targets(table, name: str, tree, i: int, times: np.ndarray) -> np.ndarray:
    """Column ``name`` of a coordinate file in radians or metres, linearly interpolated at
    ``times``. Shape: (T,)."""
    cols = {c: k for k, c in enumerate(table.labels)}
    # a plain column name (.mot from IK) or a state path ending in /<name>/value (.sto)
    k = cols.get(name)
    if k is None:
        k = next((v for c, v in cols.items() if c.endswith(f"/{name}/value")), None)
    if k is None:
        raise InputError(f"no column for coordinate '{name}'", path=table.path, field=name)
    v = table.values[:, k].astype(np.float64)
    bad = np.nonzero(~np.isfinite(v))[0]
    if bad.size:
        raise InputError(
            "value is not a finite number", path=table.path, frame=int(bad[0]), field=name
        )
    # OpenSim converts rotational coordinates of an inDegrees=yes file (coupled ones stay as
    # written, the convention its IK writes them in)
    if table.in_degrees and tree.meta["coordinates"][i]["motion_type"] == "rotational":
        v = np.deg2rad(v)
    t = table.time
    outside = np.nonzero((times < t[0] - 1e-9) | (times > t[-1] + 1e-9))[0]
    if outside.size:
        raise InputError(
            f"marker time {times[outside[0]]:.6g} s is outside the coordinate file's time range "
            f"[{t[0]:.6g}, {t[-1]:.6g}] s",
            path=table.path,
            frame=int(outside[0]),
            field="time",
        )
    return np.interp(times, t, v)


# ----------------------------------------------------------------------------- one trial
def _nearest_row(times: np.ndarray, t: float) -> int:
    """OpenSim's ``TimeSeriesTable::getNearestRowIndexForTime``: the row nearest ``t``, a tie
    going to the later row (same float64 arithmetic, so the same frame)."""
    k = int(np.searchsorted(times, t, side="left"))
    if k == len(times):
        return len(times) - 1
    if k == 0:
        return 0
    return k if times[k] - t <= t - times[k - 1] else k - 1


def select_frames(setup: IKSetup, times, *, trc_path=None) -> slice:
    """The frames of a trial that OpenSim's IK tool solves for the setup's ``time_range``.

    ``times`` (T,) seconds, increasing. The range is clipped to ``[times[0], times[-1]]``; the
    frames go from the one nearest its start to the one nearest its end (ties: the later),
    both included. No ``time_range``: every frame. A range that misses the trial is an
    :class:`InputError` (OpenSim: "final time is before start time").
    """
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or times.size == 0:
        raise InputError("the trial has no frames", path=trc_path, field="time")
    if setup.time_range is None:
        return slice(0, times.size)
    t0, t1 = setup.time_range
    start, end = max(float(times[0]), t0), min(float(times[-1]), t1)
    if not end >= start:
        data = "the marker data" if trc_path is None else f"the marker data ({trc_path})"
        raise InputError(
            f"time_range [{t0:g}, {t1:g}] s does not overlap the times of {data}, "
            f"[{times[0]:g}, {times[-1]:g}] s (OpenSim fails on it too)",
            path=setup.path,
            field="time_range",
        )
    return slice(_nearest_row(times, start), _nearest_row(times, end) + 1)


@dataclass(frozen=True)
class TrialSetup:
    """An IK setup applied to one trial, as OpenSim's IK tool applies it (:func:`apply_setup`).

    ``frames`` picks the trial's frames to solve and write (``time[frames]`` are the output
    times); ``coord_tasks`` is ``(coord_index, weight, target)`` for those frames (a per-frame
    ``target`` has ``len(time[frames])`` rows); ``warnings`` are the messages issued (tasks
    skipped, OpenSim rules that applied).
    """

    marker_weight: np.ndarray  # (M_tree,) float64
    present: np.ndarray  # (M_tree,) bool: model markers the trial has
    coord_tasks: tuple[np.ndarray, np.ndarray, np.ndarray]
    frames: slice
    warnings: tuple[str, ...]


def apply_setup(setup: IKSetup, tree, trc_marker_names, times, *, trc_path=None) -> TrialSetup:
    """Marker weights, coordinate tasks and frames of one trial (names ``trc_marker_names``,
    frame times ``times``) under ``setup``: :func:`marker_weight_vector`,
    :func:`select_frames` and :func:`coordinate_task_arrays` (``from_file`` targets at the
    selected frames' times) in one call. Each warning is issued once as an
    :class:`~simspine_jax.errors.IKSetupWarning` and returned; bad setups raise
    :class:`InputError`.
    """
    times = np.asarray(times, np.float64)
    weights, present, messages = _marker_weights(setup, tree, trc_marker_names, trc_path)
    frames = select_frames(setup, times, trc_path=trc_path)
    tasks, more = _coordinate_tasks(setup, tree, times[frames])
    messages = messages + more
    _warn(messages)
    return TrialSetup(weights, present, tasks, frames, tuple(messages))
