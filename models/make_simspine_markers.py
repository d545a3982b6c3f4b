"""Generate the default SimSpine 37-keypoint marker set for Pose2Sim's full-body model.

Usage::

    python models/make_simspine_markers.py [OPENSIM_SETUP_DIR] [--setup-dir DIR] [--out XML]
                                           [--plot PNG] [--no-verify] [--neck-levels LEVELS]

``OPENSIM_SETUP_DIR`` is the ``OpenSim_Setup`` folder of pose2sim 0.10.49 (BSD-3), which holds
``Model_Pose2Sim_muscles_flex.osim``, the ``Markers_*.xml`` files and ``Geometry/*.vtp``. It may
also be given as ``--setup-dir``; when omitted it is located with
``importlib.util.find_spec("Pose2Sim")`` (``pip install --no-deps pose2sim==0.10.49``).
Writes ``simspine_jax/data/simspine37_markers.xml`` (package data, found through
``importlib.resources``; an OpenSim ``MarkerSet`` document, same layout as Pose2Sim's
``Markers_Halpe26.xml``; the output is deterministic) and, when ``opensim`` is importable, loads
it into the model, prints the 37 ground positions in the default pose, checks them, and writes
``models/simspine37_default_pose.png``.

Method (coordinates in OpenSim body frames, metres; axes +x anterior, +y superior, +z to the
subject's right). Details and the resulting numbers: ``models/MARKERS.md``.

* Halpe26 keypoints. The 22 markers of Pose2Sim's ``Markers_Halpe26.xml`` (Nose, Head, Neck,
  shoulders, elbows, wrists, Hip, hips, knees, ankles, toes, heels) are copied verbatim (same
  body, same location text). That file has no eye or ear markers:

  - ``LEye``/``REye`` are copied verbatim from Pose2Sim's ``Markers_BlazePose.xml`` (identical
    in ``Markers_Coco133.xml``; the script checks that both agree).
  - ``LEar``/``REar`` (no Pose2Sim file has ear markers) are placed on the lateral skull at the
    external ear: among the vertices of ``skull.vtp`` (head body) lying between the heights of
    the Nose and eye markers and not anterior to the Head (vertex) marker -- the ear canal lies
    about one centimetre below eye level and roughly under the vertex -- keep those of one side
    within 5 mm of that side's greatest lateral extent and take their centroid.

* Vertebral-body centres: ``Spine_01`` = L5, ``Spine_02`` = L3, ``Spine_03`` = L1, ``Spine_04``
  = T8, ``Spine_05`` = T3, and by default (``--neck-levels c34-c1``, the levels SpineTrack
  documents for these names) ``Neck_02`` = midpoint of the C3 and C4 body centres and
  ``Neck_03`` = C1 (``--neck-levels c5-c3`` gives C5 / C3 instead; then ``Neck_02`` is level with
  Pose2Sim's ``Neck`` marker, which sits at C5 height). Each vertebra mesh is read from its
  ``.vtp`` file, scaled by the Mesh's ``scale_factors`` and moved into its body's frame through
  the chain of ``PhysicalOffsetFrame`` s named by ``socket_frame`` (orientation = body-fixed XYZ
  Euler angles, R = Rx Ry Rz). In the body frame the anterior slab is the set of triangles whose
  centroid lies in the anterior 40 % of the mesh's x-extent (x >= x_max - 0.4 (x_max - x_min));
  in every vertebra used this slab is the ring of the vertebral body (centrum), the pedicles,
  laminae and processes lying behind it (C1 has no body: there the slab is its anterior arch,
  which lies in line with the C2 body). The centre is the area-weighted centroid of the slab's
  triangles (area weighting makes it independent of the mesh's vertex density). Bodies:
  lumbar5 / lumbar3 / lumbar1 for the lumbar meshes, torso for the thoracic and cervical meshes
  (they are attached to torso in this model).

* ``LClavicle``/``RClavicle``: mid-shaft of the clavicle, halfway between the sternoclavicular
  and acromioclavicular ends (torso). ``hat_ribs_scap.vtp`` is split into its connected
  components (29: ribs, sternum, scapulae, clavicles); on each side the clavicle is the
  component with the largest ratio of medio-lateral (z) extent to max(x-extent, y-extent) (a
  long bone lying across the body: 2.8 for the clavicle, at most 1.05 for any other part).
  The keypoint is the centroid of that component's vertices lying in the middle 20 % of its
  z-extent.

* ``LLatissimus``/``RLatissimus``: on the posterolateral rib cage, directly lateral to
  ``Spine_04`` (torso). Of the rib components of ``hat_ribs_scap.vtp`` (all components but the
  sternum, which crosses the mid-sagittal plane, the clavicles and the scapulae -- the component
  with most vertices on each side) keep the vertices within 1 cm of ``Spine_04`` in height (y)
  and in depth (x); the keypoint has the x and y of ``Spine_04`` and the z of the centroid of
  the kept vertices within 5 mm of that side's greatest lateral extent: the outer rib surface at
  T8 height, level in depth with the T8 body (the posterior quarter of the chest's depth, where
  latissimus dorsi covers the ribs).

Checks: left keypoints have z < 0 and right ones z > 0 (body frame and ground); the derived
points keep their anatomical order; the mesh-frame placement read from the XML is compared with
opensim's own frame transforms; in the default pose the heights satisfy Hip < Spine_01 < ... <
Spine_05 < Neck < Neck_02 < Neck_03 < Head.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "simspine_jax" / "data"  # package data: the marker set goes here
MODEL_FILE = "Model_Pose2Sim_muscles_flex.osim"

SIMSPINE37 = (
    "Nose", "LEye", "REye", "LEar", "REar", "LShoulder", "RShoulder", "LElbow", "RElbow",
    "LWrist", "RWrist", "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle", "Head", "Neck",
    "Hip", "LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel", "RHeel", "Spine_01",
    "Spine_02", "Spine_03", "Spine_04", "Spine_05", "LLatissimus", "RLatissimus", "LClavicle",
    "RClavicle", "Neck_02", "Neck_03",
)  # fmt: skip

HALPE26_FROM_POSE2SIM = (
    "Nose", "Head", "Neck", "LShoulder", "RShoulder", "LElbow", "RElbow", "LWrist", "RWrist",
    "Hip", "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle", "LBigToe", "LSmallToe",
    "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip

# keypoint -> (vertebra meshes whose body centres are averaged, body they must be attached to)
VERTEBRA = {
    "Spine_01": (("lumbar5.vtp",), "lumbar5"),  # L5
    "Spine_02": (("lumbar3.vtp",), "lumbar3"),  # L3
    "Spine_03": (("lumbar1.vtp",), "lumbar1"),  # L1
    "Spine_04": (("thoracic8_s.vtp",), "torso"),  # T8
    "Spine_05": (("thoracic3_s.vtp",), "torso"),  # T3
}
NECK_LEVELS = {
    # SpineTrack's definition (neck_02 = C3/C4, neck_03 = C1): the default
    "c34-c1": {
        "Neck_02": (("cerv3sm.vtp", "cerv4sm.vtp"), "torso"),
        "Neck_03": (("cerv1sm.vtp",), "torso"),
    },
    # alternative: C5 / C3 (Neck_02 then lies level with Pose2Sim's Neck marker)
    "c5-c3": {
        "Neck_02": (("cerv5sm.vtp",), "torso"),
        "Neck_03": (("cerv3sm.vtp",), "torso"),
    },
}
PLOT_MESHES = (
    *(f"lumbar{k}.vtp" for k in range(1, 6)),
    *(f"thoracic{k}_s.vtp" for k in range(1, 13)),
    *(f"cerv{k}sm.vtp" for k in range(1, 7)),
    "cerv7.vtp",
    "sacrum.vtp",
    "r_pelvis.vtp",
    "l_pelvis.vtp",
)
ANTERIOR_FRACTION = 0.40  # anterior share of a vertebra's x-extent taken as its body
SHELL = 0.005  # m: "outermost" = within 5 mm of the extreme
LAT_HALF_BOX = 0.01  # m: half height / half depth of the box around Spine_04 for latissimi
CLAVICLE_MID_FRACTION = 0.20  # middle share of the clavicle's z-extent


# ----------------------------------------------------------------------------------- inputs
def find_setup_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg).expanduser()
    else:
        spec = importlib.util.find_spec("Pose2Sim")
        if spec is None or not spec.submodule_search_locations:
            sys.exit(
                "pose2sim is not installed: pass the OpenSim_Setup folder as an argument "
                "(or --setup-dir), or `pip install --no-deps pose2sim==0.10.49`"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "OpenSim_Setup"
    if not (path / MODEL_FILE).is_file() or not (path / "Geometry").is_dir():
        sys.exit(f"{path}: not a Pose2Sim OpenSim_Setup folder (no {MODEL_FILE} or Geometry/)")
    return path


def read_markers(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (socket_parent_frame text, location text) of every Marker in a MarkerSet file."""
    out = {}
    for m in ET.parse(path).getroot().iter("Marker"):
        out[m.get("name")] = (
            m.findtext("socket_parent_frame").strip(),
            " ".join(m.findtext("location").split()),
        )
    return out


