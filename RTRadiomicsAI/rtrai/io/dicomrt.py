"""DICOM-RT import: RTSTRUCT -> masks, RTDOSE -> dose in Gy, RTPLAN -> prescription, a folder -> a Case.

- :func:`read_rtstruct` parses ROIs (names, TG-263 names, colours, closed planar contours in LPS mm);
  :func:`rasterize_rtstruct` fills them on the CT grid or any grid the caller names (a dose grid, with sub-voxel
  partial-volume weights if asked), see :mod:`rtrai.io.contours`.
- :func:`read_rtdose` applies DoseGridScaling, accepts relative and absolute GridFrameOffsetVector, single and
  multi-frame, and keeps the dose on its own grid (resampling is explicit: :func:`rtrai.core.image.resample_to`).
- :func:`read_rtplan` gives the prescription (target dose references), fractions and a beams summary.
- :func:`read_dicom_folder` finds CT + RTSTRUCT + RTDOSE + RTPLAN in a folder tree and returns a Case whose
  ``metadata["dicom"]`` keeps the UIDs, so :func:`rtrai.io.dicomrt_export.write_dicom_case` can reuse them.

Bad input raises typed errors from :mod:`rtrai.core.errors` (see the README's DICOM-RT section).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.image import Grid, from_array
from rtrai.core.structures import to_tg263
from rtrai.io.contours import rasterize
from rtrai.io.dicom_series import (SPACING_TOL_MM, list_files, parsing, read_ct_from_headers, read_dataset,
                                   require_attributes, scan, shown)
from rtrai.io.sop_classes import RTDOSE_CLASS, RTPLAN_CLASS, RTSTRUCT_CLASS

_EXPECTED = {"RTSTRUCT": RTSTRUCT_CLASS, "RTDOSE": RTDOSE_CLASS, "RTPLAN": RTPLAN_CLASS}


def _dataset(source, modality: str, stop_before_pixels: bool = False):
    """A pydicom Dataset for a path or dataset, refusing objects of another kind."""
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise InputError(f"{source} does not exist or is not a file")
        ds, path = read_dataset(source, stop_before_pixels=stop_before_pixels), str(source)
    else:
        ds, path = source, getattr(source, "filename", None) or "dataset"
    with parsing(path, modality):
        found = str(ds.get("Modality", "")) or "unknown"
        sop_class = str(ds.get("SOPClassUID", ""))
    if found != modality and sop_class != _EXPECTED[modality]:
        raise InputError(f"{path} is a {shown(found, 16)} object, not an {modality}")
    return ds, path


# ----------------------------------------------------------------------------------------------------------- RTSTRUCT

@dataclass
class ROI:
    number: int
    name: str  # as in the file
    tg263: str
    color: tuple[float, float, float] | None
    frame_of_reference: str
    interpreted_type: str = ""
    contours: list[np.ndarray] = field(default_factory=list)  # closed planar, (N, 3) LPS mm
    skipped: int = 0  # contours of other geometric types (POINT, OPEN_PLANAR)


def _contour_points(item, path) -> np.ndarray:
    """ContourData as an (N, 3) array, parsed from the raw bytes (pydicom's per-value DS objects are slow)."""
    element = item.get_item(0x30060050)
    if element is None:
        raise FormatError(f"RTSTRUCT {path}: a contour has no ContourData")
    raw = element.value
    if isinstance(raw, (bytes, bytearray)):
        values = np.array(raw.decode("ascii").replace("\\", " ").split(), dtype=float)
    else:
        values = np.atleast_1d(np.array(raw if raw is not None else [], dtype=float)).ravel()
    if values.size == 0 or values.size % 3:
        raise FormatError(f"RTSTRUCT {path}: ContourData holds {values.size} numbers, not a multiple of 3")
    if not np.isfinite(values).all():
        raise FormatError(f"RTSTRUCT {path}: ContourData holds non-finite numbers")
    return values.reshape(-1, 3)


def read_rtstruct(source) -> tuple[list[ROI], dict]:
    """ROIs of an RTSTRUCT (path or dataset) and its metadata (UIDs, referenced series, label)."""
    ds, path = _dataset(source, "RTSTRUCT")
    require_attributes(ds, ("StructureSetROISequence",), path, "RTSTRUCT")
    with parsing(path, "RTSTRUCT"):
        referenced_for = [str(item.get("FrameOfReferenceUID", ""))
                          for item in ds.get("ReferencedFrameOfReferenceSequence", [])]
        referenced_series = [str(series.get("SeriesInstanceUID", ""))
                             for item in ds.get("ReferencedFrameOfReferenceSequence", [])
                             for study in item.get("RTReferencedStudySequence", [])
                             for series in study.get("RTReferencedSeriesSequence", [])]
        interpreted = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", ""))
                       for o in ds.get("RTROIObservationsSequence", []) if "ReferencedROINumber" in o}
        rois: dict[int, ROI] = {}
        used: set[str] = set()
        for item in ds.StructureSetROISequence:
            number = int(item.ROINumber)
            name = str(item.get("ROIName", "")).strip() or f"ROI_{number}"
            tg = to_tg263(name)
            if tg in used:  # two ROIs mapping to one TG-263 name: the later keeps its own name
                tg = name if name not in used else f"{name}_{number}"
            used.add(tg)
            rois[number] = ROI(number, name, tg, None,
                               str(item.get("ReferencedFrameOfReferenceUID", "")) or
                               (referenced_for[0] if referenced_for else ""),
                               interpreted.get(number, ""))
        for item in ds.get("ROIContourSequence", []):
            roi = rois.get(int(item.ReferencedROINumber))
            if roi is None:
                continue  # contours of an ROI the set does not declare: nothing to name them by
            color = item.get("ROIDisplayColor")
            if color is not None and len(color) == 3:
                roi.color = tuple(min(max(float(c) / 255.0, 0.0), 1.0) for c in color)
            for contour in item.get("ContourSequence", []):
                kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
                if kind != "CLOSED_PLANAR":
                    roi.skipped += 1
                    continue
                points = _contour_points(contour, path)
                if len(points) >= 3:
                    roi.contours.append(points)
        meta = {
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
            "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
            "StructureSetLabel": str(ds.get("StructureSetLabel", "")),
            "FrameOfReferenceUIDs": referenced_for,
            "ReferencedSeriesInstanceUIDs": referenced_series,
            "path": str(path),
        }
    return list(rois.values()), meta


