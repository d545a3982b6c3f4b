"""Gap filling, zero-phase Butterworth low-pass filtering and axis conventions of 3D markers.

The stage between triangulation and IK, as Pose2Sim runs it (interpolate short gaps, then
filter, then turn a Z-up world into OpenSim's Y-up one), written to be exact and explicit:

* :func:`fill_gaps` interpolates gaps of at most ``max_gap`` frames and leaves longer gaps and
  gaps at the start or end of a trial NaN, reporting every gap (:class:`GapReport`).
* :func:`butterworth_filtfilt` is scipy's ``butter`` + ``filtfilt`` (default padding) applied to
  each contiguous run of valid samples on its own, so a filter never reaches across a gap. A
  run too short for ``filtfilt``'s padding is left unfiltered and reported
  (:class:`FilterReport`), or raises with ``on_short="error"``.
* :func:`to_opensim_axes` / :func:`from_opensim_axes` rotate points between a world whose
  vertical axis is ``up`` and OpenSim's Y-up world.
* :func:`filter_trc` runs the three on a TRC file (the ``simspine-jax filter`` command).

Time runs along axis 0 and samples are assumed uniform in time (one frame index = one sample);
:func:`filter_trc` checks that for a TRC. Everything is vectorised over channels; the only
Python loops run over gaps or runs of samples, never over frames.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = [
    "FilterReport",
    "GapReport",
    "axes_rotation",
    "butterworth_filtfilt",
    "fill_gaps",
    "filter_trc",
    "filtfilt_min_frames",
    "from_opensim_axes",
    "to_opensim_axes",
]

GAP_METHODS = ("cubic", "linear")
# how a gap that is not filled sits in its channel (GapReport.gap_kind)
GAP_KINDS = ("interior", "leading", "trailing", "all")


# ----------------------------------------------------------------------------- runs of a mask
def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along axis 0 of a (T, C) mask, ordered by channel then time.

    Returns ``channel``, ``start`` and ``stop`` (exclusive), each (R,) int64.
    """
    T, C = mask.shape
    padded = np.zeros((T + 2, C), np.int8)
    padded[1:-1] = mask
    d = np.diff(padded, axis=0).T  # (C, T + 1): +1 where a run starts, -1 one past its end
    ch_start, start = np.nonzero(d == 1)
    ch_stop, stop = np.nonzero(d == -1)
    assert np.array_equal(ch_start, ch_stop)
    return ch_start.astype(np.int64), start.astype(np.int64), stop.astype(np.int64)


# ----------------------------------------------------------------------------- gap filling
@dataclass(frozen=True)
class GapReport:
    """Every gap :func:`fill_gaps` found, and what it did with it.

    Channels are the entries of ``x.shape[1:]`` (points: ``x.shape[1:-1]``), flattened in C
    order; ``channel_shape`` gives their shape. Per channel (C,) int64: ``gaps_filled``,
    ``gaps_left``, ``frames_filled``, ``frames_left``. Per gap (G,), ordered by channel then
    time: ``gap_channel``, ``gap_start`` (first missing frame), ``gap_length`` (frames),
    ``gap_filled`` (bool) and ``gap_kind`` (index into :data:`GAP_KINDS`: interior, leading,
    trailing, or the whole trial).
    """

    channel_shape: tuple[int, ...]
    n_frames: int
    max_gap: int
    method: str
    gaps_filled: np.ndarray
    gaps_left: np.ndarray
    frames_filled: np.ndarray
    frames_left: np.ndarray
    gap_channel: np.ndarray
    gap_start: np.ndarray
    gap_length: np.ndarray
    gap_filled: np.ndarray
    gap_kind: np.ndarray

    def to_dict(self, names=None) -> dict:
        """A JSON-ready summary: per channel (named by ``names``, else by its index) the counts
        and the gaps left as ``[start, length, kind]``; channels without gaps are omitted."""
        n = int(np.prod(self.channel_shape, dtype=np.int64))
        if names is None:
            names = [str(i) for i in range(n)]
        names = [str(s) for s in names]
        if len(names) != n:
            raise InputError(f"{len(names)} names for {n} channels", field="names")
        per: dict[str, dict] = {}
        for c in np.flatnonzero(self.gaps_filled + self.gaps_left).tolist():
            sel = (self.gap_channel == c) & ~self.gap_filled
            per[names[c]] = dict(
                gaps_filled=int(self.gaps_filled[c]),
                gaps_left=int(self.gaps_left[c]),
                frames_filled=int(self.frames_filled[c]),
                frames_left=int(self.frames_left[c]),
                left=[
                    [int(s), int(length), GAP_KINDS[k]]
                    for s, length, k in zip(
                        self.gap_start[sel], self.gap_length[sel], self.gap_kind[sel], strict=True
                    )
                ],
            )
        return dict(
            max_gap=self.max_gap,
            method=self.method,
            gaps_filled=int(self.gaps_filled.sum()),
            gaps_left=int(self.gaps_left.sum()),
            frames_filled=int(self.frames_filled.sum()),
            frames_left=int(self.frames_left.sum()),
            channels=per,
        )


