"""Geometry-aware image handling on SimpleITK.

Conventions (see the README): numpy arrays are (z, y, x) as ``SimpleITK.GetArrayFromImage`` returns them, physical
space is DICOM/ITK LPS in mm, and every image carries spacing, origin and direction. Whenever two images must share a
voxel grid, :func:`check_same_grid` says exactly what differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError

# Two grids are the same when spacing/origin agree to 1 micrometre and directions to 1e-6 (DICOM round-off).
LENGTH_TOL_MM = 1e-3
DIRECTION_TOL = 1e-6


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (x, y, z), spacing (mm), origin (mm, LPS) and 3x3 direction (row-major)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(image.GetSize()),
            tuple(image.GetSpacing()),
            tuple(image.GetOrigin()),
            tuple(image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy array shape (z, y, x) of an image on this grid."""
        return tuple(reversed(self.size))

    @property
    def voxel_volume_cc(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def differences(self, other: Grid) -> list[str]:
        """Human-readable list of what differs between two grids (empty when they match)."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} vs {other.size}")
        if not np.allclose(self.spacing, other.spacing, atol=LENGTH_TOL_MM, rtol=0):
            out.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, atol=LENGTH_TOL_MM, rtol=0):
            out.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=DIRECTION_TOL, rtol=0):
            out.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return out

    def describe(self) -> str:
        return f"size {self.size}, spacing {_fmt(self.spacing)} mm, origin {_fmt(self.origin)} mm"

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k) voxel indices (x, y, z order) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.array(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return not Grid.of(a).differences(Grid.of(b))


def check_same_grid(a: sitk.Image, b: sitk.Image, names: tuple[str, str] = ("image", "mask")) -> None:
    """Raise :class:`GeometryError` naming every difference when ``a`` and ``b`` are not on the same voxel grid."""
    diffs = Grid.of(a).differences(Grid.of(b))
    if diffs:
        raise GeometryError(f"{names[0]} and {names[1]} are on different grids: " + "; ".join(diffs))


def from_array(array: np.ndarray, reference: sitk.Image | Grid | None = None, *, spacing=None, origin=None,
               direction=None) -> sitk.Image:
    """Wrap a (z, y, x) array as an image on the reference grid (or with explicit geometry)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        grid = reference if isinstance(reference, Grid) else Grid.of(reference)
        if tuple(reversed(array.shape[:3])) != grid.size:
            raise GeometryError(f"array of shape {array.shape} does not fit a grid of size {grid.size} (x, y, z)")
        spacing, origin, direction = grid.spacing, grid.origin, grid.direction
    if spacing is not None:
        image.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    return image


def to_array(image: sitk.Image) -> np.ndarray:
    """A (z, y, x) numpy copy of the image."""
    return sitk.GetArrayFromImage(image)


def mask_array(image: sitk.Image) -> np.ndarray:
    """A binary mask as a (z, y, x) bool array."""
    return sitk.GetArrayViewFromImage(image) != 0


def check_finite(image: sitk.Image, what: str = "image") -> None:
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite values ({int((~np.isfinite(arr)).sum())} voxels)")


# Above this a dose (or a prescription) in Gy is surely cGy. Not lower: permanent-seed brachytherapy prescribes up to
# 145 Gy (I-125 prostate), and a plan's hot spot lies above its prescription.
MAX_PLAUSIBLE_GY = 150.0


def check_dose(image: sitk.Image, what: str, max_plausible_gy: float = MAX_PLAUSIBLE_GY) -> np.ndarray:
    """The dose as float32 (z, y, x), refusing NaN, negative values and maxima that look like cGy: the one rule of
    every command that reads a dose (conversion, export, DVH, gamma, evaluation, the pipeline)."""
    check_finite(image, what)
    arr = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if arr.size == 0:
        raise InputError(f"{what} is empty")
    low = float(arr.min())
    if low < -1e-6:
        raise InputError(f"{what} has negative values (minimum {low:.4g} Gy); a dose must be >= 0")
    high = float(arr.max())
    if high > max_plausible_gy:
        raise InputError(f"{what} has a maximum of {high:.1f}, implausible in Gy (> {max_plausible_gy:g}); "
                         "it looks like cGy: divide by 100 or pass the dose in Gy")
    return arr


def resample_to(image: sitk.Image, reference: sitk.Image, interpolation: str = "linear",
                default: float = 0.0) -> sitk.Image:
    """Resample onto the reference grid. ``interpolation``: 'linear', 'nearest' (labels) or 'bspline'."""
    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    if interpolation not in interpolators:
        raise InputError(f"unknown interpolation '{interpolation}'; use one of {sorted(interpolators)}")
    return sitk.Resample(image, reference, sitk.Transform(), interpolators[interpolation], default,
                         image.GetPixelID())


def physical_centroid(mask: sitk.Image) -> np.ndarray:
    """Centre of mass of a binary mask in LPS mm."""
    idx = np.argwhere(mask_array(mask))
    if idx.size == 0:
        raise InputError("empty mask has no centroid")
    zyx = idx.mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))
