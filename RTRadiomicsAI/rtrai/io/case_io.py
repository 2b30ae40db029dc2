"""Read any supported input into a Case, and write case folders.

A *case folder* is what ``rtrai convert`` writes and every other command reads::

    CT.nrrd                 CT in HU (LPS geometry)
    Structures.seg.nrrd     Slicer segmentation: TG-263 names, colours, layers for overlapping structures
    Dose.nrrd               dose in Gy (float32), when the input has one
    PossibleDoseMask.nrrd   OpenKBP's possible-dose mask, when the input has one
    case.json               patient id, prescription, fractions, source metadata
    provenance.json         what wrote the folder, from which inputs
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from rtrai.core.case import Case
from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.outputs import write_text
from rtrai.io import openkbp
from rtrai.io.images import is_image_file, read_image, write_image
from rtrai.io.segfile import read_segmentation, write_segmentation

CT_FILE, STRUCTURES_FILE, DOSE_FILE, PDM_FILE, CASE_FILE = (
    "CT.nrrd", "Structures.seg.nrrd", "Dose.nrrd", "PossibleDoseMask.nrrd", "case.json")


def is_case_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / CT_FILE).is_file() or (path / STRUCTURES_FILE).is_file())


def is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: str | os.PathLike, max_files: int = 2000) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    for i, item in enumerate(p for p in path.rglob("*") if p.is_file()):
        if i >= max_files:
            return False
        if is_dicom_file(item):
            return True
    return False


def input_kind(path: str | os.PathLike) -> str:
    """One of 'case', 'openkbp', 'dicom', 'image', 'segmentation'; raises InputError for anything else."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_file():
        if path.name.lower().endswith(".seg.nrrd"):
            return "segmentation"
        if is_image_file(path):
            return "image"
        if is_dicom_file(path):
            return "dicom"
        raise InputError(f"{path}: not a supported file (NRRD, NIfTI, MetaImage, .seg.nrrd or DICOM)")
    if is_case_folder(path):
        return "case"
    if openkbp.is_openkbp_folder(path):
        return "openkbp"
    if is_dicom_folder(path):
        return "dicom"
    raise InputError(f"{path}: not a case folder, an OpenKBP patient folder, a DICOM folder or an image file")


def read_case(path: str | os.PathLike) -> Case:
    """Read an OpenKBP patient folder, a case folder, a DICOM folder or an image/segmentation file."""
    path = Path(path)
    kind = input_kind(path)
    if kind == "openkbp":
        return openkbp.read_openkbp(path)
    if kind == "dicom":  # CT + RTSTRUCT/RTDOSE/RTPLAN, and DICOM SEG (beside a CT or alone)
        from rtrai.io.dicom_seg import read_dicom_with_segmentations

        return read_dicom_with_segmentations(path)
    if kind == "image":
        return Case(ct=read_image(path), metadata={"patient_id": _stem(path), "source": "image",
                                                   "source_path": str(path)})
    if kind == "segmentation":
        case = Case(metadata={"patient_id": _stem(path), "source": "segmentation", "source_path": str(path)})
        _add_structures(case, path)
        return case
    return _read_case_folder(path)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _add_structures(case: Case, seg_path: Path) -> None:
    masks, colors = read_segmentation(seg_path)
    for name, mask in masks.items():
        try:
            case.add_structure(name, mask, colors.get(name), keep_name=True)
        except GeometryError as exc:
            raise GeometryError(f"{seg_path}: {exc}") from None


def _read_case_info(path: Path) -> dict:
    """case.json, checked: an object whose metadata is an object, prescription maps names to doses in Gy and
    fractions is a positive integer or null."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"{path}: not valid JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    if not isinstance(info, dict):
        raise FormatError(f"{path}: case.json must hold an object, not {type(info).__name__}")
    if not isinstance(info.get("metadata", {}), dict):
        raise FormatError(f"{path}: 'metadata' must be an object")
    prescription = info.get("prescription_gy")
    if prescription is not None and not isinstance(prescription, dict):
        raise FormatError(f"{path}: 'prescription_gy' must map target names to doses in Gy")
    for name, dose in (prescription or {}).items():
        if isinstance(dose, bool) or not isinstance(dose, (int, float)) or not math.isfinite(dose) or dose <= 0:
            raise FormatError(f"{path}: prescription of {name!r:.40} is {dose!r:.40}, not a positive dose in Gy")
    fractions = info.get("fractions")
    if fractions is not None and (isinstance(fractions, bool) or not isinstance(fractions, int) or fractions < 1):
        raise FormatError(f"{path}: 'fractions' is {fractions!r}, not a positive whole number")
    patient_id = info.get("patient_id")
    if patient_id is not None and not isinstance(patient_id, (str, int)):
        raise FormatError(f"{path}: 'patient_id' is {patient_id!r}, not a name")
    return info


def _read_case_folder(folder: Path) -> Case:
    info = {}
    if (folder / CASE_FILE).is_file():
        info = _read_case_info(folder / CASE_FILE)
    case = Case(metadata=dict(info.get("metadata", {})))
    patient_id = info.get("patient_id")
    case.metadata.setdefault("patient_id", folder.name if patient_id is None else str(patient_id))
    if (folder / CT_FILE).is_file():
        case.ct = read_image(folder / CT_FILE)
    if (folder / STRUCTURES_FILE).is_file():
        _add_structures(case, folder / STRUCTURES_FILE)
    if (folder / DOSE_FILE).is_file():
        case.dose = read_image(folder / DOSE_FILE)
    if (folder / PDM_FILE).is_file():
        case.possible_dose_mask = read_image(folder / PDM_FILE)
    case.prescription = {str(k): float(v) for k, v in (info.get("prescription_gy") or {}).items()}
    case.fractions = info.get("fractions")
    return case


def write_case(case: Case, folder: str | os.PathLike) -> list[Path]:
    """Write a case folder (see the module docstring). The caller makes it atomic with ``output_folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if case.ct is not None:
        written.append(write_image(case.ct, folder / CT_FILE))
    if case.structures:
        written.append(write_segmentation(case.structures, folder / STRUCTURES_FILE, case.colors, case.ct))
    if case.dose is not None:
        written.append(write_image(case.dose, folder / DOSE_FILE))
    if case.possible_dose_mask is not None:
        written.append(write_image(case.possible_dose_mask, folder / PDM_FILE))
    info = {"patient_id": case.patient_id, "prescription_gy": case.prescription, "fractions": case.fractions,
            "structures": {name: {"color": list(case.color(name)), "volume_cc": round(case.volume_cc(name), 3)}
                           for name in case.structures},
            "metadata": case.metadata}
    written.append(write_text(folder / CASE_FILE, json.dumps(info, indent=2, default=str) + "\n"))
    return written


def patients_or_case(path: str | os.PathLike) -> list[Path] | None:
    """None when ``path`` is one case (anything :func:`read_case` reads), else the patients of a folder of patients;
    neither: the single-case :class:`InputError` that says what ``path`` is not."""
    path = Path(path)
    try:
        input_kind(path)
        return None
    except InputError:
        patients = list_cases(path) if path.is_dir() else []
        if not patients:
            raise
        return patients


def list_cases(folder: str | os.PathLike) -> list[Path]:
    """The readable patients directly inside a folder of patients (sorted naturally: pt_2 before pt_10)."""
    folder = Path(folder)
    children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    cases = [p for p in children if is_case_folder(p) or openkbp.is_openkbp_folder(p) or is_dicom_folder(p, 200)]
    return sorted(cases, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
