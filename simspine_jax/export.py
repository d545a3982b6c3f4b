"""Model export: read an OpenSim ``.osim`` file once and resolve it into a flat kinematic tree.

The XML is read directly (no OpenSim needed), and only where that is exact: every joint type is
rewritten as OpenSim's own CustomJoint form (three body-fixed rotations about unit axes, then
three translations along axes of the parent frame), every transform function as a piecewise
cubic with OpenSim's SimmSpline evaluation rule (linear and constant functions are one-knot
splines, MultiplierFunction scales the coefficients), and CoordinateCouplerConstraints become a
reparametrisation of the dependent coordinates onto the independent ones. Anything we cannot
represent exactly raises :class:`~simspine_jax.errors.ModelError` naming the component and file.

The result, :class:`~simspine_jax.model.KinematicTree`, is saved as plain npz + JSON.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError

ROTATIONAL, TRANSLATIONAL, COUPLED = 0, 1, 2
MOTION_TYPE_NAMES = ("rotational", "translational", "coupled")

_SUPPORTED_JOINTS = (
    "CustomJoint",
    "PinJoint",
    "UniversalJoint",
    "WeldJoint",
    "GimbalJoint",
    "BallJoint",
    "FreeJoint",
    "SliderJoint",
)
_FUNCTION_TAGS = (
    "LinearFunction",
    "Constant",
    "SimmSpline",
    "MultiplierFunction",
    "PolynomialFunction",
    "NaturalCubicSpline",
)
_EYE = np.eye(3)


# ----------------------------------------------------------------------------- small helpers
def _floats(text: str | None, n: int | None, where: str, path: str) -> np.ndarray:
    """The numbers of an element's text; every one finite (OpenSim models hold no inf/nan:
    a frame, axis, knot or range of inf or nan only poisons the tree)."""
    toks = (text or "").split()
    if n is not None and len(toks) != n:
        raise ModelError(f"{where}: expected {n} numbers, found {len(toks)}", path=path)
    try:
        vals = np.array([float(t) for t in toks], dtype=np.float64)
    except ValueError:
        raise ModelError(f"{where}: not a list of numbers: {text!r}", path=path) from None
    if not np.all(np.isfinite(vals)):
        raise ModelError(f"{where}: numbers must be finite, got {text!r}", path=path)
    return vals


def _text(el: ET.Element, tag: str, default: str | None = None) -> str | None:
    child = el.find(tag)
    if child is None or child.text is None:
        return default
    return child.text.strip()


def _bool(el: ET.Element, tag: str, default: bool, where: str, path: str) -> bool:
    """A boolean property: ``true``/``false`` (any case) or ``1``/``0``, as OpenSim reads them;
    any other text is an error (OpenSim refuses it too), not a silent false."""
    t = _text(el, tag)
    if t is None or t == "":
        return default
    low = t.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise ModelError(f"{where} <{tag}>: expected true or false, got {t!r}", path=path)


def _name(el: ET.Element, what: str, path: str) -> str:
    """The ``name`` attribute of a component; OpenSim needs every one named."""
    name = (el.get("name") or "").strip()
    if not name:
        raise ModelError(f"a <{el.tag}> {what} has no name attribute", path=path)
    if any(c in name for c in "\t\r\n"):
        raise ModelError(f"<{el.tag}> {what} name {name!r} holds a tab or line break", path=path)
    return name


def rotation_body_xyz(angles: np.ndarray) -> np.ndarray:
    """Body-fixed X-Y-Z rotation (OpenSim frame ``orientation``). Shape: (3, 3)."""
    a, b, c = angles
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rx @ ry @ rz


# ----------------------------------------------------------------------------- functions
@dataclass
class PiecewiseCubic:
    """A transform function in OpenSim's SimmSpline form.

    value(X) = y[k] + dx (b[k] + dx (c[k] + dx d[k])), dx = X - x[k], with x[k] <= X < x[k+1];
    outside [x[0], x[-1]] the value is extended linearly with slope b at the end knot (SimmSpline
    semantics). ``pure_polynomial`` functions use the single segment everywhere.
    """

    x: np.ndarray
    y: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    pure_polynomial: bool = False

    def scaled(self, s: float) -> PiecewiseCubic:
        return PiecewiseCubic(
            self.x, self.y * s, self.b * s, self.c * s, self.d * s, self.pure_polynomial
        )

    @staticmethod
    def constant(v: float) -> PiecewiseCubic:
        z = np.zeros(1)
        return PiecewiseCubic(np.zeros(1), np.array([v]), z, z.copy(), z.copy())

    @staticmethod
    def linear(slope: float, intercept: float) -> PiecewiseCubic:
        z = np.zeros(1)
        return PiecewiseCubic(np.zeros(1), np.array([intercept]), np.array([slope]), z, z.copy())

    def is_constant(self) -> bool:
        return bool(np.all(self.b == 0) and np.all(self.c == 0) and np.all(self.d == 0))

    def is_identity(self) -> bool:
        return (
            self.x.size == 1
            and self.y[0] == self.x[0] * 0.0
            and self.b[0] == 1.0
            and self.c[0] == 0
            and self.d[0] == 0
        )

    def __call__(self, X: float) -> float:
        """Reference evaluation in numpy (used by tests and export checks)."""
        x = self.x
        if self.pure_polynomial:
            dx = X - x[0]
            return float(self.y[0] + dx * (self.b[0] + dx * (self.c[0] + dx * self.d[0])))
        if X < x[0]:
            return float(self.y[0] + (X - x[0]) * self.b[0])
        if X > x[-1]:
            return float(self.y[-1] + (X - x[-1]) * self.b[-1])
        k = int(np.clip(np.searchsorted(x, X, side="right") - 1, 0, x.size - 1))
        dx = X - x[k]
        return float(self.y[k] + dx * (self.b[k] + dx * (self.c[k] + dx * self.d[k])))


def simm_spline_coefficients(x: np.ndarray, y: np.ndarray) -> PiecewiseCubic:
    """Coefficients of OpenSim's SimmSpline through (x, y).

    The classic natural-cubic construction SIMM used (Forsythe, Malcolm and Moler): a
    tridiagonal system for the second-derivative terms, with end conditions matching the third
    derivative of the cubic through the four end points (natural ends with three points; a
    straight line with two).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.size
    b = np.zeros(n)
    c = np.zeros(n)
    d = np.zeros(n)
    if n < 2:
        raise ValueError("a SimmSpline needs at least two points")
    if n == 2:
        b[0] = b[1] = (y[1] - y[0]) / (x[1] - x[0])
        return PiecewiseCubic(x, y, b, c, d)
    nm1, nm2 = n - 1, n - 2
    d[0] = x[1] - x[0]
    c[1] = (y[1] - y[0]) / d[0]
    for i in range(1, nm1):
        d[i] = x[i + 1] - x[i]
        b[i] = 2.0 * (d[i - 1] + d[i])
        c[i + 1] = (y[i + 1] - y[i]) / d[i]
        c[i] = c[i + 1] - c[i]
    b[0] = -d[0]
    b[nm1] = -d[n - 2]
    c[0] = c[nm1] = 0.0
    if n > 3:  # with three points the end conditions stay natural (c = 0)
        d1 = c[2] / (x[3] - x[1]) - c[1] / (x[2] - x[0])
        d2 = c[nm2] / (x[nm1] - x[n - 3]) - c[n - 3] / (x[nm2] - x[n - 4])
        c[0] = d1 * d[0] * d[0] / (x[3] - x[0])
        c[nm1] = -d2 * d[n - 2] * d[n - 2] / (x[nm1] - x[n - 4])
    for i in range(1, n):
        t = d[i - 1] / b[i - 1]
        b[i] -= t * d[i - 1]
        c[i] -= t * c[i - 1]
    c[nm1] /= b[nm1]
    for j in range(nm1):
        i = nm2 - j
        c[i] = (c[i] - d[i] * c[i + 1]) / b[i]
    b[nm1] = (y[nm1] - y[n - 2]) / d[n - 2] + d[n - 2] * (c[n - 2] + 2.0 * c[nm1])
    for i in range(nm1):
        b[i] = (y[i + 1] - y[i]) / d[i] - d[i] * (c[i + 1] + 2.0 * c[i])
        d[i] = (c[i + 1] - c[i]) / d[i]
        c[i] *= 3.0
    c[nm1] *= 3.0
    d[nm1] = d[n - 2]
    return PiecewiseCubic(x, y, b, c, d)


