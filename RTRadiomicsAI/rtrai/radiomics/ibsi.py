"""IBSI-1 features under the reference configurations, computed with ``mirp`` (an IBSI-1 compliant library).

pyradiomics departs from IBSI in several families (its GLCM/GLRLM aggregation, no intensity-volume histogram,
no local intensity peak, no distance-zone or NGLDM matrices, different discretisation edges), so the IBSI command uses
mirp, which implements all IBSI-1 families and aggregation methods. We drive it with the settings of each IBSI-1
configuration (reference manual v11, arXiv:1612.07003, table "reference configurations") and map its feature names
onto the reference tables' tags (``cm_joint_max_2D_avg`` ...).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import re
from collections import OrderedDict
from decimal import Decimal, InvalidOperation
from pathlib import Path

from rtrai.core.errors import FormatError, InputError, require

CONFIGS = ("digital", "A", "B", "C", "D", "E")
ALL_DIRECTIONAL = ["2d_average", "2d_slice_merge", "2.5d_direction_merge", "2.5d_volume_merge", "3d_average",
                   "3d_volume_merge"]
ALL_ZONE = ["2d", "2.5d", "3d"]
_2D_DIRECTIONAL = ALL_DIRECTIONAL[:4]
_2D_ZONE = ALL_ZONE[:2]


def config_settings(config: str) -> dict:
    """mirp keyword arguments for one IBSI-1 configuration."""
    if config not in CONFIGS:
        raise InputError(f"unknown IBSI configuration '{config}'; use one of {', '.join(CONFIGS)}")
    if config == "digital":  # grey levels are already discrete: no interpolation, no discretisation
        return dict(base_discretisation_method="none", ivh_discretisation_method="none",
                    glcm_spatial_method=ALL_DIRECTIONAL, glrlm_spatial_method=ALL_DIRECTIONAL,
                    glszm_spatial_method=ALL_ZONE, gldzm_spatial_method=ALL_ZONE, ngtdm_spatial_method=ALL_ZONE,
                    ngldm_spatial_method=ALL_ZONE)
    common = dict(image_modality="CT", glcm_spatial_method=None, glrlm_spatial_method=None)
    if config in ("A", "B"):  # 2D: by slice, features aggregated by slice and 2.5D
        common.update(by_slice=True, resegmentation_intensity_range=[-500.0, 400.0],
                      glcm_spatial_method=_2D_DIRECTIONAL, glrlm_spatial_method=_2D_DIRECTIONAL,
                      glszm_spatial_method=_2D_ZONE, gldzm_spatial_method=_2D_ZONE,
                      ngtdm_spatial_method=_2D_ZONE, ngldm_spatial_method=_2D_ZONE)
    else:  # 3D
        common.update(by_slice=False, glcm_spatial_method=["3d_average", "3d_volume_merge"],
                      glrlm_spatial_method=["3d_average", "3d_volume_merge"], glszm_spatial_method="3d",
                      gldzm_spatial_method="3d", ngtdm_spatial_method="3d", ngldm_spatial_method="3d")
    if config == "A":  # no interpolation, fixed bin size 25 HU
        common.update(base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
                      ivh_discretisation_method="none")
    elif config == "B":  # 2x2 mm in-plane bilinear interpolation, 32 bins
        common.update(new_spacing=[2.0, 2.0], spline_order=1, anti_aliasing=False, roi_spline_order=1,
                      roi_interpolation_mask_inclusion_threshold=0.5, base_discretisation_method="fixed_bin_number",
                      base_discretisation_n_bins=32, ivh_discretisation_method="none")
    elif config == "C":  # 2 mm isotropic trilinear, range [-1000, 400], 25 HU bins, IVH 2.5 HU bins
        common.update(new_spacing=2.0, spline_order=1, anti_aliasing=False, roi_spline_order=1,
                      roi_interpolation_mask_inclusion_threshold=0.5, resegmentation_intensity_range=[-1000.0, 400.0],
                      base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
                      ivh_discretisation_method="fixed_bin_size", ivh_discretisation_bin_width=2.5)
    elif config == "D":  # 2 mm isotropic trilinear, 3-sigma outlier filtering, 32 bins
        common.update(new_spacing=2.0, spline_order=1, anti_aliasing=False, roi_spline_order=1,
                      roi_interpolation_mask_inclusion_threshold=0.5, resegmentation_sigma=3.0,
                      base_discretisation_method="fixed_bin_number", base_discretisation_n_bins=32,
                      ivh_discretisation_method="none")
    elif config == "E":  # 2 mm isotropic tricubic, range + outlier filtering, 32 bins, IVH 1000 bins
        common.update(new_spacing=2.0, spline_order=3, anti_aliasing=False, roi_spline_order=1,
                      roi_interpolation_mask_inclusion_threshold=0.5, resegmentation_intensity_range=[-1000.0, 400.0],
                      resegmentation_sigma=3.0, base_discretisation_method="fixed_bin_number",
                      base_discretisation_n_bins=32, ivh_discretisation_method="fixed_bin_number",
                      ivh_discretisation_n_bins=1000)
    return common


_AGGREGATION = {"2d_avg": "2D_avg", "2d_s_mrg": "2D_comb", "2.5d_d_mrg": "2_5D_avg", "2.5d_v_mrg": "2_5D_comb",
                "3d_avg": "3D_avg", "3d_v_mrg": "3D_comb", "2d": "2D", "2.5d": "2_5D", "3d": "3D"}
_AGG_PATTERN = re.compile(r"_(2d_avg|2d_s_mrg|2\.5d_d_mrg|2\.5d_v_mrg|3d_avg|3d_v_mrg|2\.5d|2d|3d)$")
# Parameter parts of mirp's names that the reference tags leave out: distance, NGLDM coarseness, discretisation.
_PARAMETERS = re.compile(r"_(d\d+(\.\d+)?|a\d+(\.\d+)?|fbs_w[\d.]+|fbn_n\d+|fbsi_w[\d.]+|fbs_s?[\d.]+)(?=_|$)")


def ibsi_tag(mirp_name: str) -> str:
    """The reference-table tag of a mirp feature name (``cm_joint_max_d1_2.5d_d_mrg_fbs_w25.0`` ->
    ``cm_joint_max_2_5D_avg``)."""
    name = _PARAMETERS.sub("", mirp_name)
    match = _AGG_PATTERN.search(name)
    if match:
        name = name[: match.start()] + "_" + _AGGREGATION[match.group(1)]
    return name


def check_inputs(image: str | os.PathLike, mask: str | os.PathLike) -> None:
    """The image and mask can be read, share a grid, the image is finite and the mask not empty: what mirp and the
    diagnostics need, said in one line instead of a traceback from inside them."""
    import numpy as np
    import SimpleITK as sitk

    from rtrai.core.image import check_finite, check_same_grid
    from rtrai.io.images import nifti_nonfinite_voxels, read_image

    image_volume, mask_volume = read_image(image), read_image(mask)
    check_same_grid(image_volume, mask_volume, (f"image {image}", f"mask {mask}"))
    if image_volume.GetNumberOfComponentsPerPixel() != 1 or mask_volume.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"IBSI features need a scalar image and mask ({image}, {mask})")
    check_finite(image_volume, f"image {image}")
    check_finite(mask_volume, f"mask {mask}")
    for path, what in ((image, "image"), (mask, "mask")):
        bad = nifti_nonfinite_voxels(path)  # ITK (ours and mirp's) reads NaN in NIfTI as 0
        if bad:
            raise InputError(f"{what} {path} contains NaN or infinite values ({bad} voxels)")
    if not np.any(sitk.GetArrayViewFromImage(mask_volume) > 0):
        raise InputError(f"mask {mask} is empty: it has no voxel above 0, so there is no region to describe")


def compute(image: str | os.PathLike, mask: str | os.PathLike, config: str) -> OrderedDict:
    """IBSI tag -> value for one image and mask under an IBSI-1 configuration."""
    config_settings(config)  # an unknown configuration first, before any file is read
    require("mirp", "radiomics")
    import logging
    import warnings

    from mirp import extract_features

    for path in (image, mask):
        if not Path(path).is_file():
            raise InputError(f"file not found: {path}")
    check_inputs(image, mask)
    logging.getLogger("mirp").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tables = extract_features(image=str(image), mask=str(mask), **config_settings(config))
        except (ValueError, TypeError) as exc:
            raise InputError(f"mirp could not compute IBSI features: {_one_line(exc)}") from None
    if not tables or tables[0] is None or len(tables[0]) == 0:
        raise InputError(f"mirp returned no features for {image} and {mask} under configuration {config} (is the "
                         "region empty after re-segmentation?)")
    row = tables[0].iloc[0]
    out = OrderedDict()
    for column, value in row.items():
        if column.startswith(("image_", "sample_")) or not isinstance(value, numbers.Real):
            continue
        out.setdefault(ibsi_tag(column), float(value))
    if config != "digital":
        out.update(diagnostics(image, mask, config))
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


REFERENCE_COLUMNS = ("family", "reference value", "tolerance", "tag")


def reference_table(path: str | os.PathLike) -> list[dict]:
    """Rows of an IBSI reference-value table (UTF-8 with BOM; columns dataset, family, feature, consensus,
    reference value, tolerance, ..., tag), checked: every reference value and tolerance is a finite number, and at
    least one feature has both a tag and a reference value."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"IBSI reference table not found: {path}")
    from rtrai.io.text import read_text

    text = read_text(path, "an IBSI reference table")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise FormatError(f"{path}: not an IBSI reference table: no column(s) {', '.join(missing)} (expected "
                              "dataset, family, feature, consensus, reference value, tolerance, ..., tag)")
        for raw in reader:
            row = {k: (v if isinstance(v, str) else "") for k, v in raw.items() if k is not None}
            where = f"{path}: line {reader.line_num} ({row['tag'][:40]!r})"
            if row["reference value"].strip():
                _decimal(row["reference value"], f"{where}: reference value")
            if row["tolerance"].strip():
                if _decimal(row["tolerance"], f"{where}: tolerance") < 0:
                    raise FormatError(f"{where}: tolerance {row['tolerance']!r} is negative")
            rows.append(row)
    except csv.Error as exc:
        raise FormatError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not any(row["reference value"].strip() and row["tag"].strip() for row in rows):
        raise FormatError(f"{path}: not an IBSI reference table: no row has both a tag and a reference value")
    return rows


