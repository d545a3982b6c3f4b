"""OpenSim ScaleTool setup files (``<ScaleTool>`` XML, e.g. Pose2Sim's ``Scaling_Setup_*.xml``).

:func:`read_scale_setup` reads one into a :class:`ScaleSetup` without OpenSim. What each part
means for :mod:`simspine_jax.scaling` (OpenSim 4.6's ``ScaleTool``, ``ModelScaler``,
``Measurement`` and ``MarkerPlacer``, read in opensim-core):

* ``GenericModelMaker``: ``model_file`` and an optional ``marker_set_file`` that replaces or
  adds model markers before anything else;
* ``ModelScaler``: ``apply``; ``scaling_order`` (``measurements`` and ``manualScale`` in any
  order: later entries overwrite factors set by earlier ones); the ``MeasurementSet`` (each
  applied ``Measurement``: marker pairs and, per body of its ``BodyScaleSet``, the axes X/Y/Z
  its factor is written to); the ``ScaleSet`` (manual ``scales`` per ``segment``, only entries
  whose ``apply`` is true); ``marker_file`` (the static trial) and ``time_range``;
* ``MarkerPlacer``: ``apply``; its ``IKTaskSet`` (marker weights and coordinate tasks, the IK
  setup rules of :mod:`simspine_jax.ik_setup`), ``marker_file``, ``coordinate_file``,
  ``time_range``, ``max_marker_movement``;
* output file names (``output_model_file`` of the placer, else of the scaler).

Ignored because they do not change kinematics: ``mass`` (OpenSim rescales body masses to it),
``preserve_mass_distribution`` (whether body masses follow the segment volumes), ``height`` and
``age`` (informational in OpenSim too), ``notes``. They are kept in the result for reporting.
File names are kept as written (``None`` when absent or ``Unassigned``); :meth:`ScaleSetup.resolve`
makes them absolute against the setup file's folder, as OpenSim does.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..ik_setup import VALUE_TYPES, CoordinateTask, IKSetup, resolve_beside

SCALING_STEPS = ("measurements", "manualScale")
_AXES = {"x": 0, "y": 1, "z": 2}
_UNASSIGNED = ("", "unassigned")


@dataclass(frozen=True)
class Measurement:
    """One ``Measurement``: its factor is the mean over ``marker_pairs`` of experimental over
    model distance; it is written to ``axes`` (0=X, 1=Y, 2=Z) of each body in ``bodies``."""

    name: str
    apply: bool
    marker_pairs: tuple[tuple[str, str], ...]
    bodies: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ManualScale:
    """One applied ``Scale`` of the ``ScaleSet``: factors (x, y, z) for body ``segment``."""

    segment: str
    scales: tuple[float, float, float]


@dataclass(frozen=True)
class MarkerPlacement:
    """The ``MarkerPlacer`` part: IK of the static pose, then non-fixed markers moved onto it."""

    apply: bool
    ik: IKSetup  # marker weights and coordinate tasks of its IKTaskSet, its time_range
    marker_file: str | None
    coordinate_file: str | None
    time_range: tuple[float, float] | None
    max_marker_movement: float
    output_model_file: str | None
    output_marker_file: str | None
    output_motion_file: str | None


@dataclass(frozen=True)
class ScaleSetup:
    """What a ScaleTool setup file asks for. Use :meth:`resolve` for its file names."""

    name: str
    model_file: str | None
    marker_set_file: str | None
    scaler_apply: bool
    scaling_order: tuple[str, ...]
    measurements: tuple[Measurement, ...]
    manual_scales: tuple[ManualScale, ...]
    marker_file: str | None
    time_range: tuple[float, float] | None
    output_model_file: str | None
    output_scale_file: str | None
    placer: MarkerPlacement | None
    # not used for kinematics (see the module doc); -1 means "not given", as in OpenSim
    mass: float = -1.0
    height: float = -1.0
    age: float = -1.0
    preserve_mass_distribution: bool = True
    path: str | None = None
    ignored: tuple[str, ...] = field(default=())

    def resolve(self, name: str | None) -> Path | None:
        """A file name from the setup, made absolute against the setup file's folder."""
        return resolve_beside(self.path, name)

    @property
    def output_model(self) -> str | None:
        """The scaled model's file: the placer's output if it runs, else the scaler's."""
        if self.placer is not None and self.placer.apply and self.placer.output_model_file:
            return self.placer.output_model_file
        return self.output_model_file