def _as_float_array(x, field: str) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.ndim < 1 or a.shape[0] == 0:
        raise InputError(
            f"expected an array with frames along axis 0, got shape {a.shape}", field=field
        )
    if np.isinf(a).any():
        frame = int(np.flatnonzero(np.isinf(a).reshape(a.shape[0], -1).any(axis=1))[0])
        raise InputError("infinite value (use NaN for a missing sample)", frame=frame, field=field)
    return a


def fill_gaps(x, max_gap: int, *, method: str = "cubic", points: bool | None = None):
    """Interpolate gaps (NaN runs along axis 0) of at most ``max_gap`` frames.

    ``x``: (T, *channels) or, with ``points``, (T, *channels, D) points whose D coordinates are
    missing together (a frame where any coordinate is NaN is a missing frame of that point and
    a filled frame gets all D). ``points`` defaults to ``x.ndim >= 3``: (T, M, 3) markers.

    Rules, per channel:

    * a gap is a maximal run of missing frames; a gap between two valid frames that is at most
      ``max_gap`` frames long is filled, every other gap (longer, or touching the first or last
      frame, or a channel with no valid frame) is left as it is and reported;
    * ``method="linear"``: straight line between the valid frames either side;
    * ``method="cubic"``: the not-a-knot cubic spline (``scipy.interpolate.make_interp_spline``,
      ``k=3``, what Pose2Sim's ``interpolate_zeros_nans`` fits through ``interp1d(kind='cubic')``)
      through the valid frames of the gap's segment: the stretch of the channel between gaps
      that are left, so data on the far side of a long gap has no say (Pose2Sim fits one
      spline through every valid frame of the trial, which differs from ours only near a long
      gap). A segment with fewer than 4 valid frames is filled linearly. Cubic polynomials in
      time are reproduced exactly.

    Only NaN marks a missing sample (Pose2Sim also treats an exact 0 as missing; convert such
    values to NaN first). Gaps left stay NaN (Pose2Sim can fill them with the last value or
    zeros; OpenSim's IK skips a NaN marker in that frame).

    Returns ``(filled, report)``: ``filled`` has ``x``'s shape and floating dtype (valid samples
    and gaps left are copied unchanged), ``report`` a :class:`GapReport`.
    """
    if method not in GAP_METHODS:
        raise InputError(f"method must be one of {GAP_METHODS}, got {method!r}", field="method")
    if isinstance(max_gap, bool) or int(max_gap) != max_gap or max_gap < 0:
        raise InputError(f"max_gap must be an integer >= 0, got {max_gap!r}", field="max_gap")
    max_gap = int(max_gap)
    a = _as_float_array(x, "x")
    if points is None:
        points = a.ndim >= 3
    if points and a.ndim < 2:
        raise InputError(f"points need shape (T, ..., D), got {a.shape}", field="x")
    T = a.shape[0]
    channel_shape = a.shape[1:-1] if points else a.shape[1:]
    D = a.shape[-1] if points else 1
    v = a.reshape(T, -1, D)  # (T, C, D)
    C = v.shape[1]
    missing = np.isnan(v).any(axis=2)  # (T, C)

    g_ch, g_start, g_stop = _runs(missing)
    g_len = g_stop - g_start
    leading, trailing = g_start == 0, g_stop == T
    kind = np.where(leading & trailing, 3, np.where(trailing, 2, np.where(leading, 1, 0)))
    fill = (kind == 0) & (g_len <= max_gap)

    out = v.copy()
    fill_frames = np.zeros((T, C), bool)  # frames in gaps to fill
    if fill.any():
        # mark frames [start, stop) of the gaps to fill with a +1/-1 cumulative sum
        step = np.zeros((T + 1, C), np.int64)
        np.add.at(step, (g_start[fill], g_ch[fill]), 1)
        np.add.at(step, (g_stop[fill], g_ch[fill]), -1)
        fill_frames = np.cumsum(step[:T], axis=0) > 0
        out[fill_frames] = _linear_fill(v, missing, fill_frames)
        if method == "cubic":
            _cubic_fill(v, missing, fill_frames, out)

    assert out.shape == (T, C, D)
    n_filled = np.bincount(g_ch[fill], minlength=C)
    n_left = np.bincount(g_ch[~fill], minlength=C)
    report = GapReport(
        channel_shape=tuple(int(s) for s in channel_shape),
        n_frames=T,
        max_gap=max_gap,
        method=method,
        gaps_filled=n_filled.astype(np.int64),
        gaps_left=n_left.astype(np.int64),
        frames_filled=np.bincount(g_ch[fill], weights=g_len[fill], minlength=C).astype(np.int64),
        frames_left=np.bincount(g_ch[~fill], weights=g_len[~fill], minlength=C).astype(np.int64),
        gap_channel=g_ch,
        gap_start=g_start,
        gap_length=g_len,
        gap_filled=fill,
        gap_kind=kind.astype(np.int64),
    )
    return out.reshape(a.shape), report


