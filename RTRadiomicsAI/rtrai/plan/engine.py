"""Photon IMRT dose-influence matrices from pyRadPlan (matRad in Python: 6 MV pencil-beam engine, generic machine).

The case's CT, targets and body become pyRadPlan's CT and structure set; coplanar equispaced beams aim at the
targets' centre of mass; the engine computes the dose of every bixel (pencil beam of ``bixel_mm`` at the isocentre) in
every body voxel of a ``grid_mm`` dose grid. The result is a sparse matrix (dose-grid voxels x bixels, Gy per unit
weight) that the fluence optimisation (:mod:`rtrai.plan.mimicking`) works on, and a forward step to the CT grid.

pyRadPlan is imported only inside functions: it is an optional dependency (``pip install rtradiomicsai[plan]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError, require

BODY_HU = -400.0  # a CT voxel above this belongs to the patient (air -1000, lung about -800, fat -100)
# Equispaced coplanar beams of a plan. OpenKBP's plans have 9, but a predicted dose is smoother than any 9-beam dose:
# on 5 validation patients the plan mimics it to 1.86 Gy with 9 beams, 1.62 with 15, 1.49 with 24 (README).
DEFAULT_BEAMS = 24


@dataclass
class InfluenceMatrix:
    """Dose per unit bixel weight in the body voxels of the dose grid."""

    matrix: object  # scipy.sparse.csc_array (rows: ``voxels``, columns: bixels), float32, Gy per unit weight
    voxels: np.ndarray  # flat (z, y, x) indices of the rows in ``dose_grid``
    dose_grid: sitk.Image  # an empty float32 image that defines the dose grid (LPS, as the CT)
    ct_grid: sitk.Image  # the CT (the grid the plan dose is reported on)
    beams: list[dict]  # gantry/couch angle (deg), isocentre (LPS mm), bixel positions at the isocentre (mm)
    beam_of_bixel: np.ndarray  # beam index of each column
    bixel_mm: float
    grid_mm: float
    seconds: float
    versions: dict = field(default_factory=dict)
    _column_blocks: list | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.matrix.format != "csc":  # the column blocks and the tails removal read columns
            import scipy.sparse

            self.matrix = scipy.sparse.csc_array(self.matrix)

    @property
    def bixels(self) -> int:
        return int(self.matrix.shape[1])

    def forward(self, weights: np.ndarray) -> np.ndarray:
        """The dose (Gy) in the matrix rows of bixel ``weights``: ``matrix @ weights``, on all cores."""
        weights = np.asarray(weights, np.float32)
        parts = _pool().map(lambda block: block[1] @ weights[block[0]], self._blocks())
        return functools.reduce(np.add, parts)

    def adjoint(self, values: np.ndarray) -> np.ndarray:
        """``matrix.T @ values`` (per bixel; the optimiser's gradient), on all cores."""
        values = np.asarray(values, np.float32)
        return np.concatenate(list(_pool().map(lambda block: block[1].T @ values, self._blocks())))

    def without_tails(self, fraction: float) -> InfluenceMatrix:
        """This matrix without the entries below ``fraction`` of their bixel's (column's) largest: the far, low dose
        of each pencil beam, most of the entries and little of the dose (a cheaper matrix to start optimising on)."""
        import scipy.sparse

        m = self.matrix
        starts = m.indptr[:-1]
        largest = np.zeros(m.shape[1], np.float32)
        filled = np.diff(m.indptr) > 0
        largest[filled] = np.maximum.reduceat(m.data, starts[filled])
        keep = m.data >= fraction * np.repeat(largest, np.diff(m.indptr))
        indptr = np.searchsorted(np.flatnonzero(keep), m.indptr)  # kept entries before each column's start
        without = scipy.sparse.csc_array((m.data[keep], m.indices[keep], indptr.astype(np.int32)), shape=m.shape)
        return dataclasses.replace(self, matrix=without, _column_blocks=None)

    def _blocks(self) -> list[tuple[slice, object]]:
        """The matrix as one column block per core (views, no copies): scipy's sparse products run one thread each
        and release the GIL, so threads over blocks use the cores (1.8x on 2 cores)."""
        if self._column_blocks is None:
            import scipy.sparse

            m, columns = self.matrix, self.matrix.shape[1]
            shares = np.linspace(0, m.nnz, min(_threads(), columns) + 1)  # equal entries, not equal columns
            edges = np.unique(np.r_[0, np.searchsorted(m.indptr, shares[1:-1]), columns])
            blocks = []
            for a, b in zip(edges[:-1], edges[1:]):
                p0, p1 = int(m.indptr[a]), int(m.indptr[b])
                view = scipy.sparse.csc_array((m.data[p0:p1], m.indices[p0:p1], m.indptr[a:b + 1] - p0),
                                              shape=(m.shape[0], b - a), copy=False)
                blocks.append((slice(a, b), view))
            self._column_blocks = blocks
        return self._column_blocks

    def dose_on_dose_grid(self, weights: np.ndarray) -> np.ndarray:
        """(z, y, x) float32 dose on the dose grid."""
        flat = np.zeros(int(np.prod(self.dose_grid.GetSize())), np.float32)
        flat[self.voxels] = self.forward(weights)
        return flat.reshape(self.dose_grid.GetSize()[::-1])

    def dose_on_ct_grid(self, weights: np.ndarray) -> sitk.Image:
        """The dose in Gy on the CT grid (linear interpolation from the dose grid, as pyRadPlan's own CT result)."""
        dose = sitk.GetImageFromArray(self.dose_on_dose_grid(weights))
        dose.CopyInformation(self.dose_grid)
        return sitk.Resample(dose, self.ct_grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    def sample(self, image: sitk.Image, interpolation: str = "linear") -> np.ndarray:
        """An image on the CT grid sampled at the matrix rows (the dose grid's body voxels)."""
        mode = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
        resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), self.dose_grid, sitk.Transform(), mode, 0.0)
        return sitk.GetArrayViewFromImage(resampled).ravel()[self.voxels].astype(np.float32)


