"""Dose phantoms with closed-form DVHs: a linear dose gradient through a sphere or a box has a DVH known exactly
(spherical caps, uniform slabs).

Used by the tests and benchmarks (and handy for checking any DVH tool): written as RTDOSE + RTSTRUCT by
:func:`rtrai.io.dicomrt_export.write_contours_and_dose`, the same phantom can be fed to other tools (dicompyler-core)
for side-by-side comparisons. (The synthetic head-and-neck patient is :mod:`rtrai.phantom`.)
"""

from __future__ import annotations

import math
import numpy as np
import SimpleITK as sitk


def linear_dose(size_xyz, spacing, origin, gradient_gy_per_mm, dose_at_origin_gy: float) -> sitk.Image:
    """Dose D(p) = dose_at_origin + gradient . p on an axial grid (p in LPS mm), clipped at 0 Gy."""
    nx, ny, nz = size_xyz
    x = origin[0] + np.arange(nx) * spacing[0]
    y = origin[1] + np.arange(ny) * spacing[1]
    z = origin[2] + np.arange(nz) * spacing[2]
    gx, gy, gz = gradient_gy_per_mm
    dose = dose_at_origin_gy + gz * z[:, None, None] + gy * y[None, :, None] + gx * x[None, None, :]
    image = sitk.GetImageFromArray(np.clip(dose, 0, None).astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def sphere_contours(centre, radius: float, plane_z: np.ndarray, points: int = 180) -> list[np.ndarray]:
    """Axial circles of a sphere on the given planes (LPS mm), one (N, 3) polygon per plane that cuts it."""
    out = []
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    for z in plane_z:
        r2 = radius ** 2 - (z - centre[2]) ** 2
        if r2 <= 0:
            continue
        r = math.sqrt(r2)
        out.append(np.column_stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles),
                                    np.full(points, z)]))
    return out


def box_contours(low, high, plane_z: np.ndarray) -> list[np.ndarray]:
    """Axial rectangles of a box [low, high] (LPS mm) on the planes inside its z range."""
    return [np.array([[low[0], low[1], z], [high[0], low[1], z], [high[0], high[1], z], [low[0], high[1], z]])
            for z in plane_z if low[2] <= z <= high[2]]


def sphere_cap_fraction(distance_from_centre: np.ndarray | float, radius: float) -> np.ndarray:
    """Fraction of a sphere's volume beyond a plane at signed distance ``d`` from the centre (the cap of height
    ``R - d``)."""
    d = np.clip(np.asarray(distance_from_centre, dtype=float), -radius, radius)
    h = radius - d
    return np.pi * h ** 2 * (3 * radius - h) / 3 / (4 / 3 * np.pi * radius ** 3)


def sphere_dose_at_volume(fraction: float, centre_dose: float, gradient: float, radius: float) -> float:
    """Exact D_v for a sphere in a linear gradient: the dose above which the hottest ``fraction`` of it lies."""
    from scipy.optimize import brentq

    d = brentq(lambda t: sphere_cap_fraction(t, radius) - fraction, -radius, radius)
    return centre_dose + gradient * d