def _linear_fill(v: np.ndarray, missing: np.ndarray, fill_frames: np.ndarray) -> np.ndarray:
    """Linear interpolation at ``fill_frames`` (T, C) between the nearest valid frames before
    and after, all channels at once. Returns the (N, D) values of ``v[fill_frames]``."""
    T = v.shape[0]
    frame = np.arange(T)[:, None]
    prev = np.maximum.accumulate(np.where(missing, -1, frame), axis=0)
    nxt = np.minimum.accumulate(np.where(missing, T, frame)[::-1], axis=0)[::-1]
    t, c = np.nonzero(fill_frames)
    p, n = prev[t, c], nxt[t, c]
    assert (p >= 0).all() and (n < T).all()  # filled gaps are interior
    w = ((t - p) / (n - p))[:, None]
    return v[p, c] + w * (v[n, c] - v[p, c])


def _cubic_fill(v: np.ndarray, missing: np.ndarray, fill_frames: np.ndarray, out: np.ndarray):
    """Overwrite ``out`` at ``fill_frames`` with the not-a-knot cubic spline through each
    segment's valid frames (segments: stretches between the gaps that are left)."""
    from scipy.interpolate import make_interp_spline

    left = missing & ~fill_frames
    # (T, C): frames between two gaps left share a number, which never decreases in time, so
    # a segment is the slice of frames between two searchsorted bounds
    segment = np.cumsum(left, axis=0)
    for c in np.flatnonzero(fill_frames.any(axis=0)).tolist():
        seg_c = segment[:, c]
        for s in np.unique(seg_c[fill_frames[:, c]]).tolist():
            lo, hi = np.searchsorted(seg_c, [s, s + 1])
            known = lo + np.flatnonzero(~missing[lo:hi, c])
            if known.size < 4:  # too few for a cubic: the linear values stay
                continue
            want = lo + np.flatnonzero(fill_frames[lo:hi, c])
            spline = make_interp_spline(known, v[known, c], k=3)
            out[want, c] = spline(want)