def _decimal(text: str, what: str) -> Decimal:
    """A finite decimal number whose float is finite too and whose exponent a float can scale by."""
    try:
        number = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise FormatError(f"{what} {text!r} is not a number") from None
    if not number.is_finite() or not math.isfinite(float(number)) or abs(number.as_tuple().exponent) > 300:
        raise FormatError(f"{what} {text!r} is not a finite number in range")
    return number


def compare(values: dict, reference: list[dict]) -> list[dict]:
    """Per referenced feature: tag, family, reference, tolerance, value, within (|value - ref| <= tolerance)."""
    rows = []
    for ref in reference:
        text = (ref.get("reference value") or "").strip()
        if not text or not ref.get("tag"):
            continue  # IBSI gave no reference for this feature
        reference_value, tolerance = float(text), float((ref.get("tolerance") or "").strip() or 0)
        # The tables round references to 3 significant digits, and the digital phantom's tolerance is 0: there a
        # value agrees when it rounds to the reference at the precision the table gives.
        magnitude = math.floor(math.log10(abs(reference_value))) if reference_value else 0
        allowed = max(tolerance, 0.5 * 10.0 ** Decimal(text).as_tuple().exponent, 0.5 * 10.0 ** (magnitude - 2))
        value = values.get(ref["tag"])
        within = value is not None and value == value and abs(value - reference_value) <= allowed * (1 + 1e-9)
        rows.append({"tag": ref["tag"], "family": ref["family"], "reference": reference_value,
                     "tolerance": tolerance, "value": value, "within": within})
    return rows


