"""Our own voxel-map engine for pyradiomics' ``firstorder`` and ``glcm`` classes.

pyradiomics' voxel mode builds, for every ROI voxel, a dense grey-level x grey-level x angle co-occurrence matrix and
evaluates each feature on the whole (voxels, Ng, Ng, angles) array; first-order percentiles go through
``apply_along_axis`` one voxel at a time. Here each kernel's co-occurring pairs are gathered with numpy for thousands
of voxels at once and only the non-zero matrix entries are kept; percentiles use one sort of all kernels.

Same values, bit for bit (tested), not just close ones. A sum numpy takes over pyradiomics' dense matrices adds the
elements one after the other in the array's memory order (row- or column-major over (i, j), depending on how
``numpy.delete`` and broadcasting laid the array out); zeros add nothing. So we compute the same non-zero terms with
the same expressions and add them in that order (``_Groups``), the order being read off pyradiomics' own expressions
run on a two-voxel stand-in (``_layouts``); per-angle values go through the same ``nanmean`` calls on arrays laid out
the same way. Where numpy would sum pairwise over grey levels (rare layouts), and for MCC (eigenvalues of dense
matrices), pyradiomics' own GLCM feature code runs on this chunk's dense matrices, built with pyradiomics' values and
layout (``_dense_features``). Settings, discretisation (``binImage``), kernel offsets and angles
(``generate_angles``), cropping and pre-processing are pyradiomics' own functions, and its voxel-mode rules are
kept: angles without any pair in the whole ROI are dropped, an angle empty in one kernel is NaN and left out of the
mean (but makes Joint Average NaN), and MCC fails -- map left at ``initValue`` -- as soon as one kernel has an empty
angle.

Anything else -- other feature classes, filters (LoG, wavelet, ...), distance weighting (``weightingNorm``), a
process-wide ``geometryTolerance``, several voxel batches (``voxelBatch`` smaller than the ROI), deprecated or unknown
feature names, settings outside pyradiomics' schema -- raises :class:`Unsupported`, and ``voxel_maps`` uses
pyradiomics itself.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

ENGINE_CLASSES = ("firstorder", "glcm")
# Entries (voxel x kernel position, or voxel x co-occurring pair) per chunk: bounds the memory of one chunk to a few
# hundred MB at most, whatever the ROI size.
CHUNK_ENTRIES = 250_000
# Dense (voxels, Ng, Ng, angles) matrices (MCC, rare layouts: see _dense_features), elements per chunk.
DENSE_CHUNK_ELEMENTS = 4_000_000
EPS = np.spacing(1)


class Unsupported(Exception):
    """Input or settings this engine does not cover: use pyradiomics."""


# --------------------------------------------------------------------------------------------------------------------
# Parameters


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(v)


def _interpolator(v) -> bool:
    from radiomics.schemas.schemaFuncs import checkInterpolator

    try:
        return checkInterpolator(v, None, None)
    except (TypeError, ValueError):
        return False


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def _numbers(v, low: float) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_num(x) and x >= low for x in v)


# The settings we understand, with pyradiomics' schema rules (radiomics/schemas/paramSchema.yaml) or stricter; any
# other key or value (filters, distance weighting, a process-wide geometry tolerance, ...) goes to pyradiomics, which
# computes it or reports the error. Pre-processing settings (normalize, resampling, resegmentation, preCrop) are
# applied by pyradiomics' own functions in prepare().
SETTING_CHECKS = {
    "minimumROIDimensions": lambda v: _is_int(v) and 1 <= v <= 3,
    "minimumROISize": lambda v: v is None or (_is_int(v) and v > 0),
    "correctMask": _is_bool,
    "additionalInfo": _is_bool,
    "label": lambda v: _is_int(v) and v > 0,
    "label_channel": lambda v: _is_int(v) and v >= 0,
    "binWidth": lambda v: _is_num(v) and v > 0,
    "binCount": lambda v: v is None or (_is_int(v) and v > 0),
    "normalize": _is_bool,
    "normalizeScale": lambda v: _is_num(v) and v > 0,
    "removeOutliers": lambda v: v is None or (_is_num(v) and v > 0),
    "resampledPixelSpacing": lambda v: v is None or _numbers(v, 0),
    "interpolator": _interpolator,
    "padDistance": lambda v: _is_int(v) and v >= 0,
    "distances": lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(d) and d > 0 for d in v),
    "force2D": _is_bool,
    "force2Ddimension": lambda v: _is_int(v) and 0 <= v <= 2,
    "resegmentRange": lambda v: v is None or (_numbers(v, -math.inf) and len(v) in (1, 2)),
    "resegmentMode": lambda v: v in ("absolute", "relative", "sigma"),
    "resegmentShape": _is_bool,
    "preCrop": _is_bool,
    "voxelArrayShift": _is_int,
    "symmetricalGLCM": _is_bool,
    "weightingNorm": lambda v: v is None,
    "gldm_a": lambda v: _is_int(v) and v >= 0,  # GLDM (computed by pyradiomics)
}
VOXEL_SETTING_CHECKS = {
    "kernelRadius": lambda v: _is_int(v) and v > 0,
    "maskedKernel": _is_bool,
    "initValue": lambda v: _is_int(v) or isinstance(v, (float, np.floating)),
    "voxelBatch": lambda v: _is_int(v) and v > 0,
}


# What pyradiomics' feature classes and voxel loop use when a setting is absent (``settings.get(key, default)``).
CLASS_DEFAULTS = {"binWidth": 25, "binCount": None, "kernelRadius": 1, "maskedKernel": True, "initValue": 0,
                  "voxelBatch": -1, "voxelArrayShift": 0, "symmetricalGLCM": True, "weightingNorm": None}


@dataclass
class Plan:
    """What the parameters ask for: the merged settings and, per feature class in pyradiomics' order, the feature
    names to compute (in pyradiomics' order)."""

    settings: dict
    classes: "OrderedDict[str, list[str]]"
    raw: dict = field(default_factory=dict)

    @property
    def engine_classes(self) -> list[str]:
        return [c for c in self.classes if c in ENGINE_CLASSES]

    @property
    def other_classes(self) -> list[str]:
        return [c for c in self.classes if c not in ENGINE_CLASSES and not c.startswith("shape")]

    def params_for(self, classes) -> dict:
        """A pyradiomics parameter dict with only ``classes`` enabled (the others computed elsewhere)."""
        params = {key: value for key, value in self.raw.items() if key != "featureClass"}
        params["featureClass"] = {c: (self.raw.get("featureClass") or {}).get(c) for c in classes}
        return params


def _load_params(source) -> dict:
    if source is None:
        return {}
    if isinstance(source, dict):
        return source
    path = str(source)
    if not path.lower().endswith((".yaml", ".yml", ".json")):
        raise Unsupported(f"parameter file type of {path}")
    try:
        if path.lower().endswith(".json"):
            import json

            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        from ruamel.yaml import YAML  # what pyradiomics' validator (pykwalify) reads YAML with

        with open(path, encoding="utf-8") as handle:
            return YAML(typ="safe", pure=True).load(handle)
    except Exception as exc:  # let pyradiomics report the problem
        raise Unsupported(f"unreadable parameter file {path}: {exc}") from None


def plan(params=None, preset: str | None = None) -> Plan:
    """Resolve the parameters the way pyradiomics does, or raise :class:`Unsupported` (anything we do not fully
    understand, including invalid input: pyradiomics then reports it)."""
    from radiomics import getFeatureClasses
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from rtrai.radiomics.extract import _radiomics, params_source

    _radiomics()  # pyradiomics' logging as for every extraction
    raw = _load_params(params_source(params, preset))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - {"imageType", "featureClass", "setting", "voxelSetting"}:
        raise Unsupported("parameter layout")
    image_types = raw.get("imageType") or {"Original": {}}
    if not isinstance(image_types, dict) or list(image_types) != ["Original"] or image_types["Original"]:
        raise Unsupported("image types other than Original without custom settings")
    settings = dict(CLASS_DEFAULTS, **RadiomicsFeatureExtractor._getDefaultSettings())
    for key, checks in (("setting", SETTING_CHECKS), ("voxelSetting", VOXEL_SETTING_CHECKS)):
        section = raw.get(key) or {}
        if not isinstance(section, dict):
            raise Unsupported(f"{key} is not a mapping")
        for name, value in section.items():
            check = checks.get(name)
            if check is None or not check(value):
                raise Unsupported(f"{key} {name}={value!r}")
        settings.update(section)
    feature_classes = getFeatureClasses()
    requested = raw.get("featureClass") or {name: [] for name in feature_classes}
    if not isinstance(requested, dict):
        raise Unsupported("featureClass is not a mapping")
    classes: OrderedDict[str, list[str]] = OrderedDict()
    for name, features in requested.items():
        if name not in feature_classes or not (features is None or isinstance(features, list)):
            raise Unsupported(f"feature class {name!r}")
        known = feature_classes[name].getFeatureNames()
        if not features:
            classes[name] = [f for f, deprecated in known.items() if not deprecated]
        else:
            if any(not isinstance(f, str) or f not in known or known[f] for f in features):
                raise Unsupported(f"feature names of {name}: {features}")
            classes[name] = list(dict.fromkeys(features))
    return Plan(settings, classes, raw)


# --------------------------------------------------------------------------------------------------------------------
# Pre-processing: image and mask -> cropped arrays, exactly as RadiomicsFeatureExtractor.execute(voxelBased=True)

_INTEGER_MASKS = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                  sitk.sitkUInt64, sitk.sitkInt64}