# ----------------------------------------------------------------------------- Butterworth
@dataclass(frozen=True)
class FilterReport:
    """Runs of valid samples :func:`butterworth_filtfilt` filtered or left unfiltered.

    ``min_frames`` is the shortest run ``filtfilt`` accepts (its default ``padlen`` + 1).
    Channels are the entries of ``x`` other than ``axis``, flattened in C order after moving
    ``axis`` first. Per channel (C,) int64: ``runs_filtered``, ``runs_skipped``,
    ``frames_unfiltered`` (valid samples left as they were). Per skipped run (S,):
    ``skipped_channel``, ``skipped_start``, ``skipped_length``.
    """

    min_frames: int
    runs_filtered: np.ndarray
    runs_skipped: np.ndarray
    frames_unfiltered: np.ndarray
    skipped_channel: np.ndarray
    skipped_start: np.ndarray
    skipped_length: np.ndarray

    def to_dict(self, names=None) -> dict:
        """JSON-ready: totals and, per channel with a skipped run, ``[start, length]`` pairs.
        ``names`` name the channels (default: their index)."""
        per: dict[str, list] = {}
        for c, s, n in zip(
            self.skipped_channel.tolist(),
            self.skipped_start.tolist(),
            self.skipped_length.tolist(),
            strict=True,
        ):
            key = str(c) if names is None else str(names[c])
            per.setdefault(key, []).append([s, n])
        return dict(
            min_frames=self.min_frames,
            runs_filtered=int(self.runs_filtered.sum()),
            runs_skipped=int(self.runs_skipped.sum()),
            frames_unfiltered=int(self.frames_unfiltered.sum()),
            skipped=per,
        )


def filtfilt_min_frames(order: int = 4) -> int:
    """The fewest contiguous samples :func:`butterworth_filtfilt` filters for ``order``:
    ``scipy.signal.filtfilt``'s default ``padlen`` is ``3 * max(len(a), len(b)) = 3 * (order
    + 1)`` and it needs more samples than that."""
    return 3 * (int(order) + 1) + 1


def _check_filter_args(rate_hz, cutoff_hz, order) -> tuple[float, float, int]:
    rate = float(rate_hz)
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(
            f"sampling rate must be a positive number, got {rate_hz!r}", field="rate_hz"
        )
    cutoff = float(cutoff_hz)
    if not (math.isfinite(cutoff) and 0 < cutoff < rate / 2):
        raise InputError(
            f"cutoff must be between 0 and the Nyquist frequency {rate / 2:g} Hz (rate "
            f"{rate:g} Hz), got {cutoff_hz!r}",
            field="cutoff_hz",
        )
    if isinstance(order, bool) or int(order) != order or not 1 <= order <= 20:
        raise InputError(f"order must be an integer from 1 to 20, got {order!r}", field="order")
    return rate, cutoff, int(order)


