"""DICOM-RT export: a Case -> CT series, RTSTRUCT, RTPLAN (prescription only) and RTDOSE, written with pydicom.

Layout of the output folder::

    CT/CT_0001.dcm ...   CT Image Storage, one file per slice
    RTSTRUCT.dcm         closed planar contours of every structure (TG-263 names, colours, ContourImageSequence)
    RTPLAN.dcm           prescription-only plan: target dose references, fractions, no beams (when there is a dose
                         or a prescription), so that the RTDOSE has a plan to reference
    RTDOSE.dcm           dose in Gy on its own grid, uint16 with DoseGridScaling, referencing RTPLAN.dcm
    provenance.json

:func:`write_contours_and_dose` writes given contours (no CT series) and a dose in one frame of reference: the phantoms
with closed-form DVHs (:mod:`rtrai.dose.dvh_phantoms`) that any DVH tool can read.

UIDs: a case read from DICOM keeps its Study, Frame of Reference, CT series and CT SOP Instance UIDs (when the slice
count is unchanged), so the RTSTRUCT references the clinic's own CT; new objects get new UIDs. ``anonymize=True``
applies the profile described in :data:`ANONYMIZATION_PROFILE`.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.image import Grid, check_finite, check_same_grid
from rtrai.core.structures import is_target
from rtrai.io.contours import index_to_physical, mask_to_contours
from rtrai.io.sop_classes import CT_CLASS, DETACHED_STUDY_CLASS, RTDOSE_CLASS, RTPLAN_CLASS, RTSTRUCT_CLASS

ANONYMIZATION_PROFILE = """\
--anonymize follows the DICOM PS3.15 Basic Application Level Confidentiality Profile for the attributes we write
(we write only the attributes listed in the README, never copy unknown ones from the input):
- PatientName -> 'Anonymous'; PatientID -> 'ANON-' + 8 random hex digits (or the id you give);
- PatientBirthDate, PatientSex, StudyDate/Time, StudyID, AccessionNumber, ReferringPhysicianName, StudyDescription,
  SeriesDescription of the input, instance creation/structure set/plan dates: empty or absent;
- every UID (study, series, frame of reference, SOP instances) replaced by a new one, consistently across the objects;
  no link to the source plan;
