"""The exported kinematic tree: static topology + traced geometry, saved as npz + JSON.

Topology (parent indices, depth levels, function and coordinate index arrays) is static and
hashed, so ``jit`` compiles once per model structure; geometry (frame offsets, joint axes,
function coefficients, marker offsets, defaults, ranges) are ``jax.Array`` leaves, so scaling and
marker calibration are differentiable and a new subject with the same structure does not
recompile.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ModelError
from .export import MOTION_TYPE_NAMES

FORMAT_NAME = "simspine-jax-kinematic-tree"
FORMAT_VERSION = 1

# Arrays that stay numpy (structure); everything else in the file becomes a jax leaf.
_STATIC_ARRAYS = (
    "body_parent",
    "body_depth",
    "axis_func",
    "func_input",
    "func_nknot",
    "func_poly",
    "dep_coord",
    "dep_func",
    "indep_coord",
    "coord_clamped",
    "coord_locked",
    "coord_motion",
    "marker_body",
)
_LEAF_ARRAYS = (
    "joint_R_pf",
    "joint_p_pf",
    "joint_R_cm",
    "joint_p_cm",
    "joint_axes",
    "func_x",
    "func_y",
    "func_b",
    "func_c",
    "func_d",
    "coord_default",
    "coord_range",
    "marker_offset",
    "body_scale",
)


@dataclass(frozen=True, eq=False)
class Topology:
    """Static structure of a kinematic tree (hashable; part of the compiled program)."""

    meta: dict
    arrays: dict  # name -> np.ndarray (read-only)
    digest: str

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, Topology) and other.digest == self.digest

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @cached_property
    def marker_ancestor(self) -> np.ndarray:
        """1.0 where body b moves marker m (b on the path from the marker's body to ground,
        ground excluded). Shape: (n_marker, n_body)."""
        parent = self.arrays["body_parent"]
        mb = self.arrays["marker_body"]
        anc = np.zeros((len(mb), len(parent)))
        for m, b in enumerate(mb):
            while b > 0:
                anc[m, b] = 1.0
                b = parent[b]
        return anc

    @cached_property
    def active_axes(self) -> np.ndarray:
        """Flat (body * 6 + axis) indices of joint axes driven by a coordinate. Shape: (R,)."""
        inp = self.arrays["func_input"][self.arrays["axis_func"].reshape(-1)]
        return np.nonzero(inp >= 0)[0]

    @cached_property
    def jacobian_entries(self) -> dict:
        """Sparsity of the marker Jacobian, for :func:`simspine_jax.fk.marker_jacobian_one`.

        Row r of :attr:`active_axes` is driven by full coordinate ``row_coord[r]``, which is
        independent coordinate ``row_col[r]`` itself or a coupler of it (``row_has_col``
        False: locked, or coupled to a locked one). An entry e is a (marker, row) pair where
        the row's body moves the marker; ``dst`` = marker * n_indep + column, sorted. Shapes:
        row_* (R,); ent_* and dst (E,).
        """
        a = self.arrays
        act = self.active_axes
        row_coord = a["func_input"][a["axis_func"].reshape(-1)[act]]
        col_of = {int(c): i for i, c in enumerate(a["indep_coord"])}
        src_of = {
            int(d): int(a["func_input"][f])
            for d, f in zip(a["dep_coord"], a["dep_func"], strict=True)
        }
        row_col = np.full(len(act), -1)
        for r, c in enumerate(row_coord):
            c = int(c)
            row_col[r] = col_of.get(c, col_of.get(src_of.get(c, -1), -1))
        anc = self.marker_ancestor[:, act // 6] > 0
        ent_m, ent_r = np.nonzero(anc & (row_col >= 0)[None, :])
        dst = ent_m * len(a["indep_coord"]) + row_col[ent_r]
        order = np.argsort(dst, kind="stable")
        ent_r = ent_r[order]
        return {
            "row_coord": row_coord,
            "row_col": np.maximum(row_col, 0),
            "row_has_col": row_col >= 0,
            "ent_marker": ent_m[order],
            "ent_row": ent_r,
            "ent_body": act[ent_r] // 6,
            "ent_rot": act[ent_r] % 6 < 3,
            "dst": dst[order],
        }

    @cached_property
    def levels(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per tree depth 1..max: (body indices, their parents). Shape: ((n_d,), (n_d,))."""
        depth = self.arrays["body_depth"]
        out = []
        for d in range(1, int(depth.max(initial=0)) + 1):
            idx = np.nonzero(depth == d)[0]
            out.append((idx, self.arrays["body_parent"][idx]))
        return out

    @cached_property
    def level_plan(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """:attr:`levels` as FK composes them without scatters: per depth, (body indices,
        each parent's position within the previous depth's bodies); and the permutation that
        takes the depth-ordered concatenation (ground first) back to body order."""
        depth = self.arrays["body_depth"]
        if int(np.sum(depth == 0)) != 1 or depth[0] != 0:
            raise ValueError("body 0 must be the only body at depth 0 (ground)")
        plan, prev, order = [], np.array([0]), [np.array([0])]
        for idx, par in self.levels:
            pos = np.searchsorted(prev, par)
            if not np.array_equal(prev[np.minimum(pos, len(prev) - 1)], par):
                raise ValueError("a body's parent is not one depth above it")
            plan.append((idx, pos))
            prev = idx
            order.append(idx)
        return plan, np.argsort(np.concatenate(order))


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class KinematicTree:
    """A kinematic tree ready for :func:`simspine_jax.fk.forward_kinematics`.

    Names (``body_names``, ``coordinate_names``, ``independent_names``, ``marker_names``) and
    index arrays come from :attr:`topology`; float arrays are attributes of their own.
    """

    topology: Topology
    joint_R_pf: jax.Array  # (n_body, 3, 3) parent body -> joint parent frame F
    joint_p_pf: jax.Array  # (n_body, 3)
    joint_R_cm: jax.Array  # (n_body, 3, 3) joint child frame M -> child body
    joint_p_cm: jax.Array  # (n_body, 3)
    joint_axes: jax.Array  # (n_body, 6, 3) unit axes: 3 body-fixed rotations, 3 translations
    func_x: jax.Array  # (n_func, K) knots, +inf padded
    func_y: jax.Array  # (n_func, K)
    func_b: jax.Array
    func_c: jax.Array
    func_d: jax.Array
    coord_default: jax.Array  # (n_coord,)
    coord_range: jax.Array  # (n_coord, 2)
    marker_offset: jax.Array  # (n_marker, 3) in the marker's body frame
    body_scale: jax.Array  # (n_body, 3) geometry scale factors as written in the model

    # -- pytree protocol
    def tree_flatten(self):
        return tuple(getattr(self, k) for k in _LEAF_ARRAYS), self.topology

    @classmethod
    def tree_unflatten(cls, topology, leaves):
        return cls(topology, *leaves)

    # -- convenient views of the structure
    @property
    def meta(self) -> dict:
        return self.topology.meta

    @property
    def body_names(self) -> tuple[str, ...]:
        return tuple(self.meta["bodies"])

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.meta["coordinates"])

    @property
    def independent_names(self) -> tuple[str, ...]:
        return tuple(self.meta["independent"])

    @property
    def marker_names(self) -> tuple[str, ...]:
        return tuple(self.meta["markers"])

    @property
    def n_body(self) -> int:
        return len(self.meta["bodies"])

    @property
    def n_coord(self) -> int:
        return len(self.meta["coordinates"])

    @property
    def n_indep(self) -> int:
        return len(self.meta["independent"])

    @property
    def n_marker(self) -> int:
        return len(self.meta["markers"])

    @property
    def dtype(self):
        return self.joint_p_pf.dtype

    def astype(self, dtype) -> KinematicTree:
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), self)

    def with_markers(self, names, bodies, offsets) -> KinematicTree:
        """A tree with another marker set (names, body names, offsets in body frames)."""
        meta = dict(self.meta, markers=list(names), marker_bodies=list(bodies))
        bidx = {b: i for i, b in enumerate(self.body_names)}
        arrays = dict(self.topology.arrays)
        arrays["marker_body"] = np.array([bidx[b] for b in bodies], np.int64)
        off = np.asarray(offsets, np.float64).reshape(-1, 3)
        full = {**_numpy_leaves(self), "marker_offset": off}
        return _build(meta, {**arrays, **full}, self.dtype)


