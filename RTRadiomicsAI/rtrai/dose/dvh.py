"""Dose-volume histograms with sub-voxel accuracy from contours, and DVH tables, CSVs and plots.

The samples and metrics are defined once, in :mod:`rtrai.core.dvh` (also used by the radiomics dose features), and
imported here for the DVH command and the workflow's DVH step. A structure is turned into weighted dose samples
``(dose Gy, volume cc)``:

- from planar contours (RTSTRUCT) directly on the dose grid (:func:`samples_from_contours`): each contour plane is a
  slab as thick as the contour plane spacing; inside it, a dose voxel is cut into ``n x n`` in-plane sub-points and
  ``n_z`` sub-planes, a sub-point counts when it lies inside the plane's polygons (even-odd rule, the polygon fill of
  :mod:`rtrai.io.contours`, so holes work), and its dose is trilinearly interpolated at its own position. Partial
  voxels therefore count by their covered fraction, and steep gradients inside a voxel are resolved; in a large
  structure, voxels wholly inside count whole (one stratified sample each);
- from a voxel mask (:func:`rtrai.core.dvh.samples_from_mask`): on the dose grid the voxel doses with the mask value
  as weight (a fractional mask is a partial-volume weight); on another grid, the dose is interpolated at the mask's
  voxels.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from rtrai.core.dvh import (DoseSamples, check_metric, dose_axis, metric, parse_metrics,  # noqa: F401 - the DVH API
                            samples_from_mask)
from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid

# Sub-point spacing the contour sampler aims for (mm): fine enough for ~0.1 Gy in a 1 Gy/mm penumbra.
TARGET_SUBSTEP_MM = 0.5
MAX_SUPERSAMPLE = 8
# Up to this many inside sub-points a structure is sampled at every one (about 50 cc at 0.5 mm steps); beyond, whole
# voxels count whole (see samples_from_contours): 8 MB of samples at most per structure before that.
MAX_SUBPOINTS = 400_000


# ---------------------------------------------------------------------------------------------- contours -> samples

def _interp_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """Linear interpolation weights (len(positions), size) for continuous indices, clamped at the edges."""
    positions = np.clip(positions, 0, size - 1)
    low = np.minimum(np.floor(positions).astype(np.int64), max(size - 2, 0))
    frac = positions - low if size > 1 else np.zeros_like(positions)
    matrix = np.zeros((len(positions), size))
    rows = np.arange(len(positions))
    matrix[rows, low] = 1 - frac
    if size > 1:
        matrix[rows, low + 1] += frac
    return matrix


def contour_planes(contours: list[np.ndarray], grid: Grid) -> dict[float, list[np.ndarray]]:
    """Contours grouped by plane: continuous z index on ``grid`` -> polygons in continuous (x, y) index."""
    from rtrai.io.contours import PLANARITY_TOL_MM, physical_to_index

    planes: dict[float, list[np.ndarray]] = {}
    for points in contours:
        index = physical_to_index(np.asarray(points, dtype=float), grid)
        if np.ptp(index[:, 2]) * grid.spacing[2] > PLANARITY_TOL_MM:
            raise GeometryError("a contour is not parallel to the dose grid's slices; DVHs from contours need an "
                                "axial dose grid (resample the dose or use a mask)")
        planes.setdefault(round(float(index[:, 2].mean()), 4), []).append(index[:, :2])
    return planes


def samples_from_contours(dose: sitk.Image, contours: list[np.ndarray], supersample: int | None = None
                          ) -> DoseSamples:
    """Samples of a structure given as closed planar contours (LPS mm), computed on the dose grid itself.

    A structure of up to :data:`MAX_SUBPOINTS` inside sub-points is sampled at all of them. In a larger one (a body)
    only the voxels a contour crosses are; a voxel whose ``n x n`` sub-points all lie inside counts whole, as one
    sample with the volume of all its sub-points, taken at one of them, chosen by the voxel's position so that each
    block of ``n x n`` voxels visits every sub-point once and neighbouring blocks and planes every sub-plane
    (stratified sampling). The samples of a large structure then spread as its sub-points do (one sample at every
    voxel centre would put a row of voxels on one dose level: 0.13 Gy off at D95 in a 0.2 Gy/mm gradient), and a
    body costs one sample per voxel instead of ``n ** 2 * n_z``."""
    from rtrai.io.contours import fill_polygons

    grid = Grid.of(dose)
    values = sitk.GetArrayViewFromImage(dose)
    nz, ny, nx = values.shape
    planes = contour_planes(contours, grid)
    if not planes:
        return DoseSamples.of([], [])
    keys = np.array(sorted(planes))
    dx, dy, dz = grid.spacing
    n = supersample or min(MAX_SUPERSAMPLE, max(1, math.ceil(max(dx, dy) / TARGET_SUBSTEP_MM)))
    # Each plane is a slab as thick as the contour plane spacing (the convention of TPSs and dicompyler).
    thickness = float(np.median(np.diff(keys))) if len(keys) > 1 else 1.0
    n_z = max(1, math.ceil(thickness * dz / TARGET_SUBSTEP_MM / 2))
    sub_cc = dx * dy / n ** 2 * thickness * dz / n_z / 1000.0
    outside_cc, fills = 0.0, []
    for key in keys:
        polygons = planes[float(key)]
        allpts = np.concatenate(polygons)
        # Window: the dose voxels (continuous index k covers [k - 0.5, k + 0.5]) under the polygons' bounding box,
        # on a sub-lattice of n x n points per voxel (sub-point u lies in voxel u // n).
        v_lo = np.floor(allpts.min(axis=0) + 0.5).astype(np.int64)
        v_hi = np.floor(allpts.max(axis=0) + 0.5).astype(np.int64)
        vx_count, vy_count = v_hi - v_lo + 1
        inside = fill_polygons([(p - v_lo + 0.5) * n - 0.5 for p in polygons], vx_count * n, vy_count * n)
        vx, vy = v_lo[0] + np.arange(vx_count), v_lo[1] + np.arange(vy_count)
        on_grid = ((vy >= 0) & (vy < ny))[:, None] & ((vx >= 0) & (vx < nx))[None, :]
        count = inside.reshape(vy_count, n, vx_count, n).sum(axis=(1, 3))  # inside sub-points per voxel
        outside_cc += count[~on_grid].sum() * sub_cc * n_z
        fills.append((key, v_lo, inside, count, on_grid))
    stratified = sum(int(f[3][f[4]].sum()) for f in fills) * n_z > MAX_SUBPOINTS
    doses, weights = [], []
    for plane_index, (key, v_lo, inside, count, on_grid) in enumerate(fills):
        whole = on_grid & (count == n * n) if stratified else np.zeros_like(on_grid)
        crossed = on_grid & (count > 0) & ~whole
        wy_, wx_ = np.nonzero(whole)
        whole_y, whole_x = v_lo[1] + wy_, v_lo[0] + wx_
        # (x + y, x + 2y) mod n is one-to-one on each n x n block and cycles along every row and column, so even a
        # dose that varies along one axis only is sampled at all n offsets along it.
        pick_x = whole_x + ((whole_x + whole_y) % n + 0.5) / n - 0.5
        pick_y = whole_y + ((whole_x + 2 * whole_y) % n + 0.5) / n - 0.5
        pick_z = (whole_x // n + whole_y // n + plane_index) % n_z
        # Every inside sub-point of the other voxels, as continuous dose indices.
        sy, sx = np.nonzero(inside & np.repeat(np.repeat(crossed, n, axis=0), n, axis=1))
        sub_y, sub_x = v_lo[1] + (sy + 0.5) / n - 0.5, v_lo[0] + (sx + 0.5) / n - 0.5
        for j in range(n_z):
            z = key + ((j + 0.5) / n_z - 0.5) * thickness
            at_j = pick_z == j
            if z < -0.5 or z > nz - 0.5:
                outside_cc += (at_j.sum() * n * n * n_z + len(sub_y)) * sub_cc
                continue
            wz = _interp_matrix(np.array([z]), nz)[0]
            plane = sum(wz[k] * values[k].astype(np.float64) for k in np.flatnonzero(wz))
            doses += [_bilinear(plane, pick_y[at_j], pick_x[at_j]), _bilinear(plane, sub_y, sub_x)]
            weights += [np.full(int(at_j.sum()), n * n * n_z * sub_cc), np.full(len(sub_y), sub_cc)]
    if not doses:
        return DoseSamples.of([], [], outside_cc)
    return DoseSamples.of(np.concatenate(doses), np.concatenate(weights), outside_cc)


def _bilinear(plane: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``plane`` linearly interpolated at continuous indices, clamped at the edges (as :func:`_interp_matrix`)."""
    ny, nx = plane.shape
    y, x = np.clip(y, 0, ny - 1), np.clip(x, 0, nx - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), max(ny - 2, 0))
    x0 = np.minimum(np.floor(x).astype(np.int64), max(nx - 2, 0))
    fy, fx = (y - y0 if ny > 1 else 0 * y), (x - x0 if nx > 1 else 0 * x)
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    return ((1 - fy) * ((1 - fx) * plane[y0, x0] + fx * plane[y0, x1])
            + fy * ((1 - fx) * plane[y1, x0] + fx * plane[y1, x1]))