# ----------------------------------------------------------------------------- small parsers
def _text(el: ET.Element | None, tag: str) -> str | None:
    if el is None:
        return None
    c = el.find(tag)
    if c is None or c.text is None:
        return None
    return c.text.strip()


def _file(text: str | None) -> str | None:
    if text is None or text.strip().lower() in _UNASSIGNED:
        return None
    return text.strip()


def _number(text: str, path: str, fld: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"expected a number, got {text!r}", path=path, field=fld) from None
    if math.isnan(v):
        raise InputError("NaN is not a valid value", path=path, field=fld)
    return v


def _flag(text: str | None, default: bool, path: str, fld: str) -> bool:
    if text is None or text == "":
        return default
    low = text.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise InputError(f"expected true or false, got {text!r}", path=path, field=fld)


def _time_range(text: str | None, path: str, fld: str) -> tuple[float, float] | None:
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2:
        raise InputError(f"expected two numbers (start end), got {text!r}", path=path, field=fld)
    t0, t1 = (_number(p, path, fld) for p in parts)
    if not t1 >= t0:
        raise InputError(f"end time {t1} is before start time {t0}", path=path, field=fld)
    return t0, t1


def _objects(el: ET.Element | None, tag: str) -> list[ET.Element]:
    """Children of ``el/<tag>/objects`` (OpenSim Set layout)."""
    if el is None:
        return []
    objs = el.find(f"{tag}/objects")
    return [] if objs is None else [c for c in objs if isinstance(c.tag, str)]


# ----------------------------------------------------------------------------- sections
def _measurement(el: ET.Element, path: str) -> Measurement:
    name = (el.get("name") or "").strip()
    fld = f"Measurement {name}"
    if el.tag != "Measurement":
        raise InputError(f"unexpected <{el.tag}> in MeasurementSet", path=path, field=fld)
    pairs = []
    for k, mp in enumerate(_objects(el, "MarkerPairSet")):
        names = (_text(mp, "markers") or "").split()
        if len(names) != 2:
            raise InputError(
                f"marker pair {k + 1} needs two marker names, got {names}",
                path=path,
                field=f"{fld}/MarkerPairSet",
            )
        pairs.append((names[0], names[1]))
    bodies: dict[str, tuple[int, ...]] = {}
    for bs in _objects(el, "BodyScaleSet"):
        body = (bs.get("name") or "").strip()
        axes = []
        for a in (_text(bs, "axes") or "").split():
            if a.lower() not in _AXES:
                raise InputError(
                    f"axis {a!r} is not X, Y or Z", path=path, field=f"{fld}/BodyScale {body}"
                )
            axes.append(_AXES[a.lower()])
        bodies[body] = tuple(sorted(set(axes)))
    apply = _flag(_text(el, "apply"), True, path, f"{fld}/apply")
    return Measurement(name, apply, tuple(pairs), bodies)


def _manual_scales(scaler: ET.Element | None, path: str) -> tuple[ManualScale, ...]:
    out = []
    for sc in _objects(scaler, "ScaleSet"):
        seg = _text(sc, "segment") or (sc.get("name") or "").strip()
        fld = f"Scale {seg}"
        if not _flag(_text(sc, "apply"), True, path, f"{fld}/apply"):
            continue
        vals = (_text(sc, "scales") or "").split()
        if len(vals) != 3:
            raise InputError(f"expected 3 scale factors, got {vals}", path=path, field=fld)
        out.append(ManualScale(seg, tuple(_number(v, path, fld) for v in vals)))
    return tuple(out)


def _ik_tasks(placer: ET.Element, path: str) -> tuple[dict[str, float], list[CoordinateTask]]:
    """Applied marker weights and coordinate tasks of the placer's ``IKTaskSet`` (the same
    rules as :func:`simspine_jax.ik_setup.read_ik_setup`)."""
    weights: dict[str, float] = {}
    tasks: list[CoordinateTask] = []
    seen = set()
    for el in _objects(placer, "IKTaskSet"):
        name = (el.get("name") or "").strip()
        fld = f"IKTaskSet/{el.tag} {name}"
        if el.tag not in ("IKMarkerTask", "IKCoordinateTask"):
            raise InputError(f"unknown task type <{el.tag}>", path=path, field=fld)
        if (el.tag, name) in seen:
            raise InputError("task is listed twice", path=path, field=fld)
        seen.add((el.tag, name))
        if not _flag(_text(el, "apply"), True, path, f"{fld}/apply"):
            continue
        w_t = _text(el, "weight")
        weight = 0.0 if not w_t else _number(w_t, path, f"{fld}/weight")
        if el.tag == "IKMarkerTask":
            weights[name] = weight
            continue
        vt = _text(el, "value_type") or "default_value"
        if vt not in VALUE_TYPES:
            raise InputError(
                f"value_type {vt!r} is not one of {', '.join(VALUE_TYPES)}",
                path=path,
                field=f"{fld}/value_type",
            )
        v_t = _text(el, "value")
        tasks.append(CoordinateTask(name, weight, vt, 0.0 if not v_t else _number(v_t, path, fld)))
    return weights, tasks


