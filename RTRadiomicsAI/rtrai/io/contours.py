"""Planar contours <-> voxel masks, the geometry under RTSTRUCT import and export.

- :func:`rasterize` fills closed planar contours (LPS mm) on any voxel grid: a voxel is inside when its centre (or,
  with ``supersample=n``, each of n x n sub-points) is inside by the **even-odd rule** over all contours of the plane,
  so holes drawn as separate contours come out as holes. Vertices are used at full precision (no rounding to the
  grid); contours beyond the grid are clipped. Each grid slice takes the nearest contour plane within half the
  contour plane spacing (at least half a voxel), so contours between slices and grids finer or coarser than the
  contouring CT both work.
- :func:`mask_to_contours` extracts closed planar contours from a mask with marching squares at level 0.5
  (``contourpy``, the library under matplotlib). The contour passes half-way between inside and outside voxel centres,
  so rasterising it again on the same grid gives back exactly the same voxels (tests check this, and check the
  rasteriser against analytic areas and against ``matplotlib.path.Path.contains_points``).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.image import Grid

# A contour is "planar in the grid" when its points lie within this distance (mm) of one slice-parallel plane.
PLANARITY_TOL_MM = 0.05


def _grid(reference: sitk.Image | Grid) -> Grid:
    return reference if isinstance(reference, Grid) else Grid.of(reference)


def physical_to_index(points: np.ndarray, grid: Grid) -> np.ndarray:
    """LPS mm (N, 3) -> continuous voxel index (N, 3) in (x, y, z) order."""
    matrix = grid.index_to_physical_matrix()
    return np.linalg.solve(matrix[:3, :3], (np.asarray(points, float) - matrix[:3, 3]).T).T


def index_to_physical(index: np.ndarray, grid: Grid) -> np.ndarray:
    matrix = grid.index_to_physical_matrix()
    return np.asarray(index, float) @ matrix[:3, :3].T + matrix[:3, 3]


def fill_polygons(polygons: list[np.ndarray], nx: int, ny: int) -> np.ndarray:
    """Even-odd fill of 2-D polygons given in continuous index coordinates (x, y) onto an (ny, nx) bool array.

    A scanline fill over the union of all edges: for each pixel row y, each edge crossing it (half-open in y, so a
    vertex on the row is counted once) toggles the pixels to its right; the parity of toggles is the even-odd rule.
    """
    toggles = np.zeros((ny, nx + 1), dtype=np.int32)
    for poly in polygons:
        if len(poly) < 3:
            continue
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.ceil(np.clip(lo, -1, ny + 1)).astype(np.int64).clip(0, ny)
        stop = np.ceil(np.clip(hi, -1, ny + 1)).astype(np.int64).clip(0, ny)
        counts = np.maximum(stop - first, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(counts)), counts)
        rows = first[edge] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        t = (rows - y0[edge]) / (y1[edge] - y0[edge])
        x = x0[edge] + t * (x1[edge] - x0[edge])
        start = (np.floor(np.clip(x, -2, nx + 1)).astype(np.int64) + 1).clip(0, nx)  # first pixel centre > x
        np.add.at(toggles, (rows, start), 1)
    return (np.cumsum(toggles, axis=1)[:, :nx] & 1).astype(bool)


def rasterize(contours: list[np.ndarray], reference: sitk.Image | Grid, supersample: int = 1) -> np.ndarray:
    """Fill closed planar contours (each an (N, 3) array in LPS mm) on the reference grid.

    Returns a (z, y, x) uint8 mask, or with ``supersample > 1`` a float32 array of the fraction of each voxel's
    n x n in-plane sub-points that are inside (partial-volume weights for DVHs on coarse dose grids).
    """
    grid = _grid(reference)
    nx, ny, nz = grid.size
    n = int(supersample)
    if n < 1:
        raise InputError("supersample must be a whole number >= 1")
    planes: dict[float, list[np.ndarray]] = {}
    for points in contours:
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
            raise FormatError("contour points must be finite (x, y, z) triplets")
        index = physical_to_index(points, grid)
        k = index[:, 2]
        if np.ptp(k) * grid.spacing[2] > PLANARITY_TOL_MM:
            raise GeometryError(f"a contour is not parallel to the grid's slices (it spans "
                                f"{np.ptp(k) * grid.spacing[2]:.3g} mm across them); resample the grid to the "
                                "contours' orientation")
        planes.setdefault(round(float(k.mean()), 3), []).append(index[:, :2])
    out = np.zeros((nz, ny, nx), dtype=np.float32 if n > 1 else np.uint8)
    if not planes:
        return out
    keys = np.array(sorted(planes))
    half = max(0.5, float(np.median(np.diff(keys))) / 2 if len(keys) > 1 else 0.5) + 1e-6
    for s in range(nz):
        distance = np.abs(keys - s)
        nearest = int(np.argmin(distance))
        if distance[nearest] > half:
            continue
        polygons = planes[float(keys[nearest])]
        if n == 1:
            out[s] = fill_polygons(polygons, nx, ny)
        else:
            fine = fill_polygons([(p + 0.5) * n - 0.5 for p in polygons], nx * n, ny * n)
            out[s] = fine.reshape(ny, n, nx, n).mean(axis=(1, 3))
    return out


def mask_to_contours(mask_zyx: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Closed contours of a binary (z, y, x) mask: slice index -> list of (N, 2) arrays in index (x, y) order.

    The closing point is not repeated (DICOM CLOSED_PLANAR closes implicitly) and collinear points are dropped.
    """
    import contourpy

    mask = np.asarray(mask_zyx) != 0
    out: dict[int, list[np.ndarray]] = {}
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        rows = np.flatnonzero(mask[z].any(axis=1))
        cols = np.flatnonzero(mask[z].any(axis=0))
        r0, c0 = rows[0], cols[0]
        # One voxel of background around the crop closes every contour, also at the grid's border.
        crop = np.pad(mask[z, r0:rows[-1] + 1, c0:cols[-1] + 1], 1).astype(np.float64)
        lines = contourpy.contour_generator(z=crop, line_type=contourpy.LineType.Separate).lines(0.5)
        loops = []
        for line in lines:
            xy = np.asarray(line, dtype=float) + (c0 - 1, r0 - 1)
            if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
                xy = xy[:-1]
            xy = _drop_collinear(xy)
            if len(xy) >= 3:
                loops.append(xy)
        if loops:
            out[int(z)] = loops
    return out


def _drop_collinear(xy: np.ndarray) -> np.ndarray:
    prev, nxt = np.roll(xy, 1, axis=0), np.roll(xy, -1, axis=0)
    cross = (xy[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (xy[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    return xy[np.abs(cross) > 1e-9]


def polygon_area(xy: np.ndarray) -> float:
    """Signed shoelace area of a closed polygon (N, 2)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
