"""pyradiomics features of many structures on one image, with the image-wide work done once.

A radiotherapy case has 10-20 structures on one CT and one dose. pyradiomics' ``execute(image, mask)`` redoes, for
every mask, work that belongs to the image or to the whole grid: the SHA-1 of the image (diagnostics), the image's
statistics, a ``LabelStatisticsImageFilter`` over every voxel to find the mask's bounding box, connected components
and a hash of the full-size mask, and every filter (LoG, wavelet, ...) of the image. On a 128^3 OpenKBP grid that is
about 0.4 s per pair against 0.05-0.2 s of feature classes. :func:`extract_structures` runs the same steps in the same
order with pyradiomics' own functions (``normalizeImage``, the ``get<Type>Image`` filters, ``checkMask``,
``resegmentMask``, ``cropToTumorMask``, ``computeShape``, the feature classes), but

- the image's diagnostics, normalisation and filtered images are computed once for all masks;
- each mask's checks and diagnostics run on its bounding box (with index offsets added back), where pyradiomics
  scans the whole grid; the features see the same cropped arrays, so they are the same numbers;
- SHA-1 hashes come from ``hashlib`` over the pixel buffer, which is what ``SimpleITK.Hash`` computes (tested);
- GLCM's MCC, then the costliest feature, is the same expression evaluated faster (:mod:`rtrai.radiomics.glcm_mcc`).

The rows are pyradiomics' per-pair rows, diagnostics included, value for value (MCC to about 1e-15; tested against
``execute``). Where
pyradiomics' own per-pair result depends on the mask beyond its voxels -- resampling (the new grid is anchored at the
mask's bounding box), ``preCrop``, the LBP3D filter (it reads the mask), a process-wide ``geometryTolerance``, vector
masks -- each pair goes through ``execute`` on the already-read image instead.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def shares_image_work(extractor) -> bool:
    """Can the masks of one image share its work under these settings (else: ``execute`` per pair)?"""
    settings = extractor.settings
    resampling = settings.get("interpolator") is not None and settings.get("resampledPixelSpacing") is not None
    return not (resampling or settings.get("preCrop", False) or settings.get("geometryTolerance") is not None
                or "LBP3D" in extractor.enabledImagetypes)


def split_groups(groups: list[list], jobs: int) -> list[list]:
    """``groups`` (lists of items that share an image), the largest halved while there are fewer than ``jobs``, so
    that every worker has work (each half reads its image again)."""
    tasks = [list(g) for g in groups if g]
    while len(tasks) < jobs and max(map(len, tasks), default=0) > 1:
        big = max(range(len(tasks)), key=lambda i: len(tasks[i]))
        group = tasks.pop(big)
        tasks[big:big] = [group[:len(group) // 2], group[len(group) // 2:]]
    return tasks


def extract_structures(extractor, image: sitk.Image, masks: list[tuple[sitk.Image, int]]) -> list:
    """pyradiomics' feature vector of ``image`` in each ``(mask, label)``, in order: an ``OrderedDict`` as
    ``extractor.execute(image, mask, label=label)`` returns it, or the ``ValueError`` it raises for that mask.
    Masks must be on the image's grid."""
    if not masks:
        return []
    if not shares_image_work(extractor):
        return [_execute(extractor, image, mask, label) for mask, label in masks]
    from radiomics import imageoperations

    base = extractor.settings.copy()
    info = bool(base.get("additionalInfo", False))
    image_info = _image_elements(image) if info else OrderedDict()
    work = imageoperations.normalizeImage(image, **base) if base.get("normalize", False) else image
    results, regions = [], []
    for mask, label in masks:
        if "vector" in mask.GetPixelIDTypeAsString().lower():
            results.append(_execute(extractor, image, mask, label))
            regions.append(None)
            continue
        try:
            vector, region = _prepare(extractor, work, mask, int(label), base, image_info, info)
        except ValueError as exc:  # pyradiomics' refusal of this mask: the others go on
            vector, region = exc, None
        results.append(vector)
        regions.append(region)
    if not any(regions):
        return results
    # Texture classes image type by image type (each filtered image made once, held one at a time), mask by mask:
    # every mask's vector gets its columns in pyradiomics' order.
    for image_type, custom in extractor.enabledImagetypes.items():
        args = dict(base, **custom)
        generator = getattr(imageoperations, f"get{image_type}Image")(work, None, **args)
        for derived, type_name, kwargs in generator:
            for i, region in enumerate(regions):
                if region is None:
                    continue
                try:
                    texture_image = _crop(derived, region["offset"], region["size"])
                    texture_mask = region["texture_mask"]
                    if not region["whole"]:  # a resegmented ROI smaller than its mask's box
                        texture_image, texture_mask = imageoperations.cropToTumorMask(
                            texture_image, texture_mask, region["bbox"], padDistance=0)
                    label = custom.get("label", region["label"])
                    results[i].update(compute_features(extractor, texture_image, texture_mask, type_name,
                                                       **dict(kwargs, label=label)))
                except ValueError as exc:
                    results[i], regions[i] = exc, None
    return results