def parse_function(el: ET.Element, where: str, path: str) -> PiecewiseCubic:
    """Parse an OpenSim Function element into a :class:`PiecewiseCubic`."""
    tag = el.tag
    if tag == "LinearFunction":
        coef = _floats(_text(el, "coefficients"), 2, f"{where} LinearFunction", path)
        return PiecewiseCubic.linear(coef[0], coef[1])
    if tag == "Constant":
        return PiecewiseCubic.constant(
            float(_floats(_text(el, "value"), 1, f"{where} Constant", path)[0])
        )
    if tag in ("SimmSpline", "NaturalCubicSpline"):
        if tag == "NaturalCubicSpline":
            raise ModelError(
                f"{where}: NaturalCubicSpline is not supported (only SimmSpline is)", path=path
            )
        xs = _floats(_text(el, "x"), None, f"{where} SimmSpline x", path)
        ys = _floats(_text(el, "y"), None, f"{where} SimmSpline y", path)
        if xs.size != ys.size or xs.size < 2:
            raise ModelError(
                f"{where}: SimmSpline needs matching x and y with >= 2 points "
                f"(x has {xs.size}, y has {ys.size})",
                path=path,
            )
        if np.any(np.diff(xs) <= 0):
            raise ModelError(f"{where}: SimmSpline x values must increase", path=path)
        return simm_spline_coefficients(xs, ys)
    if tag == "MultiplierFunction":
        holder = el.find("function")
        inner = [c for c in (holder if holder is not None else []) if isinstance(c.tag, str)]
        if len(inner) != 1:
            raise ModelError(f"{where}: MultiplierFunction needs exactly one function", path=path)
        scale = float(_floats(_text(el, "scale", "1"), 1, f"{where} scale", path)[0])
        return parse_function(inner[0], where, path).scaled(scale)
    if tag == "PolynomialFunction":
        coefs = _floats(_text(el, "coefficients"), None, f"{where} PolynomialFunction", path)
        if coefs.size == 0 or coefs.size > 4:
            raise ModelError(
                f"{where}: PolynomialFunction of degree {coefs.size - 1} is not supported "
                "(degree 0..3 are)",
                path=path,
            )
        low_first = np.zeros(4)
        low_first[: coefs.size] = coefs[::-1]  # OpenSim lists the highest power first
        one = np.zeros(1)
        return PiecewiseCubic(
            one,
            low_first[:1],
            low_first[1:2],
            low_first[2:3],
            low_first[3:4],
            pure_polynomial=True,
        )
    raise ModelError(f"{where}: unsupported function type '{tag}'", path=path)


