"""Dose-volume histograms with sub-voxel accuracy, and the usual DVH metrics.

A structure is turned into weighted dose samples ``(dose Gy, volume cc)``:

- from planar contours (RTSTRUCT) directly on the dose grid (:func:`samples_from_contours`): each contour plane is a
  slab as thick as the contour plane spacing; inside it, every dose voxel is cut into ``n x n`` in-plane sub-points
  and ``n_z`` sub-planes, a sub-point counts when it lies inside the plane's polygons (even-odd rule, the polygon
  fill of :mod:`rtrai.io.contours`, so holes work), and its dose is trilinearly interpolated at its own position.
  Partial voxels therefore count by their covered fraction, and steep gradients inside a voxel are resolved;
- from a voxel mask (:func:`samples_from_mask`): on the dose grid the voxel doses with the mask value as weight
  (a fractional mask is a partial-volume weight); on another grid, the dose is interpolated at the mask's voxels.

Metrics (:func:`metric`): ``Dmean``, ``Dmax``, ``Dmin``, ``D<x>%`` and ``D<x>cc`` (Gy: the minimum dose received by
the hottest x % / x cc, linear between samples), ``V<x>Gy`` (% of the volume receiving at least x Gy), ``V<x>Gy_cc``
and ``Volume`` (cc).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid, resample_to

# Sub-point spacing the contour sampler aims for (mm): fine enough for ~0.1 Gy in a 1 Gy/mm penumbra.
TARGET_SUBSTEP_MM = 0.5
MAX_SUPERSAMPLE = 8


@dataclass
class DoseSamples:
    """Weighted dose samples of one structure."""

    dose: np.ndarray  # Gy, sorted from hottest to coldest
    volume_cc: np.ndarray  # volume of each sample
    outside_cc: float = 0.0  # volume of the structure outside the dose grid (not in the samples)

    @classmethod
    def of(cls, dose, volume_cc, outside_cc: float = 0.0) -> DoseSamples:
        dose = np.asarray(dose, dtype=np.float64).ravel()
        volume_cc = np.broadcast_to(np.asarray(volume_cc, dtype=np.float64), dose.shape).ravel()
        keep = volume_cc > 0
        dose, volume_cc = dose[keep], volume_cc[keep]
        order = np.argsort(-dose, kind="stable")
        return cls(dose[order], volume_cc[order], float(outside_cc))

    @property
    def total_cc(self) -> float:
        return float(self.volume_cc.sum())

    def cumulative(self, dose_axis: np.ndarray) -> np.ndarray:
        """Volume (cc) receiving at least each dose of ``dose_axis``."""
        cum = np.concatenate([[0.0], np.cumsum(self.volume_cc)])
        ascending = self.dose[::-1]
        # number of samples with dose >= D = n - (number with dose < D)
        below = np.searchsorted(ascending, dose_axis, side="left")
        return cum[len(self.dose) - below]

    def dose_at_volume(self, volume_cc: float) -> float:
        """Minimum dose received by the hottest ``volume_cc`` (linear between sample mid-points)."""
        centres = np.cumsum(self.volume_cc) - self.volume_cc / 2
        return float(np.interp(volume_cc, centres, self.dose))


_METRIC = re.compile(r"^(?:(?P<kind>[DV])(?P<value>\d+(?:\.\d+)?)(?P<unit>%|cc|Gy|Gy_cc|Gy%))$")


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise InputError("no DVH metrics given")
    for name in names:
        check_metric(name)
    return names


def check_metric(name: str) -> None:
    if name in ("Dmean", "Dmax", "Dmin", "Volume"):
        return
    match = _METRIC.match(name)
    valid = match and ((match["kind"] == "D" and match["unit"] in ("%", "cc"))
                       or (match["kind"] == "V" and match["unit"] in ("Gy", "Gy_cc")))
    if not valid:
        raise InputError(f"unknown DVH metric '{name}'; use Dmean, Dmax, Dmin, Volume, D<x>%, D<x>cc, V<x>Gy "
                         "or V<x>Gy_cc (e.g. D95%, D2cc, V20Gy)")
    if match["unit"] == "%" and not 0 <= float(match["value"]) <= 100:
        raise InputError(f"DVH metric '{name}': the percentage must be between 0 and 100")


def metric(samples: DoseSamples, name: str) -> float:
    """One DVH metric (Gy for D..., % or cc for V..., cc for Volume); NaN for an empty structure."""
    check_metric(name)
    total = samples.total_cc
    if total <= 0:
        return float("nan")
    if name == "Dmean":
        return float(np.dot(samples.dose, samples.volume_cc) / total)
    if name == "Dmax":
        return float(samples.dose[0])
    if name == "Dmin":
        return float(samples.dose[-1])
    if name == "Volume":
        return total
    match = _METRIC.match(name)
    value, unit = float(match["value"]), match["unit"]
    if match["kind"] == "D":
        volume = total * value / 100.0 if unit == "%" else value
        return samples.dose_at_volume(volume)
    covered = float(samples.volume_cc[samples.dose >= value].sum())
    return 100.0 * covered / total if unit == "Gy" else covered


def dose_axis(max_dose: float, bin_gy: float) -> np.ndarray:
    return np.arange(0.0, max_dose + bin_gy, bin_gy)


# ------------------------------------------------------------------------------------------------- masks -> samples

def samples_from_mask(dose: sitk.Image, mask: sitk.Image) -> DoseSamples:
    """Samples of a mask (binary or fractional). On another grid than the dose, the dose is interpolated linearly at
    the mask's voxel centres (outside the dose grid it counts as ``outside_cc``)."""
    weights = sitk.GetArrayViewFromImage(mask).astype(np.float64)
    voxel_cc = Grid.of(mask).voxel_volume_cc
    if not Grid.of(dose).differences(Grid.of(mask)):
        values = sitk.GetArrayViewFromImage(dose)
        inside = weights > 0
        return DoseSamples.of(values[inside], weights[inside] * voxel_cc)
    outside = -1.0  # doses are >= 0, so this marks mask voxels beyond the dose grid
    resampled = sitk.GetArrayViewFromImage(resample_to(sitk.Cast(dose, sitk.sitkFloat32), mask, "linear", outside))
    inside = weights > 0
    values, w = resampled[inside], weights[inside] * voxel_cc
    beyond = values < 0
    return DoseSamples.of(values[~beyond], w[~beyond], float(w[beyond].sum()))


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
    """Samples of a structure given as closed planar contours (LPS mm), computed on the dose grid itself."""
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
    doses, outside_cc = [], 0.0
    for key in keys:
        polygons = planes[float(key)]
        allpts = np.concatenate(polygons)
        # Sub-point window: the polygons' bounding box, on the sub-lattice of the dose grid.
        lo = np.floor((allpts.min(axis=0) + 0.5) * n).astype(np.int64)
        hi = np.ceil((allpts.max(axis=0) + 0.5) * n).astype(np.int64)
        ux, uy = np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1)
        inside = fill_polygons([(p + 0.5) * n - 0.5 - lo for p in polygons], len(ux), len(uy))
        x_idx, y_idx = (ux + 0.5) / n - 0.5, (uy + 0.5) / n - 0.5  # sub-point centres, continuous dose index
        in_x = (x_idx >= -0.5) & (x_idx <= nx - 0.5)
        in_y = (y_idx >= -0.5) & (y_idx <= ny - 0.5)
        covered = inside[np.ix_(in_y, in_x)]
        outside_cc += (inside.sum() - covered.sum()) * sub_cc * n_z
        if not covered.any():
            continue
        wx = _interp_matrix(x_idx[in_x], nx)
        wy = _interp_matrix(y_idx[in_y], ny)
        xs = np.flatnonzero(wx.any(axis=0))
        ys = np.flatnonzero(wy.any(axis=0))
        wx, wy = wx[:, xs[0]:xs[-1] + 1], wy[:, ys[0]:ys[-1] + 1]
        for j in range(n_z):
            z = key + ((j + 0.5) / n_z - 0.5) * thickness
            if z < -0.5 or z > nz - 0.5:
                outside_cc += covered.sum() * sub_cc
                continue
            wz = _interp_matrix(np.array([z]), nz)[0]
            slab = sum(wz[k] * values[k, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].astype(np.float64)
                       for k in np.flatnonzero(wz))
            doses.append((wy @ slab @ wx.T)[covered])
    dose_values = np.concatenate(doses) if doses else np.zeros(0)
    return DoseSamples.of(dose_values, sub_cc, outside_cc)


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
