"""Merging known 3D body markers with triangulated pseudo-markers, and the IK setup that weights
them (issue 10, section 4).

SimSpine annotates a recording by IK on two kinds of markers: *known* ones (e.g. Human3.6M's
motion-capture joints, written as a TRC) and *pseudo-markers* triangulated from 2D keypoints
(another TRC), the known ones weighted higher. :func:`merge_markers` puts both on one time
base, :func:`ik_setup_xml` writes the OpenSim ``InverseKinematicsTool`` setup with per-marker
weights, and :func:`merge_trc_files` does both for files (the ``simspine-jax merge`` command).

Rules (each one tested in ``tests/test_merging.py``):

* **Time base.** ``pseudo_offset_s`` is added to the pseudo-markers' times first (a known
  delay between the two recordings). The merged trial covers the overlap of the two time
  ranges only; no overlap is an :class:`InputError`. Without ``rate_hz`` its frames are those
  of the ``time_base`` stream ("known" by default) inside the overlap; with ``rate_hz`` they are
  ``t0 + k / rate_hz`` from the overlap's start ``t0``.
* **Resampling.** Each stream is interpolated in time at the merged frames, each run of valid
  frames of each marker on its own (:func:`resample_markers`): by default the not-a-knot cubic
  spline through the run (``resample="linear"``: straight lines). A merged frame within
  ``1e-9`` s of a source frame takes that frame's values exactly; a frame between two source
  frames of which one is missing (NaN) is missing. Resample what is already gap-filled and
  filtered (``simspine-jax filter``): gaps are not bridged here.
* **Markers in both files** (``on_duplicate``): ``"prefer_known"`` (default: the known marker
  is kept, the pseudo one dropped), ``"prefer_pseudo"`` (the reverse), ``"rename"`` (both kept,
  the pseudo one renamed ``<name><rename_suffix>``, an error if that name is taken), ``"error"``.
  The marker order is the known file's, then the pseudo file's.
* **Axes.** Both files must be in the same world frame; ``known_up`` / ``pseudo_up`` turn a
  stream from a world with that up axis into OpenSim's Y-up one first
  (:func:`~simspine_jax.filtering.to_opensim_axes`).
* **Weights.** Every known marker gets ``known_weight`` (default 1), every pseudo-marker
  ``pseudo_weight`` (default 0.5), and ``weights`` overrides single markers by name. The
  defaults live in :data:`DEFAULT_KNOWN_WEIGHT` / :data:`DEFAULT_PSEUDO_WEIGHT`.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = [
    "DEFAULT_KNOWN_WEIGHT",
    "DEFAULT_PSEUDO_WEIGHT",
    "DUPLICATE_RULES",
    "MergedMarkers",
    "ik_setup_xml",
    "marker_weights",
    "merge_markers",
    "merge_trc_files",
    "resample_markers",
]

DEFAULT_KNOWN_WEIGHT = 1.0  # IK weight of a known (measured) marker
DEFAULT_PSEUDO_WEIGHT = 0.5  # IK weight of a triangulated pseudo-marker: trusted less
DUPLICATE_RULES = ("prefer_known", "prefer_pseudo", "rename", "error")
RESAMPLE_METHODS = ("cubic", "linear")
TIME_TOL_S = 1e-9  # a merged frame this close to a source frame takes its values exactly


@dataclass(frozen=True)
class MergedMarkers:
    """One marker set on one time base: ``positions`` (T, M, 3) metres, NaN where missing;
    ``source[i]`` is ``"known"`` or ``"pseudo"``; ``duplicates`` are the names found in both
    inputs, resolved by ``rule``; ``renamed`` maps a renamed pseudo-marker's new name to its
    name in the pseudo file."""

    marker_names: tuple[str, ...]
    time: np.ndarray  # (T,)
    positions: np.ndarray  # (T, M, 3)
    source: tuple[str, ...]
    duplicates: tuple[str, ...]
    rule: str
    renamed: dict[str, str]


def resample_markers(time, positions, new_time, *, method: str = "cubic") -> np.ndarray:
    """``positions`` (T, ...) sampled at ``time`` (T,), increasing, interpolated in time at
    ``new_time`` (N,). Shape: (N, ...).

    Each entry of ``positions[0]`` is a channel; its runs of valid (non-NaN) frames are
    interpolated separately: ``method="cubic"`` by the not-a-knot cubic spline through the
    run's frames (``scipy.interpolate.make_interp_spline``, ``k=3``; a run of fewer than 4
    frames linearly), ``"linear"`` by straight lines between neighbouring frames. A new time
    within :data:`TIME_TOL_S` of a source frame takes that frame's values exactly; one between
    two frames of which one is NaN, or outside ``[time[0], time[-1]]`` (beyond the tolerance),
    is NaN. Cubic interpolation reproduces cubic polynomials in time exactly; on smooth motion
    its error is O(dt^4) where linear's is O(dt^2) (``tests/test_merging.py`` measures both).
    """
    if method not in RESAMPLE_METHODS:
        raise InputError(
            f"method must be one of {RESAMPLE_METHODS}, got {method!r}", field="resample"
        )
    t = np.asarray(time, np.float64)
    p = np.asarray(positions, np.float64)
    tn = np.asarray(new_time, np.float64)
    if t.ndim != 1 or t.size == 0 or p.shape[:1] != t.shape or tn.ndim != 1:
        raise InputError(
            f"time (T,) and positions (T, ...) expected, got {t.shape} and {p.shape}", field="time"
        )
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise InputError("time must increase", frame=int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1)
    T = t.size
    v = p.reshape(T, -1)  # (T, C)
    # i: the source frame at or before each new time; w: the fraction towards frame i + 1
    i = np.clip(np.searchsorted(t, tn, side="right") - 1, 0, T - 1)
    j = np.minimum(i + 1, T - 1)
    span = np.where(j > i, t[j] - t[i], 1.0)
    w = np.where(j > i, (tn - t[i]) / span, 0.0)
    exact_i = np.abs(tn - t[i]) <= TIME_TOL_S
    exact_j = np.abs(tn - t[j]) <= TIME_TOL_S
    w = np.where(exact_i, 0.0, np.where(exact_j, 1.0, w))[:, None]
    a, b = v[i], v[j]
    # (1 - w) a + w b, but a frame that is not needed (w = 0 or 1) cannot make it NaN
    out = np.where(w == 0.0, a, np.where(w == 1.0, b, (1.0 - w) * a + w * b))
    if method == "cubic":
        _cubic_resample(t, v, tn, out)
        exact = (w[:, 0] == 0.0) | (w[:, 0] == 1.0)
        out[exact] = np.where(w[exact] == 0.0, a[exact], b[exact])
    out[(tn < t[0] - TIME_TOL_S) | (tn > t[-1] + TIME_TOL_S)] = np.nan
    assert out.shape == (tn.size, v.shape[1])
    return out.reshape((tn.size,) + p.shape[1:])


def _cubic_resample(t: np.ndarray, v: np.ndarray, tn: np.ndarray, out: np.ndarray) -> None:
    """Overwrite ``out`` (N, C) with the not-a-knot spline of each run of >= 4 valid frames of
    ``v`` (T, C), at the new times inside the run's span; channels with the same run are
    fitted together."""
    from scipy.interpolate import make_interp_spline

    from .filtering import _runs

    T = t.size
    ch, start, stop = _runs(~np.isnan(v))
    long = stop - start >= 4
    order = np.argsort(tn, kind="stable")
    tn_sorted = tn[order]
    key = start[long] * (T + 1) + stop[long]
    uniq, inverse = np.unique(key, return_inverse=True)
    for u, k in enumerate(uniq.tolist()):
        s, e = divmod(k, T + 1)
        lo = np.searchsorted(tn_sorted, t[s] - TIME_TOL_S, side="left")
        hi = np.searchsorted(tn_sorted, t[e - 1] + TIME_TOL_S, side="right")
        if hi <= lo:
            continue
        cs = ch[long][inverse == u]
        rows = order[lo:hi]
        spline = make_interp_spline(t[s:e], v[s:e][:, cs], k=3)
        out[np.ix_(rows, cs)] = spline(np.clip(tn[rows], t[s], t[e - 1]))


def _merged_time(tk, tp, rate_hz, time_base, known_path, pseudo_path) -> np.ndarray:
    t0, t1 = max(tk[0], tp[0]), min(tk[-1], tp[-1])
    if t1 < t0 - TIME_TOL_S:
        raise InputError(
            f"the two recordings do not overlap in time: known [{tk[0]:.6g}, {tk[-1]:.6g}] s, "
            f"pseudo [{tp[0]:.6g}, {tp[-1]:.6g}] s (after the offset); set the offset",
            path=pseudo_path,
            field="Time",
        )
    if rate_hz is not None:
        rate = float(rate_hz)
        if not (math.isfinite(rate) and rate > 0):
            raise InputError(f"rate must be a positive number, got {rate_hz!r}", field="rate_hz")
        n = int(math.floor((t1 - t0) * rate + 1e-9)) + 1
        return t0 + np.arange(n) / rate
    if time_base not in ("known", "pseudo"):
        raise InputError(
            f"time_base must be 'known' or 'pseudo', got {time_base!r}", field="time_base"
        )
    base = tk if time_base == "known" else tp
    keep = (base >= t0 - TIME_TOL_S) & (base <= t1 + TIME_TOL_S)
    return base[keep]


def merge_markers(
    known,
    pseudo,
    *,
    rate_hz: float | None = None,
    time_base: str = "known",
    pseudo_offset_s: float = 0.0,
    on_duplicate: str = "prefer_known",
    rename_suffix: str = "_pseudo",
    known_up: str | None = None,
    pseudo_up: str | None = None,
    resample: str = "cubic",
) -> MergedMarkers:
    """Known markers and pseudo-markers (two :class:`~simspine_jax.io.TRCData`, or objects with
    ``marker_names``, ``time``, ``positions`` in metres) on one time base; rules in the module
    doc. Returns a :class:`MergedMarkers`."""
    from .filtering import to_opensim_axes

    if on_duplicate not in DUPLICATE_RULES:
        raise InputError(
            f"on_duplicate must be one of {DUPLICATE_RULES}, got {on_duplicate!r}",
            field="on_duplicate",
        )
    kpath, ppath = getattr(known, "path", None), getattr(pseudo, "path", None)
    k_names = [str(n) for n in known.marker_names]
    p_names = [str(n) for n in pseudo.marker_names]
    offset = float(pseudo_offset_s)
    if not math.isfinite(offset):
        raise InputError("the offset must be finite", field="pseudo_offset_s")
    tk = np.asarray(known.time, np.float64)
    tp = np.asarray(pseudo.time, np.float64) + offset
    pk = np.asarray(known.positions, np.float64)
    pp = np.asarray(pseudo.positions, np.float64)
    if known_up is not None:
        pk = to_opensim_axes(pk, known_up)
    if pseudo_up is not None:
        pp = to_opensim_axes(pp, pseudo_up)

    dup = [n for n in p_names if n in set(k_names)]
    if dup and on_duplicate == "error":
        raise InputError(
            f"{len(dup)} marker(s) are in both files ({', '.join(dup[:5])}"
            f"{', ...' if len(dup) > 5 else ''}); choose a rule for them (prefer_known, "
            "prefer_pseudo, rename)",
            path=ppath,
            field=dup[0],
        )
    k_keep = [n for n in k_names if not (on_duplicate == "prefer_pseudo" and n in dup)]
    p_keep = [n for n in p_names if not (on_duplicate == "prefer_known" and n in dup)]
    renamed: dict[str, str] = {}
    p_out = list(p_keep)
    if on_duplicate == "rename":
        taken = set(k_names) | set(p_names)
        for i, n in enumerate(p_keep):
            if n in dup:
                new = f"{n}{rename_suffix}"
                if new in taken or not rename_suffix:
                    raise InputError(
                        f"cannot rename the pseudo-marker to {new!r}: the name is taken",
                        path=ppath,
                        field=n,
                    )
                renamed[new] = n
                p_out[i] = new
                taken.add(new)

    time = _merged_time(tk, tp, rate_hz, time_base, kpath, ppath)
    kidx = [k_names.index(n) for n in k_keep]
    pidx = [p_names.index(n) for n in p_keep]
    pos = np.concatenate(
        [
            resample_markers(tk, pk[:, kidx], time, method=resample),
            resample_markers(tp, pp[:, pidx], time, method=resample),
        ],
        axis=1,
    )
    assert pos.shape == (time.size, len(kidx) + len(pidx), 3)
    return MergedMarkers(
        marker_names=tuple(k_keep + p_out),
        time=time,
        positions=pos,
        source=("known",) * len(kidx) + ("pseudo",) * len(pidx),
        duplicates=tuple(dup),
        rule=on_duplicate,
        renamed=renamed,
    )


def marker_weights(
    merged: MergedMarkers,
    known_weight: float = DEFAULT_KNOWN_WEIGHT,
    pseudo_weight: float = DEFAULT_PSEUDO_WEIGHT,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """IK weight per merged marker: ``known_weight`` or ``pseudo_weight`` by source, then
    ``weights`` by name (each name must be a merged marker). Weights are finite and >= 0."""
    out = {
        n: float(known_weight if s == "known" else pseudo_weight)
        for n, s in zip(merged.marker_names, merged.source, strict=True)
    }
    for n, w in (weights or {}).items():
        if n not in out:
            raise InputError(f"no merged marker named {n!r} to weight", field="weights")
        out[n] = float(w)
    for n, w in out.items():
        if not (math.isfinite(w) and w >= 0):
            raise InputError(f"a marker weight must be finite and >= 0, got {w}", field=n)
    return out


def _fmt(v: float) -> str:
    return "Inf" if math.isinf(v) else repr(float(v))


def ik_setup_xml(
    path: str | os.PathLike[str],
    weights: Mapping[str, float],
    *,
    marker_file: str | os.PathLike[str] | None = None,
    model_file: str | os.PathLike[str] | None = None,
    time_range: tuple[float, float] | None = None,
    output_motion_file: str | None = None,
    results_directory: str = ".",
    accuracy: float = 1e-5,
    constraint_weight: float = math.inf,
    name: str = "merged",
    comment: str | None = None,
) -> Path:
    """Write an OpenSim 4 ``InverseKinematicsTool`` setup with one applied ``IKMarkerTask`` per
    entry of ``weights`` (in order), and no coordinate task. File names inside the setup's
    folder are written relative to it (OpenSim and :func:`~simspine_jax.ik_setup.read_ik_setup`
    resolve them against it), others absolute; ``None`` is written ``Unassigned``. Atomic;
    returns the path."""
    from .io import atomic_write_text

    p = Path(path)
    folder = p.resolve().parent

    def rel(f) -> str:
        if f is None:
            return "Unassigned"
        f = Path(f)
        try:
            r = os.path.relpath(f.resolve(), folder)
        except ValueError:  # another drive
            return str(f.resolve())
        # inside the setup's folder: relative (the folder can move); outside: absolute (OpenSim
        # 4.6's IK tool failed to find a model at ../../../../x.osim although the path was right)
        return str(f.resolve()) if r.split(os.sep)[0] == os.pardir else r

    if not weights:
        raise InputError("no marker to write a task for", path=str(p), field="weights")
    root = ET.Element("OpenSimDocument", Version="40000")
    tool = ET.SubElement(root, "InverseKinematicsTool", name=name)

    def sub(parent, tag, text=None, **attrib):
        el = ET.SubElement(parent, tag, **attrib)
        if text is not None:
            el.text = text
        return el

    sub(tool, "results_directory", results_directory)
    sub(tool, "model_file", rel(model_file))
    sub(tool, "constraint_weight", _fmt(constraint_weight))
    sub(tool, "accuracy", _fmt(accuracy))
    objects = sub(sub(tool, "IKTaskSet", name=f"{name}_tasks"), "objects")
    for n, w in weights.items():
        w = float(w)
        if not (math.isfinite(w) and w >= 0):
            raise InputError(f"a marker weight must be finite and >= 0, got {w}", field=str(n))
        task = sub(objects, "IKMarkerTask", name=str(n))
        sub(task, "apply", "true")
        sub(task, "weight", _fmt(w))
    sub(tool, "marker_file", rel(marker_file))
    sub(tool, "coordinate_file", "Unassigned")
    if time_range is not None:
        sub(tool, "time_range", f"{_fmt(time_range[0])} {_fmt(time_range[1])}")
    sub(tool, "report_errors", "true")
    sub(tool, "output_motion_file", output_motion_file or "Unassigned")
    sub(tool, "report_marker_locations", "false")
    ET.indent(root, space="\t")
    text = ET.tostring(root, encoding="unicode")
    head = '<?xml version="1.0" encoding="UTF-8" ?>\n'
    if comment:
        head += f"<!-- {comment.replace('--', '-')} -->\n"
    atomic_write_text(p, head + text + "\n")
    return p


def merge_trc_files(
    known_trc: str | os.PathLike[str],
    pseudo_trc: str | os.PathLike[str],
    out_trc: str | os.PathLike[str],
    setup_out: str | os.PathLike[str] | None = None,
    *,
    known_weight: float = DEFAULT_KNOWN_WEIGHT,
    pseudo_weight: float = DEFAULT_PSEUDO_WEIGHT,
    weights: Mapping[str, float] | None = None,
    model_file: str | os.PathLike[str] | None = None,
    output_motion_file: str | None = None,
    units: str = "m",
    **merge_options,
) -> dict:
    """Read two TRC files, :func:`merge_markers` them (``merge_options``: rate_hz, time_base,
    pseudo_offset_s, on_duplicate, rename_suffix, known_up, pseudo_up, resample), write the
    merged TRC and, with ``setup_out``, its IK setup (:func:`ik_setup_xml`: weights from
    :func:`marker_weights`, ``time_range`` the merged trial's, ``marker_file`` the merged TRC).
    Returns a JSON-ready summary.

    ``out_trc`` (``setup_out``) ending with a path separator or naming a folder means
    ``merged.trc`` (``IK_Setup_merged.xml``) inside it; an output that is an input, or both
    outputs the same file, is refused before anything is read (:mod:`simspine_jax.io.outputs`).
    """
    from .io import read_trc, write_trc
    from .io.outputs import output_file, refuse_inputs, writing_to

    out_trc = output_file(out_trc, "merged.trc", field="out")
    refuse_inputs([out_trc], [known_trc, pseudo_trc], field="out")
    if setup_out is not None:
        setup_out = output_file(setup_out, "IK_Setup_merged.xml", field="setup_out")
        refuse_inputs([setup_out], [known_trc, pseudo_trc], field="setup_out")
        refuse_inputs([setup_out], [out_trc], field="setup_out", what="the TRC output")
    known, pseudo = read_trc(known_trc), read_trc(pseudo_trc)
    merged = merge_markers(known, pseudo, **merge_options)
    if merged.time.size == 0:
        raise InputError("no frame of the time base lies in the overlap", path=str(known_trc))
    w = marker_weights(merged, known_weight, pseudo_weight, weights)
    rate = merge_options.get("rate_hz")
    if rate is None and merged.time.size < 2:
        rate = (
            known.data_rate
            if merge_options.get("time_base", "known") == "known"
            else (pseudo.data_rate)
        )
    with writing_to(out_trc, field="out"):
        write_trc(
            out_trc, merged.marker_names, merged.time, merged.positions, units=units, data_rate=rate
        )
    summary = dict(
        known=str(known_trc),
        pseudo=str(pseudo_trc),
        output=str(out_trc),
        frames=int(merged.time.size),
        time_range=[float(merged.time[0]), float(merged.time[-1])],
        known_markers=merged.source.count("known"),
        pseudo_markers=merged.source.count("pseudo"),
        duplicates=list(merged.duplicates),
        duplicate_rule=merged.rule,
        renamed=merged.renamed,
        missing_frames={
            n: int(k)
            for n, k in zip(
                merged.marker_names, np.isnan(merged.positions).any(axis=2).sum(axis=0), strict=True
            )
            if k
        },
    )
    if setup_out is not None:
        comment = (
            f"written by simspine-jax merge: {summary['known_markers']} known markers (weight "
            f"{known_weight:g}), {summary['pseudo_markers']} pseudo-markers (weight "
            f"{pseudo_weight:g}); markers in both files: {merged.rule}"
        )
        with writing_to(setup_out, field="setup_out"):
            ik_setup_xml(
                setup_out,
                w,
                marker_file=out_trc,
                model_file=model_file,
                time_range=(float(merged.time[0]), float(merged.time[-1])),
                output_motion_file=output_motion_file,
                comment=comment,
            )
        summary["setup"] = str(setup_out)
        summary["weights"] = w
    return summary