def _numpy_leaves(tree: KinematicTree) -> dict:
    return {k: np.asarray(getattr(tree, k), np.float64) for k in _LEAF_ARRAYS}


def _digest(meta: dict, arrays: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(arrays):
        if k in _STATIC_ARRAYS:
            a = np.ascontiguousarray(arrays[k])
            h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _build(meta: dict, arrays: dict, dtype=None) -> KinematicTree:
    static = {}
    for k in _STATIC_ARRAYS:
        a = np.array(arrays[k])
        a.setflags(write=False)
        static[k] = a
    topo = Topology(meta=meta, arrays=static, digest=_digest(meta, static))
    if dtype is None:
        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    leaves = [jnp.asarray(np.asarray(arrays[k], np.float64), dtype) for k in _LEAF_ARRAYS]
    return KinematicTree(topo, *leaves)


def tree_from_export(exported, dtype=None) -> KinematicTree:
    """Make a :class:`KinematicTree` from :func:`simspine_jax.export.read_osim`'s result."""
    return _build(exported.meta, exported.arrays, dtype)


def save_tree(tree_or_export, path: str | Path) -> Path:
    """Write a kinematic tree as one ``.npz`` file (arrays + a ``meta.json`` entry), atomically.

    The path given is the path written, whatever its extension (``x.export`` stays
    ``x.export``; :func:`load_model` reads it back). Like every writer here (see
    :func:`simspine_jax.io.atomic_open`), the file gets the umask's permissions (or the old
    file's), a non-regular target is refused and a failed write raises
    :class:`~simspine_jax.io.outputs.OutputError` naming the path.
    """
    from .io import atomic_open

    if isinstance(tree_or_export, KinematicTree):
        meta = tree_or_export.meta
        arrays = {**tree_or_export.topology.arrays, **_numpy_leaves(tree_or_export)}
    else:
        meta, arrays = tree_or_export.meta, tree_or_export.arrays
    meta = dict(meta, format=FORMAT_NAME, version=FORMAT_VERSION)
    path = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        meta_json=np.frombuffer(json.dumps(meta, indent=1).encode(), np.uint8),
        **{k: np.asarray(v) for k, v in arrays.items()},
    )
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