@dataclass
class Region:
    image: sitk.Image  # the cropped image: the maps' grid
    array: np.ndarray  # its voxels (z, y, x), pixel type as read
    roi: np.ndarray  # bool, ROI voxels (where maps are computed)
    kernel_mask: np.ndarray  # bool, voxels a kernel may contain (ROI, or everything with maskedKernel False)


def _simple_case(image: sitk.Image, mask: sitk.Image, s: dict) -> bool:
    """Same grid, scalar 3D images, integer mask, no pre-processing: pyradiomics' loading and checks reduce to a
    bounding box (done with numpy; otherwise we call pyradiomics' own functions)."""
    return (image.GetDimension() == 3 and mask.GetDimension() == 3
            and image.GetNumberOfComponentsPerPixel() == 1 and mask.GetPixelID() in _INTEGER_MASKS
            and image.GetSize() == mask.GetSize() and image.GetSpacing() == mask.GetSpacing()
            and image.GetOrigin() == mask.GetOrigin() and image.GetDirection() == mask.GetDirection()
            and not s.get("normalize") and not s.get("preCrop") and s.get("resegmentRange") is None
            and (s.get("resampledPixelSpacing") is None or s.get("interpolator") is None))


def prepare(image: sitk.Image, mask: sitk.Image, label: int, s: dict) -> Region:
    radius = s["kernelRadius"]
    if _simple_case(image, mask, s):
        labels = sitk.GetArrayViewFromImage(mask)
        roi = labels == label
        if np.any(labels < 0):
            raise Unsupported("negative mask values")  # pyradiomics casts them to UInt32
        counts = [np.flatnonzero(roi.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
        if any(c.size == 0 for c in counts):
            raise Unsupported("label absent")  # pyradiomics raises the error
        lo = np.array([c[0] for c in counts])
        hi = np.array([c[-1] for c in counts])
        ndims = int(np.sum(hi - lo + 1 > 1))
        if ndims == 0 or ndims < s["minimumROIDimensions"]:
            raise Unsupported("ROI too small")
        if s["minimumROISize"] is not None and int(np.count_nonzero(roi)) <= s["minimumROISize"]:
            raise Unsupported("ROI too small")
        shape = np.array(labels.shape)
        start = np.maximum(lo - radius, 0)
        stop = np.minimum(hi + radius, shape - 1) + 1
        # pyradiomics crops with CropImageFilter (x, y, z order): reuse it for an identical output geometry
        cropped = sitk.Crop(image, [int(v) for v in start[::-1]], [int(v) for v in (shape - stop)[::-1]])
        roi = roi[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    else:
        from radiomics import imageoperations
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        settings = dict(s, label=label, voxelBased=True)
        try:
            image, mask = RadiomicsFeatureExtractor.loadImage(image, mask, None, **settings)
            box, corrected = imageoperations.checkMask(image, mask, **settings)
            if corrected is not None:
                mask = corrected
            if settings.get("resegmentRange") is not None:
                mask = imageoperations.resegmentMask(image, mask, **settings)
                box, _ = imageoperations.checkMask(image, mask, **settings)
            cropped, cropped_mask = imageoperations.cropToTumorMask(image, mask, box, padDistance=radius)
        except Exception as exc:  # pyradiomics' own path reports it
            raise Unsupported(f"pre-processing: {exc}") from None
        if cropped.GetDimension() != 3 or cropped.GetNumberOfComponentsPerPixel() != 1:
            raise Unsupported("not a scalar 3D image")
        roi = sitk.GetArrayFromImage(cropped_mask) == label
    array = sitk.GetArrayFromImage(cropped)
    if array.dtype.kind == "c" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
        raise Unsupported("non-finite image values")
    kernel_mask = roi if s["maskedKernel"] else np.ones(roi.shape, bool)
    return Region(cropped, array, roi, kernel_mask)


# --------------------------------------------------------------------------------------------------------------------
# Helpers


_IOTA = np.arange(1 << 16)
_IOTA.flags.writeable = False


def _iota(n: int) -> np.ndarray:
    """``np.arange(n)`` as a read-only view of a cached array (it is needed dozens of times per chunk)."""
    global _IOTA
    if _IOTA.size < n:
        _IOTA = np.arange(max(n, 2 * _IOTA.size))
        _IOTA.flags.writeable = False
    return _IOTA[:n]


class _Groups:
    """Sums (and maxima) of entries per group, adding each group's entries one after the other in the order given.

    ``gid`` must be sorted (a group's entries contiguous, in the order pyradiomics' reduction meets them). The result
    is ``acc = acc + value`` entry after entry, the sequential sum numpy computes when it reduces pyradiomics' dense
    arrays. Step r adds the r-th entry of every group at once, from a zero-padded (longest, groups) table filled in
    the entries' order (cache-friendly; used when padding costs little), or else from the entries permuted once so
    that, groups kept longest first, each step is a contiguous slice.
    """

    def __init__(self, gid: np.ndarray, n_groups: int):
        self.n = n_groups
        counts = np.bincount(gid, minlength=n_groups)
        self.longest = int(counts.max()) if gid.size else 0
        rank = _iota(gid.size) - np.repeat(np.cumsum(counts) - counts, counts)
        self.padded = n_groups * self.longest <= 3 * gid.size + 4096
        if self.padded:
            self.cells = rank * n_groups + gid  # flat index in the (longest, groups) table
            return
        by_length = np.argsort(-counts, kind="stable")
        self.active = by_length[:np.count_nonzero(counts)]
        histogram = np.bincount(counts[self.active], minlength=self.longest + 1)
        widths = np.cumsum(histogram[::-1])[::-1][1:]  # groups with more than r entries, r = 0 .. longest-1
        offsets = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.intp)
        position = np.empty(n_groups, np.intp)
        position[self.active] = _iota(self.active.size)
        self.take = np.empty(gid.size, np.intp)
        self.take[offsets[rank] + position[gid]] = _iota(gid.size)
        self.blocks = [(int(o), int(w)) for o, w in zip(offsets, widths)]

    def _reduce(self, values: np.ndarray, ufunc, pad: float) -> np.ndarray:
        out = np.full(values.shape[:-1] + (self.n,), 0.0)
        if not self.longest:
            return out
        if self.padded:
            rows = values.reshape(-1, values.shape[-1])
            table = np.full((rows.shape[0], self.longest, self.n), pad)
            for row, table_row in zip(rows, table):
                table_row.reshape(-1)[self.cells] = row
            acc = table[:, 0].copy()
            for r in range(1, self.longest):
                ufunc(acc, table[:, r], out=acc)
            return acc.reshape(values.shape[:-1] + (self.n,))
        ordered = values[..., self.take]
        acc = ordered[..., :self.active.size].copy()
        for offset, width in self.blocks[1:]:
            ufunc(acc[..., :width], ordered[..., offset:offset + width], out=acc[..., :width])
        out[..., self.active] = acc
        return out

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums of ``values`` (entries on the last axis: (n_entries,) or (n_terms, n_entries)); 0 for an
        empty group."""
        return self._reduce(values, np.add, 0.0)

    def max(self, values: np.ndarray) -> np.ndarray:
        """Per-group maxima of positive ``values`` (0 for an empty group)."""
        return self._reduce(values, np.maximum, 0.0)


def _runs(keys: np.ndarray):
    """Start index of each run of equal values in a sorted array, and the run lengths."""
    if keys.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return starts, np.diff(np.append(starts, keys.size))


def _pad(array: np.ndarray, radius: int, value):
    return np.pad(array, radius, mode="constant", constant_values=value)


def _flat_offsets(offsets: np.ndarray, shape) -> np.ndarray:
    """(Nd, K) offsets -> offsets in the flattened (C order) array of ``shape``."""
    strides = np.array([int(np.prod(shape[d + 1:])) for d in range(len(shape))])
    return (strides[:, None] * offsets).sum(0)


def _chunks(count: int, per_voxel: int):
    size = max(16, CHUNK_ENTRIES // max(per_voxel, 1))
    return [(b, min(b + size, count)) for b in range(0, count, size)]


# --------------------------------------------------------------------------------------------------------------------
# First order (radiomics.firstorder.RadiomicsFirstOrder in voxel mode)


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


def _firstorder(region: Region, names: list[str], s: dict, coords: np.ndarray) -> dict[str, np.ndarray]:
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
    padded = _pad(values, radius, np.nan)
    binned, _ = imageoperations.binImage(region.array.astype("float"), kernel_mask, **s)
    levels = np.unique(binned[kernel_mask])
    level_index = np.full(binned.shape, -1, np.int64)
    level_index[kernel_mask] = np.searchsorted(levels, binned[kernel_mask])
    level_index = _pad(level_index, radius, -1).ravel()
    flat = padded.ravel()
    kernel = _flat_offsets(offsets, padded.shape)
    centres = np.ravel_multi_index(tuple(coords + radius), padded.shape)
    spacing_volume = np.multiply.reduce(region.image.GetSpacing())
    shift = s["voxelArrayShift"]
    out = {name: np.empty(coords.shape[1]) for name in names}
    n_levels = levels.size
    for b0, b1 in _chunks(coords.shape[1], kernel.size):
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


# --------------------------------------------------------------------------------------------------------------------
# GLCM (radiomics.glcm.RadiomicsGLCM in voxel mode)


def _memory_order(array: np.ndarray) -> list[int]:
    """Axes of length > 1 from the outermost (largest stride) to the innermost."""
    axes = [a for a in range(array.ndim) if array.shape[a] > 1]
    return sorted(axes, key=lambda a: -abs(array.strides[a]))


@functools.lru_cache(maxsize=None)
def _layouts(levels_kept: int, levels_empty: int, angles_kept: int, angles_empty: int, symmetric: bool) -> dict:
    """How numpy lays out and reduces pyradiomics' dense GLCM arrays.

    ``numpy.delete`` (fancy indexing) and broadcasting leave pyradiomics' arrays in memory orders that depend on how
    many grey levels and angles were deleted (none, one, several), and numpy adds an array's elements in memory order.
    So we run pyradiomics' own expressions on a two-voxel stand-in with the same deletion pattern and read, for every
    array summed over (i, j), whether the sum runs row-major (i outer), and for every per-angle array averaged over
    the angles, whether voxels or angles are outer in memory. Returns {"row": {term: bool}, "fortran": {feature:
    bool}, "P": pyradiomics' memory order of P's axes, "sparse": bool}; ``sparse`` is False when numpy would sum
    pairwise over grey levels (a reduced axis innermost): our sequential sums cannot follow, pyradiomics' own feature
    code then runs on dense matrices of the same layout (``_dense_features``).
    """
    n, ng, na = 2, levels_kept + levels_empty, angles_kept + angles_empty
    P = np.ones((n, ng, ng, na))  # calculate_glcm's C-contiguous output
    empty_levels = np.array(list(range(levels_kept + 1, ng + 1)), dtype=int)
    P = np.delete(P, empty_levels - 1, 1)
    P = np.delete(P, empty_levels - 1, 2)
    if symmetric:
        P += np.transpose(P, (0, 2, 1, 3)).copy()
    sumP = np.sum(P, (1, 2))
    if P.shape[3] > 1:
        empty_angles = np.where(np.arange(na) >= angles_kept)
        if len(empty_angles[0]) > 0:
            P = np.delete(P, empty_angles, 3)
            sumP = np.delete(sumP, empty_angles, 1)
    P /= sumP[:, None, None, :]
    Ng = levels_kept
    grey = np.arange(1, Ng + 1, dtype="float")
    i, j = np.meshgrid(grey, grey, indexing="ij", sparse=True)
    px, py = P.sum(2, keepdims=True), P.sum(1, keepdims=True)
    ux = np.sum(i[None, :, :, None] * P, (1, 2), keepdims=True)
    uy = np.sum(j[None, :, :, None] * P, (1, 2), keepdims=True)
    summed = {  # arrays pyradiomics sums over axes (1, 2)
        "ux": i[None, :, :, None] * P, "uy": j[None, :, :, None] * P, "ac": P * (i * j)[None, :, :, None],
        "cp": P * (((i + j)[None, :, :, None] - ux - uy) ** 4), "cs": P * (((i + j)[None, :, :, None] - ux - uy) ** 3),
        "ct": P * (((i + j)[None, :, :, None] - ux - uy) ** 2), "cont": P * ((np.abs(i - j))[None, :, :, None] ** 2),
        "sx": P * ((i[None, :, :, None] - ux) ** 2), "sy": P * ((j[None, :, :, None] - uy) ** 2),
        "corm": P * (i[None, :, :, None] - ux) * (j[None, :, :, None] - uy), "hxy": P * np.log2(P + EPS),
        "ene": P ** 2, "hxy1": P * np.log2(px * py + EPS), "hxy2": (px * py) * np.log2(px * py + EPS),
    }
    row, sparse = {}, angles_kept >= 2  # with 0 or 1 angle left numpy reduces other shapes: dense path
    for term, array in summed.items():
        order = _memory_order(array)
        sparse = sparse and not (order and order[-1] in (1, 2))
        row[term] = order.index(1) < order.index(2) if 1 in order and 2 in order else True
    singles = [(P, 2), (P, 1), (px * np.log2(px + EPS), 1), (py * np.log2(py + EPS), 2)]
    singles += [(P[:, np.abs(i - j) == k, :], 1) for k in (0, 1)] + [(P[:, i + j == k, :], 1) for k in (2, 3)]
    for array, axis in singles:
        order = _memory_order(array)
        sparse = sparse and not (order and order[-1] == axis)
    HXY = (-1) * np.sum(summed["hxy"], (1, 2))
    HX = (-1) * np.sum((px * np.log2(px + EPS)), (1, 2))
    HY = (-1) * np.sum((py * np.log2(py + EPS)), (1, 2))
    HXY1 = (-1) * np.sum(summed["hxy1"], (1, 2))
    HXY2 = (-1) * np.sum(summed["hxy2"], (1, 2))
    sigx = np.sum(summed["sx"], (1, 2), keepdims=True) ** 0.5
    sigy = np.sum(summed["sy"], (1, 2), keepdims=True) ** 0.5
    corm = np.sum(summed["corm"], (1, 2), keepdims=True)
    finals = {name: np.sum(summed[term], (1, 2)) for name, term in (
        ("Autocorrelation", "ac"), ("ClusterProminence", "cp"), ("ClusterShade", "cs"), ("ClusterTendency", "ct"),
        ("Contrast", "cont"), ("JointEnergy", "ene"), ("SumSquares", "sx"))}
    finals.update(JointAverage=ux, Correlation=corm / (sigx * sigy + EPS),
                  JointEntropy=HXY, MaximumProbability=np.amax(P, (1, 2)), Imc1=HXY - HXY1,
                  Imc2=(1 - np.e ** (-2 * (HXY2 - HXY))) ** 0.5, Imc1_div=np.fmax(HX, HY))
    Q = ((P[:, :, None, 0, :] * P[:, None, :, 0, :]) / (px[:, :, None, 0, :] * py[:, None, :, 0, :] + EPS))
    for gl in range(1, P.shape[1]):
        Q += ((P[:, :, None, gl, :] * P[:, None, :, gl, :]) / (px[:, :, None, 0, :] * py[:, None, :, gl, :] + EPS))
    eigen = np.linalg.eigvals(Q.transpose((0, 3, 1, 2)))  # its output follows Q's layout
    eigen.sort()
    finals["MCC"] = np.sqrt(eigen[:, :, -1])
    pxSuby = np.array([np.sum(P[:, np.abs(i - j) == k, :], 1) for k in np.arange(0, Ng, dtype="float")])
    pxSuby = pxSuby.transpose((1, 0, 2))
    finals["Difference"] = np.sum((np.arange(0, Ng, dtype="float")[None, :, None] * pxSuby), 1)
    fortran = {}
    for name, array in finals.items():
        axis = 3 if array.ndim == 4 else 1
        strides = abs(array.strides[0]), abs(array.strides[axis])
        fortran[name] = array.shape[0] > 1 and array.shape[axis] > 1 and strides[0] < strides[1]
    return {"row": row, "fortran": fortran, "P": tuple(np.argsort([-abs(s) for s in P.strides], kind="stable")),
            "sparse": sparse}


class _Kernel:
    """Co-occurring voxel pairs of each angle inside a kernel: offsets o (from the kernel centre) with o and o + angle
    both inside the kernel box (pyradiomics' set_bb + calculate_glcm)."""

    def __init__(self, angles: np.ndarray, radius: int, s: dict, padded_shape):
        extent = np.full(3, radius)
        if s["force2D"]:
            extent[s["force2Ddimension"]] = 0
        grid = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in extent], indexing="ij")).reshape(3, -1)
        self.pairs = []
        for angle in angles:
            inside = np.all(np.abs(grid + angle[:, None]) <= extent[:, None], axis=0)
            self.pairs.append((_flat_offsets(grid[:, inside], padded_shape),
                               int(_flat_offsets(angle[:, None], padded_shape)[0])))
        self.per_voxel = max(1, sum(o.size for o, _ in self.pairs))


