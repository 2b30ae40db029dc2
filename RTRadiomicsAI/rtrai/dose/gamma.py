"""3D gamma index (Low et al. 1998) with interpolated search, vectorised in numpy.

Definition (the one ``pymedphys.gamma`` implements): for every reference voxel whose dose is at least the cut-off,

    gamma(x) = min over y with |y - x| <= max_gamma * DTA of sqrt(|y - x|^2 / DTA^2 + (E(y) - R(x))^2 / DD^2)

where E is the evaluated dose, trilinearly interpolated, and DD is ``dose_percent`` of the global normalisation (the
reference maximum unless given) or, for local gamma, of R(x). Pass rate = share of evaluated voxels with gamma <= 1.

How it is fast: the search ball is sub-sampled on a cubic lattice of step ``DTA / interp_fraction``. Offsets are
grouped by the evaluated-grid cell they fall in; within one cell the trilinear weights of every offset are fixed, so
the interpolated doses of all (voxel, offset) pairs of the cell are one small matrix product
``corners (N x 8) @ weights (8 x M)``. Offsets are visited in distance shells and a voxel leaves the search as soon
as the next shell cannot beat its best gamma (the early exit of Wendling et al. 2007), so most voxels stop after the
first shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid, check_dose, resample_to
from rtrai.core.progress import Progress, silent, sub

# Stand-in for "outside the evaluated dose": large enough that any gamma using it loses, small enough that a zero
# trilinear weight times it stays 0 (inf * 0 would be NaN).
_OUTSIDE = np.float32(1e15)


@dataclass
class GammaResult:
    gamma: sitk.Image  # float32 on the reference grid; NaN where not evaluated (below the cut-off)
    pass_rate_pct: float
    evaluated_points: int
    passed_points: int
    mean_gamma: float
    parameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pass_rate_pct": self.pass_rate_pct, "evaluated_points": self.evaluated_points,
                "passed_points": self.passed_points, "mean_gamma": self.mean_gamma, "parameters": self.parameters}


def _aligned_evaluated(reference: sitk.Image, evaluated: sitk.Image) -> sitk.Image:
    """The evaluated dose on the reference grid: as is when the grids match, else linearly resampled."""
    ref, ev = Grid.of(reference), Grid.of(evaluated)
    if not ref.differences(ev):
        return evaluated
    if not np.allclose(ref.direction, ev.direction, atol=1e-4):
        raise GeometryError("reference and evaluated doses have different orientations "
                            f"({ref.direction} vs {ev.direction}); resample one onto the other first")
    lo_r, hi_r = _extent(reference)
    lo_e, hi_e = _extent(evaluated)
    overlap = np.minimum(hi_r, hi_e) - np.maximum(lo_r, lo_e)
    if np.any(overlap <= 0):
        raise GeometryError("reference and evaluated doses do not overlap in space (unrelated grids: "
                            f"{ref.describe()} vs {ev.describe()})")
    # Outside the evaluated volume counts as "no dose available", as in pymedphys (never a pass there).
    return resample_to(sitk.Cast(evaluated, sitk.sitkFloat32), reference, "linear", default=float(_OUTSIDE))


def _extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    corners = [image.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(bits, image.GetSize())])
               for bits in np.ndindex(2, 2, 2)]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def _search_cells(spacing_zyx: np.ndarray, dta_mm: float, max_gamma: float, step_mm: float,
                  band_fraction: float = 0.25):
    """Lattice offsets inside the search ball, grouped by the evaluated-grid cell they fall in.

    Returns a list of (min distance mm, cell base (dz, dy, dx), weights (8, M) float32, squared distances / DTA^2)
    sorted by each group's minimum distance, and the padding (voxels) the search needs on each side.
    """
    radius = max_gamma * dta_mm
    n = int(np.floor(radius / step_mm))
    axis = np.arange(-n, n + 1) * step_mm
    mm = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.sqrt((mm ** 2).sum(axis=1))
    keep = dist <= radius + 1e-9
    mm, dist = mm[keep], dist[keep]
    vox = mm / spacing_zyx  # offsets in evaluated voxel units (z, y, x)
    base = np.floor(vox + 1e-9).astype(np.int64)
    frac = np.clip(vox - base, 0.0, 1.0)
    corners = np.array(list(np.ndindex(2, 2, 2)))  # (8, 3) in (z, y, x)
    # Trilinear weight of corner c for each offset: prod over axes of (frac if bit else 1 - frac).
    weights = np.prod(np.where(corners[:, None, :] == 1, frac[None], 1.0 - frac[None]), axis=2)  # (8, n)
    groups = []
    keys, inverse = np.unique(base, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    band = np.floor(dist / (band_fraction * dta_mm)).astype(np.int64)
    for g, key in enumerate(keys):
        in_cell = np.flatnonzero(inverse == g)
        # Split each cell into distance bands so the early exit and the pruning act on nearby offsets first.
        for b in np.unique(band[in_cell]):
            members = in_cell[band[in_cell] == b]
            groups.append((float(dist[members].min()), tuple(int(k) for k in key),
                           weights[:, members].astype(np.float32), ((dist[members] / dta_mm) ** 2).astype(np.float32)))
    groups.sort(key=lambda g: g[0])
    pad = int(np.max(np.abs(base))) + 2
    return groups, pad


class _Lattice:
    """The evaluated dose padded with "outside" values, flattened, with per-cell corner minima and maxima."""

    def __init__(self, ev: np.ndarray, pad: int):
        padded = np.pad(ev, pad, mode="constant", constant_values=_OUTSIDE)
        self.pad = pad
        self.shape = padded.shape
        self.flat = padded.ravel()
        # Min / max over the 8 corners of the cell whose lowest corner is each voxel (wrap-around lands in padding).
        low, high = padded, padded
        for axis in range(3):
            low = np.minimum(low, np.roll(low, -1, axis=axis))
            high = np.maximum(high, np.roll(high, -1, axis=axis))
        self.cell_min, self.cell_max = low.ravel(), high.ravel()
        _, py, px = self.shape
        self.corner_shift = np.array([dz * py * px + dy * px + dx for dz, dy, dx in np.ndindex(2, 2, 2)],
                                     dtype=np.int64)

    def index_of(self, points: np.ndarray, shape: tuple) -> np.ndarray:
        z, y, x = np.unravel_index(points, shape)
        _, py, px = self.shape
        return (z + self.pad) * (py * px) + (y + self.pad) * px + (x + self.pad)

    def search(self, active, best, centre, r_dose, inv_dd2, groups, dta_mm, report) -> None:
        """Lower ``best`` (gamma^2, in place) for voxels ``active`` over the offset ``groups``."""
        _, py, px = self.shape
        radius = max(groups[-1][0], 1e-9) if groups else 1.0
        reported = -1
        # Visit cells in order of their closest offset; a voxel stops when that distance exceeds its best gamma.
        for min_dist, (bz, by, bx), weights, d2 in groups:
            limit = np.float32((min_dist / dta_mm) ** 2)
            active = active[best[active] > limit]
            if not active.size:
                break
            if int(20 * min_dist / radius) > reported:
                reported = int(20 * min_dist / radius)
                report(min_dist / radius, f"gamma search at {min_dist:.1f} mm, {active.size} voxels left")
            base = centre[active] + (bz * py * px + by * px + bx)
            # Trilinear values stay within the cell's corner range: skip voxels whose dose gap alone loses.
            r_act = r_dose[active]
            gap = np.maximum(np.maximum(self.cell_min[base] - r_act, r_act - self.cell_max[base]), 0)
            useful = limit + gap * gap * inv_dd2[active] < best[active]
            if not useful.any():
                continue
            idx = active[useful]
            corners = self.flat[base[useful, None] + self.corner_shift[None, :]]  # (N, 8)
            values = corners @ weights  # interpolated evaluated dose, (N, M)
            values -= r_dose[idx, None]
            np.square(values, out=values)
            values *= inv_dd2[idx, None]
            values += d2[None, :]
            best[idx] = np.minimum(best[idx], values.min(axis=1))


def gamma_index(reference: sitk.Image, evaluated: sitk.Image, dose_percent: float = 3.0, dta_mm: float = 3.0, *,
                local: bool = False, cutoff_percent: float = 10.0, max_gamma: float = 2.0,
                normalisation_gy: float | None = None, interp_fraction: int = 10,
                progress: Progress | None = None) -> GammaResult:
    """Gamma of ``evaluated`` against ``reference`` (doses in Gy); see the module docstring for the definition.

    ``cutoff_percent`` (of the normalisation, applied to the reference dose as pymedphys does) selects the evaluated
    voxels; gamma values above ``max_gamma`` are reported as ``max_gamma`` (they fail either way).
    """
    report = progress or silent
    if dose_percent <= 0 or dta_mm <= 0:
        raise InputError(f"dose and distance criteria must be positive (got {dose_percent}% / {dta_mm} mm)")
    if max_gamma < 1:
        raise InputError(f"max gamma must be at least 1 to decide pass/fail (got {max_gamma})")
    if not 0 <= cutoff_percent < 100:
        raise InputError(f"the low-dose cut-off must be in [0, 100) percent (got {cutoff_percent})")
    if interp_fraction < 1:
        raise InputError(f"interp_fraction must be >= 1 (got {interp_fraction})")
    ref = check_dose(reference, "reference dose")
    check_dose(evaluated, "evaluated dose")
    ev_img = _aligned_evaluated(reference, evaluated)
    ev = sitk.GetArrayFromImage(ev_img).astype(np.float32, copy=False)

    norm = float(ref.max()) if normalisation_gy is None else float(normalisation_gy)
    if norm <= 0:
        raise InputError("the reference dose is zero everywhere, so there is nothing to compare")
    points = np.flatnonzero(ref.ravel() >= cutoff_percent / 100.0 * norm)
    spacing_zyx = np.array(reference.GetSpacing()[::-1], dtype=float)
    fine_groups, pad = _search_cells(spacing_zyx, dta_mm, max_gamma, dta_mm / interp_fraction)
    lattice = _Lattice(ev, pad)
    centre = lattice.index_of(points, ref.shape)
    r_dose = ref.ravel()[points]
    dd = dose_percent / 100.0 * (r_dose if local else np.full_like(r_dose, norm))
    with np.errstate(divide="ignore"):
        inv_dd2 = (1.0 / dd.astype(np.float64) ** 2).astype(np.float32)
    # Values above max_gamma are reported as max_gamma, so max_gamma^2 is a valid starting bound: it lets voxels
    # that fail by far skip the search instead of scanning the whole ball.
    at_zero = lattice.flat[centre] - r_dose
    best = np.minimum(at_zero * at_zero * inv_dd2, np.float32(max_gamma ** 2 * (1 + 1e-6)))  # gamma^2 at 0 mm
    inside = lattice.flat[centre] < _OUTSIDE / 2  # reference voxels outside the evaluated volume are not evaluated
    best[~inside] = np.inf
    todo = np.flatnonzero(inside)
    if interp_fraction > 2:
        # Two passes: a half-resolution search over the whole ball gives every voxel an upper bound (its gamma
        # value when it passes); only the voxels it fails are searched at full resolution, and only within 1 DTA,
        # where a pass would lie. Pass/fail is thus decided at full resolution.
        coarse_groups, _ = _search_cells(spacing_zyx, dta_mm, max_gamma, 2 * dta_mm / interp_fraction)
        lattice.search(todo, best, centre, r_dose, inv_dd2, coarse_groups, dta_mm, sub(report, 0.0, 0.7))
        todo = todo[best[todo] > 1.0]
        refined = np.minimum(best, np.float32(1 + 1e-6))
        lattice.search(todo, refined, centre, r_dose, inv_dd2,
                       [g for g in fine_groups if g[0] <= dta_mm], dta_mm, sub(report, 0.7, 1.0))
        best = np.where(refined <= 1.0, refined, best)
    else:
        lattice.search(todo, best, centre, r_dose, inv_dd2, fine_groups, dta_mm, report)
    report(1.0, "gamma done")

    gamma = np.sqrt(best)
    if local:
        gamma[r_dose <= 0] = np.inf  # local gamma is undefined where the reference dose is 0
    valid = np.isfinite(gamma)
    gamma = np.minimum(gamma, max_gamma)
    full = np.full(ref.size, np.nan, dtype=np.float32)
    full[points[valid]] = gamma[valid]
    out = sitk.GetImageFromArray(full.reshape(ref.shape))
    out.CopyInformation(reference)
    n_eval = int(valid.sum())
    passed = int((gamma[valid] <= 1.0).sum())
    parameters = {"dose_percent": dose_percent, "dta_mm": dta_mm, "local": local, "cutoff_percent": cutoff_percent,
                  "max_gamma": max_gamma, "normalisation_gy": norm, "interp_fraction": interp_fraction,
                  "search_step_mm": dta_mm / interp_fraction,
                  "evaluated_resampled": bool(Grid.of(evaluated).differences(Grid.of(reference)))}
    return GammaResult(out, 100.0 * passed / n_eval if n_eval else float("nan"), n_eval, passed,
                       float(gamma[valid].mean()) if n_eval else float("nan"), parameters)