- kept: pixel data, geometry, structure names (TG-263), colours, dose, prescription and fractions;
- PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence (DCM 113100) are set;
- provenance.json records input checksums but not input paths (folder names often hold patient ids).
Burned-in text in the pixels is not looked for, and free-text structure names are kept as they are."""


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def _ds_number(value: float, digits: int = 10) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.{digits}g}"
    while len(text) > 16 and digits > 1:
        digits -= 1
        text = f"{value:.{digits}g}"
    return text


class _Context:
    """Patient/study identity and UIDs shared by every object of one export."""

    def __init__(self, case: Case, anonymize: bool, anonymous_id: str | None):
        source = case.metadata.get("dicom", {}) if case.metadata.get("source") == "dicom" else {}
        ct = source.get("ct", {})
        self.anonymize = anonymize
        self.now = _dt.datetime.now()
        nz = case.ct.GetSize()[2] if case.ct is not None else 0  # no CT: contours and dose only
        keep_ct = bool(ct) and not anonymize and len(ct.get("SOPInstanceUIDs", [])) == nz
        keep_study = bool(ct) and not anonymize
        self.study_uid = ct["StudyInstanceUID"] if keep_study and ct.get("StudyInstanceUID") else _new_uid()
        self.frame_uid = ct["FrameOfReferenceUID"] if keep_study and ct.get("FrameOfReferenceUID") else _new_uid()
        self.ct_series_uid = ct["SeriesInstanceUID"] if keep_ct and ct.get("SeriesInstanceUID") else _new_uid()
        self.ct_sop_uids = list(ct["SOPInstanceUIDs"]) if keep_ct and all(ct["SOPInstanceUIDs"]) else \
            [_new_uid() for _ in range(nz)]
        self.ct_original = keep_ct
        self.source_plan_uid = None if anonymize else source.get("rtplan", {}).get("SOPInstanceUID") or None
        if anonymize:
            self.patient = {"PatientName": "Anonymous",
                            "PatientID": anonymous_id or f"ANON-{secrets.token_hex(4).upper()}",
                            "PatientBirthDate": "", "PatientSex": ""}
            self.study = {"StudyDate": "", "StudyTime": "", "StudyID": "", "AccessionNumber": "",
                          "ReferringPhysicianName": ""}
        else:
            self.patient = {"PatientName": ct.get("PatientName") or case.patient_id,
                            "PatientID": ct.get("PatientID") or case.patient_id,
                            "PatientBirthDate": ct.get("PatientBirthDate", ""),
                            "PatientSex": ct.get("PatientSex", "")}
            self.study = {"StudyDate": ct.get("StudyDate") or self.now.strftime("%Y%m%d"),
                          "StudyTime": ct.get("StudyTime") or self.now.strftime("%H%M%S"),
                          "StudyID": ct.get("StudyID", ""), "AccessionNumber": ct.get("AccessionNumber", ""),
                          "ReferringPhysicianName": ct.get("ReferringPhysicianName", "")}
            if ct.get("StudyDescription"):
                self.study["StudyDescription"] = ct["StudyDescription"]
        self.patient_position = "" if anonymize else ct.get("PatientPosition", "")

    def date(self) -> str:
        return "" if self.anonymize else self.now.strftime("%Y%m%d")

    def time(self) -> str:
        return "" if self.anonymize else self.now.strftime("%H%M%S")


def _base(ctx: _Context, sop_class: str, sop_uid: str, modality: str, series_uid: str, series_number: int,
          description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    from rtrai import __version__

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    if not ctx.anonymize:
        ds.InstanceCreationDate, ds.InstanceCreationTime = ctx.date(), ctx.time()
    for key, value in {**ctx.patient, **ctx.study}.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = ctx.study_uid
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    if modality != "CT":
        ds.OperatorsName = ""  # RT Series: type 2
    ds.Manufacturer = "RTRadiomicsAI"
    ds.ManufacturerModelName = "rtrai"
    ds.SoftwareVersions = __version__
    if ctx.anonymize:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "rtrai --anonymize: PS3.15 basic profile"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = [code]
    return ds


def _save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _plane(ds, grid: Grid) -> np.ndarray:
    """Image Plane attributes of a grid; returns the direction matrix (columns x, y, z)."""
    direction = np.array(grid.direction).reshape(3, 3)
    ds.ImageOrientationPatient = [_ds_number(v) for v in np.r_[direction[:, 0], direction[:, 1]]]
    ds.PixelSpacing = [_ds_number(grid.spacing[1]), _ds_number(grid.spacing[0])]  # row spacing, column spacing
    ds.SliceThickness = _ds_number(grid.spacing[2])
    ds.Rows, ds.Columns = grid.size[1], grid.size[0]
    return direction


def _encode_ct(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored pixels, slope and intercept: exact for integral HU (the usual case), 16-bit quantised otherwise."""
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.round(values)):
        if low >= -32768 and high <= 32767:
            return values.astype(np.int16), 1.0, 0.0
        if high - low <= 65535:
            return (values - low).astype(np.uint16), 1.0, low
    slope = (high - low) / 65535 or 1.0
    slope = float(_ds_number(slope))
    return np.round((values - low) / slope).clip(0, 65535).astype(np.uint16), slope, low


