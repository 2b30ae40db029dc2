"""Dose mimicking: the fluence whose dose is closest to a given (predicted) dose, with priorities.

The objective is evaluated on the CT grid, where the plan is judged: the dose-grid dose of the influence matrix is
carried to every body voxel of the CT by the same trilinear interpolation that reports the plan dose
(:meth:`~rtrai.plan.engine.InfluenceMatrix.dose_on_ct_grid`), so the coarse dose grid is fitted where it is read. For
CT-grid dose ``d`` and the dose to mimic ``p`` (both Gy):

    f = mean_M (d - p)^2                                          mimic the dose where it is defined (M)
      + target * sum_T mean_T min(0, d - c Rx_T)^2                coverage: each target >= c (0.97) x prescription
      + oar * sum_O max(0, mean_O d - mean_O p)^2                 each OAR's mean dose not above the mean to mimic

with ``M`` the voxels where the dose to mimic is defined: the possible-dose mask when the case has one (OpenKBP:
doses are zero outside it by definition, not by physics), else the body. Minimised over bixel weights >= 0 with
L-BFGS-B (scipy), from uniform weights scaled to the highest prescription. The sums over structures weigh each
structure equally whatever its size; an OAR's mean is over the whole organ, target overlap included, as a plan's DVH
reports it.

Two stages, because every iteration reads the whole matrix: first ``iterations`` on the matrix without its tails
(:data:`TAIL_FRACTION`: the entries below 0.3 % of their bixel's largest are 84 % of the entries but 11 % of the dose),
then :data:`POLISH_SHARE` as many on the full matrix from there, which puts the tails' low dose back. On OpenKBP pt_201
(24 beams) this reaches the full matrix's 500-iteration result (1.148 against 1.147 Gy) in 36 s instead of 77 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.image import Grid, check_dose, check_same_grid
from rtrai.core.structures import is_target
from rtrai.plan.engine import DEFAULT_BEAMS

TAIL_FRACTION = 3e-3  # the first stage drops matrix entries below this fraction of their bixel's largest
POLISH_SHARE = 0.3  # iterations of the second stage (full matrix), as a share of the first's


@dataclass(frozen=True)
class Priorities:
    """Weights of the objective's terms relative to mimicking (1)."""

    # Measured on 5 OpenKBP validation patients (benchmarks/results/plan_validation*.txt, the README's planning section)
    target: float = 10.0
    oar: float = 10.0  # per Gy^2 of an OAR's mean above the mean to mimic
    coverage: float = 0.97  # the target term pushes every target voxel to at least this fraction of its prescription


@dataclass
class PlanResult:
    """A fluence plan: its dose on the CT grid, the weights, the beams and what it took."""

    dose: sitk.Image  # Gy, CT grid
    weights: np.ndarray  # one per bixel (column of the influence matrix)
    influence: object  # rtrai.plan.engine.InfluenceMatrix
    mimicked: sitk.Image  # the dose the plan mimics (Gy, CT grid)
    prescription: dict[str, float]
    priorities: Priorities
    iterations: int  # both stages
    objective: list[float] = field(default_factory=list)  # per iteration, both stages
    matrix_s: float = 0.0
    optimisation_s: float = 0.0
    converged: bool = False
    message: str = ""


def trilinear_matrix(points_index: np.ndarray, size_xyz, rows_of_voxel: np.ndarray):
    """Sparse (points x matrix rows) trilinear interpolation: ``points_index`` (n, 3) continuous (x, y, z) indices
    into a grid of ``size_xyz``; ``rows_of_voxel`` maps a flat (z, y, x) grid index to its row (-1: no row, dose 0)."""
    import scipy.sparse

    nx, ny, nz = size_xyz
    base = np.floor(points_index).astype(np.int64)
    frac = (points_index - base).astype(np.float32)
    rows, cols, vals = [], [], []
    point = np.arange(len(points_index))
    for corner in range(8):
        offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        idx = base + offset
        weight = np.prod(np.where(offset, frac, 1.0 - frac), axis=1)
        inside = np.all((idx >= 0) & (idx < (nx, ny, nz)), axis=1) & (weight > 0)
        flat = (idx[inside, 2] * ny + idx[inside, 1]) * nx + idx[inside, 0]
        row = rows_of_voxel[flat]
        keep = row >= 0
        rows.append(point[inside][keep])
        cols.append(row[keep])
        vals.append(weight[inside][keep])
    shape = (len(points_index), int(rows_of_voxel.max()) + 1)
    return scipy.sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape,
                                  dtype=np.float32)


