"""DICOM Segmentation (SEG) objects, written and read with highdicom.

Written: a BINARY segmentation, one segment per structure, on the CT grid, referencing the CT series (each frame
names the CT slice it was drawn on); frames that hold no voxel of a segment are left out (highdicom's default), so
a SEG of a few organs on a 512x512 CT stays small. Segment labels are the structures' (TG-263) names, colours go into
RecommendedDisplayCIELabValue, and the coded anatomy comes from :data:`CODES`: TG-263 names -> SNOMED CT concepts,
taken by name from pydicom's copy of the DICOM code tables (PS3.16 CID 7150 segmentation property categories,
CID 7151 anatomic structures, CID 9580/9534 RT segmentation categories and radiotherapy targets, CID 244
laterality), so no code number is typed here. A name without a table entry is coded as Tissue / Tissue, which is what
3D Slicer writes for a segment it knows nothing about; its label keeps the name.

Read: :func:`read_dicom_seg` gives one mask per segment (named by its label, through TG-263 mapping) on the SEG's own
grid or, given the CT, on the CT grid (voxel for voxel what was written); :func:`read_dicom_with_segmentations` is
what :func:`rtrai.io.case_io.read_case` calls for DICOM input, so ``rtrai convert`` reads a SEG beside a CT, or alone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import GeometryError, InputError
from rtrai.core.structures import is_target, to_tg263

SEGMENTATION_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_FILE = "SEG.dcm"

# TG-263 name (without its _L/_R) -> (category, type) as attribute names of pydicom.sr.codedict.codes.SCT/.DCM.
CODES: dict[str, tuple[str, str]] = {
    "Brainstem": ("SCT.AnatomicalStructure", "SCT.BrainStem"),
    "SpinalCord": ("SCT.AnatomicalStructure", "SCT.SpinalCord"),
    "Parotid": ("SCT.AnatomicalStructure", "SCT.ParotidGland"),
    "Esophagus": ("SCT.AnatomicalStructure", "SCT.Esophagus"),
    "Larynx": ("SCT.AnatomicalStructure", "SCT.Larynx"),
    "Bone_Mandible": ("SCT.AnatomicalStructure", "SCT.Mandible"),
    "Brain": ("SCT.AnatomicalStructure", "SCT.Brain"),
    "Eye": ("SCT.AnatomicalStructure", "SCT.Eye"),
    "OpticNrv": ("SCT.AnatomicalStructure", "SCT.OpticNerve"),
    "OpticChiasm": ("SCT.AnatomicalStructure", "SCT.OpticChiasm"),
    "Glnd_Submand": ("SCT.AnatomicalStructure", "SCT.SubmandibularGland"),
    "Cavity_Oral": ("SCT.AnatomicalStructure", "SCT.OralCavity"),
    "Lung": ("SCT.AnatomicalStructure", "SCT.Lung"),
    "Heart": ("SCT.AnatomicalStructure", "SCT.Heart"),
    "Trachea": ("SCT.AnatomicalStructure", "SCT.Trachea"),
    "External": ("SCT.AnatomicalStructure", "SCT.EntireBody"),
    "Bone": ("SCT.Tissue", "SCT.Bone"),
    # Targets: the RT Target category (CID 9580) with the SNOMED CT target volumes of CID 9534.
    "PTV": ("DCM.RTTarget", "SCT.PlanningTargetVolume"),
    "CTV": ("DCM.RTTarget", "SCT.ClinicalTargetVolume"),
    "GTV": ("DCM.RTTarget", "SCT.GrossTumorVolume"),
}
UNKNOWN = ("SCT.Tissue", "SCT.Tissue")
LATERALITY = {"_L": "SCT.Left", "_R": "SCT.Right"}


def _code(path: str):
    from pydicom.sr.codedict import codes

    scheme, name = path.split(".")
    return getattr(getattr(codes, scheme), name)


def segment_codes(name: str) -> tuple[object, object, object | None]:
    """(category, type, laterality modifier or None) for a structure name, as pydicom ``Code`` objects."""
    tg = to_tg263(name)
    side = tg[-2:] if tg[-2:] in LATERALITY else None
    base = tg[:-2] if side else tg
    if is_target(tg):
        base = next((kind for kind in ("PTV", "CTV", "GTV") if tg.upper().startswith(kind)), base)
    category, kind = CODES.get(base, UNKNOWN)
    laterality = _code(LATERALITY[side]) if side and base in CODES else None
    return _code(category), _code(kind), laterality


def _description(number: int, name: str, color, algorithm: dict | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    category, kind, laterality = segment_codes(name)
    if laterality is not None:  # highdicom has no argument for it; the SEG IOD puts it inside the type's item
        kind = hd.sr.CodedConcept(kind.value, kind.scheme_designator, kind.meaning)
        modifier = hd.sr.CodedConcept(laterality.value, laterality.scheme_designator, laterality.meaning)
        kind.SegmentedPropertyTypeModifierCodeSequence = [modifier]
    identification = None
    if algorithm:
        identification = hd.AlgorithmIdentificationSequence(
            name=str(algorithm["name"])[:64], family=codes.DCM.ArtificialIntelligence,
            version=str(algorithm.get("version", ""))[:64] or "unknown")
    rgb = np.clip(np.asarray(color, float), 0, 1)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type="AUTOMATIC" if algorithm else "MANUAL", algorithm_identification=identification,
        tracking_uid=hd.UID(), tracking_id=name[:64],
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in rgb)))


def write_dicom_seg(case: Case, path: str | os.PathLike, ct_files: list[Path], algorithm: dict | None = None) -> Path:
    """Write the case's structures as a binary DICOM SEG referencing the CT slices in ``ct_files`` (one file per
    slice of ``case.ct``, in slice order, as :func:`rtrai.io.dicomrt_export.write_ct` writes them).

    ``algorithm``: ``{"name", "version"}`` of the model that made the contours (segments AUTOMATIC); None for
    contours of unknown or human origin (MANUAL)."""
    import highdicom as hd
    import pydicom

    from rtrai import __version__

    if not case.structures:
        raise InputError("a DICOM SEG needs at least one structure; the case has none")
    if case.ct is None or len(ct_files) != case.ct.GetSize()[2]:
        raise InputError(f"a DICOM SEG references its CT slice by slice: {len(ct_files)} CT files for "
                         f"{case.ct.GetSize()[2] if case.ct is not None else 0} slices")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]
    names = list(case.structures)
    pixels = np.zeros(tuple(reversed(case.ct.GetSize())) + (len(names),), dtype=bool)  # (slices, rows, columns, segs)
    for i, name in enumerate(names):
        pixels[..., i] = sitk.GetArrayViewFromImage(case.structures[name]) > 0
    descriptions = [_description(i + 1, n, case.color(n), algorithm) for i, n in enumerate(names)]
    with warnings.catch_warnings():  # the CT's PatientName is copied as it is (a one-part name such as an id is ok)
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=3,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="RTRadiomicsAI",
            manufacturer_model_name="rtrai", software_versions=__version__, device_serial_number="none",
            series_description="SEG", content_label="RTRAI", content_description="structures")
    first = sources[0]
    if str(first.get("PatientIdentityRemoved", "")) == "YES":  # an anonymised export stays anonymised
        seg.PatientIdentityRemoved = "YES"
        for key in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            if key in first:
                setattr(seg, key, first[key].value)
    path = Path(path)
    seg.save_as(path, enforce_file_format=True)
    return path


def write_seg_files(case: Case, folder: str | os.PathLike, rtstruct: bool = True, algorithm: dict | None = None,
                    anonymize: bool = False, anonymous_id: str | None = None, progress=None) -> dict[str, list[Path]]:
    """CT series (+ RTSTRUCT/RTPLAN/RTDOSE when ``rtstruct``) and ``SEG.dcm`` into an existing folder (the caller
    makes it atomic); returns the files by object."""
    from rtrai.core.errors import require
    from rtrai.core.progress import sub
    from rtrai.io.dicomrt_export import write_dicom_files

    require("highdicom", "dicom")
    if not case.structures:
        raise InputError("a DICOM SEG needs at least one structure; the case has none")
    folder = Path(folder)
    written_case = case if rtstruct else Case(ct=case.ct, metadata=case.metadata)
    written = write_dicom_files(written_case, folder, anonymize, anonymous_id,
                                sub(progress, 0.0, 0.8) if progress else None)
    written["SEG"] = [write_dicom_seg(case, folder / SEG_FILE, written["CT"], algorithm)]
    if progress:
        progress(1.0, "done")
    return written


def write_dicom_seg_case(case: Case, outdir: str | os.PathLike, rtstruct: bool = True, anonymize: bool = False,
                         anonymous_id: str | None = None, inputs: list | None = None, progress=None
                         ) -> dict[str, list[Path]]:
    """:func:`write_seg_files` into ``outdir`` atomically, with provenance.json (as ``rtrai export-dicom`` does)."""
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder

    outdir = Path(outdir)
    inputs = [Path(p) for p in inputs or []]
    with output_folder(outdir) as tmp:
        written = write_seg_files(case, tmp, rtstruct, None, anonymize, anonymous_id, progress)
        extra = {"objects": {kind: len(paths) for kind, paths in written.items()}}
        if anonymize:
            extra["input_sha256"] = [provenance.sha256_path(p) for p in inputs if p.exists()]
        provenance.write(tmp, provenance.record("export-dicom", {"anonymize": anonymize, "seg": True},
                                                inputs=[] if anonymize else inputs, extra=extra))
    return {kind: [outdir / p.relative_to(tmp) for p in paths] for kind, paths in written.items()}


# ------------------------------------------------------------------------------------------------------------- read

def is_dicom_seg(path: Path) -> bool:
    """True for a DICOM Segmentation file (read up to its SOP Class UID only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
        return str(ds.get("SOPClassUID", "")) == SEGMENTATION_CLASS
    except Exception:  # noqa: BLE001 - whatever is not readable DICOM is simply not a SEG
        return False


def _grid_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A (slices, rows, columns) array with highdicom's affine (array indices -> LPS mm) as a SimpleITK image."""
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)  # per array axis: slice, row, column
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    direction = np.column_stack([columns[:, 2] / spacing[2], columns[:, 1] / spacing[1], columns[:, 0] / spacing[0]])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def read_dicom_seg(path: str | os.PathLike, reference: sitk.Image | None = None, frame_of_reference: str | None = None
                   ) -> tuple[dict[str, sitk.Image], dict[str, tuple[float, float, float]], dict]:
    """Masks (TG-263 name -> uint8 image), colours and metadata of a DICOM SEG.

    ``reference``: the grid to put the masks on (the CT the SEG was drawn on); the masks are then resampled onto it
    with nearest neighbour, which on the grid the SEG was written from is an exact copy. Without it the masks lie on
    the SEG's own grid (the span of its stored frames). ``frame_of_reference``: the CT's, which the SEG must share.
    """
    import highdicom as hd

    from rtrai.core.errors import require
    from rtrai.io.dicom_series import parsing

    require("highdicom", "dicom")
    path = Path(path)
    with parsing(path, "DICOM SEG"):
        seg = hd.seg.segread(path)
        if frame_of_reference and str(seg.get("FrameOfReferenceUID", "")) != frame_of_reference:
            raise GeometryError(f"the DICOM SEG {path} is in frame of reference {seg.get('FrameOfReferenceUID', '')}, "
                                f"the CT in {frame_of_reference}: the segments do not belong to this CT")
        kind = str(seg.segmentation_type.value).lower()
        volume = seg.get_volume(combine_segments=False, dtype=np.float32)
        if reference is None:  # axes as close to LPS as the orientation allows (highdicom may stack frames S->I)
            volume = volume.to_patient_orientation("SPL")  # array (z, y, x) of an identity-direction image
        numbers = list(seg.segment_numbers)
        descriptions = {n: seg.get_segment_description(n) for n in numbers}
    array = volume.array
    if array.ndim == 3:
        array = array[..., None]
    masks, colors, used = {}, {}, set()
    for i, number in enumerate(numbers):
        description = descriptions[number]
        label = str(description.segment_label).strip() or f"Segment_{number}"
        name = to_tg263(label)
        if name in used:  # two segments with one TG-263 name: the later keeps its label
            name = label if label not in used else f"{label}_{number}"
        used.add(name)
        mask = _grid_image(array[..., i] >= 0.5, volume.affine)
        if reference is not None:
            mask = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        masks[name] = mask
        lab = description.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb()
            colors[name] = tuple(float(c) / 255.0 for c in rgb)
    meta = {"SOPInstanceUID": str(seg.SOPInstanceUID), "SeriesInstanceUID": str(seg.SeriesInstanceUID),
            "FrameOfReferenceUID": str(seg.get("FrameOfReferenceUID", "")), "type": kind, "path": str(path),
            "ReferencedSeriesInstanceUIDs": sorted({str(s.SeriesInstanceUID)
                                                    for s in seg.get("ReferencedSeriesSequence", [])}),
            "segments": {n: str(descriptions[k].segment_label) for n, k in zip(masks, numbers)}}
    if reference is not None:
        lost = [n for n, m in masks.items() if not sitk.GetArrayViewFromImage(m).any()]
        if lost:
            meta["outside_grid"] = lost
            for n in lost:
                del masks[n]
    return masks, colors, meta