def rasterize_rtstruct(source, reference: sitk.Image | Grid, frame_of_reference: str | None = None,
                       supersample: int = 1, names: list[str] | None = None, progress=None
                       ) -> tuple[dict[str, sitk.Image], dict[str, tuple[float, float, float]], dict]:
    """Masks of the RTSTRUCT's ROIs on ``reference`` (the CT, a dose grid, any image or Grid).

    ``frame_of_reference``: the reference grid's FrameOfReferenceUID; an ROI in another frame is a GeometryError.
    ``supersample > 1`` gives float32 partial-volume fractions instead of uint8 masks. ROIs without closed planar
    contours are absent from the result (missing is not empty) and listed in ``info["without_contours"]``; ROIs whose
    contours all fall outside the grid are absent too and listed in ``info["outside_grid"]``.
    Returns (masks by TG-263 name, colours by TG-263 name, info with the original names).
    """
    from rtrai.core.progress import track

    rois, meta = source if isinstance(source, tuple) else read_rtstruct(source)
    grid = reference if isinstance(reference, Grid) else Grid.of(reference)
    masks, colors = {}, {}
    info = {"original_names": {}, "without_contours": [], "outside_grid": [], **meta}
    wanted = None if names is None else {to_tg263(n) for n in names} | set(names)
    for roi in track(rois, progress, message="rasterising structures"):
        if wanted is not None and roi.tg263 not in wanted and roi.name not in wanted:
            continue
        if frame_of_reference and roi.frame_of_reference and roi.frame_of_reference != frame_of_reference:
            raise GeometryError(f"RTSTRUCT {meta.get('path', 'dataset')}: ROI '{shown(roi.name)}' is in frame of "
                                f"reference {shown(roi.frame_of_reference, 64)}, the image grid is in "
                                f"{shown(frame_of_reference, 64)}: they are not registered")
        if not roi.contours:
            info["without_contours"].append(roi.name)
            continue
        filled = rasterize(roi.contours, grid, supersample)
        if not filled.any():
            info["outside_grid"].append(roi.name)
            continue
        masks[roi.tg263] = from_array(filled, grid)
        if roi.color is not None:
            colors[roi.tg263] = roi.color
        info["original_names"][roi.tg263] = roi.name
    return masks, colors, info