def family_report(comparison: list[dict]) -> list[dict]:
    """Per family: referenced, computed, within tolerance."""
    families: dict[str, dict] = OrderedDict()
    for row in comparison:
        family = families.setdefault(row["family"], {"family": row["family"], "referenced": 0, "computed": 0,
                                                     "within": 0})
        family["referenced"] += 1
        family["computed"] += row["value"] is not None
        family["within"] += row["within"]
    return list(families.values())


# -- diagnostic features (image and ROI at each processing step), which IBSI references too ----------------------
_INTERPOLATION = {"B": ([2.0, 2.0, None], 1), "C": ([2.0] * 3, 1), "D": ([2.0] * 3, 1), "E": ([2.0] * 3, 3)}
_RANGES = {"A": (-500.0, 400.0), "B": (-500.0, 400.0), "C": (-1000.0, 400.0), "E": (-1000.0, 400.0)}


def _ibsi_resample(image, spacing, order: int, is_mask: bool):
    """IBSI grid interpolation: centre-aligned grids, n_new = ceil(n s / s_new); images rounded to integers,
    masks interpolated linearly and kept where >= 0.5."""
    import numpy as np
    import SimpleITK as sitk

    old_spacing, size = np.array(image.GetSpacing()), np.array(image.GetSize())
    new_spacing = np.array([s if s is not None else o for s, o in zip(spacing, old_spacing)])
    new_size = np.ceil(size * old_spacing / new_spacing).astype(int)
    shift = (old_spacing * (size - 1) - new_spacing * (new_size - 1)) / 2.0
    direction = np.array(image.GetDirection()).reshape(3, 3)
    reference = sitk.Image([int(n) for n in new_size], sitk.sitkFloat64)
    reference.SetSpacing([float(s) for s in new_spacing])
    reference.SetOrigin([float(o) for o in np.array(image.GetOrigin()) + direction @ shift])
    reference.SetDirection(image.GetDirection())
    source = sitk.Cast(image, sitk.sitkFloat64)
    interpolator = sitk.sitkLinear if (is_mask or order == 1) else sitk.sitkBSpline
    out = sitk.GetArrayFromImage(sitk.Resample(source, reference, sitk.Transform(), interpolator, 0.0))
    return (out >= 0.5 if is_mask else np.round(out)), reference