def dvh_table(samples: dict[str, DoseSamples], bin_gy: float = 0.1) -> dict[str, np.ndarray]:
    """Cumulative DVHs on one dose axis: {'dose_gy': axis, name: volume cc receiving >= dose}."""
    if bin_gy <= 0:
        raise InputError(f"DVH bin width must be positive (got {bin_gy} Gy)")
    top = max((s.dose[0] for s in samples.values() if s.dose.size), default=0.0)
    axis = dose_axis(top, bin_gy)
    return {"dose_gy": axis, **{name: s.cumulative(axis) for name, s in samples.items()}}


def dvh_csv(table: dict[str, np.ndarray], samples: dict[str, DoseSamples]) -> str:
    """``dvh.csv`` text (``structure,dose_gy,volume_pct,volume_cc``, one row per structure and dose bin): the one
    format of ``rtrai dvh`` and ``rtrai run``."""
    rows = ["structure,dose_gy,volume_pct,volume_cc"]
    for name, s in samples.items():
        total = s.total_cc
        for d, v in zip(table["dose_gy"], table[name]):
            rows.append(f"{name},{d:.4f},{100 * v / total if total else float('nan'):.4f},{v:.5f}")
    return "\n".join(rows) + "\n"


def dvh_figure(table: dict[str, np.ndarray], samples: dict[str, DoseSamples], colors: dict | None = None,
               title: str | None = None):
    """A matplotlib figure of the cumulative DVHs (volume in % of each structure); the caller saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtrai.core.structures import color_of, is_target

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for name, s in samples.items():
        if s.total_cc > 0:
            colour = (colors or {}).get(name) or color_of(name)
            ax.plot(table["dose_gy"], 100 * table[name] / s.total_cc, label=name, color=colour,
                    lw=2.2 if is_target(name) else 1.5, ls="--" if is_target(name) else "-")
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
