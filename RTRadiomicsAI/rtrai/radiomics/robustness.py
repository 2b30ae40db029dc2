"""Feature robustness to contour variability: perturb the ROI, re-extract, and score each feature by ICC(3,1).

Perturbation j is the same operation for every case (so perturbations act as the "raters" of a two-way model):
0 = the contour itself, 1 = eroded by one voxel in-plane, 2 = dilated by one voxel in-plane, then alternately random
boundary changes (each boundary voxel flipped with probability 0.2) and translations by one voxel along a random axis,
with a fixed seed. ICC(3,1) (Shrout & Fleiss 1979: two-way mixed, consistency, single measurement) needs several
cases: with one case only the coefficient of variation across perturbations is reported.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rtrai.core.errors import InputError


def icc_3_1(ratings: np.ndarray) -> float:
    """ICC(3,1) of an (n subjects x k raters) matrix: (MSR - MSE) / (MSR + (k - 1) MSE)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    n, k = ratings.shape
    if n < 2 or k < 2:
        raise InputError(f"ICC(3,1) needs at least 2 cases and 2 ratings (got {n} x {k})")
    grand = ratings.mean()
    ss_rows = k * ((ratings.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((ratings.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((ratings - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_error = ss_rows / (n - 1), ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else float("nan")


def perturbed_masks(mask: np.ndarray, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` masks: the original, erosion, dilation, then random boundary changes and one-voxel shifts."""
    rng = np.random.default_rng(seed)
    mask = mask.astype(bool)
    # In-plane neighbourhood: contours are drawn slice by slice, and thin ROIs (3 slices) survive an in-plane erosion.
    structure = ndimage.generate_binary_structure(3, 1)
    structure[0], structure[2] = False, False
    masks = [mask, ndimage.binary_erosion(mask, structure), ndimage.binary_dilation(mask, structure)]
    while len(masks) < count:
        if len(masks) % 2:
            boundary = mask ^ ndimage.binary_erosion(mask, structure)
            outer = ndimage.binary_dilation(mask, structure) & ~mask
            flip = (boundary | outer) & (rng.random(mask.shape) < 0.2)
            masks.append(mask ^ flip)
        else:
            axis, step = int(rng.integers(0, 3)), int(rng.choice([-1, 1]))
            shifted = np.roll(mask, step, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if step == 1 else -1  # what rolled over the border is outside the image
            shifted[tuple(edge)] = False
            masks.append(shifted)
    return [m for m in masks[:count]]


def perturbation_features(extractor, image: sitk.Image, mask: sitk.Image, label: int, count: int, seed: int = 0,
                          progress=None) -> tuple[list[str], np.ndarray]:
    """Numeric feature names and a (count x features) matrix of values over the perturbed masks."""
    from rtrai.core.progress import track

    base = sitk.GetArrayViewFromImage(mask) == label
    rows, names = [], None
    for i, perturbed in enumerate(track(perturbed_masks(base, count, seed), progress, message="perturbation")):
        if not perturbed.any():
            raise InputError(f"perturbation {i} leaves an empty mask (the ROI is too small to erode)")
        pmask = sitk.GetImageFromArray(perturbed.astype(np.uint8))
        pmask.CopyInformation(mask)
        result = extractor.execute(image, pmask, label=1)
        numeric = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}
        names = names or list(numeric)
        rows.append([numeric.get(n, np.nan) for n in names])
    return names, np.array(rows)


def robustness_table(per_case: list[tuple[list[str], np.ndarray]]) -> list[dict]:
    """Rows ``feature, icc, cv_mean`` from the perturbation matrices of one or more cases."""
    names = per_case[0][0]
    stacked = np.stack([m for _, m in per_case])  # cases x perturbations x features
    out = []
    for j, name in enumerate(names):
        values = stacked[:, :, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.nanmean(values.std(axis=1) / np.abs(values.mean(axis=1)))
        icc = icc_3_1(values) if values.shape[0] >= 2 else float("nan")
        out.append({"feature": name, "icc": icc, "cv_mean": float(cv), "cases": values.shape[0],
                    "perturbations": values.shape[1]})
    return out