def read_dicom_with_segmentations(path: str | os.PathLike) -> Case:
    """A DICOM folder (or file) as a Case, DICOM SEG included.

    Without a SEG this is :func:`rtrai.io.dicomrt.read_dicom_folder`. With one, its segments become the case's
    structures on the CT grid; where an RTSTRUCT holds the same structure the SEG's voxels win (they are exact, the
    RTSTRUCT's contours are rasterised again), recorded in ``metadata["dicom"]["notes"]``. With several SEGs in the
    CT's frame of reference the one referencing the CT series is taken (the last in path order if several). A SEG
    alone is read on its own grid.
    """
    from rtrai.io.dicom_series import list_files
    from rtrai.io.dicomrt import read_dicom_folder

    path = Path(path)
    files = list_files(path)
    segs = [p for p in files if is_dicom_seg(p)]
    if not segs:
        return read_dicom_folder(path)
    seg_set = set(segs)
    others = [p for p in files if p not in seg_set]
    if not any(_dicom_header(p) for p in others):  # SEGs only: the masks on the SEG's own grid
        masks, colors, meta = read_dicom_seg(segs[-1])
        case = Case(metadata={"source": "dicom-seg", "source_path": str(path), "patient_id": _patient_id(segs[-1]),
                              "dicom": {"seg": meta, "notes": []}})
        for name, mask in masks.items():
            case.structures[name], case.colors[name] = mask, colors.get(name, case.color(name))
        return case
    case = read_dicom_folder(path)
    if case.ct is None:
        raise InputError(f"{path}: a DICOM SEG needs the CT it was drawn on (found none beside it)")
    dicom = case.metadata.setdefault("dicom", {})
    notes = dicom.setdefault("notes", [])
    ct = dicom.get("ct", {})
    chosen = _choose_seg(segs, ct.get("FrameOfReferenceUID"), ct.get("SeriesInstanceUID"), notes)
    masks, colors, meta = read_dicom_seg(chosen, case.ct, ct.get("FrameOfReferenceUID"))
    replaced = sorted(set(masks) & set(case.structures))
    if replaced:
        notes.append("structures taken from the DICOM SEG rather than the RTSTRUCT: " + ", ".join(replaced))
    if meta.get("outside_grid"):
        notes.append("segments entirely outside the CT grid (absent from the case): " + ", ".join(meta["outside_grid"]))
    for name, mask in masks.items():
        case.structures[name] = mask
        case.colors[name] = colors.get(name, case.color(name))
    dicom["seg"] = meta
    return case


def _dicom_header(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - not DICOM
        return None
    return ds if "SOPClassUID" in ds else None


def _patient_id(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "")) or path.stem


def _choose_seg(segs: list[Path], frame: str | None, series: str | None, notes: list[str]) -> Path:
    import pydicom

    from rtrai.io.dicom_series import parsing

    headers = []
    for p in segs:
        with parsing(p, "DICOM SEG"):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            headers.append((p, str(ds.get("FrameOfReferenceUID", "")),
                            {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}))
    in_frame = [h for h in headers if not frame or h[1] == frame]
    if not in_frame:
        raise GeometryError(f"the DICOM SEG references frame of reference {headers[-1][1] or 'none'}, but the CT is in "
                            f"{frame}: the segments do not belong to this CT")
    on_series = [h for h in in_frame if series and series in h[2]]
    chosen = (on_series or in_frame)[-1][0]
    if len(segs) > 1:
        notes.append(f"took DICOM SEG {chosen.name} of {len(segs)}")
    return chosen