def _threads() -> int:
    return max(1, int(os.environ.get("RTRAI_THREADS") or len(os.sched_getaffinity(0))))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_threads(), thread_name_prefix="rtrai-plan")


def _body_rows(dij) -> tuple[object, np.ndarray]:
    """pyRadPlan's matrix (CSC, a row per dose-grid voxel, int64 indices) as a CSC matrix of only the rows that get
    dose, with int32 indices and pyRadPlan's values array (not copied): 8 bytes an entry instead of the 12 of the
    input and the 12 more a CSR conversion and a row selection each took (peak 3.5 GiB for 24 beams, now 2 GiB)."""
    import scipy.sparse

    counts = np.bincount(dij.indices, minlength=dij.shape[0])
    voxels = np.flatnonzero(counts)
    row_of_voxel = np.full(dij.shape[0], -1, np.int32)
    row_of_voxel[voxels] = np.arange(voxels.size, dtype=np.int32)
    indices = np.empty(dij.nnz, np.int32)
    chunk = 1 << 24
    for start in range(0, dij.nnz, chunk):  # in chunks: no int64 temporary of the whole matrix
        indices[start:start + chunk] = row_of_voxel[dij.indices[start:start + chunk]]
    matrix = scipy.sparse.csc_array((np.asarray(dij.data, np.float32), indices, dij.indptr.astype(np.int32)),
                                    shape=(voxels.size, dij.shape[1]), copy=False)
    return matrix, voxels


def body_mask(case: Case) -> np.ndarray:
    """(z, y, x) bool: the patient. The ``External`` structure when the case has one, else the CT above
    :data:`BODY_HU`: its largest connected part with the holes of every axial slice filled (airways and sinuses are
    inside the patient, and the dose engine must compute dose there); with the possible-dose mask added where the case
    has one (OpenKBP's cut CTs, see :func:`planning_ct`)."""
    from scipy import ndimage

    if "External" in case.structures:
        body = sitk.GetArrayFromImage(case.structures["External"]).astype(bool)
    else:
        if case.ct is None:
            raise InputError("planning needs a CT")
        inside = sitk.GetArrayViewFromImage(case.ct) > BODY_HU
        labels, count = ndimage.label(inside)
        if count == 0:
            raise InputError(f"the CT has no body: no voxel above {BODY_HU:g} HU and no External structure")
        sizes = ndimage.sum_labels(inside, labels, range(1, count + 1))
        body = labels == 1 + int(np.argmax(sizes))
        body = np.stack([ndimage.binary_fill_holes(plane) for plane in body])
    if case.possible_dose_mask is not None:
        body |= sitk.GetArrayViewFromImage(case.possible_dose_mask).astype(bool)
    if not body.any():
        raise InputError("the case has an empty External structure: no body to plan in")
    for name in case.targets():
        target = sitk.GetArrayViewFromImage(case.structures[name]).astype(bool)
        outside = np.count_nonzero(target & ~body) / max(1, np.count_nonzero(target))
        if outside > 0.5:
            raise InputError(f"target '{name}' lies mostly outside the body ({100 * outside:.0f} %): is the CT "
                             f"the target's?")
    return body