def compute_features(extractor, image, mask, image_type_name: str, **kwargs) -> OrderedDict:
    """pyradiomics' ``extractor.computeFeatures`` (the texture classes of one cropped image), with GLCM's MCC by
    :mod:`rtrai.radiomics.glcm_mcc`."""
    from radiomics import getFeatureClasses

    from rtrai.radiomics import glcm_mcc

    classes = dict(getFeatureClasses())
    if not glcm_mcc.engine_disabled():
        classes["glcm"] = glcm_mcc.glcm_class()
    vector = OrderedDict()
    for class_name, feature_names in extractor.enabledFeatures.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue
        feature_class = classes[class_name](image, mask, **kwargs)
        for feature in feature_names or ():
            feature_class.enableFeatureByName(feature)
        for name, value in feature_class.execute().items():
            vector[f"{image_type_name}_{class_name}_{name}"] = value
    return vector


def _execute(extractor, image, mask, label):
    try:
        return extractor.execute(image, mask, label=label)
    except ValueError as exc:
        return exc


def _prepare(extractor, image, mask, label, base, image_info, info):
    """What ``execute`` does for one mask before the texture classes -- getMask's and checkMask's refusals, the
    diagnostics, resegmentation, shape -- on the mask's bounding box. Returns (vector so far, region)."""
    from radiomics import generalinfo, imageoperations

    settings = dict(base, label=label)
    array = sitk.GetArrayViewFromImage(mask)  # as getMask's UInt32 cast
    array = array.astype(np.uint32) if array.dtype.kind in "iu" else \
        sitk.GetArrayFromImage(sitk.Cast(mask, sitk.sitkUInt32))
    inside = array == label
    if not inside.any():  # getMask's refusals, its words
        labels = np.unique(array)
        if len(labels) == 1 and labels[0] == 0:
            raise ValueError("No labels found in this mask (i.e. nothing is segmented)!")
        raise ValueError(f"Label ({label:g}) not present in mask. Choose from {labels[labels != 0]}")
    low, high = _bounds(inside)  # (z, y, x)
    offset = [int(v) for v in low[::-1]]  # x, y, z
    size = [int(h - lo + 1) for lo, h in zip(low[::-1], high[::-1])]
    crop_image = _crop(image, offset, size)
    crop_mask = _crop(mask, offset, size, array)
    vector = OrderedDict()
    if info:
        general = generalinfo.GeneralInfo()
        general.addGeneralSettings(settings)
        general.addEnabledImageTypes(extractor.enabledImagetypes)
        vector.update(general.getGeneralInfo())
        vector.update(image_info)
        vector.update(_mask_elements(mask, crop_mask, None, label, "original", offset, _sha1_of(array)))
    bbox, corrected = imageoperations.checkMask(crop_image, crop_mask, **settings)
    if corrected is not None:  # cannot happen on one grid; pyradiomics' geometry correction is per pair
        raise ValueError("mask geometry differs from the image")
    texture_mask = crop_mask
    if settings.get("resegmentRange") is not None:
        resegmented = imageoperations.resegmentMask(crop_image, crop_mask, **settings)
        bbox, _ = imageoperations.checkMask(crop_image, resegmented, **settings)
        if info:
            vector.update(_mask_elements(mask, resegmented, crop_image, label, "resegmented", offset, None))
        texture_mask = resegmented
    shape_mask = texture_mask if settings.get("resegmentShape", False) else crop_mask
    vector.update(extractor.computeShape(crop_image, shape_mask, bbox, **settings))
    whole = list(bbox) == [v for n in size for v in (0, n - 1)]  # pyradiomics' crop would take all of it
    return vector, {"offset": offset, "size": size, "bbox": bbox, "texture_mask": texture_mask, "label": label,
                    "whole": whole}