_STAGES = {"init": "reading", "interp": "interpolation", "reseg": "re-segmentation"}


def diagnostics(image_path, mask_path, config: str) -> OrderedDict:
    """IBSI diagnostic features (``img_dim_x_init_img``, ``int_mask_vox_count_reseg_roi`` ...)."""
    import numpy as np
    import SimpleITK as sitk

    from rtrai.io.images import read_image

    image, mask = read_image(image_path), read_image(mask_path)
    array = np.round(sitk.GetArrayFromImage(image).astype(np.float64))
    roi = sitk.GetArrayFromImage(mask) > 0
    out = OrderedDict()

    def image_stats(values, grid, stage):
        for axis, n, s in zip("xyz", grid.GetSize(), grid.GetSpacing()):
            out[f"img_dim_{axis}_{stage}_img"], out[f"vox_dim_{axis}_{stage}_img"] = float(n), float(s)
        out[f"mean_int_{stage}_img"] = float(values.mean())
        out[f"min_int_{stage}_img"], out[f"max_int_{stage}_img"] = float(values.min()), float(values.max())

    def roi_stats(values, intensity_mask, morph_mask, stage):
        if not intensity_mask.any() or not morph_mask.any():
            raise InputError(f"the region of {mask_path} is empty after the {_STAGES[stage]} of IBSI configuration "
                             f"{config}: no diagnostic features")
        for prefix, m in (("int_mask", intensity_mask), ("morph_mask", morph_mask)):
            z, y, x = np.nonzero(m)
            for axis, idx in zip("xyz", (x, y, z)):
                out[f"{prefix}_bb_dim_{axis}_{stage}_roi"] = float(idx.max() - idx.min() + 1)
            out[f"{prefix}_vox_count_{stage}_roi"] = float(m.sum())
        for axis, n in zip("xyz", reversed(values.shape)):
            out[f"int_mask_dim_{axis}_{stage}_roi"] = float(n)
        inside = values[intensity_mask]
        out[f"int_mask_mean_int_{stage}_roi"] = float(inside.mean())
        out[f"int_mask_min_int_{stage}_roi"], out[f"int_mask_max_int_{stage}_roi"] = float(inside.min()), float(
            inside.max())

    image_stats(array, image, "init")
    roi_stats(array, roi, roi, "init")
    if config in _INTERPOLATION:
        spacing, order = _INTERPOLATION[config]
        array, grid = _ibsi_resample(image, spacing, order, False)
        roi, _ = _ibsi_resample(mask, spacing, order, True)
    else:
        grid = image
    image_stats(array, grid, "interp")
    roi_stats(array, roi, roi, "interp")
    intensity_roi = roi.copy()
    if config in _RANGES:
        low, high = _RANGES[config]
        intensity_roi &= (array >= low) & (array <= high)
    if config in ("D", "E"):  # 3-sigma outlier filtering
        values = array[intensity_roi]
        mean, sd = values.mean(), values.std()
        intensity_roi &= (array >= mean - 3 * sd) & (array <= mean + 3 * sd)
    roi_stats(array, intensity_roi, roi, "reseg")
    return out
