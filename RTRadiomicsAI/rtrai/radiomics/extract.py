"""Feature extraction with pyradiomics as the engine.

Values are pyradiomics' own: we hand it the parameter file (or a preset, which is just a pyradiomics parameter
file) and the image/mask as SimpleITK images, and keep its column names. What we add is input checking with clear
errors (grids, empty masks, absent labels, NaN/Inf, unknown parameter keys), case folders from ``rtrai convert``
as input, and the DVH columns of dosiomics.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import DependencyError, GeometryError, InputError
from rtrai.core.image import Grid, check_finite, check_same_grid, resample_to

PRESET_DIR = Path(__file__).with_name("presets")
PRESETS = ("CT", "MR", "dose")
# DVH thresholds of the dosiomics columns (Gy): V5 ... V70.
DVH_VOLUME_LEVELS = tuple(range(5, 75, 5))


def _radiomics():
    try:
        import radiomics
    except ImportError as exc:
        raise DependencyError(f"radiomics extraction needs pyradiomics ({exc}); "
                              "install it with: pip install pyradiomics-bhklab") from exc
    radiomics.setVerbosity(logging.ERROR)  # pyradiomics logs every case at INFO; our progress bar says enough
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)  # its schema errors reach the user as InputError
    return radiomics


def params_source(params: str | os.PathLike | dict | None = None, preset: str | None = None) -> str | dict | None:
    """The pyradiomics parameter source: a YAML/JSON file, a preset name, a dict, or None for pyradiomics'
    defaults (all features of the original image, binWidth 25, no resampling)."""
    if params is not None and preset is not None:
        raise InputError("give either a parameter file or a preset, not both")
    if preset is not None:
        match = {p.lower(): p for p in PRESETS}.get(str(preset).lower())
        if match is None:
            raise InputError(f"unknown preset '{preset}'; use one of {', '.join(PRESETS)}")
        return str(PRESET_DIR / f"{match}.yaml")
    if params is None or isinstance(params, dict):
        return params
    path = Path(params)
    if not path.is_file():
        raise InputError(f"parameter file not found: {path}")
    return str(path)


def make_extractor(params=None, preset: str | None = None, **overrides):
    """A pyradiomics ``RadiomicsFeatureExtractor``; an invalid parameter file raises :class:`InputError`."""
    _radiomics()
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    source = params_source(params, preset)
    try:
        return RadiomicsFeatureExtractor(source, **overrides) if source is not None \
            else RadiomicsFeatureExtractor(**overrides)
    except Exception as exc:  # noqa: BLE001 - pykwalify SchemaError, YAML errors, ValueError for unknown types
        errors = getattr(exc, "errors", None)
        message = "; ".join(map(str, errors)) if isinstance(errors, (list, tuple)) and errors else \
            str(getattr(exc, "msg", None) or exc)
        message = " ".join(message.split()) or type(exc).__name__  # one line: pykwalify and PyYAML write several
        raise InputError(f"invalid radiomics parameters ({source or 'defaults'}): {message}") from None


@dataclass
class Inputs:
    """An image and a mask on one grid, ready for pyradiomics, and where they came from."""

    image: sitk.Image
    mask: sitk.Image
    label: int
    case_id: str
    image_source: str
    mask_source: str


def _read(path: Path, what: str) -> sitk.Image:
    from rtrai.io.images import read_image

    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    return read_image(path)


@dataclass
class ImageInput:
    """An image read for one or more rows (a case folder's CT or dose, or an image file), and its case if any."""

    image: sitk.Image
    case_id: str
    image_source: str
    folder: Path | None = None
    case: object = None


def load_image(image: str | os.PathLike, use_dose: bool = False) -> ImageInput:
    """Read and check the image of :func:`load_inputs` (once for all the rows that name it)."""
    image_path = Path(image)
    if image_path.is_dir():
        from rtrai.io.case_io import read_case

        case = read_case(image_path)
        volume = case.dose if use_dose else case.ct
        if volume is None:
            raise InputError(f"case folder {image_path} has no {'dose' if use_dose else 'CT'} volume")
        loaded = ImageInput(volume, case.patient_id, str(image_path / ("Dose.nrrd" if use_dose else "CT.nrrd")),
                            image_path, case)
    else:
        if use_dose:
            raise InputError("--dose applies to case folders; give the dose file itself as the image")
        loaded = ImageInput(_read(image_path, "image"), image_path.name.split(".")[0], str(image_path))
    check_finite(loaded.image, f"image {loaded.image_source}")
    return loaded


def load_mask(loaded: ImageInput, mask: str | os.PathLike | None = None, label: int | None = None,
              structure: str | None = None, resample_mask: bool = False, default_label: int = 1) -> Inputs:
    """The :class:`Inputs` of ``loaded`` and a mask file or a structure of its case folder (see
    :func:`load_inputs`)."""
    volume, image_source = loaded.image, loaded.image_source
    if loaded.case is not None and mask is None:
        if not structure:
            raise InputError("with a case folder as image, name the region with --structure NAME")
        if structure not in loaded.case.structures:
            raise InputError(f"structure '{structure}' is not in case {loaded.folder} "
                             f"(it has: {', '.join(sorted(loaded.case.structures)) or 'no structures'})")
        mask_image, label, mask_source = loaded.case.structures[structure], 1, f"{loaded.folder}:{structure}"
    else:
        if mask is None:
            raise InputError("a mask is needed: give --mask FILE (or a case folder and --structure NAME)")
        mask_image, label, mask_source = _read_mask(Path(mask), label, structure)
    label = default_label if label is None else int(label)
    if Grid.of(volume).differences(Grid.of(mask_image)):
        if not resample_mask:
            diffs = "; ".join(Grid.of(volume).differences(Grid.of(mask_image)))
            raise GeometryError(f"image {image_source} and mask {mask_source} are on different grids ({diffs}); "
                                "resample the mask onto the image with --resample-mask")
        mask_image = resample_to(mask_image, volume, "nearest")
    check_same_grid(volume, mask_image, (f"image {image_source}", f"mask {mask_source}"))
    if not np.any(sitk.GetArrayViewFromImage(mask_image) == label):
        present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(mask_image)) if v != 0]
        raise InputError(f"mask {mask_source} has no voxel with label {label} "
                         f"({'it is empty' if not present else 'labels present: ' + ', '.join(map(str, present))})")
    return Inputs(volume, mask_image, label, loaded.case_id, image_source, mask_source)