# ------------------------------------------------------------------------------------------------------------ RTDOSE

def read_rtdose(source, allow_relative: bool = False) -> tuple[sitk.Image, dict]:
    """Dose (float32, Gy) on the RTDOSE's own grid, and metadata (UIDs, units, summation type, referenced plan).

    ``DoseUnits`` RELATIVE is refused unless ``allow_relative`` (the values are then fractions, not Gy).
    """
    ds, path = _dataset(source, "RTDOSE")
    require_attributes(ds, ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"),
                       path, "RTDOSE")
    if "PixelData" not in ds:
        raise FormatError(f"RTDOSE {path} has no pixel data (truncated file, or a DVH-only RTDOSE)")
    if "DoseGridScaling" not in ds:
        raise FormatError(f"RTDOSE {path} lacks DoseGridScaling, so its pixel values cannot be turned into dose")
    with parsing(path, "RTDOSE"):
        units = str(ds.get("DoseUnits", "")).upper()
        if units == "RELATIVE" and not allow_relative:
            raise InputError(f"RTDOSE {path} holds RELATIVE dose, not Gy; it cannot be used as an absolute dose")
        if units not in ("GY", "RELATIVE"):
            raise FormatError(f"RTDOSE {path}: DoseUnits '{shown(units, 16)}' is neither GY nor RELATIVE")
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        scaling = float(ds.DoseGridScaling)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        offsets = ds.get("GridFrameOffsetVector")
        offsets = None if offsets in (None, "") else np.atleast_1d(np.array(offsets, dtype=float))
        pixels = ds.pixel_array.reshape((frames, int(ds.Rows), int(ds.Columns)))
        thickness = float(ds.get("SliceThickness", 0) or 0)
    if position.shape != (3,) or orientation.shape != (6,) or not np.isfinite(np.r_[position, orientation]).all():
        raise FormatError(f"RTDOSE {path}: invalid ImagePositionPatient or ImageOrientationPatient")
    if not (np.isfinite(scaling) and scaling > 0) or not np.isfinite([row_spacing, col_spacing]).all() \
            or min(row_spacing, col_spacing) <= 0:
        raise FormatError(f"RTDOSE {path}: DoseGridScaling and PixelSpacing must be positive")
    if not np.isfinite(thickness) or (offsets is not None and not np.isfinite(offsets).all()):
        raise FormatError(f"RTDOSE {path}: SliceThickness and GridFrameOffsetVector must be finite numbers")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise GeometryError(f"RTDOSE {path}: ImageOrientationPatient is not two orthogonal unit vectors")
    if offsets is None:
        if frames > 1:
            raise FormatError(f"RTDOSE {path} has {frames} frames but no GridFrameOffsetVector, so the frames "
                              "have no positions")
        offsets = np.zeros(1)
    if len(offsets) < frames or (len(offsets) != frames and frames > 1):
        raise FormatError(f"RTDOSE {path}: GridFrameOffsetVector has {len(offsets)} values for {frames} frames")
    offsets = offsets[:frames]
    if offsets[0] != 0:
        # Absolute offsets (PS3.3 C.8.8.3.2, only for axial grids): z coordinates of the frames.
        if not np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4):
            raise FormatError(f"RTDOSE {path}: GridFrameOffsetVector does not start at 0, which is only allowed "
                              "(as absolute z) for an axial dose grid")
        offsets = offsets - position[2]
    order = np.argsort(offsets, kind="stable")
    offsets, pixels = offsets[order], pixels[order]
    if frames > 1:
        steps = np.diff(offsets)
        if np.any(steps <= SPACING_TOL_MM) or np.ptp(steps) > SPACING_TOL_MM:
            raise GeometryError(f"RTDOSE {path}: dose frames are unevenly spaced (offsets {steps.min():.4g} to "
                                f"{steps.max():.4g} mm apart)")
        z_spacing = float(offsets[-1] - offsets[0]) / (frames - 1)
    else:
        z_spacing = thickness if thickness > 0 else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        gy = (pixels.astype(np.float64) * scaling).astype(np.float32)
    if not np.isfinite(gy).all():
        raise FormatError(f"RTDOSE {path}: DoseGridScaling {scaling:g} takes the dose beyond the float32 range")
    dose = sitk.GetImageFromArray(gy)
    dose.SetSpacing((col_spacing, row_spacing, z_spacing))
    dose.SetOrigin(tuple(float(v) for v in position + offsets[0] * normal))
    dose.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    with parsing(path, "RTDOSE"):
        meta = {
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
            "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "")),
            "DoseUnits": units,
            "DoseType": str(ds.get("DoseType", "")),
            "DoseSummationType": str(ds.get("DoseSummationType", "")),
            "DoseGridScaling": scaling,
            "ReferencedRTPlanSOPInstanceUIDs": [str(r.get("ReferencedSOPInstanceUID", ""))
                                                for r in ds.get("ReferencedRTPlanSequence", [])],
            "path": str(path),
        }
    return dose, meta


