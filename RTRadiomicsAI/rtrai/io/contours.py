"""Planar contours <-> voxel masks, the geometry under RTSTRUCT import and export.

- :func:`rasterize` fills closed planar contours (LPS mm) on any voxel grid: a voxel is inside when its centre (or,
  with ``supersample=n``, each of n x n sub-points) is inside by the **even-odd rule** over all contours of the plane,
  so holes drawn as separate contours come out as holes. Vertices are used at full precision (no rounding to the
  grid); contours beyond the grid are clipped. Each grid slice takes the nearest contour plane within half the
  contour plane spacing (at least half a voxel), so contours between slices and grids finer or coarser than the
  contouring CT both work.
- :func:`mask_to_contours` extracts closed planar contours that run along the voxels' edges: each slice's contours
  are the boundary of the union of its voxel squares, so the polygons enclose exactly the voxels' area, and a
  planning system or DVH tool that takes volume from the contours (area x slice thickness, or sub-voxel sampling)
  gets the mask's volume. (Marching squares at level 0.5 through the voxel centres, which this used before, also
  rasterises back to the same voxels but cuts every corner: on OpenKBP's 5.4 mm grid the exported PTV56 enclosed
  31.5 cc of its 43.6 cc.) Edges run on voxel sides, half a voxel from the nearest centres, and no vertex lies on a
  row of centres, so rasterising the contours again on the same grid gives back exactly the same voxels. Only
  corners are listed (collinear points merged); outer boundaries run counter-clockwise in index (x, y), holes
  clockwise as separate contours (the even-odd rule of :func:`rasterize` and of DICOM readers). Two voxels that
  share only a corner are separate (in-plane 4-connectivity, like ITK's default face connectivity), and the contour
  passing that corner is cut ``SADDLE_CUT`` (0.1 voxel) into its own voxel's corner instead of through the shared
  point, so every polygon is simple and no two touch; each cut takes 0.005 voxel areas off. Tests check the areas,
  the exact round trip and the simplicity.
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


# How far (in voxels) a contour passing a diagonal touch is pulled into its own voxel; see the module docstring.
SADDLE_CUT = 0.1

# Direction d of a voxel edge -> its step (dx, dy) in index space. d + 1 (mod 4) turns left (counter-clockwise in
# (x, y)), so a contour that keeps the structure on its left runs counter-clockwise around it and clockwise around
# its holes.
_STEP = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)], dtype=np.int64)


def mask_to_contours(mask_zyx: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Closed contours of a binary (z, y, x) mask: slice index -> list of (N, 2) arrays in index (x, y) order.

    The contours run along the voxels' edges (see the module docstring): outer boundaries counter-clockwise in
    (x, y), holes clockwise, each polygon simple and disjoint from the others. Only corners are listed (no
    collinear points) and the closing point is not repeated (DICOM CLOSED_PLANAR closes implicitly).
    """
    mask = np.asarray(mask_zyx) != 0
    if mask.ndim != 3:
        raise InputError(f"mask_to_contours needs a (z, y, x) mask, not an array of shape {mask.shape}")
    out: dict[int, list[np.ndarray]] = {}
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        rows = np.flatnonzero(mask[z].any(axis=1))
        cols = np.flatnonzero(mask[z].any(axis=0))
        r0, c0 = rows[0], cols[0]
        loops = _voxel_edge_loops(mask[z, r0:rows[-1] + 1, c0:cols[-1] + 1])
        # Corner (vx, vy) of the crop padded by one is at index (vx - 1.5, vy - 1.5) of the crop.
        out[int(z)] = [loop + (c0 - 1.5, r0 - 1.5) for loop in loops]
    return out


def _voxel_edge_loops(crop: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a 2-D bool array along pixel edges, in pixel-corner coordinates of the array padded by one.

    Every pixel edge between inside and outside becomes a directed unit edge with the inside on its left. Each
    corner then has one edge in and one out, except where two inside pixels touch only diagonally (a saddle): there
    two edges come in and two go out, and the loop turns left, around its own pixel, so such pixels are separate
    (4-connected) and the loop is cut ``SADDLE_CUT`` into that pixel's corner instead of passing the shared point.
    """
    p = np.pad(crop, 1)  # background all round closes every loop, also at the grid's border
    h, w = p.shape
    edges = np.zeros((4, h + 1, w + 1), dtype=bool)  # [direction, start vy, start vx]
    edges[0, 1:h, 0:w] = p[1:] & ~p[:-1]             # top side of a pixel, running +x
    edges[1, 0:h, 1:w] = p[:, :-1] & ~p[:, 1:]       # right side, +y
    edges[2, 1:h, 1:w + 1] = p[:-1] & ~p[1:]         # bottom side, -x
    edges[3, 1:h + 1, 1:w] = p[:, 1:] & ~p[:, :-1]   # left side, -y
    d, vy, vx = np.nonzero(edges)
    if not len(d):
        return []
    ex, ey = vx + _STEP[d, 0], vy + _STEP[d, 1]
    # The next edge starts where this one ends: prefer a left turn, then straight on, then a right turn.
    nxt = np.full(len(d), -1, dtype=np.int64)
    for turn in (1, 0, 3):
        cand = (d + turn) % 4
        free = (nxt < 0) & edges[cand, ey, ex]
        nxt[free] = np.ravel_multi_index((cand[free], ey[free], ex[free]), edges.shape)
    index = np.full(edges.size, -1, dtype=np.int64)
    index[np.ravel_multi_index((d, vy, vx), edges.shape)] = np.arange(len(d))
    nxt = index[nxt]
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(len(d))
    corner = d != d[prev]
    saddle = edges[:, vy, vx].sum(axis=0) == 2
    nxt_list, corner_list = nxt.tolist(), corner.tolist()
    seen = bytearray(len(d))
    loops = []
    for start in np.flatnonzero(corner).tolist():
        if seen[start]:
            continue
        members, i = [], start
        while not seen[i]:
            seen[i] = 1
            if corner_list[i]:
                members.append(i)
            i = nxt_list[i]
        members = np.asarray(members)
        points = np.c_[vx[members], vy[members]].astype(float)
        cut = saddle[members]
        if cut.any():  # a cut corner becomes (a point on its incoming edge, one on its outgoing edge)
            pairs = np.stack([points - SADDLE_CUT * _STEP[d[prev[members]]],
                              points + SADDLE_CUT * _STEP[d[members]]], axis=1)
            pairs[~cut, 0] = points[~cut]
            points = pairs[np.c_[np.ones(len(cut), dtype=bool), cut]]
        loops.append(points)
    return loops


def polygon_area(xy: np.ndarray) -> float:
    """Signed shoelace area of a closed polygon (N, 2)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