def _ct_to_dose_grid(influence, ct_voxels: np.ndarray):
    """Interpolation matrix from the influence matrix's rows to the CT voxels ``ct_voxels`` (flat z, y, x)."""
    ct, dose_grid = influence.ct_grid, influence.dose_grid
    zyx = np.stack(np.unravel_index(ct_voxels, ct.GetSize()[::-1]), axis=1)
    physical = Grid.of(ct).index_to_physical_matrix() @ np.c_[zyx[:, ::-1], np.ones(len(zyx))].T  # (4, n) LPS
    grid = Grid.of(dose_grid)
    to_index = np.linalg.inv(grid.index_to_physical_matrix())
    index = (to_index @ physical)[:3].T
    rows_of_voxel = np.full(int(np.prod(dose_grid.GetSize())), -1, np.int64)
    rows_of_voxel[influence.voxels] = np.arange(len(influence.voxels))
    return trilinear_matrix(index, dose_grid.GetSize(), rows_of_voxel)


def prescriptions(case: Case) -> dict[str, float]:
    """Target -> prescribed Gy; every target must have one (explicit or from its name, PTV70 -> 70)."""
    out = {}
    for name in case.targets():
        level = case.prescription_for(name)
        if level is None:
            raise InputError(f"target '{name}' has no prescription: give it with --prescription {name}=GY")
        out[name] = float(level)
    if not out:
        raise InputError(f"planning needs a target (PTV...); the case has "
                         f"{', '.join(sorted(case.structures)) or 'no structures'}")
    return out


def check_dose_to_mimic(case: Case, dose: sitk.Image) -> np.ndarray:
    """The dose to mimic as a (z, y, x) array in Gy: on the CT grid, finite, non-negative, plausibly in Gy."""
    check_same_grid(case.ct, dose, ("CT", "dose to mimic"))
    values = check_dose(dose, "the dose to mimic")
    if not values.any():
        raise InputError("the dose to mimic is zero everywhere")
    return values.astype(np.float32)


