"""Camera calibrations: Pose2Sim/Anipose TOML (read and write) and Human3.6M parameters.

Camera model (OpenCV's pinhole + Brown-Conrady, as Pose2Sim and Anipose use it)::

    X_cam = R X_world + t                  world-to-camera; R from the Rodrigues vector
    x, y  = X_cam[0] / X_cam[2], X_cam[1] / X_cam[2]
    r2    = x^2 + y^2
    x_d   = x (1 + k1 r2 + k2 r2^2 + k3 r2^3) + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d   = y (1 + k1 r2 + k2 r2^2 + k3 r2^3) + p1 (r2 + 2 y^2) + 2 p2 x y
    u, v  = K @ (x_d, y_d, 1)

This is ``cv2.projectPoints`` to 1e-9 px and ``cv2.undistortPointsIter`` to 1e-14 (golden test
against OpenCV 4.11), except that OpenCV's projection ignores a skew ``K[0, 1]``, which we apply
as ``P = K [R | t]`` (Pose2Sim's DLT) does; calibrations write 0 there.

Pose2Sim's TOML holds one table per camera (any key; ``metadata``, ``capture_volume``,
``charuco`` and ``checkerboard`` tables are not cameras) with ``name``, ``size`` =
``[width, height]`` in px, ``matrix`` (K, 3x3), ``distortions`` = ``[k1, k2, p1, p2]`` (we also
accept a fifth, k3), ``rotation`` (Rodrigues vector of R) and ``translation`` (t, in the
calibration's length unit, metres for Pose2Sim), ``fisheye`` = false. This is what
``Pose2Sim.common.computeP`` turns into ``P = K [R | t]``. A ``rotation`` given as a 3x3 matrix
is accepted if it is a proper rotation.

Human3.6M gives R, T, f, c, k (k1, k2, k3), p (p1, p2) with the camera *centre* T:
``X_cam = R (X - T)``, i.e. ``t = -R T``. Its radial distortion is OpenCV's; its released
projection code applies the tangential terms without OpenCV's factors 2
(``x_d = x (radial + p1 y + p2 x) + p2 r2``, ``y_d = y (radial + p1 y + p2 x) + p1 r2``), so a
Human3.6M camera carries a sixth distortion value, the tangential factor tau = 1 (OpenCV: 2)::

    x_d = x radial + tau p1 x y + p2 (r2 + tau x^2)
    y_d = y radial + p1 (r2 + tau y^2) + tau p2 x y

The distortion maps (:func:`distort_normalized`, :func:`undistort_normalized`) use only
arithmetic, so they work on numpy and JAX arrays alike; :mod:`simspine_jax.triangulation` jits
them.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_write_text

__all__ = [
    "Camera",
    "camera_from_h36m",
    "cameras_arrays",
    "distort_normalized",
    "load_calibration",
    "matrix_to_rodrigues",
    "project_points",
    "read_calibration",
    "read_qca",
    "rodrigues_to_matrix",
    "undistort_normalized",
    "undistort_pixels",
    "write_calibration",
]

_NOT_CAMERAS = ("metadata", "capture_volume", "charuco", "checkerboard")
_ROT_TOL = 1e-6  # |R^T R - I| and |det R - 1| allowed for a given rotation matrix


@dataclass(frozen=True)
class Camera:
    """One calibrated camera; world-to-camera ``X_cam = R X + t``. Lengths in the world unit."""

    name: str
    size: tuple[float, float]  # (width, height), px
    K: np.ndarray  # (3, 3) intrinsics
    dist: np.ndarray  # (5,) k1, k2, p1, p2, k3 (OpenCV order); (6,) + tangential factor
    R: np.ndarray  # (3, 3) world-to-camera rotation
    t: np.ndarray  # (3,) world-to-camera translation
    extra: dict = field(default_factory=dict, compare=False)  # other TOML keys, written back

    @property
    def rvec(self) -> np.ndarray:
        """Rodrigues vector of ``R``. Shape: (3,)."""
        return matrix_to_rodrigues(self.R)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, ``-R^T t``. Shape: (3,)."""
        return -self.R.T @ self.t

    def project(self, X: np.ndarray) -> np.ndarray:
        """Pixel coordinates of world points ``(..., 3)`` (see :func:`project_points`)."""
        return project_points(X, self.K, self.dist, self.R, self.t)