def _function_child(el: ET.Element, where: str, path: str) -> ET.Element | None:
    """The function element of a TransformAxis: any child that is not axis/coordinates."""
    found = [c for c in el if isinstance(c.tag, str) and c.tag not in ("axis", "coordinates")]
    if len(found) > 1:
        raise ModelError(f"{where}: more than one function ({[c.tag for c in found]})", path=path)
    return found[0] if found else None


# ----------------------------------------------------------------------------- component tree
@dataclass
class _Frame:
    path: str
    body: str  # name of the body (or 'ground') the frame is fixed to
    R: np.ndarray  # orientation of the frame in its body
    p: np.ndarray  # origin of the frame in its body


@dataclass
class _Joint:
    name: str
    kind: str
    parent_frame: _Frame
    child_frame: _Frame
    coords: list[str]
    axes: np.ndarray  # (6, 3)
    funcs: list[PiecewiseCubic]
    func_coord: list[str | None]


@dataclass
class ExportedModel:
    """Everything the exporter resolved, as plain numpy and Python (before becoming a pytree)."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class _Resolver:
    """Resolves OpenSim socket paths (absolute or relative) to frames fixed in bodies."""

    def __init__(self, root: ET.Element, path: str):
        self.path = path
        self.elements: dict[str, ET.Element] = {}
        self.owner_of: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        self.cache: dict[str, _Frame] = {}
        self.resolving: set[str] = set()  # frames being resolved: a loop is an error
        self.elements["/ground"] = root.find("Ground") if root.find("Ground") is not None else root
        self.kind["/ground"] = "ground"
        for b in _objects(root, "BodySet"):
            bp = f"/bodyset/{b.get('name')}"
            self.elements[bp] = b
            self.kind[bp] = "body"
            comps = b.find("components")
            for fr in comps if comps is not None else []:
                if fr.tag == "PhysicalOffsetFrame":
                    self._add_frame(f"{bp}/{fr.get('name')}", fr)
        gcomps = root.find("Ground/components")
        for fr in gcomps if gcomps is not None else []:
            if fr.tag == "PhysicalOffsetFrame":
                self._add_frame(f"/ground/{fr.get('name')}", fr)
        for j in _objects(root, "JointSet"):
            jp = f"/jointset/{j.get('name')}"
            self.elements[jp] = j
            self.kind[jp] = "joint"
            frames = j.find("frames")
            for fr in frames if frames is not None else []:
                if fr.tag == "PhysicalOffsetFrame":
                    self._add_frame(f"{jp}/{fr.get('name')}", fr)
                elif isinstance(fr.tag, str):
                    raise ModelError(
                        f"joint '{j.get('name')}': frame type '{fr.tag}' is not supported",
                        path=path,
                    )

    def _add_frame(self, p: str, el: ET.Element) -> None:
        self.elements[p] = el
        self.kind[p] = "offset"
        for sub in el.findall("components/PhysicalOffsetFrame"):
            self._add_frame(f"{p}/{sub.get('name')}", sub)

    @staticmethod
    def join(base: str, rel: str) -> str:
        rel = rel.strip()
        parts = [] if rel.startswith("/") else [s for s in base.split("/") if s]
        for s in rel.split("/"):
            if s in ("", "."):
                continue
            if s == "..":
                if parts:
                    parts.pop()
            else:
                parts.append(s)
        return "/" + "/".join(parts)

    def lookup(self, owner: str, rel: str, who: str) -> _Frame:
        cand = [self.join(owner, rel)]
        name = rel.strip().split("/")[-1]
        # Old 4.0 files sometimes name bodies without their set: try those spellings too.
        cand += [f"/bodyset/{name}", f"/{name}"] if "/" not in rel.strip("/") else []
        if name == "ground":
            cand.append("/ground")
        for c in cand:
            if c in self.elements:
                return self.frame(c)
        raise ModelError(f"{who}: cannot find frame {rel!r}", path=self.path)

    def frame(self, p: str) -> _Frame:
        if p in self.cache:
            return self.cache[p]
        if p in self.resolving:
            raise ModelError(
                f"PhysicalOffsetFrame '{p}' is its own ancestor (its socket_parent chain loops)",
                path=self.path,
            )
        self.resolving.add(p)
        kind = self.kind[p]
        if kind == "ground":
            fr = _Frame(p, "ground", _EYE.copy(), np.zeros(3))
        elif kind == "body":
            fr = _Frame(p, p.split("/")[-1], _EYE.copy(), np.zeros(3))
        elif kind == "offset":
            el = self.elements[p]
            who = f"PhysicalOffsetFrame '{p}'"
            sock = _text(el, "socket_parent")
            if sock is None:
                raise ModelError(f"{who}: missing socket_parent", path=self.path)
            parent = self.lookup(p, sock, who)
            t = _floats(_text(el, "translation", "0 0 0"), 3, f"{who} translation", self.path)
            o = _floats(_text(el, "orientation", "0 0 0"), 3, f"{who} orientation", self.path)
            fr = _Frame(p, parent.body, parent.R @ rotation_body_xyz(o), parent.R @ t + parent.p)
        else:
            raise ModelError(f"'{p}' is a {kind}, not a frame", path=self.path)
        self.cache[p] = fr
        return fr


def _objects(root: ET.Element, set_tag: str) -> list[ET.Element]:
    s = root.find(set_tag)
    if s is None:
        return []
    objs = s.find("objects")
    return [e for e in (objs if objs is not None else []) if isinstance(e.tag, str)]


# ----------------------------------------------------------------------------- joints
def _joint_axes(j: ET.Element, kind: str, coords: list[str], path: str):
    """Rewrite any supported joint as 3 body-fixed rotations + 3 parent-frame translations."""
    name = j.get("name")
    ident = PiecewiseCubic.linear(1.0, 0.0)
    zero = PiecewiseCubic.constant(0.0)
    X, Y, Z = np.eye(3)
    axes = np.array([X, Y, Z, X, Y, Z], dtype=np.float64)
    funcs: list[PiecewiseCubic] = [zero] * 6
    fcoord: list[str | None] = [None] * 6

    def need(n):
        if len(coords) != n:
            raise ModelError(
                f"{kind} '{name}': expected {n} coordinates, found {len(coords)}", path=path
            )

    if kind == "WeldJoint":
        need(0)
    elif kind == "PinJoint":
        need(1)
        funcs[2], fcoord[2] = ident, coords[0]
    elif kind == "SliderJoint":
        need(1)
        funcs[3], fcoord[3] = ident, coords[0]
    elif kind == "UniversalJoint":
        need(2)
        funcs[0], fcoord[0] = ident, coords[0]
        funcs[1], fcoord[1] = ident, coords[1]
    elif kind in ("GimbalJoint", "BallJoint"):
        need(3)
        for i in range(3):
            funcs[i], fcoord[i] = ident, coords[i]
    elif kind == "FreeJoint":
        need(6)
        for i in range(6):
            funcs[i], fcoord[i] = ident, coords[i]
    elif kind == "CustomJoint":
        st = j.find("SpatialTransform")
        if st is None:
            raise ModelError(f"CustomJoint '{name}': missing SpatialTransform", path=path)
        tas = {ta.get("name"): ta for ta in st.findall("TransformAxis")}
        order = ["rotation1", "rotation2", "rotation3", "translation1", "translation2"]
        order.append("translation3")
        for i, an in enumerate(order):
            ta = tas.get(an)
            if ta is None:
                continue
            where = f"CustomJoint '{name}' {an}"
            ax = _floats(_text(ta, "axis", "0 0 0"), 3, f"{where} axis", path)
            cn = (_text(ta, "coordinates") or "").split()
            fel = _function_child(ta, where, path)
            f = zero if fel is None else parse_function(fel, where, path)
            if len(cn) > 1:
                raise ModelError(
                    f"{where}: functions of {len(cn)} coordinates are not supported", path=path
                )
            for c in cn:
                if c not in coords:
                    raise ModelError(f"{where}: unknown coordinate '{c}'", path=path)
            if not cn and not f.is_constant():
                raise ModelError(f"{where}: non-constant function without coordinate", path=path)
            big = np.abs(ax).max()
            if big == 0 or big * np.linalg.norm(ax / big) < 1e-12:
                if cn or f(0.0) != 0.0:
                    raise ModelError(f"{where}: zero axis with a non-zero motion", path=path)
                ax, big = axes[i], 1.0
            ax = ax / big  # to ~1 first: the norm of a 1e308 axis overflows
            axes[i] = ax / np.linalg.norm(ax)
            funcs[i] = f
            fcoord[i] = cn[0] if cn else None
        # OpenSim replaces dependent rotation axes that carry no motion; we can only accept
        # degenerate sets when the affected rotation is constant zero.
        rot = axes[:3]
        if abs(np.linalg.det(rot)) < 1e-9:
            moving = [i for i in range(3) if fcoord[i] is not None or funcs[i](0.0) != 0.0]
            if len(moving) == 3:
                raise ModelError(
                    f"CustomJoint '{name}': rotation axes are not independent", path=path
                )
    else:
        raise ModelError(f"joint type '{kind}' ('{name}') is not supported", path=path)
    return axes, funcs, fcoord


def _motion_type(kind: str, idx: int, funcs, fcoord, cname: str) -> int:
    """OpenSim's Coordinate::MotionType for the coordinate ``cname`` of a joint."""
    if kind != "CustomJoint":
        if kind == "SliderJoint" or (kind == "FreeJoint" and idx >= 3):
            return TRANSLATIONAL
        return ROTATIONAL
    # OpenSim looks at the first TransformAxis that uses the coordinate: a linear function
    # there makes it rotational/translational by the axis, anything else makes it coupled.
    for i in range(6):
        if fcoord[i] == cname:
            f = funcs[i]
            linear = f.x.size == 1 and not f.pure_polynomial and f.c[0] == 0 and f.d[0] == 0
            if not linear:
                return COUPLED
            return ROTATIONAL if i < 3 else TRANSLATIONAL
    return COUPLED