def _has_pairs(kernel: _Kernel, mask: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(voxel, angle) -> does the kernel hold at least one co-occurring pair along that angle."""
    found = np.zeros((centres.size, len(kernel.pairs)), bool)
    for b0, b1 in _chunks(centres.size, kernel.per_voxel):
        for a, (offsets, step) in enumerate(kernel.pairs):
            if offsets.size:
                first = centres[b0:b1, None] + offsets[None, :]
                found[b0:b1, a] = np.any(mask[first] & mask[first + step], axis=1)
    return found


def _glcm_batch(names, levels, n_max, kernel, angle_index, gray, mask, centres, layout, mcc_ok, s):
    """Feature values of the voxels ``centres`` over the kept angles ``angle_index`` (None: the feature failed)."""
    n, n_angles, n_levels = centres.size, len(angle_index), levels.size
    segments = n * n_angles
    per_level = n_levels * n_levels
    keys = []
    for column, a in enumerate(angle_index):
        offsets, step = kernel.pairs[a]
        if not offsets.size:
            continue
        first = centres[:, None] + offsets[None, :]
        second = first + step
        rows, cols = np.nonzero(mask[first] & mask[second])
        gi, gj = gray[first[rows, cols]], gray[second[rows, cols]]
        segment = (rows * n_angles + column) * per_level
        keys.append(segment + gi * n_levels + gj)
        if s["symmetricalGLCM"]:
            keys.append(segment + gj * n_levels + gi)
    # non-zero matrix entries, sorted by (voxel, angle) segment, then row-major (i, j)
    keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    starts, counts = _runs(keys)
    unique = keys[starts]
    seg = unique // per_level
    ci = (unique % per_level) // n_levels
    cj = unique % n_levels
    count = counts.astype(np.float64)
    total = np.bincount(seg, weights=count, minlength=segments)  # integers: exact
    empty = total == 0
    p = count / total[seg]
    if not layout["sparse"]:
        return _dense_features(names, seg, ci, cj, p, empty, n, n_angles, levels, n_max, layout, mcc_ok, s)
    iv, jv = levels[ci], levels[cj]
    need = set(names)
    row, fortran = layout["row"], layout["fortran"]
    by_segment = _Groups(seg, segments)
    column_order = []

    def col_perm():
        if not column_order:
            # (segment, j, i): column-major within each segment
            column_order.append(np.argsort((seg * n_levels + cj) * n_levels + ci))
        return column_order[0]

    def seg_sums(terms: dict) -> dict:
        """Per-segment sums of each term, in the order numpy meets pyradiomics' dense array of that term."""
        out = {}
        for major in (True, False):
            labels = [label for label in terms if row[label] == major]
            if not labels:
                continue
            stack = np.stack([terms[label] for label in labels])
            sums = by_segment.sum(stack if major else stack[:, col_perm()])
            for k, label in enumerate(labels):
                values = sums[k].copy()
                values[empty] = np.nan  # pyradiomics: 0 / 0 for an empty angle of this voxel
                out[label] = values
        return out

    def finish(values):
        values = np.asarray(values, dtype=np.float64).copy()
        values[empty] = np.nan
        return values

    def per_angle(values, name):
        array = values.reshape(n, n_angles)
        return np.asfortranarray(array) if fortran.get(name) else np.ascontiguousarray(array)

    def nanmean(values, name):
        return np.nanmean(per_angle(values, name), 1)

    sums = seg_sums({"ux": iv * p, "uy": jv * p})
    ux, uy = sums["ux"], sums["uy"]
    uxe, uye = ux[seg], uy[seg]
    terms = {}
    if "Autocorrelation" in need:
        terms["ac"] = p * (iv * jv)
    if "ClusterProminence" in need:
        terms["cp"] = p * ((((iv + jv) - uxe) - uye) ** 4)
    if "ClusterShade" in need:
        terms["cs"] = p * ((((iv + jv) - uxe) - uye) ** 3)
    if "ClusterTendency" in need:
        terms["ct"] = p * ((((iv + jv) - uxe) - uye) ** 2)
    if "Contrast" in need:
        terms["cont"] = p * (np.abs(iv - jv) ** 2)
    if need & {"Correlation", "SumSquares"}:
        terms["sx"] = p * ((iv - uxe) ** 2)
    if "Correlation" in need:
        terms["sy"] = p * ((jv - uye) ** 2)
        terms["corm"] = p * (iv - uxe) * (jv - uye)
    if need & {"JointEntropy", "Imc1", "Imc2"}:
        terms["hxy"] = p * np.log2(p + EPS)
    if "JointEnergy" in need:
        terms["ene"] = p ** 2
    marginals = None
    if need & {"Imc1", "Imc2"} or (mcc_ok and "MCC" in need):
        # px(i): sum over j of P(i, j) (entries of a (segment, i) are contiguous, in j order); py(j) likewise in i order
        row_key = seg * n_levels + ci
        row_starts, _ = _runs(row_key)
        px_values = _Groups(np.repeat(_iota(row_starts.size), np.diff(np.append(row_starts, seg.size))),
                            row_starts.size).sum(p)
        order = col_perm()
        col_key = (seg * n_levels + cj)[order]
        col_starts, _ = _runs(col_key)
        py_values = _Groups(np.repeat(_iota(col_starts.size), np.diff(np.append(col_starts, seg.size))),
                            col_starts.size).sum(p[order])
        px_key, py_key = row_key[row_starts], col_key[col_starts]
        px_at = px_values[np.searchsorted(px_key, seg * n_levels + ci)]
        py_at = py_values[np.searchsorted(py_key, seg * n_levels + cj)]
        if "Imc1" in need:
            terms["hxy1"] = p * np.log2(px_at * py_at + EPS)
        marginals = (px_values, px_key // n_levels, py_values, py_key // n_levels)
    sums.update(seg_sums(terms))
    out = {}
    if "Autocorrelation" in need:
        out["Autocorrelation"] = nanmean(sums["ac"], "Autocorrelation")
    if "JointAverage" in need:
        out["JointAverage"] = per_angle(ux, "JointAverage").mean(1)
    for name, label in (("ClusterProminence", "cp"), ("ClusterShade", "cs"), ("ClusterTendency", "ct"),
                        ("Contrast", "cont"), ("JointEnergy", "ene"), ("SumSquares", "sx")):
        if name in need:
            out[name] = nanmean(sums[label], name)
    if "JointEntropy" in need:
        out["JointEntropy"] = nanmean((-1) * sums["hxy"], "JointEntropy")
    if "Correlation" in need:
        sigx, sigy = sums["sx"] ** 0.5, sums["sy"] ** 0.5
        corr = sums["corm"] / (sigx * sigy + EPS)
        corr[sigx * sigy == 0] = 1
        out["Correlation"] = nanmean(corr, "Correlation")
    if "MaximumProbability" in need:
        out["MaximumProbability"] = nanmean(finish(by_segment.max(p)), "MaximumProbability")
    if need & {"DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm", "Idmn", "Idn",
               "InverseVariance"}:
        # p_{x-y}(k): the entries of (segment, k = |i - j|) in row-major order; then over k, ascending
        kd = np.abs(iv - jv).astype(np.int64)
        order = np.argsort(seg * (n_max + 1) + kd, kind="stable")
        diff_key = (seg * (n_max + 1) + kd)[order]
        d_starts, d_counts = _runs(diff_key)
        pxs = _Groups(np.repeat(_iota(d_starts.size), d_counts), d_starts.size).sum(p[order])
        d_seg = seg[order][d_starts]
        k = kd[order][d_starts].astype(np.float64)
        per_seg = _Groups(d_seg, segments)
        diffavg = finish(per_seg.sum(k * pxs))
        stack = np.stack([pxs * np.log2(pxs + EPS), pxs * ((k - diffavg[d_seg]) ** 2), pxs / (1 + (k ** 2)),
                          pxs / (1 + ((k ** 2) / (n_max ** 2))), pxs / (1 + k), pxs / (1 + (k / n_max))])
        sums_k = per_seg.sum(stack)
        difent, diffvar, idm, idmn, id_, idn = (finish(sums_k[c]) for c in range(6))
        difent = (-1) * difent
        nonzero_k = k >= 1
        inv = _Groups(d_seg[nonzero_k], segments).sum(pxs[nonzero_k] / k[nonzero_k] ** 2)
        if n_levels > 1:  # one grey level: no (i, j) with |i - j| >= 1, pyradiomics sums nothing: 0, never NaN
            inv = finish(inv)
        for name, array in (("DifferenceAverage", diffavg), ("DifferenceEntropy", difent),
                            ("DifferenceVariance", diffvar), ("Id", id_), ("Idm", idm), ("Idmn", idmn),
                            ("Idn", idn), ("InverseVariance", inv)):
            if name in need:
                out[name] = nanmean(array, "Difference")
    if need & {"SumAverage", "SumEntropy"}:
        ks = (iv + jv).astype(np.int64)
        order = np.argsort(seg * (2 * n_max + 1) + ks, kind="stable")
        sum_key = (seg * (2 * n_max + 1) + ks)[order]
        s_starts, s_counts = _runs(sum_key)
        pxa = _Groups(np.repeat(_iota(s_starts.size), s_counts), s_starts.size).sum(p[order])
        s_seg = seg[order][s_starts]
        k = ks[order][s_starts].astype(np.float64)
        sums_k = _Groups(s_seg, segments).sum(np.stack([k * pxa, pxa * np.log2(pxa + EPS)]))
        if "SumAverage" in need:
            out["SumAverage"] = nanmean(finish(sums_k[0]), "Difference")
        if "SumEntropy" in need:
            out["SumEntropy"] = nanmean((-1) * finish(sums_k[1]), "Difference")
    if marginals is not None and need & {"Imc1", "Imc2"}:
        px_values, px_seg, py_values, py_seg = marginals
        hx = (-1) * finish(_Groups(px_seg, segments).sum(px_values * np.log2(px_values + EPS)))
        hy = (-1) * finish(_Groups(py_seg, segments).sum(py_values * np.log2(py_values + EPS)))
        hxy = (-1) * sums["hxy"]
        if "Imc1" in need:
            hxy1 = (-1) * sums["hxy1"]
            div = np.fmax(hx, hy)
            imc1 = hxy - hxy1
            imc1[div != 0] /= div[div != 0]
            imc1[div == 0] = 0
            out["Imc1"] = nanmean(imc1, "Imc1")
        if "Imc2" in need:
            # every (i, j) with px(i) > 0 and py(j) > 0 of a segment, row- or column-major as numpy adds them
            outer_seg, inner_seg = (px_seg, py_seg) if row["hxy2"] else (py_seg, px_seg)
            inner_count = np.bincount(inner_seg, minlength=segments)
            inner_start = np.cumsum(inner_count) - inner_count
            reps = inner_count[outer_seg]
            outer_of = np.repeat(_iota(outer_seg.size), reps)
            within = _iota(outer_of.size) - np.repeat(np.cumsum(reps) - reps, reps)
            inner_of = inner_start[outer_seg[outer_of]] + within
            product = (px_values[outer_of] * py_values[inner_of] if row["hxy2"]
                       else px_values[inner_of] * py_values[outer_of])
            hxy2 = (-1) * finish(_Groups(outer_seg[outer_of], segments).sum(product * np.log2(product + EPS)))
            imc2 = (1 - np.e ** (-2 * (hxy2 - hxy))) ** 0.5
            imc2[hxy2 == hxy] = 0
            out["Imc2"] = nanmean(imc2, "Imc2")
    if "MCC" in need:
        out["MCC"] = _mcc_q(seg, ci, cj, p, px_at, py_at, col_perm(), n, n_angles, n_levels) if mcc_ok else None
    return out


def _mcc_q(seg, ci, cj, p, px_at, py_at, column_order, n, n_angles, n_levels):
    """pyradiomics' MCC matrices Q(i, j) = sum over k of p(i, k) p(j, k) / (px(i) py(k) + eps), added k after k (its
    loop), from the non-zero terms only; returned as _MCC's eigenvalues. Only reached when no kernel has an empty
    angle (otherwise pyradiomics' eigvals meets a NaN and the feature fails)."""
    # entries by (segment, k = j, i): the non-zero rows of each column k
    seg_k, k_level, rows, values, px_rows, py_k = (a[column_order] for a in (seg, cj, ci, p, px_at, py_at))
    column_key = seg_k * n_levels + k_level
    starts, counts = _runs(column_key)
    # every (i1, i2) pair of rows within a column, in (segment, k, i1, i2) order
    reps = np.repeat(counts, counts)
    first = np.repeat(_iota(seg_k.size), reps)
    column_start = np.repeat(starts, counts * counts)
    within = _iota(first.size) - np.repeat(np.cumsum(reps) - reps, reps)
    second = column_start + within
    term = (values[first] * values[second]) / (px_rows[first] * py_k[first] + EPS)
    q_key = (seg_k[first] * n_levels + rows[first]) * n_levels + rows[second]
    order = np.argsort(q_key, kind="stable")  # k order kept within each Q(i, j)
    q_sorted = q_key[order]
    q_starts, q_counts = _runs(q_sorted)
    q = _Groups(np.repeat(_iota(q_starts.size), q_counts), q_starts.size).sum(term[order])
    cell = q_sorted[q_starts]
    segment, i_j = cell // (n_levels * n_levels), cell % (n_levels * n_levels)
    dense = np.zeros((n, n_angles, n_levels, n_levels))  # pyradiomics' Q.transpose((0, 3, 1, 2)), same values
    dense[segment // n_angles, segment % n_angles, i_j // n_levels, i_j % n_levels] = q
    return _MCC.eigen(dense)


class _MCC:
    """pyradiomics' last MCC steps over the whole batch: ``eigvals`` of all voxels' Q matrices at once returns real
    eigenvalues only when all of them are real, and the square root then takes the real or the complex branch. So
    each chunk keeps its second-largest eigenvalues as complex numbers, and the batch decides."""

    @staticmethod
    def eigen(q: np.ndarray):
        """Q stacked as (voxels, angles, Ng, Ng) -> (second-largest eigenvalues (complex), any complex eigenvalue)."""
        eigen = np.linalg.eigvals(q)
        is_complex = np.iscomplexobj(eigen)
        eigen = eigen.astype(complex)  # exact: real eigenvalues are complex ones with a zero imaginary part
        eigen.sort()
        if eigen.shape[2] < 2:
            return np.zeros(eigen.shape[:2], complex), is_complex
        return eigen[:, :, -2], is_complex

    @staticmethod
    def values(parts: list, n_levels: int, fortran: bool) -> np.ndarray:
        second = np.concatenate([s for s, _ in parts])
        if n_levels < 2:
            return np.ones(second.shape[0])  # pyradiomics returns 1 (flat region)
        if not any(c for _, c in parts):
            second = second.real.copy()
        mcc = np.sqrt(np.asfortranarray(second) if fortran else second)  # laid out as pyradiomics' MCC array
        return np.nanmean(mcc, 1).real


def _dense_features(names, seg, ci, cj, p, empty, n, n_angles, levels, n_max, layout, mcc_ok, s):
    """pyradiomics' own GLCM feature code on this chunk's dense matrices, built with pyradiomics' values (NaN for an
    empty angle) and memory layout, so that numpy reduces them exactly as in pyradiomics. Used for MCC (eigenvalues of
    dense matrices anyway) and for the layouts where numpy sums pairwise over grey levels."""
    import logging

    from radiomics.glcm import RadiomicsGLCM

    n_levels = levels.size
    order = layout["P"]
    shape = (n, n_levels, n_levels, n_angles)
    dense = np.zeros([shape[a] for a in order]).transpose(np.argsort(order))
    if n_angles:
        dense[seg // n_angles, ci, cj, seg % n_angles] = p
        gone = np.flatnonzero(empty)
        dense[gone // n_angles, :, :, gone % n_angles] = np.nan
    glcm = RadiomicsGLCM.__new__(RadiomicsGLCM)  # a stand-in holding our matrices: no image, no C extension call
    glcm.logger = logging.getLogger("radiomics.glcm")
    glcm.settings, glcm.symmetricalGLCM, glcm.weightingNorm = dict(s), s["symmetricalGLCM"], None
    glcm.coefficients = {"Ng": n_max, "grayLevels": levels.astype(np.int64)}
    glcm.P_glcm = dense
    glcm._calculateCoefficients()
    out = {}
    for name in names:
        if name == "MCC":
            out[name] = _dense_mcc_q(glcm) if mcc_ok else None
            continue
        try:
            out[name] = np.broadcast_to(getattr(glcm, f"get{name}FeatureValue")(), (n,))
        except Exception:  # noqa: BLE001  pyradiomics then leaves the map at initValue
            out[name] = None
    return out


def _dense_mcc_q(glcm):
    """getMCCFeatureValue's matrices (pyradiomics' code), returned as _MCC's eigenvalues."""
    P, px, py = glcm.P_glcm, glcm.coefficients["px"], glcm.coefficients["py"]
    Q = ((P[:, :, None, 0, :] * P[:, None, :, 0, :]) / (px[:, :, None, 0, :] * py[:, None, :, 0, :] + EPS))
    for gl in range(1, P.shape[1]):
        Q += ((P[:, :, None, gl, :] * P[:, None, :, gl, :]) / (px[:, :, None, 0, :] * py[:, None, :, gl, :] + EPS))
    return _MCC.eigen(Q.transpose((0, 3, 1, 2)))


def _glcm(region: Region, names: list[str], s: dict, coords: np.ndarray) -> dict[str, np.ndarray | None]:
    """Feature values per ROI voxel (None: the feature failed in pyradiomics, map left at initValue)."""
    from radiomics import cMatrices, imageoperations

    radius = s["kernelRadius"]
    kernel_mask = region.kernel_mask
    binned, _ = imageoperations.binImage(region.array, kernel_mask, **s)
    levels_int = np.unique(binned[kernel_mask])
    n_max = int(np.max(levels_int))
    levels = levels_int.astype("float")
    gray = np.full(binned.shape, -1, np.int64)
    gray[kernel_mask] = np.searchsorted(levels_int, binned[kernel_mask])
    gray = _pad(gray, radius, -1).ravel()
    mask = _pad(kernel_mask, radius, False).ravel()
    angles = cMatrices.generate_angles(np.array(region.roi.shape), np.array(s["distances"]), False, s["force2D"],
                                       s["force2Ddimension"])
    padded_shape = tuple(d + 2 * radius for d in region.roi.shape)
    kernel = _Kernel(angles, radius, s, padded_shape)
    centres = np.ravel_multi_index(tuple(coords + radius), padded_shape)
    results = {name: np.empty(centres.size) for name in names}
    failed = set()
    mcc_chunk = max(2, DENSE_CHUNK_ELEMENTS // (levels.size * levels.size * len(angles)))
    n_voxels = centres.size
    found = _has_pairs(kernel, mask, centres)
    # pyradiomics drops the angles without any pair in the whole batch (all ROI voxels here)
    keep = np.flatnonzero(found.any(0)) if len(angles) > 1 else np.arange(len(angles))
    layout = _layouts(min(levels.size, 3), min(n_max - levels.size, 2), min(keep.size, 3),
                      min(len(angles) - keep.size, 2), s["symmetricalGLCM"])
    mcc_ok = "MCC" in names and bool(np.all(found[:, keep]))
    step = max(2, CHUNK_ENTRIES // (2 * kernel.per_voxel))
    if mcc_ok or not layout["sparse"]:
        step = min(step, mcc_chunk)  # dense matrices in this chunk
    bounds = list(range(0, n_voxels, step)) + [n_voxels]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]  # no single-voxel chunk: numpy lays out a one-voxel stack differently
    eigen_parts = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        values = _glcm_batch(names, levels, n_max, kernel, keep, gray, mask, centres[c0:c1], layout, mcc_ok, s)
        for name in names:
            if values[name] is None:
                failed.add(name)
            elif name == "MCC":
                eigen_parts.append(values[name])
            else:
                results[name][c0:c1] = values[name]
    if "MCC" in names and mcc_ok and "MCC" not in failed:
        results["MCC"] = _MCC.values(eigen_parts, levels.size, layout["fortran"]["MCC"])
    elif "MCC" in names:
        failed.add("MCC")  # pyradiomics' eigvals refuses the NaN of an empty angle: the whole batch fails
    for name in failed:
        results[name] = None  # only MCC fails; pyradiomics leaves the whole map at initValue
    return results


# --------------------------------------------------------------------------------------------------------------------


def compute(image: sitk.Image, mask: sitk.Image, label: int, the_plan: Plan) -> "OrderedDict[str, sitk.Image]":
    """Maps of the engine's classes (feature name -> image on pyradiomics' cropped grid)."""
    s = dict(the_plan.settings, label=int(label))
    region = prepare(image, mask, label, s)
    coords = np.array(np.nonzero(region.roi))
    if "glcm" in the_plan.engine_classes and 0 < s["voxelBatch"] < coords.shape[1]:
        # several batches: pyradiomics drops empty angles and fails MCC batch by batch
        raise Unsupported("voxelBatch smaller than the ROI")
    init = s["initValue"]
    maps: OrderedDict[str, sitk.Image] = OrderedDict()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means (empty angles), as in pyradiomics
        for cls in the_plan.engine_classes:
            names = the_plan.classes[cls]
            values = (_firstorder if cls == "firstorder" else _glcm)(region, names, s, coords)
            for name in names:
                array = np.full(region.roi.shape, init, dtype="float")
                if values[name] is not None:
                    array[tuple(coords)] = values[name]
                out = sitk.GetImageFromArray(array)
                out.CopyInformation(region.image)
                maps[f"original_{cls}_{name}"] = out
    return maps


def engine_disabled() -> bool:
    """``RTRAI_VOXEL_ENGINE=pyradiomics`` forces pyradiomics for every class (for comparisons)."""
    return os.environ.get("RTRAI_VOXEL_ENGINE", "").lower() == "pyradiomics"