def _placer(tool: ET.Element, path: str) -> MarkerPlacement | None:
    mp = tool.find("MarkerPlacer")
    if mp is None:
        return None
    weights, tasks = _ik_tasks(mp, path)
    tr = _time_range(_text(mp, "time_range"), path, "MarkerPlacer/time_range")
    mm_t = _text(mp, "max_marker_movement")
    coord_file = _file(_text(mp, "coordinate_file"))
    ik = IKSetup(
        marker_weights=weights,
        coordinate_tasks=tuple(tasks),
        time_range=tr,
        coordinate_file=coord_file,
        path=path,
    )
    return MarkerPlacement(
        apply=_flag(_text(mp, "apply"), True, path, "MarkerPlacer/apply"),
        ik=ik,
        marker_file=_file(_text(mp, "marker_file")),
        coordinate_file=coord_file,
        time_range=tr,
        max_marker_movement=-1.0
        if not mm_t
        else _number(mm_t, path, "MarkerPlacer/max_marker_movement"),
        output_model_file=_file(_text(mp, "output_model_file")),
        output_marker_file=_file(_text(mp, "output_marker_file")),
        output_motion_file=_file(_text(mp, "output_motion_file")),
    )


def read_scale_setup(path: str | Path) -> ScaleSetup:
    """Parse an OpenSim ``ScaleTool`` setup file. Raises :class:`InputError` naming the field."""
    path = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        raise InputError(f"malformed XML: {e}", path=path, line=line) from None
    except OSError as e:
        raise InputError(f"cannot read scale setup: {e.strerror or e}", path=path) from None
    tool = root if root.tag == "ScaleTool" else root.find("ScaleTool")
    if tool is None:
        raise InputError(
            f"no <ScaleTool> element (root is <{root.tag}>); is this an OpenSim scale setup?",
            path=path,
        )
    gmm = tool.find("GenericModelMaker")
    scaler = tool.find("ModelScaler")
    order = tuple((_text(scaler, "scaling_order") or "").split())
    for step in order:
        if step not in SCALING_STEPS:
            raise InputError(
                f"unknown scaling step {step!r} (expected 'measurements' or 'manualScale', "
                "as OpenSim does)",
                path=path,
                field="ModelScaler/scaling_order",
            )
    measurements = tuple(_measurement(m, path) for m in _objects(scaler, "MeasurementSet"))
    names = [m.name for m in measurements]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"measurements listed twice: {dup}", path=path, field="MeasurementSet")

    def num(tag: str, default: float) -> float:
        t = _text(tool, tag)
        return default if not t else _number(t, path, tag)

    ignored = []
    for tag in ("mass", "preserve_mass_distribution", "height", "age"):
        where = tool if tag != "preserve_mass_distribution" else scaler
        if _text(where, tag) not in (None, "", "-1"):
            ignored.append(tag)
    return ScaleSetup(
        name=(tool.get("name") or Path(path).stem).strip(),
        model_file=_file(_text(gmm, "model_file")),
        marker_set_file=_file(_text(gmm, "marker_set_file")),
        scaler_apply=scaler is not None
        and _flag(_text(scaler, "apply"), True, path, "ModelScaler/apply"),
        scaling_order=order,
        measurements=measurements,
        manual_scales=_manual_scales(scaler, path),
        marker_file=_file(_text(scaler, "marker_file")),
        time_range=_time_range(_text(scaler, "time_range"), path, "ModelScaler/time_range"),
        output_model_file=_file(_text(scaler, "output_model_file")),
        output_scale_file=_file(_text(scaler, "output_scale_file")),
        placer=_placer(tool, path),
        mass=num("mass", -1.0),
        height=num("height", -1.0),
        age=num("age", -1.0),
        preserve_mass_distribution=_flag(
            _text(scaler, "preserve_mass_distribution"),
            True,
            path,
            "ModelScaler/preserve_mass_distribution",
        ),
        path=path,
        ignored=tuple(ignored),
    )
