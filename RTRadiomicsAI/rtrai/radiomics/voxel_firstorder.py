"""pyradiomics' ``firstorder`` class in voxel mode, vectorised over voxels (same values, bit for bit).

pyradiomics computes first-order percentiles with ``apply_along_axis``, one voxel at a time; here one sort of all
kernels serves every percentile, and the sums are added in numpy's order (:mod:`rtrai.radiomics.voxel_numpy_order`).
"""

from __future__ import annotations

import numpy as np

from rtrai.radiomics.voxel_plan import EPS, Region, Unsupported, chunk_bounds, flat_offsets, pad_constant


def _nanpercentile_rows(sorted_rows: np.ndarray, valid: np.ndarray, q) -> np.ndarray:
    """``numpy.nanpercentile(rows, q, axis=1)`` ('linear'), for rows sorted ascending with NaNs last and ``valid``
    non-NaN values each: the same index, weight and interpolation arithmetic as numpy, for all rows at once."""
    quantile = np.true_divide(q, 100)
    virtual = (valid - 1).astype(np.float64) * quantile
    previous = np.floor(virtual)
    above = virtual >= valid - 1
    gamma = virtual - previous
    lower = np.where(above, valid - 1, previous).astype(np.intp)
    upper = np.where(above, valid - 1, previous + 1).astype(np.intp)
    rows = np.arange(sorted_rows.shape[0])
    a, b = sorted_rows[rows, lower], sorted_rows[rows, upper]
    diff = b - a
    result = a + diff * gamma
    late = gamma >= 0.5
    result[late] = b[late] - diff[late] * (1 - gamma[late])
    result[above] = a[above]
    result[valid == 0] = np.nan
    return result


def firstorder_maps(region: Region, names: list[str], s: dict, coords: np.ndarray) -> dict[str, np.ndarray]:
    from radiomics import cMatrices, imageoperations

    radius = s["kernelRadius"]
    roi, kernel_mask = region.roi, region.kernel_mask
    if s["maskedKernel"]:
        size = coords.max(1) - coords.min(1) + 1
    else:
        size = np.array(roi.shape)
    box = np.minimum(size, radius * 2 + 1)
    offsets = cMatrices.generate_angles(box, np.array(range(1, radius + 1)), True, s["force2D"],
                                        s["force2Ddimension"])
    offsets = np.append(offsets, [[0, 0, 0]], axis=0).T  # (3, K), centre voxel last, as pyradiomics
    values = region.array.astype("float")
    values[~kernel_mask] = np.nan
    padded = pad_constant(values, radius, np.nan)
    binned, _ = imageoperations.binImage(region.array.astype("float"), kernel_mask, **s)
    levels = np.unique(binned[kernel_mask])
    level_index = np.full(binned.shape, -1, np.int64)
    level_index[kernel_mask] = np.searchsorted(levels, binned[kernel_mask])
    level_index = pad_constant(level_index, radius, -1).ravel()
    flat = padded.ravel()
    kernel = flat_offsets(offsets, padded.shape)
    centres = np.ravel_multi_index(tuple(coords + radius), padded.shape)
    spacing_volume = np.multiply.reduce(region.image.GetSpacing())
    shift = s["voxelArrayShift"]
    out = {name: np.empty(coords.shape[1]) for name in names}
    n_levels = levels.size
    for b0, b1 in chunk_bounds(coords.shape[1], kernel.size):
        positions = centres[b0:b1, None] + kernel[None, :]
        target = flat[positions]  # (n, K)
        n = target.shape[0]
        found = level_index[positions]
        inside = found >= 0
        rows = np.broadcast_to(np.arange(n)[:, None], found.shape)[inside]
        p_i = np.bincount(rows * n_levels + found[inside], minlength=n * n_levels).reshape(n, n_levels)
        p_i = p_i.astype("float")
        sum_bins = np.sum(p_i, 1, keepdims=True).astype("float")
        sum_bins[sum_bins == 0] = 1
        p_i = p_i / sum_bins
        valid = np.sum(~np.isnan(target), 1)
        cache = {}

        def percentile(q):
            if q not in cache:
                if "sorted" not in cache:
                    cache["sorted"] = np.sort(target, axis=1)
                cache[q] = _nanpercentile_rows(cache["sorted"], valid, q)
            return cache[q]

        def moment(m):
            mn = np.nanmean(target, 1, keepdims=True)
            return np.nanmean(np.power((target - mn), m), 1)

        for name in names:
            if name == "Energy":
                value = np.nansum((target + shift) ** 2, 1)
            elif name == "TotalEnergy":
                value = np.nansum((target + shift) ** 2, 1) * spacing_volume
            elif name == "Entropy":
                value = -1.0 * np.sum(p_i * np.log2(p_i + EPS), 1)
            elif name == "Minimum":
                value = np.nanmin(target, 1)
            elif name == "10Percentile":
                value = percentile(10)
            elif name == "90Percentile":
                value = percentile(90)
            elif name == "Maximum":
                value = np.nanmax(target, 1)
            elif name == "Mean":
                value = np.nanmean(target, 1)
            elif name == "Median":
                value = np.nanmedian(target, 1)
            elif name == "InterquartileRange":
                value = percentile(75) - percentile(25)
            elif name == "Range":
                value = np.nanmax(target, 1) - np.nanmin(target, 1)
            elif name == "MeanAbsoluteDeviation":
                u_x = np.nanmean(target, 1, keepdims=True)
                value = np.nanmean(np.absolute(target - u_x), 1)
            elif name == "RobustMeanAbsoluteDeviation":
                p10, p90 = percentile(10), percentile(90)
                array = target.copy()
                keep = ~np.isnan(array)
                keep[keep] = ((array - p10[:, None])[keep] < 0) | ((array - p90[:, None])[keep] > 0)
                array[keep] = np.nan
                value = np.nanmean(np.absolute(array - np.nanmean(array, 1, keepdims=True)), 1)
            elif name == "RootMeanSquared":
                value = np.sqrt(np.nansum((target + shift) ** 2, 1) / valid.astype("float"))
            elif name in ("Skewness", "Kurtosis"):
                m2 = moment(2)
                mk = moment(3 if name == "Skewness" else 4)
                m2[m2 == 0] = 1
                mk[m2 == 0] = 0
                value = mk / m2 ** 1.5 if name == "Skewness" else mk / m2 ** 2.0
            elif name == "Variance":
                value = np.nanstd(target, 1) ** 2
            elif name == "Uniformity":
                value = np.nansum(p_i ** 2, 1)
            else:  # plan() only lets known, non-deprecated names through
                raise Unsupported(f"firstorder {name}")
            out[name][b0:b1] = value
    return out