def butterworth_filtfilt(
    x,
    rate_hz: float,
    cutoff_hz: float,
    order: int = 4,
    axis: int = 0,
    *,
    on_short: str = "keep",
    return_report: bool = False,
):
    """Zero-phase Butterworth low-pass: ``scipy.signal.filtfilt(*butter(order, cutoff_hz,
    fs=rate_hz), x, axis=axis)`` with filtfilt's default padding (odd extension, ``padlen =
    3 * (order + 1)``), applied to each contiguous run of non-NaN samples of each channel
    separately, so nothing is filtered across a gap; NaN stays NaN.

    Pose2Sim's ``butterworth`` filter calls ``butter(order / 2, ...)`` (the two passes of
    filtfilt double the order), so its ``order = 4`` is ``order=2`` here.

    A run with fewer than :func:`filtfilt_min_frames` samples cannot be padded as filtfilt
    pads: with ``on_short="keep"`` (default) it is left unfiltered and listed in the report,
    with ``on_short="error"`` it raises :class:`InputError` naming the channel and frame.

    ``x``: any shape, time along ``axis``; a float array of the same shape is returned, or
    ``(filtered, FilterReport)`` with ``return_report``.
    """
    from scipy.signal import butter, filtfilt

    rate, cutoff, order = _check_filter_args(rate_hz, cutoff_hz, order)
    if on_short not in ("keep", "error"):
        raise InputError(f"on_short must be 'keep' or 'error', got {on_short!r}", field="on_short")
    a = np.asarray(x)
    if a.ndim == 0:
        raise InputError("expected an array with a time axis, got a scalar", field="x")
    a = _as_float_array(np.moveaxis(a, axis, 0), "x")
    T = a.shape[0]
    v = a.reshape(T, -1)  # (T, C)
    C = v.shape[1]
    b_coef, a_coef = butter(order, cutoff, btype="low", fs=rate)
    min_frames = filtfilt_min_frames(order)

    r_ch, r_start, r_stop = _runs(~np.isnan(v))
    long_enough = r_stop - r_start >= min_frames
    short = ~long_enough
    if on_short == "error" and short.any():
        k = int(np.flatnonzero(short)[0])
        raise InputError(
            f"only {int(r_stop[k] - r_start[k])} contiguous valid samples from here; the "
            f"order-{order} zero-phase filter needs at least {min_frames} (filtfilt's padding)",
            frame=int(r_start[k]),
            field=f"channel {int(r_ch[k])}",
        )
    # channels with the same run are filtered together (all of a fully valid trial: one call),
    # time along the contiguous last axis (about twice as fast as along axis 0, same numbers)
    vt = np.ascontiguousarray(v.T)  # (C, T)
    out_t = vt.copy()
    key = r_start[long_enough] * (T + 1) + r_stop[long_enough]
    chans = r_ch[long_enough]
    uniq, inverse = np.unique(key, return_inverse=True)
    for u, k in enumerate(uniq.tolist()):
        s, e = divmod(k, T + 1)
        cs = chans[inverse == u]
        out_t[cs, s:e] = filtfilt(b_coef, a_coef, vt[cs, s:e], axis=-1)

    out = np.moveaxis(out_t.T.reshape(a.shape), 0, axis)
    if not return_report:
        return out
    report = FilterReport(
        min_frames=min_frames,
        runs_filtered=np.bincount(r_ch[long_enough], minlength=C).astype(np.int64),
        runs_skipped=np.bincount(r_ch[short], minlength=C).astype(np.int64),
        frames_unfiltered=np.bincount(
            r_ch[short], weights=(r_stop - r_start)[short], minlength=C
        ).astype(np.int64),
        skipped_channel=r_ch[short],
        skipped_start=r_start[short],
        skipped_length=(r_stop - r_start)[short],
    )
    return out, report


# ----------------------------------------------------------------------------- axes
# p_opensim = R @ p for a world whose vertical axis is the key. For "z" this is Pose2Sim's
# zup2yup (X, Y, Z columns become Y, Z, X: the cyclic permutation that takes Z to Y); "x" is
# the other cyclic permutation; a negative axis is first turned half a revolution about an
# axis normal to it (X for -y and -z, Z for -x), which makes it positive.
_CYCLIC = {
    "y": np.eye(3),
    "z": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
    "x": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}
_HALF_TURN = {"x": np.diag([1.0, -1.0, -1.0]), "z": np.diag([-1.0, -1.0, 1.0])}
UP_AXES = ("y", "z", "x", "-y", "-z", "-x")


def axes_rotation(up="z") -> np.ndarray:
    """The proper rotation R (3, 3) with ``p_opensim = R @ p`` for points in a world whose
    vertical (up) axis is ``up`` (one of :data:`UP_AXES`); R maps ``up`` to OpenSim's +Y.

    ``up="z"`` is Pose2Sim's Z-up to Y-up conversion (``zup2yup``: new X, Y, Z = old Y, Z, X);
    ``"y"`` is the identity; ``"x"``: new X, Y, Z = old Z, X, Y. ``"-y"``, ``"-z"``: a half
    turn about X first; ``"-x"``: a half turn about Z first. ``up`` may also be a (3, 3) proper
    rotation matrix, returned as is after checking.
    """
    if isinstance(up, str):
        key = up.strip().lower().lstrip("+")
        if key not in UP_AXES:
            raise InputError(
                f"up must be one of {UP_AXES} or a 3x3 rotation, got {up!r}", field="up"
            )
        if key.startswith("-"):
            pos = key[1:]
            return _CYCLIC[pos] @ _HALF_TURN["z" if pos == "x" else "x"]
        return _CYCLIC[key].copy()
    R = np.asarray(up, np.float64)
    if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-9):
        raise InputError("a rotation matrix must be 3x3 and orthonormal", field="up")
    if np.linalg.det(R) < 0:
        raise InputError("the matrix is a reflection (det -1), not a rotation", field="up")
    return R


