"""OpenSim's own forward kinematics, frame by frame, as the reference for our JAX kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import import_opensim

# OpenSim::Coordinate::MotionType values (0 is Undefined).
MOTION_TYPES = {1: "rotational", 2: "translational", 3: "coupled"}


class OpenSimReference:
    """An ``opensim.Model`` (optionally with the markers of a MarkerSet file) and its FK.

    Names follow OpenSim's own orders: ``coordinate_names`` (CoordinateSet), ``body_names``
    (BodySet, ground excluded), ``marker_names`` (MarkerSet). ``independent_names`` are the
    coordinates that are neither locked nor the dependent side of a coupler constraint, in
    CoordinateSet order (the same rule as the exporter's).

    With ``markers_xml`` the model's own markers are replaced by the file's (as
    :func:`simspine_jax.export.read_osim` does with ``markers=``).

    ``assembly_accuracy`` is set on the model before ``initSystem`` (OpenSim's default is 1e-9);
    it bounds how well assembled dependent coordinates satisfy the couplers.
    """

    def __init__(
        self,
        osim_path: str | Path,
        markers_xml: str | Path | None = None,
        *,
        assembly_accuracy: float = 1e-12,
    ):
        osim = import_opensim()
        self.osim_path = str(osim_path)
        self.markers_xml = None if markers_xml is None else str(markers_xml)
        model = osim.Model(self.osim_path)
        if markers_xml is not None:
            model.updMarkerSet().clearAndDestroy()
            mset = osim.MarkerSet(self.markers_xml)
            for i in range(mset.getSize()):
                model.addMarker(mset.get(i).clone())
        model.set_assembly_accuracy(float(assembly_accuracy))
        self.model = model
        self.state = model.initSystem()
        s = self.state

        cs = model.getCoordinateSet()
        self._coords = [cs.get(i) for i in range(cs.getSize())]
        bs = model.getBodySet()
        self._bodies = [bs.get(i) for i in range(bs.getSize())]
        ms = model.getMarkerSet()
        self._markers = [ms.get(i) for i in range(ms.getSize())]

        self.coordinate_names = tuple(c.getName() for c in self._coords)
        self.body_names = tuple(b.getName() for b in self._bodies)
        self.marker_names = tuple(m.getName() for m in self._markers)
        self.locked = np.array([c.getLocked(s) for c in self._coords], bool)
        self.dependent = np.array([c.isDependent(s) for c in self._coords], bool)
        self.indep_index = np.nonzero(~self.locked & ~self.dependent)[0]
        self.independent_names = tuple(self.coordinate_names[i] for i in self.indep_index)
        self.motion_types = tuple(
            MOTION_TYPES.get(c.getMotionType(), "undefined") for c in self._coords
        )
        self.coord_range = np.array([[c.getRangeMin(), c.getRangeMax()] for c in self._coords])
        self.q_initial = np.array([c.getValue(s) for c in self._coords])
        self._couplers, self._other_constraints = self._read_couplers(osim)
        self._vectors: dict = {}

    def _read_couplers(self, osim):
        """Enforced coupler constraints as (dependent index, independent indices, function,
        scale), ordered so that a coupler comes after any coupler that sets its inputs."""
        s = self.state
        idx = {n: i for i, n in enumerate(self.coordinate_names)}
        cset = self.model.getConstraintSet()
        couplers, other = [], []
        for i in range(cset.getSize()):
            con = cset.get(i)
            if not con.isEnforced(s):
                continue
            cc = osim.CoordinateCouplerConstraint.safeDownCast(con)
            if cc is None:
                other.append(f"{con.getConcreteClassName()} '{con.getName()}'")
                continue
            names = cc.getIndependentCoordinateNames()
            ind = [idx[names.get(k)] for k in range(names.getSize())]
            scale = osim.PropertyHelper.getValueDouble(cc.getPropertyByName("scale_factor"))
            couplers.append((idx[cc.getDependentCoordinateName()], ind, cc.getFunction(), scale))
        ordered, done = [], set()
        pending = list(couplers)
        while pending:
            deps = {c[0] for c in pending}
            ready = [c for c in pending if not deps.intersection(c[1])]
            if not ready:
                raise ValueError(f"{self.osim_path}: coupler constraints form a cycle")
            ordered += ready
            done.update(c[0] for c in ready)
            pending = [c for c in pending if c[0] not in done]
        return ordered, other

    # ------------------------------------------------------------------ sizes
    @property
    def n_coord(self) -> int:
        return len(self._coords)

    @property
    def n_indep(self) -> int:
        return len(self.indep_index)

    def __repr__(self) -> str:
        return (
            f"OpenSimReference({Path(self.osim_path).name!r}, markers={self.markers_xml!r}, "
            f"{self.n_coord} coordinates, {len(self.body_names)} bodies, "
            f"{len(self.marker_names)} markers)"
        )

    # ------------------------------------------------------------------ FK
    def _set_full(self, q: np.ndarray) -> None:
        s = self.state
        for i, c in enumerate(self._coords):
            v = float(q[i])
            if self.locked[i]:
                cur = c.getValue(s)
                if abs(v - cur) > 1e-12 * (1.0 + abs(cur)):
                    raise ValueError(
                        f"coordinate '{c.getName()}' is locked at {cur!r} in OpenSim; "
                        f"cannot set it to {v!r}"
                    )
                continue
            c.setValue(s, v, False)

    def _set_independent(self, q: np.ndarray, assemble: bool) -> None:
        s = self.state
        for k, i in enumerate(self.indep_index):
            self._coords[i].setValue(s, float(q[k]), False)
        if assemble:
            self.model.assemble(s)
            return
        for dep, ind, fn, scale in self._couplers:
            x = self._vector(len(ind))
            for k, i in enumerate(ind):
                x.set(k, self._coords[i].getValue(s))
            self._coords[dep].setValue(s, scale * fn.calcValue(x), False)

    def _vector(self, n: int):
        v = self._vectors.get(n)
        if v is None:
            v = self._vectors[n] = import_opensim().Vector(n, 0.0)
        return v

    def fk(
        self,
        q,
        full: bool = False,
        *,
        assemble: bool = True,
        bodies: bool = True,
        markers: bool = True,
    ) -> dict[str, np.ndarray]:
        """OpenSim's kinematics for each frame of ``q``.

        ``full=False``: ``q`` (N, n_indep) in :attr:`independent_names` order; the values are
        set without constraint enforcement (locked coordinates keep their values), then

        - ``assemble=True``: ``Model.assemble`` solves the constraints. This is OpenSim's
          semantics but an iterative solve over *all* coordinates: the independent ones move
          too, by up to about the assembly accuracy (measured on the SimSpine model: 1e-10 rad
          at 1e-12, 1e-7 at OpenSim's default 1e-9, 6e-4 at 1e-5), and it takes ~0.1 s a frame.
        - ``assemble=False``: each dependent coordinate is set to OpenSim's own coupler
          function of its independent coordinates (``scale_factor * f(q_ind)``, evaluated by
          OpenSim), which is exact and fast. Only CoordinateCouplerConstraints are supported
          this way.

        ``full=True``: ``q`` (N, n_coord) in CoordinateSet
        order, every unlocked coordinate set as given, no assembly (constraints may then be
        violated; ``constraint_error`` says by how much). Locked coordinates must equal their
        locked value. Radians and metres; a single frame (1-D ``q``) is accepted.

        Returns ``q_full`` (N, n_coord), ``constraint_error`` (N, n_qerr: OpenSim's position
        constraint errors, couplers and locks), ``body_R`` (N, n_body, 3, 3) and ``body_p``
        (N, n_body, 3) in BodySet order (body frame in ground: ``x_ground = R @ x_body + p``),
        ``markers`` (N, n_marker, 3) in MarkerSet order.
        """
        q = np.asarray(q, np.float64)
        if q.ndim == 1:
            q = q[None]
        n = self.n_coord if full else self.n_indep
        if q.ndim != 2 or q.shape[1] != n:
            raise ValueError(
                f"expected q of shape (N, {n}) ({'full' if full else 'independent'} "
                f"coordinates), got {q.shape}"
            )
        if not full and not assemble and self._other_constraints:
            raise ValueError(
                f"{self.osim_path}: constraints {self._other_constraints} can only be solved "
                "with assemble=True"
            )
        N = q.shape[0]
        s = self.state
        nb, nm = len(self._bodies), len(self._markers)
        out = {"q_full": np.empty((N, self.n_coord))}
        qerr = []
        if bodies:
            out["body_R"] = np.empty((N, nb, 3, 3))
            out["body_p"] = np.empty((N, nb, 3))
        if markers:
            out["markers"] = np.empty((N, nm, 3))
        for f in range(N):
            if full:
                self._set_full(q[f])
            else:
                self._set_independent(q[f], assemble)
            self.model.realizePosition(s)
            out["q_full"][f] = [c.getValue(s) for c in self._coords]
            qerr.append(s.getQErr().to_numpy())
            if bodies:
                for j, b in enumerate(self._bodies):
                    X = b.getTransformInGround(s)
                    R = X.R()
                    out["body_R"][f, j] = [[R.get(a, c) for c in range(3)] for a in range(3)]
                    out["body_p"][f, j] = X.p().to_numpy()
            if markers:
                for j, m in enumerate(self._markers):
                    out["markers"][f, j] = m.getLocationInGround(s).to_numpy()
        out["constraint_error"] = np.array(qerr).reshape(N, -1)
        return out