@contextlib.contextmanager
def _quiet():
    """pyRadPlan's ray tracer divides by zero for rays parallel to grid planes (by design: no plane crossing), and
    its array backend says it falls back to the CPU: neither is news to a user, so neither reaches the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="Requested GPU device is not available")
        yield


def planning_ct(case: Case, body: np.ndarray) -> sitk.Image:
    """The CT the engine traces rays through (float32 HU). OpenKBP's CTs are cut to a region round the plan: on the
    slices past the cut only the contoured organs keep their CT, the rest reads as air although the possible-dose
    mask (the body) goes on. There the body outside the organs is taken as water (0 HU), so beams entering on those
    slices are attenuated as they were in the plan; everywhere else the CT is used as it is."""
    ct = sitk.GetArrayFromImage(case.ct).astype(np.float32)
    if case.metadata.get("source") == "openkbp":
        from rtrai.io.openkbp import contoured_voxels, imaged_slices

        missing = body & ~contoured_voxels(case) & ~imaged_slices(case)[:, None, None] & (ct <= BODY_HU)
        ct[missing] = 0.0
    image = sitk.GetImageFromArray(ct)
    image.CopyInformation(case.ct)
    return image


def gantry_angles(beams: int) -> list[float]:
    """Equispaced coplanar gantry angles starting at 0 (OpenKBP's plans: 9 beams, every 40 degrees)."""
    if beams < 1 or beams > 72:
        raise InputError(f"--beams must be between 1 and 72, not {beams}")
    return [round(360.0 * k / beams, 6) for k in range(beams)]


def influence_matrix(case: Case, body: np.ndarray, beams: int = DEFAULT_BEAMS, bixel_mm: float = 7.0,
                     grid_mm: float = 6.0, progress=None) -> InfluenceMatrix:
    """The dose-influence matrix of ``beams`` coplanar 6 MV photon beams on the case (targets: ``case.targets()``)."""
    require("pyRadPlan", "plan")
    from pyRadPlan import CT, PhotonPlan, StructureSet, __version__
    from pyRadPlan.core._progress import ProgressReport, observe_reports
    from pyRadPlan.cst import ExternalVOI, Target
    from pyRadPlan.dose.engines import get_engine
    from pyRadPlan.stf import validate_stf
    from pyRadPlan.stf.generators import StfGeneratorPhotonIMRT

    for value, what in ((bixel_mm, "--bixel"), (grid_mm, "--grid")):
        if not (math.isfinite(value) and 1.0 <= value <= 20.0):
            raise InputError(f"{what} must be between 1 and 20 mm, not {value:g}")
    targets = case.targets()
    if not targets:
        raise InputError("planning needs a target (PTV...); the case has "
                         f"{', '.join(sorted(case.structures)) or 'no structures'}")
    start = time.perf_counter()
    ct = CT(cube_hu=planning_ct(case, body))
    body_image = sitk.GetImageFromArray(body.astype(np.uint8))
    body_image.CopyInformation(case.ct)
    # Only the targets (beam apertures) and the body (where dose is computed) matter to the engine; the OARs enter
    # through the optimisation's objective, not the matrix.
    vois = [Target(name=name, mask=case.structures[name], ct_image=ct) for name in targets]
    vois.append(ExternalVOI(name="BODY", mask=body_image, ct_image=ct))
    cst = StructureSet(vois=vois, ct_image=ct)
    pln = PhotonPlan(machine="Generic")
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": grid_mm, "y": grid_mm, "z": grid_mm}}}

    with _quiet():
        generator = StfGeneratorPhotonIMRT(pln)
        generator.gantry_angles = gantry_angles(beams)
        generator.couch_angles = [0.0] * beams
        generator.bixel_width = float(bixel_mm)
        generator.console_progress = False
        stf = validate_stf(generator.generate(ct, cst))
        engine = get_engine(pln)
        engine.console_progress = False

    def report(event) -> None:  # pyRadPlan's progress stack (Beam i/n > Ray j/m) -> one fraction
        if progress is None or not isinstance(event, ProgressReport) or not event.levels:
            return
        top = event.levels[0]
        if top.total:
            inner = event.levels[1].fraction if len(event.levels) > 1 and event.levels[1].fraction else 0.0
            progress(min(1.0, (top.current + inner) / top.total), f"beam {min(top.current + 1, top.total)}/{top.total}")

    with observe_reports(report), _quiet():
        dij = engine.calc_dose_influence(ct, cst, stf)
    matrix, voxels = _body_rows(dij.physical_dose.flat[0])
    grid = dij.dose_grid
    del dij  # pyRadPlan's copy of the matrix (int64 indices): the largest thing planning holds
    dose_grid = sitk.Image([int(v) for v in grid.dimensions], sitk.sitkFloat32)
    dose_grid.SetOrigin(tuple(float(v) for v in grid.origin))
    dose_grid.SetSpacing(tuple(float(v) for v in grid.resolution_vector))
    dose_grid.SetDirection(tuple(float(v) for v in np.asarray(grid.direction).ravel()))
    beam_list = [{"gantry_deg": float(b.gantry_angle), "couch_deg": float(b.couch_angle),
                  "isocentre_mm": [round(float(v), 3) for v in b.iso_center],
                  "bixels_mm": [[round(float(r.ray_pos_bev[0]), 3), round(float(r.ray_pos_bev[2]), 3)] for r in b.rays]}
                 for b in stf.beams]
    beam_of_bixel = np.concatenate([np.full(len(b["bixels_mm"]), i) for i, b in enumerate(beam_list)])
    if beam_of_bixel.size != matrix.shape[1]:
        raise RuntimeError(f"pyRadPlan returned {matrix.shape[1]} bixel columns for {beam_of_bixel.size} rays")
    return InfluenceMatrix(matrix, voxels, dose_grid, case.ct, beam_list, beam_of_bixel, float(bixel_mm),
                           float(grid_mm), time.perf_counter() - start,
                           {"pyRadPlan": __version__, "machine": "photons_Generic (6 MV)",
                            "engine": type(engine).__name__})