# ----------------------------------------------------------------------------- rotations
def rodrigues_to_matrix(rvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a Rodrigues (axis * angle) vector, as ``cv2.Rodrigues``. Shape: (3, 3)."""
    r = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    W = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + W  # first order; exact to float64 below this angle
    a = math.sin(theta) / theta
    b = (1.0 - math.cos(theta)) / theta**2
    return np.eye(3) + a * W + b * (W @ W)


def matrix_to_rodrigues(R: np.ndarray) -> np.ndarray:
    """Rodrigues vector of a rotation matrix (angle in [0, pi]). Shape: (3,)."""
    R = np.asarray(R, dtype=np.float64)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    # atan2 of sin and cos: accurate at every angle (acos loses half the digits near 0 and pi)
    theta = math.atan2(float(np.linalg.norm(w)) / 2.0, (float(np.trace(R)) - 1.0) / 2.0)
    if theta < 1e-6:
        return w / 2.0  # sin(theta)/theta -> 1
    if math.pi - theta < 1e-4:
        # near pi the skew part vanishes: axis from the symmetric part, sign from w
        B = (R + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(B), 0.0, None))
        i = int(np.argmax(axis))
        axis = B[i] / axis[i]
        axis /= np.linalg.norm(axis)
        if w @ axis < 0:
            axis = -axis
        return axis * theta
    return w * (theta / (2.0 * math.sin(theta)))


def _check_rotation(R: np.ndarray, where: dict) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise InputError("rotation must be a finite 3x3 matrix", **where)
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if ortho > _ROT_TOL or abs(det - 1.0) > _ROT_TOL:
        raise InputError(
            f"rotation is not orthonormal (max |R^T R - I| = {ortho:.3g}, det = {det:.6g})",
            **where,
        )
    return R


# ----------------------------------------------------------------------------- camera model
def distort_normalized(xy, dist):
    """Brown-Conrady distortion of normalized image coordinates ``(..., 2)`` (numpy or JAX).

    ``dist`` is ``(..., 5)`` = k1, k2, p1, p2, k3 (OpenCV), or ``(..., 6)`` with the
    tangential factor tau last (2 for OpenCV, 1 for Human3.6M; see the module doc), broadcast
    against ``xy[..., 0]``. Shape: same as ``xy``.
    """
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i] for i in range(5))
    tau = dist[..., 5] if dist.shape[-1] > 5 else 2.0
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + tau * p1 * x * y + p2 * (r2 + tau * x * x)
    yd = y * radial + p1 * (r2 + tau * y * y) + tau * p2 * x * y
    return _stack2(xd, yd, xy)


def undistort_normalized(xy_d, dist, n_iter: int = 20):
    """Inverse of :func:`distort_normalized` by fixed-point iteration (numpy or JAX).

    ``x <- (x_d - tangential(x)) / radial(x)``, starting from ``x = x_d``; this is OpenCV's
    ``undistortPoints`` iteration. It converges for the moderate distortions of calibrated
    video cameras (tested against the closed-form inverse of a pure-k1 model).
    Shape: same as ``xy_d``.
    """
    xd, yd = xy_d[..., 0], xy_d[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i] for i in range(5))
    tau = dist[..., 5] if dist.shape[-1] > 5 else 2.0
    x, y = xd, yd
    for _ in range(n_iter):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = tau * p1 * x * y + p2 * (r2 + tau * x * x)
        dy = p1 * (r2 + tau * y * y) + tau * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return _stack2(x, y, xy_d)


def _stack2(a, b, like):
    if isinstance(like, np.ndarray):
        return np.stack([a, b], axis=-1)
    import jax.numpy as jnp

    return jnp.stack([a, b], axis=-1)


def project_points(X, K, dist, R, t) -> np.ndarray:
    """Pixel coordinates of world points ``(..., 3)`` in one camera (numpy). Shape: (..., 2)."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X @ np.asarray(R).T + np.asarray(t)
    xn = Xc[..., :2] / Xc[..., 2:3]
    dist = np.asarray(dist)
    xd = distort_normalized(xn, np.broadcast_to(dist, xn.shape[:-1] + dist.shape[-1:]))
    K = np.asarray(K)
    u = K[0, 0] * xd[..., 0] + K[0, 1] * xd[..., 1] + K[0, 2]
    v = K[1, 1] * xd[..., 1] + K[1, 2]
    return np.stack([u, v], axis=-1)


def undistort_pixels(uv, K, dist, n_iter: int = 20) -> np.ndarray:
    """Normalized, undistorted coordinates of pixel observations ``(..., 2)`` (numpy).

    Shape: (..., 2).
    """
    uv = np.asarray(uv, dtype=np.float64)
    K = np.asarray(K)
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    x = (uv[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    xy = np.stack([x, y], axis=-1)
    dist = np.asarray(dist)
    return undistort_normalized(xy, np.broadcast_to(dist, xy.shape[:-1] + dist.shape[-1:]), n_iter)


def cameras_arrays(cameras: Sequence[Camera]) -> dict[str, np.ndarray]:
    """Stacked camera parameters: K (C,3,3), dist (C,6) (tangential factor last), R (C,3,3),
    t (C,3)."""
    return dict(
        K=np.stack([c.K for c in cameras]),
        dist=np.stack([c.dist if len(c.dist) == 6 else np.r_[c.dist, 2.0] for c in cameras]),
        R=np.stack([c.R for c in cameras]),
        t=np.stack([c.t for c in cameras]),
    )


# ----------------------------------------------------------------------------- TOML
def _num_array(value, shape: tuple[int, ...], where: dict, what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, got {value!r}", **where) from None
    if a.shape != shape:
        raise InputError(f"{what} must have shape {shape}, got {a.shape}", **where)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} has a non-finite value", **where)
    return a


def _key_line(lines: list[str], table: str, key: str | None) -> int | None:
    """1-based line of ``[table]`` (or of ``key = `` inside it), for error messages."""
    start = None
    for i, s in enumerate(lines):
        st = s.strip()
        if st.startswith("[") and st.strip("[]").strip().strip('"') == table:
            start = i
            if key is None:
                return i + 1
        elif start is not None:
            if st.startswith("["):
                return start + 1
            if st.split("=")[0].strip() == key:
                return i + 1
    return None if start is None else start + 1


def read_calibration(path: str | os.PathLike[str]) -> list[Camera]:
    """Cameras of a Pose2Sim/Anipose calibration ``.toml``, in file order."""
    p = str(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read calibration: {e.strerror}", path=p) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", path=p) from None
    lines = text.splitlines()
    cams = []
    for key, table in data.items():
        if key in _NOT_CAMERAS or not isinstance(table, dict):
            continue

        def where(f: str | None, key=key) -> dict:
            return dict(path=p, line=_key_line(lines, key, f), field=f"{key}.{f}" if f else key)

        for f in ("size", "matrix", "distortions", "rotation", "translation"):
            if f not in table:
                raise InputError(f"camera '{key}' has no '{f}'", **where(None))
        name = str(table.get("name", key))
        if table.get("fisheye", False):
            raise InputError(
                "fisheye cameras are not supported (OpenCV's fisheye model differs)",
                **where("fisheye"),
            )
        size = _num_array(table["size"], (2,), where("size"), "size")
        if np.any(size <= 0):
            raise InputError("size must be positive [width, height]", **where("size"))
        K = _num_array(table["matrix"], (3, 3), where("matrix"), "matrix")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1.0) > 1e-9 or np.any(K[2, :2] != 0):
            raise InputError(
                "matrix must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0",
                **where("matrix"),
            )
        d = np.asarray(table["distortions"], dtype=object)
        if d.ndim != 1 or len(d) not in (4, 5):
            raise InputError(
                "distortions must be [k1, k2, p1, p2] (or with k3)", **where("distortions")
            )
        d = _num_array(list(d), (len(d),), where("distortions"), "distortions")
        dist = np.zeros(5)
        dist[: len(d)] = d
        rot = np.asarray(table["rotation"], dtype=object)
        if rot.shape == (3,):
            rvec = _num_array(table["rotation"], (3,), where("rotation"), "rotation")
            R = rodrigues_to_matrix(rvec)
        else:
            R = _num_array(table["rotation"], (3, 3), where("rotation"), "rotation")
            R = _check_rotation(R, where("rotation"))
        t = _num_array(table["translation"], (3,), where("translation"), "translation")
        known = {"name", "size", "matrix", "distortions", "rotation", "translation", "fisheye"}
        extra = {k: v for k, v in table.items() if k not in known}
        cams.append(Camera(name, (float(size[0]), float(size[1])), K, dist, R, t, extra))
    if not cams:
        raise InputError("no camera tables in the calibration", path=p)
    names = [c.name for c in cams]
    for n in names:
        if names.count(n) > 1:
            raise InputError("two cameras have the same name", path=p, field=n)
    return cams


def _fmt(x: float) -> str:
    return repr(float(x))


def _fmt_list(a) -> str:
    a = np.asarray(a)
    if a.ndim == 1:
        return "[ " + ", ".join(_fmt(v) for v in a) + "]"
    return "[ " + ", ".join(_fmt_list(r) for r in a) + "]"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return _fmt(v) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple | np.ndarray):
        return "[ " + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def write_calibration(
    path: str | os.PathLike[str], cameras: Sequence[Camera], metadata: dict | None = None
) -> Path:
    """Write cameras as a Pose2Sim calibration ``.toml`` (read back by Pose2Sim and by us).

    Each camera's table key is its name; ``distortions`` has 4 values unless k3 is nonzero.
    Floats are written with ``repr`` so reading the file back gives the same numbers.
    """
    out = []
    for c in cameras:
        key = c.name if c.name.replace("_", "").replace("-", "").isalnum() else f'"{c.name}"'
        if len(c.dist) > 5 and c.dist[5] != 2.0 and np.any(c.dist[2:4] != 0):
            raise InputError(
                "a Human3.6M-style tangential distortion (factor "
                f"{c.dist[5]:g}) has no place in an OpenCV/Pose2Sim TOML",
                path=str(path),
                field=f"{c.name}.distortions",
            )
        dist = c.dist[:5] if c.dist[4] != 0 else c.dist[:4]
        out += [
            f"[{key}]",
            f"name = {_toml_value(c.name)}",
            f"size = {_fmt_list(c.size)}",
            f"matrix = {_fmt_list(c.K)}",
            f"distortions = {_fmt_list(dist)}",
            f"rotation = {_fmt_list(c.rvec)}",
            f"translation = {_fmt_list(c.t)}",
            "fisheye = false",
        ]
        out += [f"{k} = {_toml_value(v)}" for k, v in c.extra.items()]
        out.append("")
    meta = {"adjusted": False, "error": 0.0} if metadata is None else metadata
    out.append("[metadata]")
    out += [f"{k} = {_toml_value(v)}" for k, v in meta.items()]
    return atomic_write_text(path, "\n".join(out) + "\n")


# ----------------------------------------------------------------------------- Human3.6M
def camera_from_h36m(
    R,
    T,
    f,
    c,
    k=(0.0, 0.0, 0.0),
    p=(0.0, 0.0),
    *,
    name: str = "cam",
    size: tuple[float, float] = (1000.0, 1002.0),
    source: str | None = None,
) -> Camera:
    """A :class:`Camera` from Human3.6M parameters (``X_cam = R (X - T)``).

    ``R`` 3x3 (checked orthonormal), ``T`` camera centre (3,), ``f`` = (fx, fy), ``c`` =
    (cx, cy), ``k`` = (k1, k2, k3), ``p`` = (p1, p2) (Human3.6M's tangential formula: ``dist``
    gets the tangential factor 1 as a sixth value). Lengths stay in ``T``'s unit (Human3.6M
    uses mm). ``size`` defaults to Human3.6M's 1000 x 1002 px frames.
    """
    where = dict(path=source, field=f"{name}.R")
    Rm = _check_rotation(np.asarray(R, dtype=np.float64).reshape(-1, 3), where)
    T = _num_array(np.ravel(T), (3,), dict(path=source, field=f"{name}.T"), "T")
    f = _num_array(np.ravel(f), (2,), dict(path=source, field=f"{name}.f"), "f")
    c = _num_array(np.ravel(c), (2,), dict(path=source, field=f"{name}.c"), "c")
    k = _num_array(np.ravel(k), (3,), dict(path=source, field=f"{name}.k"), "k")
    p = _num_array(np.ravel(p), (2,), dict(path=source, field=f"{name}.p"), "p")
    K = np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
    dist = np.array([k[0], k[1], p[0], p[1], k[2], 1.0])  # tangential factor 1 (module doc)
    return Camera(name, (float(size[0]), float(size[1])), K, dist, Rm, -Rm @ T)


# ----------------------------------------------------------------------------- Qualisys
_QCA_FLIP = np.diag([1.0, -1.0, -1.0])  # Qualisys camera axes (y up, looking along -z) -> OpenCV


def read_qca(path: str | os.PathLike[str], binning_factor: float = 1.0) -> list[Camera]:
    """Cameras of a Qualisys ``.qca.txt`` calibration (XML), converted as Pose2Sim's
    ``calib_qca_to_toml`` converts it, so the result equals the TOML Pose2Sim writes.

    Per ``<camera>``: name ``serial``; size from ``<fov_video>`` (``right - left + 1``,
    ``bottom - top + 1``) / ``binning_factor``; focal lengths, centre and the four distortion
    values of ``<intrinsic>`` divided by 64 (Qualisys's sub-pixel unit) and by the binning,
    the centre then shifted by the field of view's ``left``/``top``; ``<transform>`` gives the
    camera centre ``x, y, z`` in mm and a rotation ``M`` (``r11 .. r33`` row by row) with
    ``X_cam = diag(1, -1, -1) M (X - centre)`` (Qualisys cameras look along -z, y up).
    """
    import xml.etree.ElementTree as ET

    p = str(path)
    try:
        root = ET.parse(p).getroot()
    except OSError as e:
        raise InputError(f"cannot read calibration: {e.strerror}", path=p) from None
    except ET.ParseError as e:
        raise InputError(f"not valid XML: {e}", path=p, line=e.position[0]) from None
    cams = []
    for i, cam in enumerate(root.findall("cameras/camera")):
        name = cam.get("serial") or f"cam{i + 1}"

        def num(tag: str, attr: str, name=name, cam=cam) -> float:
            el = cam.find(tag)
            v = None if el is None else el.get(attr)
            if v is None:
                raise InputError(
                    f"camera '{name}' has no {tag} {attr}", path=p, field=f"{name}.{tag}.{attr}"
                )
            try:
                return float(v)
            except ValueError:
                raise InputError(
                    f"{v!r} is not a number", path=p, field=f"{name}.{tag}.{attr}"
                ) from None

        left, top = num("fov_video", "left"), num("fov_video", "top")
        size = (
            (num("fov_video", "right") - left + 1) / binning_factor,
            (num("fov_video", "bottom") - top + 1) / binning_factor,
        )
        s = 64.0 * binning_factor
        intr = "intrinsic"
        K = np.array(
            [
                [num(intr, "focalLengthU") / s, 0.0, num(intr, "centerPointU") / s - left],
                [0.0, num(intr, "focalLengthV") / s, num(intr, "centerPointV") / s - top],
                [0.0, 0.0, 1.0],
            ]
        )
        dist = np.array(
            [
                num(intr, "radialDistortion1") / s,
                num(intr, "radialDistortion2") / s,
                num(intr, "tangentalDistortion1") / s,
                num(intr, "tangentalDistortion2") / s,
                0.0,
            ]
        )
        M = np.array([[num("transform", f"r{a}{b}") for b in (1, 2, 3)] for a in (1, 2, 3)])
        M = _check_rotation(M, dict(path=p, field=f"{name}.transform"))
        centre = np.array([num("transform", a) for a in "xyz"]) / 1000.0
        R = _QCA_FLIP @ M
        cams.append(Camera(name, size, K, dist, R, -R @ centre))
    if not cams:
        raise InputError("no <camera> in the calibration", path=p, field="cameras")
    return cams


def load_calibration(path: str | os.PathLike[str]) -> list[Camera]:
    """Cameras of a calibration file: Qualisys ``.qca.txt`` (:func:`read_qca`), else
    Pose2Sim/Anipose TOML (:func:`read_calibration`)."""
    if str(path).lower().endswith((".qca.txt", ".qca")):
        return read_qca(path)
    return read_calibration(path)