def optimise(influence, mimic: np.ndarray, body: np.ndarray, case: Case, prescription: dict[str, float],
             priorities: Priorities = Priorities(), iterations: int = 500, progress=None, start=None):
    """Bixel weights minimising the objective of this module; returns (weights, objective per iteration, scipy
    result). ``mimic`` and ``body``: (z, y, x) on the CT grid; ``start``: the weights to start from (default:
    uniform, scaled to the highest prescription in the targets)."""
    from scipy.optimize import minimize

    ct_voxels = np.flatnonzero(body.ravel())
    interpolate = _ct_to_dose_grid(influence, ct_voxels)
    p = mimic.ravel()[ct_voxels]
    position = np.full(body.size, -1, np.int64)
    position[ct_voxels] = np.arange(len(ct_voxels))
    defined = np.ones(len(ct_voxels), np.float32)  # where the dose to mimic is defined
    if case.possible_dose_mask is not None:
        defined = (sitk.GetArrayViewFromImage(case.possible_dose_mask).ravel()[ct_voxels] != 0).astype(np.float32)
    n = max(float(defined.sum()), 1.0)

    def voxels(mask: sitk.Image) -> np.ndarray:
        idx = position[sitk.GetArrayViewFromImage(mask).ravel() != 0]
        return idx[idx >= 0]

    lower, means = [], []  # (positions, lowest dose, weight per voxel); (positions, mean dose to mimic)
    for name, level in prescription.items():
        idx = voxels(case.structures[name])
        if idx.size:
            lower.append((idx, np.float32(priorities.coverage * level), priorities.target / idx.size))
    for name, mask in case.structures.items():
        if not is_target(name) and name != "External":
            idx = voxels(mask)
            if idx.size:
                means.append((idx, float(p[idx].mean())))

    def objective(w):
        w = w.astype(np.float32)
        d = interpolate @ influence.forward(w)
        diff = d - p
        weighted = defined * diff
        value = float(weighted @ diff) / n
        grad = 2.0 * weighted / n
        for idx, bound, weight in lower:
            short = np.minimum(d[idx] - bound, 0.0)
            value += weight * float(short @ short)
            grad[idx] += 2.0 * weight * short
        for idx, mean in means:
            excess = float(d[idx].mean()) - mean
            if excess > 0:
                value += priorities.oar * excess * excess
                grad[idx] += np.float32(2.0 * priorities.oar * excess / idx.size)
        return value, influence.adjoint(interpolate.T @ grad).astype(np.float64)

    top = max(prescription.values())
    if start is None:
        start = np.ones(influence.bixels, np.float32)
        target_dose = interpolate @ influence.forward(start)
        covered = np.concatenate([idx for idx, _, _ in lower]) if lower else np.arange(len(ct_voxels))
        start *= top / max(float(target_dose[covered].mean()), 1e-6)
    history: list[float] = []

    def step(intermediate_result) -> None:
        history.append(float(intermediate_result.fun))
        if progress is not None:
            progress(min(1.0, len(history) / iterations), f"iteration {len(history)}")

    result = minimize(objective, start.astype(np.float64), jac=True, method="L-BFGS-B",
                      bounds=[(0.0, None)] * influence.bixels, callback=step,
                      options={"maxiter": iterations, "maxfun": 2 * iterations, "ftol": 1e-14, "gtol": 1e-14})
    return result.x.astype(np.float32), history, result


def plan_case(case: Case, dose: sitk.Image, beams: int = DEFAULT_BEAMS, bixel_mm: float = 7.0, grid_mm: float = 6.0,
              iterations: int = 500, priorities: Priorities = Priorities(), progress=None) -> PlanResult:
    """A photon IMRT plan of ``case`` whose dose mimics ``dose`` (Gy, CT grid; e.g. a prediction): the in-process
    entry point of ``rtrai plan`` (and of ``rtrai run --plan``). ``progress(fraction, message)``."""
    from rtrai.core.progress import sub
    from rtrai.plan.engine import body_mask, influence_matrix

    if case.ct is None:
        raise InputError("planning needs a CT")
    if iterations < 1:
        raise InputError(f"--iterations must be at least 1, not {iterations}")
    prescription = prescriptions(case)
    mimic = check_dose_to_mimic(case, dose)
    body = body_mask(case)
    influence = influence_matrix(case, body, beams, bixel_mm, grid_mm,
                                 sub(progress, 0.0, 0.4) if progress else None)
    start = time.perf_counter()
    weights, history, first = optimise(influence.without_tails(TAIL_FRACTION), mimic, body, case, prescription,
                                       priorities, iterations, sub(progress, 0.4, 0.8) if progress else None)
    weights, polish, result = optimise(influence, mimic, body, case, prescription, priorities,
                                       max(1, round(POLISH_SHARE * iterations)),
                                       sub(progress, 0.8, 0.98) if progress else None, start=weights)
    seconds = time.perf_counter() - start
    plan_dose = influence.dose_on_ct_grid(weights)
    if progress:
        progress(1.0, "planned")
    return PlanResult(plan_dose, weights, influence, dose, prescription, priorities, int(first.nit + result.nit),
                      history + polish, influence.seconds, seconds, bool(result.success), str(result.message))