def read_vtp(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Points (n, 3) and polygons (lists of point indices) of an ASCII VTK PolyData file.

    Every mesh of pose2sim 0.10.49 this script uses stores its arrays as ``format="ascii"``;
    other encodings are refused with a clear message rather than half-supported.
    """
    root = ET.parse(path).getroot()
    pieces = root.findall("./PolyData/Piece")
    if len(pieces) != 1:
        raise ValueError(f"{path}: expected one PolyData Piece, found {len(pieces)}")
    piece = pieces[0]

    def array(da: ET.Element, dtype) -> np.ndarray:
        if da.get("format", "ascii") != "ascii":
            raise ValueError(f"{path}: DataArray format {da.get('format')!r} is not supported")
        return np.array((da.text or "").split(), dtype=dtype)

    pts = array(piece.find("./Points/DataArray"), float).reshape(-1, 3)
    if len(pts) != int(piece.get("NumberOfPoints")):
        raise ValueError(f"{path}: NumberOfPoints does not match the Points array")
    polys = piece.find("./Polys")
    conn = array(polys.find("./DataArray[@Name='connectivity']"), np.int64)
    offs = array(polys.find("./DataArray[@Name='offsets']"), np.int64)
    starts = np.r_[0, offs[:-1]]
    return pts, [conn[a:b] for a, b in zip(starts, offs, strict=True)]


def triangles(polys: list[np.ndarray]) -> np.ndarray:
    """Fan-triangulate polygons into an (m, 3) index array."""
    tris = [(p[0], p[k], p[k + 1]) for p in polys for k in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64)


def rot_xyz(a: float, b: float, c: float) -> np.ndarray:
    """OpenSim orientation: body-fixed XYZ Euler angles, R = Rx(a) Ry(b) Rz(c)."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _vec(text: str | None, default=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.array(text.split(), float) if text and text.strip() else np.array(default, float)


def _join(base: str, rel: str) -> str:
    """Resolve an OpenSim component path ``rel`` relative to component path ``base``."""
    parts = [] if rel.startswith("/") else [p for p in base.split("/") if p]
    for p in rel.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise ValueError(f"path {rel!r} climbs above the model root from {base!r}")
            parts.pop()
        else:
            parts.append(p)
    return "/" + "/".join(parts)


class OsimGeometry:
    """Meshes of an .osim file with their placement in their body's frame (read from the XML)."""

    def __init__(self, osim: Path):
        root = ET.parse(osim).getroot()
        model = root.find("./Model")
        self.frames: dict[str, dict] = {}  # component path -> frame record
        self.meshes: list[dict] = []
        for body in model.findall("./BodySet/objects/Body"):
            bpath = f"/bodyset/{body.get('name')}"
            self.frames[bpath] = {"body": body.get("name"), "parent": None}
            self._walk(body, bpath)
        self.body_transforms = {p: self._to_body(p) for p in self.frames}

    def _walk(self, elem: ET.Element, path: str) -> None:
        for geo in elem.findall("./attached_geometry/Mesh"):
            mpath = f"{path}/{geo.get('name')}"
            sock = (geo.findtext("socket_frame") or "..").strip()
            self.meshes.append(
                {
                    "file": geo.findtext("mesh_file").strip(),
                    "scale": _vec(geo.findtext("scale_factors"), (1, 1, 1)),
                    "frame": _join(mpath, sock),
                }
            )
        for pof in elem.findall("./components/PhysicalOffsetFrame"):
            fpath = f"{path}/{pof.get('name')}"
            self.frames[fpath] = {
                "parent": _join(fpath, (pof.findtext("socket_parent") or "..").strip()),
                "R": rot_xyz(*_vec(pof.findtext("orientation"))),
                "t": _vec(pof.findtext("translation")),
            }
            self._walk(pof, fpath)

    def _to_body(self, path: str, depth: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
        """(body name, R, t) with x_body = R x_frame + t."""
        if depth > 50:
            raise ValueError(f"frame cycle at {path}")
        fr = self.frames[path]
        if fr["parent"] is None:
            return fr["body"], np.eye(3), np.zeros(3)
        body, R, t = self._to_body(fr["parent"], depth + 1)
        return body, R @ fr["R"], R @ fr["t"] + t

    def mesh_in_body(self, geometry_dir: Path, mesh_file: str):
        """(body, points (n,3) in the body frame, triangles (m,3)) of the named mesh file."""
        found = [m for m in self.meshes if m["file"] == mesh_file]
        if len(found) != 1:
            raise ValueError(f"{mesh_file}: attached {len(found)} times in the model, expected 1")
        m = found[0]
        body, R, t = self.body_transforms[m["frame"]]
        pts, polys = read_vtp(geometry_dir / mesh_file)
        return body, (pts * m["scale"]) @ R.T + t, triangles(polys)


# ------------------------------------------------------------------------------- geometry
def vertebral_body_centre(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted centroid of the triangles in the anterior 40 % of the x-extent."""
    x0, x1 = pts[:, 0].min(), pts[:, 0].max()
    tri_pts = pts[tris]
    centroids = tri_pts.mean(axis=1)
    area = 0.5 * np.linalg.norm(
        np.cross(tri_pts[:, 1] - tri_pts[:, 0], tri_pts[:, 2] - tri_pts[:, 0]), axis=1
    )
    keep = centroids[:, 0] >= x1 - ANTERIOR_FRACTION * (x1 - x0)
    return (centroids[keep] * area[keep, None]).sum(0) / area[keep].sum()


def connected_components(n: int, tris: np.ndarray) -> np.ndarray:
    """Component label of each of n vertices (union-find over triangle edges)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in tris:
        for u, v in ((a, b), (b, c)):
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    roots = np.array([find(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1]


def outer_shell_centroid(pts: np.ndarray, side: int) -> np.ndarray:
    """Centroid of the points within SHELL of the greatest extent along side * z."""
    lateral = side * pts[:, 2]
    return pts[lateral >= lateral.max() - SHELL].mean(0)


def split_hat_ribs(pts: np.ndarray, tris: np.ndarray) -> dict:
    """Label the parts of hat_ribs_scap: clavicle / scapula per side, sternum, ribs."""
    labels = connected_components(len(pts), tris)
    comps = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    parts = {"ribs": [], "sternum": []}
    for side, name in ((-1, "L"), (1, "R")):
        own = [c for c in comps if np.all(side * pts[c, 2] > 0)]
        ext = [np.ptp(pts[c], axis=0) for c in own]
        ratio = [e[2] / max(e[0], e[1]) for e in ext]
        clav = int(np.argmax(ratio))
        if sorted(ratio)[-2] > 0.5 * ratio[clav]:
            raise ValueError("clavicle component not clearly identified in hat_ribs_scap.vtp")
        scap = int(np.argmax([len(c) for c in own]))
        if scap == clav:
            raise ValueError("scapula and clavicle components coincide in hat_ribs_scap.vtp")
        parts[name + "Clavicle"] = pts[own[clav]]
        parts[name + "Scapula"] = pts[own[scap]]
        parts["ribs"] += [own[i] for i in range(len(own)) if i not in (clav, scap)]
    parts["sternum"] = [c for c in comps if pts[c, 2].min() < 0 < pts[c, 2].max()]
    parts["ribs"] = pts[np.concatenate(parts["ribs"])]
    return parts


# --------------------------------------------------------------------------------- compute
def compute(setup: Path, neck_levels: str = "c34-c1") -> tuple[dict, dict]:
    """(markers, info): markers maps each of the 37 names to (body path, location text)."""
    geo_dir = setup / "Geometry"
    halpe = read_markers(setup / "Markers_Halpe26.xml")
    blaze = read_markers(setup / "Markers_BlazePose.xml")
    coco = read_markers(setup / "Markers_Coco133.xml")
    missing = [n for n in HALPE26_FROM_POSE2SIM if n not in halpe]
    if missing:
        raise ValueError(f"Markers_Halpe26.xml lacks {missing}")
    markers: dict[str, tuple[str, str]] = {n: halpe[n] for n in HALPE26_FROM_POSE2SIM}
    for n in ("LEye", "REye"):
        if blaze[n] != coco[n]:
            raise ValueError(f"{n} differs between Markers_BlazePose.xml and Markers_Coco133.xml")
        markers[n] = blaze[n]

    def loc(name: str) -> np.ndarray:
        return _vec(markers[name][1])

    fmt = lambda p: " ".join(f"{v:.6f}" for v in np.round(np.asarray(p, float), 6) + 0.0)  # noqa: E731
    geom = OsimGeometry(setup / MODEL_FILE)
    info: dict = {"meshes": {}}

    for name, (meshes, want_body) in {**VERTEBRA, **NECK_LEVELS[neck_levels]}.items():
        centres = []
        for mesh in meshes:
            body, pts, tris = geom.mesh_in_body(geo_dir, mesh)
            if body != want_body:
                raise ValueError(f"{mesh} is attached to {body}, expected {want_body}")
            centres.append(vertebral_body_centre(pts, tris))
            info["meshes"][mesh] = (body, pts)
        markers[name] = (f"/bodyset/{want_body}", fmt(np.mean(centres, axis=0)))

    # ears: lateral skull between nose-tip and eye height, not anterior to the Head marker
    body, skull, _ = geom.mesh_in_body(geo_dir, "skull.vtp")
    assert body == "head" and all(markers[n][0] == "/bodyset/head" for n in ("Nose", "LEye"))
    y_lo, y_hi = sorted((loc("Nose")[1], loc("LEye")[1]))
    band = skull[(skull[:, 1] >= y_lo) & (skull[:, 1] <= y_hi) & (skull[:, 0] <= loc("Head")[0])]
    for side, name in ((-1, "LEar"), (1, "REar")):
        markers[name] = (
            "/bodyset/head",
            fmt(outer_shell_centroid(band[side * band[:, 2] > 0], side)),
        )
    info["meshes"]["skull.vtp"] = (body, skull)

    # clavicles and latissimi from the rib cage mesh (torso)
    body, ribs_pts, ribs_tris = geom.mesh_in_body(geo_dir, "hat_ribs_scap.vtp")
    assert body == "torso"
    parts = split_hat_ribs(ribs_pts, ribs_tris)
    info["meshes"]["hat_ribs_scap.vtp"] = (body, ribs_pts)
    t8 = _vec(markers["Spine_04"][1])
    ribs = parts["ribs"]
    box = ribs[
        (np.abs(ribs[:, 1] - t8[1]) <= LAT_HALF_BOX) & (np.abs(ribs[:, 0] - t8[0]) <= LAT_HALF_BOX)
    ]
    for side, s in ((-1, "L"), (1, "R")):
        clav = parts[s + "Clavicle"]
        z0, z1 = clav[:, 2].min(), clav[:, 2].max()
        zm, half = 0.5 * (z0 + z1), 0.5 * CLAVICLE_MID_FRACTION * (z1 - z0)
        mid = clav[np.abs(clav[:, 2] - zm) <= half]
        markers[s + "Clavicle"] = ("/bodyset/torso", fmt(mid.mean(0)))
        z_lat = outer_shell_centroid(box[side * box[:, 2] > 0], side)[2]
        markers[s + "Latissimus"] = ("/bodyset/torso", fmt([t8[0], t8[1], z_lat]))
        info[s + "Clavicle_ends"] = (
            clav[np.argmin(side * clav[:, 2])],
            clav[np.argmax(side * clav[:, 2])],
        )
        # for comparison only: 45 % of the way from the Neck to the shoulder marker
        info[s + "Clavicle_alt45"] = loc("Neck") + 0.45 * (loc(s + "Shoulder") - loc("Neck"))
    for n in PLOT_MESHES:  # the other bones drawn behind the keypoints in the figure
        if n not in info["meshes"]:
            info["meshes"][n] = geom.mesh_in_body(geo_dir, n)[:2]
    info["geom"] = geom
    _check(markers, strict_neck=neck_levels == "c34-c1")
    return markers, info


def _check(markers: dict, strict_neck: bool = True) -> None:
    """Body-frame sanity checks that do not need opensim."""
    assert set(markers) == set(SIMSPINE37), set(SIMSPINE37) ^ set(markers)
    p = {n: _vec(v[1]) for n, v in markers.items()}
    for s, side in (("L", -1), ("R", 1)):
        for n in ("Eye", "Ear", "Clavicle", "Latissimus", "Shoulder"):
            assert side * p[s + n][2] > 0.02, f"{s}{n} on the wrong side"
        assert np.allclose(p["L" + "Ear"] * [1, 1, -1], p["REar"], atol=2e-3)
    for a, b in (("Spine_04", "Spine_05"), ("Neck_02", "Neck_03")):
        assert p[a][1] < p[b][1], f"{a} not below {b}"
    assert p["Spine_05"][1] < p["Neck"][1] < p["Neck_03"][1]
    if p["Neck"][1] >= p["Neck_02"][1] - 0.005:
        msg = f"Neck_02 is only {p['Neck_02'][1] - p['Neck'][1]:+.4f} m above Pose2Sim's Neck"
        assert not strict_neck, msg
        print("WARNING:", msg)
    assert p["Spine_05"][1] < p["LClavicle"][1] < p["Neck"][1] + 0.02
    assert abs(p["LLatissimus"][2]) > 0.1 and abs(p["LClavicle"][2]) > 0.06


# ---------------------------------------------------------------------------------- output
def write_markerset(markers: dict, out: Path) -> None:
    lines = [
        '<?xml version="1.0" encoding="UTF-8" ?>',
        '<OpenSimDocument Version="40000">',
        "\t<!-- SimSpine 37 keypoints for Pose2Sim's Model_Pose2Sim_muscles_flex.osim.",
        "\t     Generated by models/make_simspine_markers.py (method: its docstring and",
        "\t     models/MARKERS.md). Halpe26 markers from Pose2Sim 0.10.49 (BSD-3). -->",
        '\t<MarkerSet name="markerset">',
        "\t\t<objects>",
    ]
    for name in SIMSPINE37:
        frame, location = markers[name]
        lines += [
            f'\t\t\t<Marker name="{name}">',
            f"\t\t\t\t<socket_parent_frame>{frame}</socket_parent_frame>",
            f"\t\t\t\t<location>{location}</location>",
            "\t\t\t\t<fixed>true</fixed>",
            "\t\t\t</Marker>",
        ]
    lines += ["\t\t</objects>", "\t\t<groups />", "\t</MarkerSet>", "</OpenSimDocument>", ""]
    out.write_text("\n".join(lines))


def verify_and_plot(
    setup: Path, xml: Path, info: dict, png: Path | None, strict_neck: bool = True
) -> dict:
    """Load the marker set into the model with opensim; print/check default-pose positions."""
    import opensim

    model = opensim.Model(str(setup / MODEL_FILE))
    model.updateMarkerSet(opensim.MarkerSet(str(xml)))
    state = model.initSystem()
    names = [model.getMarkerSet().get(i).getName() for i in range(model.getMarkerSet().getSize())]
    assert names == list(SIMSPINE37), names
    world = {}
    for n in SIMSPINE37:
        mk = model.getMarkerSet().get(n)
        v = mk.getLocationInGround(state)
        world[n] = np.array([v.get(i) for i in range(3)])
    # cross-check the XML-derived mesh placement against opensim's own frame transforms
    geom = info["geom"]
    n_checked = 0
    for path, (body, R, t) in geom.body_transforms.items():
        if path.count("/") < 3:
            continue
        frame = model.getComponent(path)
        X = opensim.PhysicalFrame.safeDownCast(frame).findTransformBetween(
            state, model.getBodySet().get(body)
        )
        # F.findTransformBetween(s, A) is X_AF: it maps frame coordinates to body coordinates
        Rf = np.array([[X.R().get(i, j) for j in range(3)] for i in range(3)])
        pf = np.array([X.p().get(i) for i in range(3)])
        assert np.allclose(Rf, R, atol=1e-12) and np.allclose(pf, t, atol=1e-12), path
        n_checked += 1
    print(f"mesh frame placement read from the XML matches opensim for {n_checked} frames")

    print(f"{'keypoint':12s} {'body':10s} {'x':>8s} {'y':>8s} {'z':>8s}   (ground, default pose)")
    for n in SIMSPINE37:
        body = model.getMarkerSet().get(n).getParentFrameName().split("/")[-1]
        print(f"{n:12s} {body:10s} " + " ".join(f"{v:8.4f}" for v in world[n]))
    chain = ["Hip", "Spine_01", "Spine_02", "Spine_03", "Spine_04", "Spine_05", "Neck",
             "Neck_02", "Neck_03", "Head"]  # fmt: skip
    ys = [world[n][1] for n in chain]
    if not all(a < b for a, b in zip(ys, ys[1:], strict=False)):
        msg = "height order violated: " + ", ".join(
            f"{n} {y:.4f}" for n, y in zip(chain, ys, strict=True)
        )
        assert not strict_neck, msg
        print("WARNING:", msg)
    else:
        print("height order Hip < Spine_01 < ... < Spine_05 < Neck < Neck_02 < Neck_03 < Head: OK")
    for n in SIMSPINE37:
        if n[0] in "LR" and n[1].isupper():
            side = -1 if n[0] == "L" else 1
            assert side * world[n][2] > 0, f"{n}: z has the wrong sign"
    print("left keypoints z < 0, right keypoints z > 0: OK")

    if png is not None:
        body_X = {}
        for b in model.getBodySet():
            X = b.getTransformInGround(state)
            R = np.array([[X.R().get(i, j) for j in range(3)] for i in range(3)])
            body_X[b.getName()] = (R, np.array([X.p().get(i) for i in range(3)]))
        clouds = {
            f: pts @ body_X[body][0].T + body_X[body][1]
            for f, (body, pts) in info["meshes"].items()
        }
        plot(world, clouds, png)
    return world


def plot(world: dict, clouds: dict, png: Path) -> None:
    """Front and side views (whole body and trunk close-up) with the bone vertices behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the keypoint tree from simspine_jax/keypoints.py, loaded without importing the package
    spec = importlib.util.spec_from_file_location("_kp", HERE.parent / "simspine_jax/keypoints.py")
    kp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kp)
    REGIONS, SIMSPINE37_PARENT = kp.REGIONS, kp.SIMSPINE37_PARENT
    assert tuple(kp.SIMSPINE37) == SIMSPINE37

    colour = {n: c for c, r in zip(("C0", "C1", "C2"), REGIONS.values(), strict=True) for n in r}
    is_vertebra = [f.startswith(("lumbar", "thoracic", "cerv")) for f in clouds]
    vert = np.concatenate([p for p, v in zip(clouds.values(), is_vertebra, strict=True) if v])
    other = np.concatenate([p for p, v in zip(clouds.values(), is_vertebra, strict=True) if not v])
    front = lambda p: -p[..., 2]  # noqa: E731  (viewer faces the subject: right side on the left)
    side = lambda p: p[..., 0]  # noqa: E731  (seen from the subject's right, anterior to the right)
    fig, axes = plt.subplots(
        1, 4, figsize=(24, 10), gridspec_kw={"width_ratios": [1.15, 0.55, 0.85, 0.85]}
    )
    views = [
        (axes[0], front, "front view (subject's right on the left)", None),
        (axes[1], side, "side view (anterior = +x, right)", None),
        (axes[2], front, "front view, trunk and neck", ((-0.25, 0.25), (0.82, 1.76))),
        (axes[3], side, "side view, trunk and neck", ((-0.3, 0.2), (0.82, 1.76))),
    ]
    for ax, hor, title, zoom in views:
        ax.scatter(hor(other), other[:, 1], s=0.5, c="0.78", alpha=0.5, lw=0)
        ax.scatter(hor(vert), vert[:, 1], s=1.2, c="0.35", alpha=0.6, lw=0)
        for child, par in SIMSPINE37_PARENT.items():
            if par is not None:
                a, b = world[child], world[par]
                ax.plot([hor(a), hor(b)], [a[1], b[1]], "-", c="0.25", lw=1)
        for n, p in world.items():
            ax.plot(hor(p), p[1], "o", ms=5 if zoom else 4, c=colour.get(n, "k"), mec="k", mew=0.4)
            if zoom is None:  # whole body: name only a few landmarks
                label = n in ("Hip", "Spine_04", "Neck", "Head")
            else:  # close-ups: the 15 spine keypoints and the eyes / ears
                label = n in colour or n[1:] in ("Eye", "Ear")
                if hor is side and (n[0] == "L" and n[1].isupper() or n == "RLatissimus"):
                    label = False  # hidden behind its right twin (or Spine_04) in the side view
            if label:
                ax.annotate(
                    n, (hor(p), p[1]), xytext=(4, 2), textcoords="offset points", fontsize=7
                )
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xlabel("-z [m]" if hor is front else "x [m]")
        ax.set_ylabel("y [m]")
        ax.grid(alpha=0.3)
        if zoom is not None:
            ax.set_xlim(*zoom[0])
            ax.set_ylim(*zoom[1])
    handles = [plt.Line2D([], [], marker="o", ls="", c=c, mec="k") for c in ("C0", "C1", "C2", "k")]
    fig.legend(handles, ["lumbar", "thoracic", "cervical", "other"], loc="lower center", ncol=4)
    fig.suptitle(
        "SimSpine 37 keypoints on Pose2Sim's Model_Pose2Sim_muscles_flex.osim, default pose "
        "(dark grey: vertebra mesh vertices; light grey: pelvis, sacrum, rib cage, skull)"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("setup_dir", nargs="?", help="Pose2Sim OpenSim_Setup folder")
    ap.add_argument("--setup-dir", dest="setup_opt", help="same as the positional argument")
    ap.add_argument("--out", type=Path, default=DATA / "simspine37_markers.xml")
    ap.add_argument("--plot", type=Path, default=HERE / "simspine37_default_pose.png")
    ap.add_argument("--no-verify", action="store_true", help="skip the opensim check and plot")
    ap.add_argument(
        "--neck-levels",
        choices=sorted(NECK_LEVELS),
        default="c34-c1",
        help="vertebrae of Neck_02 / Neck_03 (default c34-c1: C3/C4 and C1, as SpineTrack)",
    )
    args = ap.parse_args(argv)
    setup = find_setup_dir(args.setup_dir or args.setup_opt)
    markers, info = compute(setup, args.neck_levels)
    write_markerset(markers, args.out)
    print(f"wrote {args.out} ({len(markers)} markers) from {setup}")
    for s in ("L", "R"):
        med, lat = info[s + "Clavicle_ends"]
        print(f"{s}Clavicle: mesh ends (torso) medial {np.round(med, 4)} lateral "
              f"{np.round(lat, 4)}; Neck->Shoulder 45 % alternative "
              f"{np.round(info[s + 'Clavicle_alt45'], 4)}")  # fmt: skip
    if not args.no_verify:
        if importlib.util.find_spec("opensim") is None:
            print("opensim not importable: skipped the model check and the plot")
        else:
            strict = args.neck_levels == "c34-c1"
            verify_and_plot(setup, args.out, info, args.plot, strict_neck=strict)
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