def _bounds(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest index of True along each axis."""
    low, high = [], []
    for axis in range(inside.ndim):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        low.append(hits[0])
        high.append(hits[-1])
    return np.array(low), np.array(high)


def _crop(image: sitk.Image, offset, size, array: np.ndarray | None = None) -> sitk.Image:
    """``sitk.RegionOfInterest(image, size, offset)`` (of ``array``, the image's voxels in another type, if given)
    through numpy: the same voxels and geometry without a multi-threaded filter call, whose thread start-up costs
    more than the copy on a loaded machine."""
    array = sitk.GetArrayViewFromImage(image) if array is None else array
    box = tuple(slice(o, o + n) for o, n in zip(offset[::-1], size[::-1]))
    out = sitk.GetImageFromArray(np.ascontiguousarray(array[box]))
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformIndexToPhysicalPoint(offset))
    return out


def _sha1(image: sitk.Image) -> str:
    """``sitk.Hash(image)`` (SHA-1 of the pixel buffer), 10x faster through hashlib on little-endian machines."""
    if sys.byteorder != "little":
        return sitk.Hash(image)
    return _sha1_of(sitk.GetArrayViewFromImage(image))


def _sha1_of(array: np.ndarray) -> str:
    """SHA-1 of an image's voxels as ``sitk.Hash`` computes it (little-endian machines; else the image is hashed)."""
    if sys.byteorder != "little":
        image = sitk.GetImageFromArray(array)
        return sitk.Hash(image)
    return hashlib.sha1(np.ascontiguousarray(array).data).hexdigest()


def _image_elements(image: sitk.Image) -> OrderedDict:
    """pyradiomics' ``GeneralInfo.addImageElements(image)``: the same expressions, computed once per image."""
    prefix = "diagnostics_Image-original_"
    out = OrderedDict()
    out[prefix + "Hash"] = _sha1(image)
    out[prefix + "Dimensionality"] = f"{image.GetDimension()}D"
    out[prefix + "Spacing"] = image.GetSpacing()
    out[prefix + "Size"] = image.GetSize()
    array = sitk.GetArrayFromImage(image).astype("float")
    out[prefix + "Mean"] = np.mean(array)
    out[prefix + "Minimum"] = np.min(array)
    out[prefix + "Maximum"] = np.max(array)
    return out


def _mask_elements(full_mask, crop_mask, crop_image, label, prefix, offset, sha1) -> OrderedDict:
    """pyradiomics' ``GeneralInfo.addMaskElements`` of the full-size mask, from its bounding-box crop: counts and
    components are those of the crop, indices get the crop's offset back before the same expressions run."""
    name = f"diagnostics_Mask-{prefix}_"
    out = OrderedDict()
    if sha1 is not None:
        out[name + "Hash"] = sha1
    out[name + "Spacing"] = full_mask.GetSpacing()
    out[name + "Size"] = full_mask.GetSize()
    inside = sitk.GetArrayViewFromImage(crop_mask) == label
    coordinates = np.array(np.where(inside)) + np.array(offset[::-1], dtype=np.int64)[:, None]  # full-grid z, y, x
    low, high = coordinates.min(axis=1)[::-1], coordinates.max(axis=1)[::-1]
    out[name + "BoundingBox"] = tuple(int(v) for v in low) + tuple(int(h - lo + 1) for lo, h in zip(low, high))
    out[name + "VoxelNum"] = int(coordinates.shape[1])
    # pyradiomics counts fully connected components of (mask == label) with SimpleITK; scipy's count is the same
    # number, without the thread start-up of a filter call
    out[name + "VolumeNum"] = int(ndimage.label(inside, np.ones((3,) * inside.ndim, bool))[1])
    center_index = tuple(np.mean(coordinates, axis=1)[::-1])
    out[name + "CenterOfMassIndex"] = center_index
    out[name + "CenterOfMass"] = full_mask.TransformContinuousIndexToPhysicalPoint(center_index)
    if crop_image is not None:
        values = sitk.GetArrayViewFromImage(crop_image)[inside].astype("float")
        out[name + "Mean"] = np.mean(values)
        out[name + "Minimum"] = np.min(values)
        out[name + "Maximum"] = np.max(values)
    return out