# ------------------------------------------------------------------------------------------------------------ RTPLAN

def read_rtplan(source, roi_names: dict[int, str] | None = None) -> dict:
    """Prescription, fractions and beams of an RTPLAN.

    ``roi_names``: ROI number -> name from the referenced RTSTRUCT, to name VOLUME dose references.
    Returns ``{"prescription": {target: Gy}, "fractions": int | None, "beams": [...], ...UIDs}``.
    """
    ds, path = _dataset(source, "RTPLAN")
    roi_names = roi_names or {}
    with parsing(path, "RTPLAN"):
        prescription: dict[str, float] = {}
        for ref in ds.get("DoseReferenceSequence", []):
            dose = ref.get("TargetPrescriptionDose")
            if dose in (None, "") or str(ref.get("DoseReferenceType", "TARGET")) != "TARGET":
                continue
            roi_number = ref.get("ReferencedROINumber")
            name = (roi_names.get(int(roi_number)) if roi_number not in (None, "") else None) \
                or str(ref.get("DoseReferenceDescription", "")).strip() \
                or f"Target_{int(ref.get('DoseReferenceNumber', len(prescription) + 1))}"
            gy = float(dose)
            if not (np.isfinite(gy) and gy > 0):
                raise FormatError(f"RTPLAN {path}: TargetPrescriptionDose of {name[:40]!r} is {dose}, not a "
                                  "positive dose in Gy")
            prescription[to_tg263(name)] = gy
        fraction_groups = list(ds.get("FractionGroupSequence", []))
        fractions = None
        meterset: dict[int, float] = {}
        if fraction_groups:
            value = fraction_groups[0].get("NumberOfFractionsPlanned")
            fractions = int(value) if value not in (None, "") else None
            if fractions is not None and fractions < 0:
                raise FormatError(f"RTPLAN {path}: NumberOfFractionsPlanned is {fractions}")
            for ref in fraction_groups[0].get("ReferencedBeamSequence", []):
                if ref.get("BeamMeterset") not in (None, ""):
                    meterset[int(ref.ReferencedBeamNumber)] = float(ref.BeamMeterset)
        beams = []
        for beam in ds.get("BeamSequence", []):
            points = list(beam.get("ControlPointSequence", []))
            gantry = [float(cp.GantryAngle) for cp in points if cp.get("GantryAngle") not in (None, "")]
            energy = next((float(cp.NominalBeamEnergy) for cp in points
                           if cp.get("NominalBeamEnergy") not in (None, "")), None)
            number = int(beam.get("BeamNumber", len(beams) + 1))
            beams.append({
                "number": number,
                "name": str(beam.get("BeamName", "")),
                "type": str(beam.get("BeamType", "")),
                "radiation": str(beam.get("RadiationType", "")),
                "delivery": str(beam.get("TreatmentDeliveryType", "")),
                "machine": str(beam.get("TreatmentMachineName", "")),
                "energy_mv": energy,
                "gantry_start_deg": gantry[0] if gantry else None,
                "gantry_stop_deg": gantry[-1] if gantry else None,
                "control_points": len(points),
                "meterset": meterset.get(number),
            })
        return {
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "RTPlanLabel": str(ds.get("RTPlanLabel", "")),
            "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "")),
            "ReferencedStructureSetSOPInstanceUIDs": [str(r.get("ReferencedSOPInstanceUID", ""))
                                                       for r in ds.get("ReferencedStructureSetSequence", [])],
            "prescription": prescription,
            "fractions": fractions,
            "beams": beams,
            "path": str(path),
        }