def load_inputs(image: str | os.PathLike, mask: str | os.PathLike | None = None, label: int | None = None,
                structure: str | None = None, use_dose: bool = False, resample_mask: bool = False,
                default_label: int = 1) -> Inputs:
    """Read and check an image and its mask.

    ``image`` is an image file or a case folder (``CT.nrrd`` + ``Structures.seg.nrrd`` [+ ``Dose.nrrd``]); with a
    case folder, ``structure`` names the segment (and ``use_dose`` picks the dose instead of the CT). A mask file may
    be a labelmap (``label`` picks the value, default 1) or a ``.seg.nrrd`` with ``structure``.
    """
    if not Path(image).is_dir() and not use_dose and mask is None:
        raise InputError("a mask is needed: give --mask FILE (or a case folder and --structure NAME)")
    return load_mask(load_image(image, use_dose), mask, label, structure, resample_mask, default_label)


def _read_mask(path: Path, label: int | None, structure: str | None) -> tuple[sitk.Image, int | None, str]:
    if path.name.lower().endswith(".seg.nrrd"):
        from rtrai.io.segfile import read_segmentation

        masks, _ = read_segmentation(path)
        if not structure:
            if len(masks) != 1:
                raise InputError(f"{path} holds {len(masks)} segments; name one with --structure "
                                 f"({', '.join(sorted(masks))})")
            structure = next(iter(masks))
        if structure not in masks:
            raise InputError(f"segment '{structure}' is not in {path} (it has: {', '.join(sorted(masks))})")
        return masks[structure], 1, f"{path}:{structure}"
    if structure:
        raise InputError("--structure names a segment of a case folder or a .seg.nrrd; this mask is a labelmap "
                         "(use --label N)")
    return _read(path, "mask"), label, str(path)


def extract(extractor, inputs: Inputs) -> OrderedDict:
    """pyradiomics' feature vector for one image and mask (diagnostics first, as pyradiomics orders them)."""
    try:
        return extractor.execute(inputs.image, inputs.mask, label=inputs.label)
    except ValueError as exc:  # pyradiomics' refusals (ROI too small, label missing after resampling, ...)
        raise InputError(f"pyradiomics refused {inputs.mask_source} (label {inputs.label}): {exc}") from None


def extract_rows(extractor, inputs: list[Inputs], dvh: bool = False) -> list:
    """:func:`extract_row` for rows that share one image (the same ``Inputs.image``), computed together
    (:mod:`rtrai.radiomics.shared_image`): each an ``OrderedDict``, or the :class:`InputError` of its refusal."""
    from rtrai.radiomics.shared_image import extract_structures

    if not inputs:
        return []
    vectors = extract_structures(extractor, inputs[0].image, [(i.mask, i.label) for i in inputs])
    rows = []
    for item, vector in zip(inputs, vectors):
        if isinstance(vector, ValueError):
            rows.append(InputError(f"pyradiomics refused {item.mask_source} (label {item.label}): {vector}"))
            continue
        row = OrderedDict(ID=item.case_id, Image=item.image_source, Mask=item.mask_source, Label=item.label)
        row.update(vector)
        if dvh:
            row.update(dvh_features(item.image, item.mask, item.label))
        rows.append(row)
    return rows


def dvh_features(dose: sitk.Image, mask: sitk.Image, label: int = 1) -> OrderedDict:
    """DVH-derived dosiomics columns: Dmean, Dmin, Dmax, D2%, D50%, D98% (Gy) and V5..V70 Gy (% of the volume), by
    the library's one DVH definition (:func:`rtrai.core.dvh.metric`, volume-weighted, as ``rtrai dvh`` reports)."""
    from rtrai.core.dvh import metric, samples_from_mask

    samples = samples_from_mask(dose, sitk.Cast(mask == label, sitk.sitkUInt8))
    if samples.total_cc <= 0:
        raise InputError(f"no voxel with label {label} for the DVH")
    out = OrderedDict()
    for name in ("Dmean", "Dmin", "Dmax", "D2%", "D50%", "D98%"):
        out[f"dvh_{name}_Gy"] = metric(samples, name)
    for level in DVH_VOLUME_LEVELS:
        out[f"dvh_V{level}Gy_%"] = metric(samples, f"V{level}Gy")
    return out


def format_value(value) -> str:
    """Text for a CSV cell: floats round-trip exactly (repr), everything else as pyradiomics' batch writes it."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def extract_row(extractor, inputs: Inputs, dvh: bool = False) -> OrderedDict:
    """One output row: ID, Image, Mask, Label, then pyradiomics' columns (and the DVH columns)."""
    row = OrderedDict(ID=inputs.case_id, Image=inputs.image_source, Mask=inputs.mask_source, Label=inputs.label)
    row.update(extract(extractor, inputs))
    if dvh:
        row.update(dvh_features(inputs.image, inputs.mask, inputs.label))
    return row