def _xml_line(e: ET.ParseError) -> int | None:
    pos = getattr(e, "position", None)
    return pos[0] if pos else None


# ----------------------------------------------------------------------------- markers
def parse_marker_file(path: str | Path) -> list[ET.Element]:
    """Marker elements of an OpenSim MarkerSet ``.xml`` (or any document holding one)."""
    path = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ModelError(f"malformed XML: {e}", path=path, line=_xml_line(e)) from None
    except (LookupError, ValueError) as e:  # an unknown or unusable encoding declaration
        raise ModelError(f"cannot decode the XML: {e}", path=path) from None
    except OSError as e:
        raise ModelError(f"cannot read marker set: {e.strerror or e}", path=path) from None
    ms = root if root.tag == "MarkerSet" else root.find(".//MarkerSet")
    if ms is None:
        raise ModelError("no <MarkerSet> element found", path=path)
    return [m for m in ms.findall("objects/Marker")]


# ----------------------------------------------------------------------------- main entry
def read_osim(path: str | Path, markers: str | Path | None = None) -> ExportedModel:
    """Parse an OpenSim model (and optionally a separate MarkerSet file) into flat arrays."""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model: {e}", path=path) from e
    try:
        doc = ET.fromstring(raw)
    except ET.ParseError as e:
        raise ModelError(f"malformed XML: {e}", path=path, line=_xml_line(e)) from None
    except (LookupError, ValueError) as e:  # an unknown or unusable encoding declaration
        raise ModelError(f"cannot decode the XML: {e}", path=path) from None
    root = doc.find("Model") if doc.tag == "OpenSimDocument" else doc
    if root is None or root.tag != "Model":
        raise ModelError("no <Model> element (is this an .osim file?)", path=path)
    version_text = doc.get("Version", "40000") if doc.tag == "OpenSimDocument" else "40000"
    try:
        version = int(version_text.strip())
    except ValueError:
        raise ModelError(
            f"<OpenSimDocument Version={version_text!r}>: the version must be an integer such as "
            "40000",
            path=path,
            field="Version",
        ) from None
    if version < 30500 or any(b.find("Joint") is not None for b in _objects(root, "BodySet")):
        raise ModelError(
            f"model file version {version} keeps joints inside bodies (OpenSim 3 format); "
            "open and re-save it with OpenSim 4 first",
            path=path,
        )
    res = _Resolver(root, path)

    body_names = [_name(b, "body", path) for b in _objects(root, "BodySet")]
    if len(set(body_names)) != len(body_names):
        raise ModelError("duplicate body names", path=path)
    joints: dict[str, _Joint] = {}  # keyed by child body
    coord_info: dict[str, dict] = {}
    coord_order: list[str] = []
    for j in _objects(root, "JointSet"):
        kind, name = j.tag, _name(j, "joint", path)
        if kind not in _SUPPORTED_JOINTS:
            raise ModelError(f"joint '{name}': joint type '{kind}' is not supported", path=path)
        jp = f"/jointset/{name}"
        ps, cs = _text(j, "socket_parent_frame"), _text(j, "socket_child_frame")
        if ps is None or cs is None:
            raise ModelError(f"joint '{name}': missing socket_parent/child_frame", path=path)
        pf = res.lookup(jp, ps, f"joint '{name}' parent frame")
        cf = res.lookup(jp, cs, f"joint '{name}' child frame")
        if cf.body == "ground":
            raise ModelError(f"joint '{name}': ground as child (reversed joint)", path=path)
        if cf.body in joints:
            raise ModelError(
                f"joint '{name}': body '{cf.body}' already has parent joint "
                f"'{joints[cf.body].name}' (closed loops are not supported)",
                path=path,
            )
        coords = []
        for c in j.findall("coordinates/Coordinate"):
            cname = _name(c, "coordinate", path)
            if cname in coord_info:
                raise ModelError(f"duplicate coordinate '{cname}'", path=path)
            rng = _floats(_text(c, "range", "-1e30 1e30"), 2, f"coordinate '{cname}' range", path)
            if rng[0] > rng[1]:  # OpenSim refuses it too ("maximum less than minimum")
                raise ModelError(
                    f"coordinate '{cname}': <range> {rng[0]:g} {rng[1]:g} is inverted "
                    "(minimum first)",
                    path=path,
                    field="range",
                )
            coord_info[cname] = dict(
                name=cname,
                joint=name,
                default=float(
                    _floats(_text(c, "default_value", "0"), 1, f"'{cname}' default", path)[0]
                ),
                range=[float(rng[0]), float(rng[1])],
                clamped=_bool(c, "clamped", False, f"coordinate '{cname}'", path),
                locked=_bool(c, "locked", False, f"coordinate '{cname}'", path),
            )
            if _bool(c, "prescribed", False, f"coordinate '{cname}'", path):
                raise ModelError(
                    f"coordinate '{cname}': prescribed motion is not supported", path=path
                )
            coords.append(cname)
            coord_order.append(cname)
        axes, funcs, fcoord = _joint_axes(j, kind, coords, path)
        for i, cname in enumerate(coords):
            coord_info[cname]["motion_type"] = _motion_type(kind, i, funcs, fcoord, cname)
        joints[cf.body] = _Joint(name, kind, pf, cf, coords, axes, funcs, fcoord)

    if not coord_order:
        raise ModelError(
            "the model has no coordinates: nothing moves, so there is nothing to solve",
            path=path,
        )

    # Topological order: ground first, then bodies with parent before child.
    for b in body_names:
        if b not in joints:
            raise ModelError(f"body '{b}' has no joint connecting it to the model", path=path)
    order, placed = ["ground"], {"ground"}
    remaining = list(body_names)
    while remaining:
        progressed = False
        for b in list(remaining):
            if joints[b].parent_frame.body in placed:
                order.append(b)
                placed.add(b)
                remaining.remove(b)
                progressed = True
        if not progressed:
            raise ModelError(
                f"bodies {remaining} do not connect to ground through a tree", path=path
            )
    bidx = {b: i for i, b in enumerate(order)}
    n_body = len(order)

    # Coordinates: OpenSim's order (joints as listed, coordinates as listed).
    cidx = {c: i for i, c in enumerate(coord_order)}

    # Couplers.
    dependent: dict[str, tuple[str, PiecewiseCubic, str]] = {}
    for con in _objects(root, "ConstraintSet"):
        cname = _name(con, "constraint", path)
        if not _bool(con, "isEnforced", True, f"constraint '{cname}'", path):
            continue
        if con.tag != "CoordinateCouplerConstraint":
            raise ModelError(f"constraint '{cname}': type '{con.tag}' is not supported", path=path)
        indep = (_text(con, "independent_coordinate_names") or "").split()
        dep = _text(con, "dependent_coordinate_name")
        where = f"CoordinateCouplerConstraint '{cname}'"
        if len(indep) != 1:
            raise ModelError(
                f"{where}: {len(indep)} independent coordinates (only 1 is supported)",
                path=path,
            )
        for c in indep + [dep]:
            if c not in cidx:
                raise ModelError(f"{where}: unknown coordinate '{c}'", path=path)
        fel = con.find("coupled_coordinates_function")
        fch = [e for e in (fel if fel is not None else []) if isinstance(e.tag, str)]
        if len(fch) != 1:
            raise ModelError(f"{where}: missing coupled_coordinates_function", path=path)
        scale = float(_floats(_text(con, "scale_factor", "1"), 1, f"{where} scale", path)[0])
        if dep in dependent:
            raise ModelError(f"{where}: '{dep}' is already dependent", path=path)
        dependent[dep] = (indep[0], parse_function(fch[0], where, path).scaled(scale), cname)
    for ind, _, cname in dependent.values():
        if ind in dependent:
            raise ModelError(
                f"CoordinateCouplerConstraint '{cname}': independent coordinate '{ind}' is "
                "itself dependent (chained couplers are not supported)",
                path=path,
            )
        if coord_info[ind]["locked"]:
            raise ModelError(f"'{cname}': independent coordinate '{ind}' is locked", path=path)

    indep_names = [c for c in coord_order if c not in dependent and not coord_info[c]["locked"]]

    # Markers.
    marker_els = (
        parse_marker_file(markers)
        if markers is not None
        else root.findall("MarkerSet/objects/Marker")
    )
    marker_src = str(markers) if markers is not None else path
    m_names, m_body, m_off = [], [], []
    for m in marker_els:
        mname = _name(m, "marker", marker_src)
        if mname in m_names:
            raise ModelError(f"duplicate marker '{mname}'", path=marker_src)
        sock = _text(m, "socket_parent_frame") or _text(m, "body")
        if sock is None:
            raise ModelError(f"marker '{mname}': no parent frame", path=marker_src)
        try:
            fr = res.lookup(f"/markerset/{mname}", sock, f"marker '{mname}'")
        except ModelError:
            raise ModelError(
                f"marker '{mname}': parent frame {sock!r} is not in model {path}",
                path=marker_src,
                field=mname,
            ) from None
        loc = _floats(_text(m, "location", "0 0 0"), 3, f"marker '{mname}' location", marker_src)
        m_names.append(mname)
        m_body.append(bidx[fr.body])
        m_off.append(fr.R @ loc + fr.p)

    # Functions: couplers first (inputs: independent coords), then 6 per joint.
    funcs: list[PiecewiseCubic] = []
    func_input: list[int] = []
    dep_idx, dep_func = [], []
    for dep in coord_order:
        if dep in dependent:
            ind, f, _ = dependent[dep]
            dep_idx.append(cidx[dep])
            dep_func.append(len(funcs))
            funcs.append(f)
            func_input.append(cidx[ind])
    axis_func = np.zeros((n_body, 6), np.int64)
    joint_axes = np.tile(np.eye(3)[[0, 1, 2, 0, 1, 2]], (n_body, 1, 1))
    R_pf = np.tile(np.eye(3), (n_body, 1, 1))
    p_pf = np.zeros((n_body, 3))
    R_cm = np.tile(np.eye(3), (n_body, 1, 1))
    p_cm = np.zeros((n_body, 3))
    body_parent = np.full(n_body, -1, np.int64)
    body_scale = np.ones((n_body, 3))
    joint_meta = []
    zero_fn = len(funcs)
    funcs.append(PiecewiseCubic.constant(0.0))
    func_input.append(-1)
    axis_func[0] = zero_fn
    for i, b in enumerate(order[1:], start=1):
        jt = joints[b]
        body_parent[i] = bidx[jt.parent_frame.body]
        R_pf[i], p_pf[i] = jt.parent_frame.R, jt.parent_frame.p
        # child body -> M frame, inverted: X_M_child
        R_cm[i] = jt.child_frame.R.T
        p_cm[i] = -jt.child_frame.R.T @ jt.child_frame.p
        joint_axes[i] = jt.axes
        for k in range(6):
            axis_func[i, k] = len(funcs)
            funcs.append(jt.funcs[k])
            func_input.append(-1 if jt.func_coord[k] is None else cidx[jt.func_coord[k]])
        joint_meta.append(
            dict(
                name=jt.name,
                type=jt.kind,
                parent=jt.parent_frame.body,
                child=b,
                coordinates=jt.coords,
            )
        )
        belt = res.elements.get(f"/bodyset/{b}")
        mesh = belt.find(".//Mesh/scale_factors") if belt is not None else None
        if mesh is not None and mesh.text:
            body_scale[i] = _floats(mesh.text, 3, f"body '{b}' mesh scale_factors", path)

    K = max(f.x.size for f in funcs)
    n_f = len(funcs)
    fx = np.full((n_f, K), np.inf)
    fy, fb, fc, fd = (np.zeros((n_f, K)) for _ in range(4))
    fn = np.zeros(n_f, np.int64)
    fpoly = np.zeros(n_f, bool)
    for i, f in enumerate(funcs):
        k = f.x.size
        fx[i, :k], fy[i, :k], fb[i, :k], fc[i, :k], fd[i, :k] = f.x, f.y, f.b, f.c, f.d
        fn[i] = k
        fpoly[i] = f.pure_polynomial

    depth = np.zeros(n_body, np.int64)
    for i in range(1, n_body):
        depth[i] = depth[body_parent[i]] + 1

    coords_meta = []
    for c in coord_order:
        ci = dict(coord_info[c])
        ci["motion_type"] = MOTION_TYPE_NAMES[ci["motion_type"]]
        ci["dependent_on"] = dependent[c][0] if c in dependent else None
        coords_meta.append(ci)

    meta = dict(
        format="simspine-jax-kinematic-tree",
        version=1,
        name=root.get("name") or Path(path).stem,
        source=Path(path).name,
        source_sha256=hashlib.sha256(raw).hexdigest(),
        marker_source=None if markers is None else Path(str(markers)).name,
        bodies=order,
        joints=joint_meta,
        coordinates=coords_meta,
        independent=indep_names,
        couplers=[
            dict(name=dependent[d][2], dependent=d, independent=dependent[d][0])
            for d in coord_order
            if d in dependent
        ],
        markers=m_names,
        marker_bodies=[order[i] for i in m_body],
    )
    arrays = dict(
        body_parent=body_parent,
        body_depth=depth,
        joint_R_pf=R_pf,
        joint_p_pf=p_pf,
        joint_R_cm=R_cm,
        joint_p_cm=p_cm,
        joint_axes=joint_axes,
        axis_func=axis_func,
        func_input=np.array(func_input, np.int64),
        func_nknot=fn,
        func_poly=fpoly,
        func_x=fx,
        func_y=fy,
        func_b=fb,
        func_c=fc,
        func_d=fd,
        dep_coord=np.array(dep_idx, np.int64),
        dep_func=np.array(dep_func, np.int64),
        indep_coord=np.array([cidx[c] for c in indep_names], np.int64),
        coord_default=np.array([coord_info[c]["default"] for c in coord_order]),
        coord_range=np.array([coord_info[c]["range"] for c in coord_order]).reshape(-1, 2),
        coord_clamped=np.array([coord_info[c]["clamped"] for c in coord_order], bool),
        coord_locked=np.array([coord_info[c]["locked"] for c in coord_order], bool),
        coord_motion=np.array([coord_info[c]["motion_type"] for c in coord_order], np.int64),
        marker_body=np.array(m_body, np.int64),
        marker_offset=np.array(m_off, np.float64).reshape(-1, 3),
        body_scale=body_scale,
    )
    return ExportedModel(meta=meta, arrays=arrays)