# ------------------------------------------------------------------------------------------------------------ folder

def read_dicom_folder(folder: str | os.PathLike, series_uid: str | None = None, progress=None) -> Case:
    """CT + RTSTRUCT + RTDOSE + RTPLAN found in a folder tree, as a Case (see the module docstring).

    Choice when a folder holds several objects (each recorded in ``metadata["dicom"]["notes"]``): the CT series
    with most slices (or ``series_uid``); the RTSTRUCT in the CT's frame of reference that references the CT series
    (the last in path order if several); the PLAN-summed RTDOSE in that frame (else per-beam doses summed when
    they share a grid); the RTPLAN the dose references (else the only plan). Without a CT, structures go on the
    dose grid.
    """
    from rtrai.core.progress import sub

    folder = Path(folder)
    headers = scan(list_files(folder))
    if not headers:
        raise InputError(f"no DICOM files in {folder}")
    by_modality: dict[str, list] = {}
    for path, ds in headers:
        with parsing(path):
            by_modality.setdefault(str(ds.get("Modality", "")), []).append((path, ds))
    notes: list[str] = []
    dicom: dict = {"notes": notes}
    case = Case(metadata={"source": "dicom", "source_path": str(folder), "dicom": dicom})

    frame = None
    if "CT" in by_modality or series_uid is not None:
        case.ct, ct_meta = read_ct_from_headers(headers, series_uid, source=str(folder))
        notes.append(ct_meta["series_choice"])
        dicom["ct"] = {k: v for k, v in ct_meta.items() if k != "files"}
        frame = ct_meta["FrameOfReferenceUID"]
        case.metadata["patient_id"] = ct_meta["PatientID"] or folder.name

    dose_meta = None
    doses = [(p, ds) for p, ds in by_modality.get("RTDOSE", []) if _in_frame(ds, frame, p)]
    if by_modality.get("RTDOSE") and not doses:
        raise GeometryError(f"the RTDOSE in {folder} is in another frame of reference than the CT ({frame})")
    if doses:
        case.dose, dose_meta = _choose_dose(doses, notes)
        dicom["rtdose"] = dose_meta
        frame = frame or dose_meta["FrameOfReferenceUID"]

    structs = by_modality.get("RTSTRUCT", [])
    roi_names: dict[int, str] = {}
    if structs:
        reference = case.ct if case.ct is not None else case.dose
        if reference is None:
            raise InputError(f"{folder} has an RTSTRUCT but no CT or RTDOSE to define the grid for its masks")
        path, parsed = _choose_structure_set(structs, frame, dicom.get("ct", {}).get("SeriesInstanceUID"), notes)
        rois, meta = parsed
        masks, colors, info = rasterize_rtstruct(parsed, reference, frame_of_reference=frame,
                                                 progress=sub(progress, 0.1, 0.9) if progress else None)
        for name, mask in masks.items():
            case.structures[name] = mask
            case.colors[name] = colors.get(name, case.color(name))
        roi_names = {roi.number: roi.tg263 for roi in rois}
        dicom["rtstruct"] = {k: v for k, v in info.items()}
        if info["without_contours"]:
            notes.append("ROIs without closed planar contours (absent from the case): "
                         + ", ".join(info["without_contours"]))
        if info["outside_grid"]:
            notes.append("ROIs entirely outside the image grid (absent from the case): "
                         + ", ".join(info["outside_grid"]))

    plans = by_modality.get("RTPLAN", [])
    if plans:
        wanted = set(dose_meta["ReferencedRTPlanSOPInstanceUIDs"]) if dose_meta else set()
        chosen = [(p, ds) for p, ds in plans if str(ds.get("SOPInstanceUID", "")) in wanted] or \
                 (plans if len(plans) == 1 else [])
        if chosen:
            plan = read_rtplan(chosen[0][0], roi_names)
            case.prescription = dict(plan["prescription"])
            case.fractions = plan["fractions"]
            dicom["rtplan"] = plan
        else:
            notes.append(f"{len(plans)} RTPLANs and none referenced by the dose: no prescription taken")
    if case.ct is None and case.dose is None:
        raise InputError(f"{folder} holds no CT series and no RTDOSE (modalities: {', '.join(sorted(by_modality))})")
    if "patient_id" not in case.metadata:
        with parsing(headers[0][0]):
            case.metadata["patient_id"] = str(headers[0][1].get("PatientID", "")) or folder.name
    return case