def to_opensim_axes(points, up="z") -> np.ndarray:
    """Points (..., 3) from a world whose up axis is ``up`` to OpenSim's Y-up world:
    ``R @ p`` with :func:`axes_rotation`. NaN stays NaN."""
    p = np.asarray(points, np.float64)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise InputError(f"points must have shape (..., 3), got {p.shape}", field="points")
    return p @ axes_rotation(up).T


def from_opensim_axes(points, up="z") -> np.ndarray:
    """The inverse of :func:`to_opensim_axes`: points (..., 3) in OpenSim's Y-up world to a
    world whose up axis is ``up`` (``R.T @ p``)."""
    p = np.asarray(points, np.float64)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise InputError(f"points must have shape (..., 3), got {p.shape}", field="points")
    return p @ axes_rotation(up)


# ----------------------------------------------------------------------------- TRC files
def trc_rate(time: np.ndarray, path: str | None = None, rtol: float = 1e-3) -> float:
    """The sampling rate (Hz) of uniformly sampled frame times; :class:`InputError` if a step
    differs from the median step by more than ``rtol`` of it (resample first: ``merge
    --rate``)."""
    time = np.asarray(time, np.float64)
    if time.size < 2:
        raise InputError("a single frame has no sampling rate", path=path, field="Time")
    dt = np.diff(time)
    step = float(np.median(dt))
    if not step > 0:
        raise InputError("time does not increase", path=path, field="Time")
    bad = np.flatnonzero(np.abs(dt - step) > rtol * step)
    if bad.size:
        raise InputError(
            f"frames are not evenly spaced in time (step {dt[bad[0]]:.6g} s, median {step:.6g} "
            "s); resample the trial first",
            path=path,
            frame=int(bad[0]) + 2,
            field="Time",
        )
    return 1.0 / step


def filter_trc(
    trc_in: str | os.PathLike[str],
    trc_out: str | os.PathLike[str],
    *,
    cutoff_hz: float | None = 6.0,
    order: int = 4,
    max_gap: int = 10,
    method: str = "cubic",
    up: str | None = None,
    on_short: str = "keep",
    units: str | None = None,
) -> dict:
    """Fill gaps, low-pass filter and optionally re-orient a TRC file; returns a JSON-ready
    summary (frames, rate, per-marker gaps filled and left, runs left unfiltered).

    Order of the steps: :func:`fill_gaps` (``max_gap`` frames, ``method``), then
    :func:`butterworth_filtfilt` (skipped when ``cutoff_hz`` is None), then
    :func:`to_opensim_axes` with ``up`` (skipped when None). ``units`` of the output default
    to the input's when it is m, mm or cm, else metres. ``trc_out`` ending with a path
    separator or naming a folder means ``<input stem>_filtered.trc`` inside it; an output that
    is the input is refused (:mod:`simspine_jax.io.outputs`).
    """
    from .io import read_trc, write_trc
    from .io.outputs import output_file, refuse_inputs, writing_to

    trc_out = output_file(trc_out, Path(trc_in).stem + "_filtered.trc", field="out")
    refuse_inputs([trc_out], [trc_in], field="out")
    trc = read_trc(trc_in)
    rate = trc_rate(trc.time, trc.path)
    pos, gaps = fill_gaps(trc.positions, max_gap, method=method, points=True)
    summary: dict = dict(
        input=str(trc_in),
        output=str(trc_out),
        frames=int(pos.shape[0]),
        markers=len(trc.marker_names),
        rate_hz=rate,
        gaps=gaps.to_dict(trc.marker_names),
    )
    if cutoff_hz is not None:
        pos, rep = butterworth_filtfilt(
            pos, rate, cutoff_hz, order, axis=0, on_short=on_short, return_report=True
        )
        names = [f"{m}.{xyz}" for m in trc.marker_names for xyz in "XYZ"]
        summary["filter"] = dict(cutoff_hz=float(cutoff_hz), order=order, **rep.to_dict(names))
    if up is not None:
        pos = to_opensim_axes(pos, up)
        summary["up"] = up
    if units is None:
        units = trc.orig_units.lower() if trc.orig_units.lower() in ("m", "mm", "cm") else "m"
    with writing_to(trc_out, field="out"):
        write_trc(trc_out, trc.marker_names, trc.time, pos, units=units, data_rate=rate)
    return summary
