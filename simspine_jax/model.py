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
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ModelError

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


def load_tree(path: str | Path, dtype=None) -> KinematicTree:
    """Load a kinematic tree written by :func:`save_tree` (no OpenSim needed)."""
    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict(z.items())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read kinematic tree: {e}", path=path) from e
    if "meta_json" not in files:
        raise ModelError("not a simspine-jax kinematic tree (no meta_json entry)", path=path)
    meta = json.loads(files.pop("meta_json").tobytes().decode())
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(f"unknown format {meta.get('format')!r}", path=path)
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"file format version {meta['version']} is newer than this package "
            f"({FORMAT_VERSION}); upgrade simspine-jax",
            path=path,
        )
    missing = [k for k in _STATIC_ARRAYS + _LEAF_ARRAYS if k not in files]
    if missing:
        raise ModelError(f"missing arrays {missing}", path=path)
    return _build(meta, files, dtype)


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
        name = m.get("name")
        sock = (_text(m, "socket_parent_frame") or "").split("/")[-1]
        if sock not in bset:
            raise ModelError(
                f"marker '{name}': body '{sock}' is not in the model (only markers fixed "
                "directly on bodies can be swapped into an exported tree; export the .osim "
                "with --markers instead)",
                path=str(markers),
                field=name,
            )
        names.append(name)
        bodies.append(sock)
        offs.append(_floats(_text(m, "location", "0 0 0"), 3, f"marker '{name}'", str(markers)))
    return tree.with_markers(names, bodies, offs)