def _in_frame(ds, frame: str | None, path) -> bool:
    with parsing(path):
        return frame is None or str(ds.get("FrameOfReferenceUID", "")) in ("", frame)


def _choose_dose(doses: list, notes: list[str]) -> tuple[sitk.Image, dict]:
    with parsing(doses[0][0], "RTDOSE"):
        plan_sums = [(p, ds) for p, ds in doses if str(ds.get("DoseSummationType", "")) == "PLAN"]
    if plan_sums:
        dose, meta = read_rtdose(plan_sums[-1][0])
        if len(doses) > 1:
            notes.append(f"took the PLAN dose {plan_sums[-1][0].name} of {len(doses)} RTDOSE files")
        return dose, meta
    images = [read_rtdose(p) for p, _ in doses]
    if len(images) == 1:
        return images[0]
    grids = {tuple(Grid.of(img).differences(Grid.of(images[0][0]))) for img, _ in images}
    if grids != {()}:
        notes.append(f"{len(images)} RTDOSE files on different grids and none PLAN-summed: took the first")
        return images[0]
    total = sitk.GetArrayFromImage(images[0][0]).astype(np.float64)
    for img, _ in images[1:]:
        total += sitk.GetArrayViewFromImage(img)
    notes.append(f"summed {len(images)} RTDOSE files ({images[0][1]['DoseSummationType']}) into one dose")
    meta = dict(images[0][1], summed_from=[m["SOPInstanceUID"] for _, m in images])
    return from_array(total.astype(np.float32), images[0][0]), meta


def _choose_structure_set(structs: list, frame: str | None, ct_series: str | None, notes: list[str]):
    parsed = [(p, read_rtstruct(p)) for p, _ in structs]
    in_frame = [(p, r) for p, r in parsed if frame is None or frame in r[1]["FrameOfReferenceUIDs"]
                or any(roi.frame_of_reference == frame for roi in r[0])]
    if not in_frame:
        found = sorted({f for _, r in parsed for f in r[1]["FrameOfReferenceUIDs"]})
        raise GeometryError(f"the RTSTRUCT references frame of reference {', '.join(found) or 'none'}, but the "
                            f"image is in {frame}: the contours do not belong to this CT")
    on_series = [(p, r) for p, r in in_frame if ct_series and ct_series in r[1]["ReferencedSeriesInstanceUIDs"]]
    candidates = on_series or in_frame
    path, chosen = candidates[-1]
    if len(structs) > 1:
        notes.append(f"took RTSTRUCT {path.name} of {len(structs)}")
    return path, chosen
