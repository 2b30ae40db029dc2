"""Voxel-wise feature maps: our own engine for firstorder and GLCM, pyradiomics' voxel mode for everything else.

``firstorder`` and ``glcm`` of the original image go through our engine (vectorised over voxels, same values as
pyradiomics' voxel mode, bit for bit): :mod:`.voxel_plan` (which settings it covers, pre-processing, chunks),
:mod:`.voxel_firstorder`, :mod:`.voxel_glcm`, and :mod:`.voxel_numpy_order` (sums added in the order numpy adds them,
read off pyradiomics' own expressions). Other feature classes, filtered image types and the settings the
engine does not cover run pyradiomics itself, split over processes: each voxel's value in pyradiomics' voxel mode
depends only on its own kernel and on the grey-level discretisation of the whole ROI, never on the other voxels'
results. So we run the same extraction in N processes, each computing an interleaved 1/N of the ROI's voxels (every
N-th voxel, so that costly boundary kernels are shared evenly), and assemble the maps: the values are pyradiomics' own,
bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import SimpleITK as sitk

from rtrai.core.errors import InputError

_PART: dict = {}
_log = logging.getLogger(__name__)


def _restrict_voxels() -> None:
    """Make pyradiomics compute only this worker's share of the ROI voxels (worker processes only)."""
    from radiomics import base

    original = base.RadiomicsFeaturesBase._initVoxelBasedCalculation  # noqa: SLF001 - patched below, on purpose
    if getattr(original, "_rtrai_restricted", False):
        return

    def restricted(self):
        original(self)
        self.labelledVoxelCoordinates = self.labelledVoxelCoordinates[:, _PART["index"]::_PART["count"]]
        _PART["coordinates"] = self.labelledVoxelCoordinates

    restricted._rtrai_restricted = True  # noqa: SLF001 - our own marker
    base.RadiomicsFeaturesBase._initVoxelBasedCalculation = restricted  # noqa: SLF001


def _compute(image, mask, label, params, preset, index: int, count: int):
    """Maps of one share (feature name -> (array, geometry)) and the (z, y, x) coordinates this share computed."""
    from rtrai.radiomics.extract import make_extractor

    if count > 1:
        _PART.update(index=index, count=count)
        _restrict_voxels()
    extractor = make_extractor(params, preset)
    try:
        result = extractor.execute(image, mask, label=label, voxelBased=True)
    except ValueError as exc:
        raise InputError(f"pyradiomics refused the voxel-wise extraction: {exc}") from None
    maps = {}
    for name, value in result.items():
        if isinstance(value, sitk.Image):
            maps[name] = (sitk.GetArrayFromImage(value), value.GetSpacing(), value.GetOrigin(), value.GetDirection())
    return maps, _PART.get("coordinates")


def _compute_share(args):
    return _compute(*args)


def voxel_maps(image: sitk.Image, mask: sitk.Image, label: int = 1, params=None, preset: str | None = None,
               jobs: int = 1, progress=None) -> dict[str, sitk.Image]:
    """Voxel-mode maps (feature name -> image on the ROI's bounding box grid, padded by the kernel radius, as
    pyradiomics returns them): firstorder and GLCM by our engine when it covers the parameters, the rest by
    pyradiomics in ``jobs`` processes."""
    from rtrai.core.progress import silent
    from rtrai.radiomics import voxel_plan

    report = progress or silent
    jobs = max(1, int(jobs))
    plan = None
    if not engine_disabled():
        try:
            plan = voxel_plan.plan(params, preset)
        except voxel_plan.Unsupported as exc:
            _log.debug("voxel engine not used: %s", exc)
    if plan is None or not plan.engine_classes:
        return _pyradiomics_maps(image, mask, label, params, preset, jobs, report)
    report(0.0, f"voxel-wise {' + '.join(plan.engine_classes)} (rtrai engine)")
    try:
        ours = compute(image, mask, label, plan)
    except voxel_plan.Unsupported as exc:
        _log.debug("voxel engine not used: %s", exc)
        return _pyradiomics_maps(image, mask, label, params, preset, jobs, report)
    except Exception as exc:  # noqa: BLE001  every input must still work: pyradiomics computes it
        _log.warning("voxel engine failed (%s: %s); using pyradiomics' voxel mode", type(exc).__name__, exc)
        return _pyradiomics_maps(image, mask, label, params, preset, jobs, report)
    others = plan.other_classes
    theirs = _pyradiomics_maps(image, mask, label, plan.params_for(others), None, jobs, report) if others else {}
    maps = {}
    for cls in plan.classes:  # pyradiomics' order: feature class by feature class
        source = ours if cls in plan.engine_classes else theirs
        maps.update((name, value) for name, value in source.items() if name.startswith(f"original_{cls}_"))
    report(1.0, f"{len(maps)} maps")
    return maps


def _pyradiomics_maps(image, mask, label, params, preset, jobs, report) -> dict[str, sitk.Image]:
    """pyradiomics' voxel-mode maps computed by ``jobs`` processes."""
    report(0.0, f"voxel-wise features (pyradiomics) with {jobs} process(es)")
    if jobs == 1:
        shares = [_compute(image, mask, label, params, preset, 0, 1)]
    else:
        from rtrai.core.workers import process_pool

        # Maps come back as arrays + geometry: plain data, cheap to send between processes. Workers exit with us.
        with process_pool(jobs, "fork" if os.name == "posix" else "spawn") as pool:
            shares = []
            for i, share in enumerate(pool.map(_compute_share, [(image, mask, label, params, preset, i, jobs)
                                                                for i in range(jobs)])):
                shares.append(share)
                report((i + 1) / jobs, f"share {i + 1}/{jobs}")
    maps = {}
    for name, (array, spacing, origin, direction) in shares[0][0].items():
        merged = array.copy()
        for share, coordinates in shares[1:]:
            voxels = tuple(coordinates)
            merged[voxels] = share[name][0][voxels]
        out = sitk.GetImageFromArray(merged)
        out.SetSpacing(spacing)
        out.SetOrigin(origin)
        out.SetDirection(direction)
        maps[name] = out
    report(1.0, f"{len(maps)} maps")
    return maps


def write_maps(maps: dict[str, sitk.Image], folder: str | os.PathLike) -> list[Path]:
    from rtrai.io.images import write_image

    folder = Path(folder)
    return [write_image(image, folder / f"{name}.nrrd") for name, image in maps.items()]


def compute(image: sitk.Image, mask: sitk.Image, label: int, the_plan) -> OrderedDict[str, sitk.Image]:
    """Maps of the engine's classes (feature name -> image on pyradiomics' cropped grid) under ``the_plan``
    (:func:`rtrai.radiomics.voxel_plan.plan`)."""
    import warnings

    import numpy as np

    from rtrai.radiomics.voxel_firstorder import firstorder_maps
    from rtrai.radiomics.voxel_glcm import glcm_maps
    from rtrai.radiomics.voxel_plan import Unsupported, prepare

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
            values = (firstorder_maps if cls == "firstorder" else glcm_maps)(region, names, s, coords)
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
