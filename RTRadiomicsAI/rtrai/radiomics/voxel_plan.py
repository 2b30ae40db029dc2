"""What the voxel-map engine computes: pyradiomics parameters resolved as pyradiomics resolves them (:func:`plan`, or
:class:`Unsupported` for anything the engine does not cover), the pre-processed region (:func:`prepare`, pyradiomics'
own cropping and pre-processing functions), and the voxel chunks both feature classes are computed in.

Covered: ``firstorder`` and ``glcm`` of the Original image. Anything else -- other feature classes, filters (LoG,
wavelet, ...), distance weighting (``weightingNorm``), a process-wide ``geometryTolerance``, several voxel batches
(``voxelBatch`` smaller than the ROI), deprecated or unknown feature names, settings outside pyradiomics' schema --
raises :class:`Unsupported`, and :func:`rtrai.radiomics.voxel_maps.voxel_maps` uses pyradiomics itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

ENGINE_CLASSES = ("firstorder", "glcm")
# Entries (voxel x kernel position, or voxel x co-occurring pair) per chunk: bounds the memory of one chunk to a few
# hundred MB at most, whatever the ROI size.
CHUNK_ENTRIES = 250_000
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
    except Exception as exc:  # noqa: BLE001 - let pyradiomics report the problem
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
    settings = dict(CLASS_DEFAULTS, **RadiomicsFeatureExtractor._getDefaultSettings())  # noqa: SLF001
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
        except Exception as exc:  # noqa: BLE001 - pyradiomics' own path reports it
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
# Kernels and chunks


def pad_constant(array: np.ndarray, radius: int, value):
    return np.pad(array, radius, mode="constant", constant_values=value)


def flat_offsets(offsets: np.ndarray, shape) -> np.ndarray:
    """(Nd, K) offsets -> offsets in the flattened (C order) array of ``shape``."""
    strides = np.array([int(np.prod(shape[d + 1:])) for d in range(len(shape))])
    return (strides[:, None] * offsets).sum(0)


def chunk_bounds(count: int, per_voxel: int):
    size = max(16, CHUNK_ENTRIES // max(per_voxel, 1))
    return [(b, min(b + size, count)) for b in range(0, count, size)]