# ----------------------------------------------------------------------------- loading
# Bounds checked on the zip directory before any entry is read. The bundled 30-body SimSpine
# tree takes 25 KB of JSON and 50 KB of arrays; 64 MiB per entry and 256 MiB in all leave room
# for models a thousand times larger and still refuse a 2 GB entry without touching it.
_MAX_ENTRY_BYTES = 64 * 2**20
_MAX_TOTAL_BYTES = 256 * 2**20
_MAX_HEADER_BYTES = 10_000  # an .npy header is ~128 bytes; numpy's own safety limit

_INT_ARRAYS = (
    "body_parent",
    "body_depth",
    "axis_func",
    "func_input",
    "func_nknot",
    "dep_coord",
    "dep_func",
    "indep_coord",
    "coord_motion",
    "marker_body",
)
_BOOL_ARRAYS = ("func_poly", "coord_clamped", "coord_locked")


def load_tree(path: str | Path, dtype=None) -> KinematicTree:
    """Load a kinematic tree written by :func:`save_tree` (no OpenSim needed).

    The file is checked before use, and anything unexpected raises
    :class:`~simspine_jax.errors.ModelError` naming the file and entry: a valid zip whose
    entries are exactly ``meta_json`` and the tree's arrays (unknown entries refused), sizes
    bounded from the zip directory before reading, plain ``.npy`` arrays (never pickles) of
    the right dtype and shape, a known format and version, and index arrays inside their
    ranges (parents before children, functions, coordinates and bodies that exist).
    """
    path = str(path)
    entries = _read_entries(path)
    meta = _read_meta(entries.pop("meta_json"), path)
    _check_arrays(meta, entries, path)
    return _build(meta, entries, dtype)