def write_ct(case: Case, folder: Path, ctx: _Context, progress=None) -> list[Path]:
    from rtrai.core.progress import track

    grid = Grid.of(case.ct)
    stored, slope, intercept = _encode_ct(sitk.GetArrayFromImage(case.ct))
    signed = stored.dtype == np.int16
    (folder / "CT").mkdir()
    written = []
    direction = np.array(grid.direction).reshape(3, 3)
    for k in track(range(grid.size[2]), progress, message="writing CT slices"):
        ds = _base(ctx, CT_CLASS, ctx.ct_sop_uids[k], "CT", ctx.ct_series_uid, 1, "CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if ctx.ct_original else ["DERIVED", "SECONDARY", "AXIAL"]
        ds.FrameOfReferenceUID = ctx.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = ctx.patient_position
        ds.Laterality = ""  # type 2C: the body part is not a paired organ
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = ""
        ds.KVP = ""
        _plane(ds, grid)
        position = np.array(grid.origin) + k * grid.spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.SliceLocation = _ds_number(float(position @ np.cross(direction[:, 0], direction[:, 1])))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2" if signed else "<u2").tobytes()
        written.append(_save(ds, folder / "CT" / f"CT_{k + 1:04d}.dcm"))
    return written


def write_rtstruct(case: Case, path: Path, ctx: _Context, progress=None) -> tuple[Path, str, dict[str, int]]:
    """RTSTRUCT of every structure, contoured on the CT's slices; returns (path, SOP instance UID, ROI number by
    name)."""
    from rtrai.core.progress import track

    grid = Grid.of(case.ct)
    rois = []
    for name in track(list(case.structures), progress, message="contouring structures"):
        check_same_grid(case.ct, case.structures[name], ("CT", f"structure '{name}'"))
        mask = sitk.GetArrayViewFromImage(case.structures[name])
        loops = [(k, index_to_physical(np.c_[loop, np.full(len(loop), k)], grid))
                 for k, slice_loops in mask_to_contours(mask).items() for loop in slice_loops]
        rois.append((name, case.color(name), loops))
    return _write_rtstruct(rois, path, ctx)


def _write_rtstruct(rois: list, path: Path, ctx: _Context) -> tuple[Path, str, dict[str, int]]:
    """RTSTRUCT of ``rois``: (name, RGB in 0..1, [(CT slice index or None, (N, 3) LPS mm points), ...]); contours
    reference their CT slice when the export has a CT series."""
    from pydicom.dataset import Dataset

    sop_uid = _new_uid()
    ds = _base(ctx, RTSTRUCT_CLASS, sop_uid, "RTSTRUCT", _new_uid(), 2, "RTSTRUCT")
    ds.FrameOfReferenceUID = ctx.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "rtrai"
    ds.StructureSetDate, ds.StructureSetTime = ctx.date(), ctx.time()
    ds.InstanceNumber = 1

    def image_ref(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_CLASS
        item.ReferencedSOPInstanceUID = ctx.ct_sop_uids[k]
        return item

    frame = Dataset()
    frame.FrameOfReferenceUID = ctx.frame_uid
    if ctx.ct_sop_uids:
        series = Dataset()
        series.SeriesInstanceUID = ctx.ct_series_uid
        series.ContourImageSequence = [image_ref(k) for k in range(len(ctx.ct_sop_uids))]
        study = Dataset()
        study.ReferencedSOPClassUID = DETACHED_STUDY_CLASS
        study.ReferencedSOPInstanceUID = ctx.study_uid
        study.RTReferencedSeriesSequence = [series]
        frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]

    structure_set, contours, observations, numbers = [], [], [], {}
    for number, (name, color, loops) in enumerate(rois, 1):
        numbers[name] = number
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ctx.frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = ""
        structure_set.append(roi)
        item = Dataset()
        item.ROIDisplayColor = [int(round(255 * min(max(c, 0.0), 1.0))) for c in color]
        item.ReferencedROINumber = number
        sequence = []
        for k, points in loops:
            points = np.asarray(points, dtype=float)
            contour = Dataset()
            if k is not None:
                contour.ContourImageSequence = [image_ref(k)]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(sequence) + 1
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
            sequence.append(contour)
        if sequence:  # an empty mask is written as an ROI without contours
            item.ContourSequence = sequence
        contours.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = _interpreted_type(name)
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = structure_set
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"
    return _save(ds, path), sop_uid, numbers


def _interpreted_type(name: str) -> str:
    upper = name.upper()
    if upper == "EXTERNAL":
        return "EXTERNAL"
    if is_target(name):
        return upper[:3] if upper[:3] in ("PTV", "CTV", "GTV") else "PTV"
    return "ORGAN"


def write_rtplan(case: Case, path: Path, ctx: _Context, structure_set_uid: str | None,
                 roi_numbers: dict[str, int]) -> tuple[Path, str]:
    """A prescription-only RT Plan (no beams): target dose references and the number of fractions."""
    from pydicom.dataset import Dataset

    sop_uid = _new_uid()
    ds = _base(ctx, RTPLAN_CLASS, sop_uid, "RTPLAN", _new_uid(), 3, "prescription (rtrai)")
    ds.FrameOfReferenceUID = ctx.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.RTPlanLabel = "rtrai"
    ds.RTPlanDate, ds.RTPlanTime = ctx.date(), ctx.time()
    if structure_set_uid:
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RTSTRUCT_CLASS
        ref.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = [ref]
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    if ctx.source_plan_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RTPLAN_CLASS
        ref.ReferencedSOPInstanceUID = ctx.source_plan_uid
        ref.RTPlanRelationship = "PREDECESSOR"
        ds.ReferencedRTPlanSequence = [ref]
    references = []
    for number, (name, dose) in enumerate(sorted(case.prescription.items(), key=lambda kv: -kv[1]), 1):
        ref = Dataset()
        ref.DoseReferenceNumber = number
        ref.DoseReferenceUID = _new_uid()
        if name in roi_numbers:
            ref.DoseReferenceStructureType = "VOLUME"
            ref.ReferencedROINumber = roi_numbers[name]
        else:
            ref.DoseReferenceStructureType = "SITE"
        ref.DoseReferenceDescription = name
        ref.DoseReferenceType = "TARGET"
        ref.TargetPrescriptionDose = _ds_number(float(dose))
        references.append(ref)
    if references:
        ds.DoseReferenceSequence = references
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = case.fractions if case.fractions else ""
    group.NumberOfBeams = 0
    group.NumberOfBrachyApplicationSetups = 0
    ds.FractionGroupSequence = [group]
    ds.ApprovalStatus = "UNAPPROVED"
    return _save(ds, path), sop_uid


def write_rtdose(image: sitk.Image, path: Path, ctx: _Context, plan_uid: str | None) -> Path:
    """RTDOSE on the dose's own grid: uint16 pixels times DoseGridScaling = Gy, relative GridFrameOffsetVector;
    referencing the RTPLAN ``plan_uid`` when there is one."""
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    check_finite(image, "dose")
    dose = sitk.GetArrayFromImage(image).astype(np.float64)
    if dose.size and dose.min() < 0:
        raise InputError("dose has negative values; RTDOSE stores non-negative dose")
    grid = Grid.of(image)
    peak = float(dose.max()) if dose.size else 0.0
    # 16-bit pixels: quantisation <= peak / 131070 (under 0.001 % of the maximum); every reader takes them, and
    # dciodvfy (dicom3tools 1.00) aborts on 32-bit RTDOSE pixel data, so 16 bits is also what can be validated.
    scaling = float(_ds_number(peak / 65000)) if peak > 0 else 1.0  # 65000 < 2^16 - 1 leaves room for round-off
    ds = _base(ctx, RTDOSE_CLASS, _new_uid(), "RTDOSE", _new_uid(), 4, "dose (rtrai)")
    ds.FrameOfReferenceUID = ctx.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate, ds.ContentTime = ctx.date(), ctx.time()
    direction = _plane(ds, grid)
    ds.ImagePositionPatient = [_ds_number(v) for v in grid.origin]
    normal = np.cross(direction[:, 0], direction[:, 1])
    sign = 1.0 if float(direction[:, 2] @ normal) > 0 else -1.0  # left-handed grid: frames run against the normal
    ds.NumberOfFrames = grid.size[2]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds_number(sign * k * grid.spacing[2]) for k in range(grid.size[2])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = _ds_number(scaling)
    if plan_uid:
        plan = Dataset()
        plan.ReferencedSOPClassUID = RTPLAN_CLASS
        plan.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = [plan]
    ds.PixelData = np.round(dose / scaling).clip(0, 65535).astype("<u2").tobytes()
    return _save(ds, path)


def write_dicom_files(case: Case, folder: str | os.PathLike, anonymize: bool = False,
                      anonymous_id: str | None = None, progress=None) -> dict[str, list[Path]]:
    """Write the DICOM objects of a case into an existing folder (no atomicity: see :func:`write_dicom_case`)."""
    from rtrai.core.errors import require
    from rtrai.core.progress import sub

    require("pydicom")
    if case.ct is None:
        raise InputError("DICOM export needs a CT (or another image) to define the series the structures refer to")
    case.validate()
    folder = Path(folder)
    ctx = _Context(case, anonymize, anonymous_id)
    written: dict[str, list[Path]] = {"CT": write_ct(case, folder, ctx, sub(progress, 0.0, 0.4) if progress else None)}
    structure_set_uid, numbers = None, {}
    if case.structures:
        path, structure_set_uid, numbers = write_rtstruct(case, folder / "RTSTRUCT.dcm", ctx,
                                                          sub(progress, 0.4, 0.9) if progress else None)
        written["RTSTRUCT"] = [path]
    if case.dose is not None or case.prescription or case.fractions:
        path, plan_uid = write_rtplan(case, folder / "RTPLAN.dcm", ctx, structure_set_uid, numbers)
        written["RTPLAN"] = [path]
        if case.dose is not None:
            written["RTDOSE"] = [write_rtdose(case.dose, folder / "RTDOSE.dcm", ctx, plan_uid)]
    if progress:
        progress(1.0, "done")
    return written


def write_dicom_case(case: Case, outdir: str | os.PathLike, anonymize: bool = False,
                     anonymous_id: str | None = None, inputs: list | None = None, progress=None
                     ) -> dict[str, list[Path]]:
    """Write the case as DICOM into ``outdir`` atomically, with provenance.json; returns the files by object.

    ``inputs``: the paths the case was read from, for provenance (checksums only when anonymising).
    """
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder

    outdir = Path(outdir)
    inputs = [Path(p) for p in inputs or []]
    with output_folder(outdir) as tmp:
        written = write_dicom_files(case, tmp, anonymize, anonymous_id, progress)
        extra = {"objects": {kind: len(paths) for kind, paths in written.items()}}
        if anonymize:
            extra["input_sha256"] = [provenance.sha256_path(p) for p in inputs if p.exists()]
        record = provenance.record("export-dicom", {"anonymize": anonymize},
                                   inputs=[] if anonymize else inputs, extra=extra)
        provenance.write(tmp, record)
    return {kind: [outdir / p.relative_to(tmp) for p in paths] for kind, paths in written.items()}


def write_contours_and_dose(folder: str | os.PathLike, dose: sitk.Image, contours: dict[str, list[np.ndarray]],
                            patient_id: str = "PHANTOM") -> tuple[Path, Path]:
    """Write ``dose`` (Gy) as ``rtdose.dcm`` and closed planar ``contours`` (name -> (N, 3) polygons in LPS mm) as
    ``rtstruct.dcm`` in one frame of reference, without a CT series; returns (RTDOSE path, RTSTRUCT path). For
    phantoms whose DVHs are known in closed form, to be read by any DVH tool (dicompyler-core, plastimatch, rtrai)."""
    from rtrai.core.errors import require
    from rtrai.core.structures import color_of

    require("pydicom")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = _Context(Case(metadata={"patient_id": patient_id}), anonymize=False, anonymous_id=None)
    rois = [(name, color_of(name), [(None, points) for points in loops]) for name, loops in contours.items()]
    dose_path = write_rtdose(dose, folder / "rtdose.dcm", ctx, None)
    struct_path, _, _ = _write_rtstruct(rois, folder / "rtstruct.dcm", ctx)
    return dose_path, struct_path