def _read_entries(path: str) -> dict[str, np.ndarray]:
    """Every entry of the ``.npz`` as an array, after checking the zip directory."""
    expected = ("meta_json", *_STATIC_ARRAYS, *_LEAF_ARRAYS)
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise ModelError(f"cannot read kinematic tree: {e.strerror or e}", path=path) from None
    if size > _MAX_TOTAL_BYTES + 2**20:  # compressed entries plus the zip's own records
        raise ModelError(
            f"file holds {size:,} bytes, more than a kinematic tree may (not read)", path=path
        )
    try:
        zf = zipfile.ZipFile(path)
    except OSError as e:
        raise ModelError(f"cannot read kinematic tree: {e.strerror or e}", path=path) from None
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise ModelError(
            "not a kinematic tree: the file is not a valid .npz (zip) archive (truncated or "
            "another kind of file?)",
            path=path,
        ) from None
    with zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        keys = [n[: -len(".npy")] if n.endswith(".npy") else n for n in names]
        unknown = sorted({n for n, k in zip(names, keys, strict=True) if k not in expected})
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise ModelError(
                f"unknown entries {shown}: a kinematic tree holds only meta_json and its "
                "arrays (refused rather than read)",
                path=path,
            )
        if "meta_json" not in keys:
            raise ModelError("not a simspine-jax kinematic tree (no meta_json entry)", path=path)
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ModelError(f"entries stored twice: {twice}", path=path)
        missing = [k for k in expected if k not in keys]
        if missing:
            raise ModelError(f"missing arrays {missing}", path=path)
        for info, key in zip(infos, keys, strict=True):
            if info.file_size > _MAX_ENTRY_BYTES:
                raise ModelError(
                    f"entry holds {info.file_size:,} bytes, more than the "
                    f"{_MAX_ENTRY_BYTES:,} a kinematic tree's entry may (not read)",
                    path=path,
                    field=key,
                )
            if info.flag_bits & 0x1:
                raise ModelError("entry is encrypted", path=path, field=key)
        total = sum(info.file_size for info in infos)
        if total > _MAX_TOTAL_BYTES:
            raise ModelError(
                f"entries hold {total:,} bytes, more than the {_MAX_TOTAL_BYTES:,} a kinematic "
                "tree may (not read)",
                path=path,
            )
        out = {}
        for info, key in zip(infos, keys, strict=True):
            try:
                with zf.open(info) as fh:
                    data = fh.read(_MAX_ENTRY_BYTES + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise ModelError(
                    f"entry cannot be read (corrupt or truncated archive: {e})",
                    path=path,
                    field=key,
                ) from None
            except zlib.error as e:
                raise ModelError(
                    f"entry cannot be decompressed ({e})", path=path, field=key
                ) from None
            out[key] = _parse_npy(data, path, key)
    return out


def _parse_npy(data: bytes, path: str, key: str) -> np.ndarray:
    """An ``.npy`` entry's array; its header is read and checked first (plain numeric dtype,
    byte count matching the shape), so no pickle is ever loaded."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(buf, max_header_size=_MAX_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(buf, max_header_size=_MAX_HEADER_BYTES)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, OverflowError) as e:
        raise ModelError(f"entry is not a numpy array ({e})", path=path, field=key) from None
    shape, fortran, dt = header
    if dt.hasobject or dt.kind not in "biuf" or dt.shape != ():
        raise ModelError(
            f"entry has dtype {dt.str!r}; only plain numbers are allowed (no Python objects)",
            path=path,
            field=key,
        )
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    start = buf.tell()
    if count * dt.itemsize != len(data) - start:
        raise ModelError(
            f"entry holds {len(data) - start} bytes of data, its shape {shape} needs "
            f"{count * dt.itemsize}",
            path=path,
            field=key,
        )
    arr = np.frombuffer(data, dtype=dt, count=count, offset=start)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr, dtype=dt.newbyteorder("="))


def _read_meta(raw: np.ndarray, path: str) -> dict:
    """The ``meta_json`` entry, parsed and type-checked (the fields the package reads)."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelError(
            f"entry must be UTF-8 JSON bytes (uint8, 1-D), got {raw.dtype} {raw.shape}",
            path=path,
            field="meta_json",
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelError(f"entry is not JSON ({e})", path=path, field="meta_json") from None
    if not isinstance(meta, dict):
        raise ModelError("entry must be a JSON object", path=path, field="meta_json")
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(f"unknown format {meta.get('format')!r}", path=path, field="format")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise ModelError(
            f"version must be a positive integer, got {version!r}", path=path, field="version"
        )
    if version > FORMAT_VERSION:
        raise ModelError(
            f"file format version {version} is newer than this package "
            f"({FORMAT_VERSION}); upgrade simspine-jax",
            path=path,
            field="version",
        )

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ModelError(f"meta_json: {key} must be {what}", path=path, field=key)

    def names(key: str, unique: bool = True) -> list[str]:
        v = meta.get(key)
        need(isinstance(v, list) and all(isinstance(s, str) for s in v), key, "a list of names")
        if unique:
            need(len(set(v)) == len(v), key, "a list of distinct names")
        return v

    for key in ("name", "source", "source_sha256"):
        need(isinstance(meta.get(key), str), key, "a string")
    need(meta.get("marker_source") is None or isinstance(meta["marker_source"], str),
         "marker_source", "a string or null")  # fmt: skip
    bodies = names("bodies")
    need(len(bodies) >= 1, "bodies", "a non-empty list (ground first)")
    markers = names("markers")
    marker_bodies = names("marker_bodies", unique=False)
    need(len(marker_bodies) == len(markers), "marker_bodies", "one body per marker")
    need(set(marker_bodies) <= set(bodies), "marker_bodies", "names of bodies of the tree")
    coords = meta.get("coordinates")
    need(isinstance(coords, list), "coordinates", "a list")
    for k, c in enumerate(coords):
        key = f"coordinates[{k}]"
        need(isinstance(c, dict), key, "an object")
        need(isinstance(c.get("name"), str), f"{key}.name", "a string")
        need(isinstance(c.get("joint"), str), f"{key}.joint", "a string")
        for flag in ("clamped", "locked"):
            need(isinstance(c.get(flag), bool), f"{key}.{flag}", "true or false")
        need(c.get("motion_type") in MOTION_TYPE_NAMES, f"{key}.motion_type",
             f"one of {MOTION_TYPE_NAMES}")  # fmt: skip
        need(c.get("dependent_on") is None or isinstance(c["dependent_on"], str),
             f"{key}.dependent_on", "a name or null")  # fmt: skip
        d, r = c.get("default"), c.get("range")
        need(_finite_number(d), f"{key}.default", "a finite number")
        need(isinstance(r, list) and len(r) == 2 and all(map(_finite_number, r)) and r[0] <= r[1],
             f"{key}.range", "[min, max], finite, min <= max")  # fmt: skip
    cnames = [c["name"] for c in coords]
    need(len(set(cnames)) == len(cnames), "coordinates", "distinct names")
    indep = names("independent")
    need(set(indep) <= set(cnames), "independent", "names of coordinates")
    for key, fields in (
        ("joints", {"name": str, "type": str, "parent": str, "child": str, "coordinates": list}),
        ("couplers", {"name": str, "dependent": str, "independent": str}),
    ):
        v = meta.get(key)
        need(isinstance(v, list), key, "a list")
        for k, item in enumerate(v):
            need(
                isinstance(item, dict)
                and all(isinstance(item.get(f), t) for f, t in fields.items()),
                f"{key}[{k}]",
                f"an object with {', '.join(fields)}",
            )
    for k, j in enumerate(meta["joints"]):
        need(all(isinstance(c, str) for c in j["coordinates"]), f"joints[{k}].coordinates",
             "a list of names")  # fmt: skip
    return meta


def _finite_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _check_arrays(meta: dict, a: dict[str, np.ndarray], path: str) -> None:
    """Dtypes, shapes and index ranges of the arrays, against each other and ``meta``."""
    nb, nc, nm = len(meta["bodies"]), len(meta["coordinates"]), len(meta["markers"])
    ni = len(meta["independent"])
    nf = a["func_input"].shape[0] if a["func_input"].ndim == 1 else -1
    nd = a["dep_coord"].shape[0] if a["dep_coord"].ndim == 1 else -1
    K = a["func_x"].shape[1] if a["func_x"].ndim == 2 else -1
    shapes = {
        "body_parent": (nb,),
        "body_depth": (nb,),
        "axis_func": (nb, 6),
        "func_input": (nf,),
        "func_nknot": (nf,),
        "func_poly": (nf,),
        "dep_coord": (nd,),
        "dep_func": (nd,),
        "indep_coord": (ni,),
        "coord_clamped": (nc,),
        "coord_locked": (nc,),
        "coord_motion": (nc,),
        "marker_body": (nm,),
        "joint_R_pf": (nb, 3, 3),
        "joint_p_pf": (nb, 3),
        "joint_R_cm": (nb, 3, 3),
        "joint_p_cm": (nb, 3),
        "joint_axes": (nb, 6, 3),
        "func_x": (nf, K),
        "func_y": (nf, K),
        "func_b": (nf, K),
        "func_c": (nf, K),
        "func_d": (nf, K),
        "coord_default": (nc,),
        "coord_range": (nc, 2),
        "marker_offset": (nm, 3),
        "body_scale": (nb, 3),
    }
    for key, arr in a.items():
        kinds = "iu" if key in _INT_ARRAYS else "b" if key in _BOOL_ARRAYS else "f"
        if arr.dtype.kind not in kinds:
            want = {"iu": "integer", "b": "bool", "f": "float"}[kinds]
            raise ModelError(f"{want} array expected, got {arr.dtype}", path=path, field=key)
        want_shape = shapes.get(key)
        if want_shape is not None and (arr.shape != want_shape or min(want_shape) < 0):
            raise ModelError(
                f"shape {arr.shape}, expected {want_shape} (from meta_json and the other arrays)",
                path=path,
                field=key,
            )
        if kinds == "f" and key != "func_x" and not np.all(np.isfinite(arr)):
            raise ModelError("values must be finite", path=path, field=key)

    def index(key: str, lo: int, hi: int, what: str) -> np.ndarray:
        v = a[key].astype(np.int64)
        if v.size and not (v.min() >= lo and v.max() < hi):
            raise ModelError(f"index outside [{lo}, {hi}) ({what})", path=path, field=key)
        return v

    parent = index("body_parent", -1, max(nb - 1, 0), "parent bodies")
    if nb and (parent[0] != -1 or np.any(parent[1:] >= np.arange(1, nb)) or np.any(parent[1:] < 0)):
        raise ModelError(
            "ground must come first (parent -1) and every body after its parent",
            path=path,
            field="body_parent",
        )
    depth = np.zeros(nb, np.int64)
    for i in range(1, nb):
        depth[i] = depth[parent[i]] + 1
    if not np.array_equal(a["body_depth"], depth):
        raise ModelError("does not match body_parent", path=path, field="body_depth")
    index("axis_func", 0, nf, "functions")
    index("func_input", -1, nc, "coordinates, -1 for none")
    nknot = index("func_nknot", 1, K + 1, "knots per function")
    dep = index("dep_coord", 0, nc, "coordinates")
    dep_func = index("dep_func", 0, nf, "functions")
    ind = index("indep_coord", 0, nc, "coordinates")
    index("coord_motion", 0, len(MOTION_TYPE_NAMES), "motion types")
    mb = index("marker_body", 0, nb, "bodies")
    if len(set(dep.tolist())) != nd or len(set(ind.tolist())) != ni or set(dep) & set(ind):
        raise ModelError(
            "dependent and independent coordinates must be distinct", path=path, field="dep_coord"
        )
    if nd and np.any(a["func_input"][dep_func] < 0):
        raise ModelError("a coupler function without input", path=path, field="dep_func")
    cnames = [c["name"] for c in meta["coordinates"]]
    if [cnames[k] for k in ind] != list(meta["independent"]):
        raise ModelError("does not match meta_json's independent", path=path, field="indep_coord")
    if [meta["bodies"][k] for k in mb] != list(meta["marker_bodies"]):
        raise ModelError("does not match meta_json's marker_bodies", path=path, field="marker_body")
    x = a["func_x"]
    used = np.arange(K)[None, :] < nknot[:, None]
    if not (np.all(np.isfinite(x[used])) and np.all(np.isposinf(x[~used]))):
        raise ModelError(
            "knots must be finite, padded with +inf after func_nknot", path=path, field="func_x"
        )
    with np.errstate(invalid="ignore"):  # inf - inf in the padding, masked out
        step = np.diff(x, axis=1)
    if np.any(np.where(used[:, 1:], ~(step > 0), False)):
        raise ModelError("knots must increase", path=path, field="func_x")
    rng = a["coord_range"]
    if np.any(rng[:, 0] > rng[:, 1]):
        raise ModelError("inverted range (min > max)", path=path, field="coord_range")
    eye = np.eye(3)
    for key in ("joint_R_pf", "joint_R_cm"):
        R = a[key]
        if np.abs(np.swapaxes(R, -1, -2) @ R - eye).max(initial=0.0) > 1e-6:
            raise ModelError("not rotation matrices", path=path, field=key)
    if np.abs(np.linalg.norm(a["joint_axes"], axis=-1) - 1.0).max(initial=0.0) > 1e-6:
        raise ModelError("axes must be unit vectors", path=path, field="joint_axes")


def load_model(path: str | Path, markers: str | Path | None = None, dtype=None) -> KinematicTree:
    """Load an exported tree (``.npz``) or export an ``.osim`` on the fly."""
    p = str(path)
    if p.endswith(".osim"):
        from .export import read_osim

        return tree_from_export(read_osim(p, markers=markers), dtype)
    tree = load_tree(p, dtype)
    if markers is not None:
        tree = replace_markers(tree, markers)
    return tree


def replace_markers(tree: KinematicTree, markers: str | Path) -> KinematicTree:
    """Swap in the markers of an OpenSim MarkerSet file (bodies must exist in the tree)."""
    from .export import _floats, _text, parse_marker_file

    names, bodies, offs = [], [], []
    bset = set(tree.body_names)
    for m in parse_marker_file(markers):
        name = (m.get("name") or "").strip()
        if not name or name in names:
            raise ModelError(
                "a marker without a name" if not name else f"marker '{name}' is listed twice",
                path=str(markers),
                field=name or None,
            )
        sock = (_text(m, "socket_parent_frame") or "").split("/")[-1]
        if sock not in bset:
            raise ModelError(
                f"marker '{name}': body {sock!r} is not in the model (only markers fixed "
                "directly on bodies can be swapped into an exported tree; export the .osim "
                "with --markers instead)",
                path=str(markers),
                field=name,
            )
        names.append(name)
        bodies.append(sock)
        offs.append(_floats(_text(m, "location", "0 0 0"), 3, f"marker '{name}'", str(markers)))
    return tree.with_markers(names, bodies, offs)
