"""Dose phantoms with closed-form DVHs, and a minimal RTDOSE + RTSTRUCT writer for them.

Used by the tests and benchmarks (and handy for checking any DVH tool): a linear dose gradient through a sphere or
a box has a DVH known exactly (spherical caps, uniform slabs), and the same phantom written as DICOM-RT can be fed to
other tools (dicompyler-core) for side-by-side comparisons.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def linear_dose(size_xyz, spacing, origin, gradient_gy_per_mm, dose_at_origin_gy: float) -> sitk.Image:
    """Dose D(p) = dose_at_origin + gradient . p on an axial grid (p in LPS mm), clipped at 0 Gy."""
    nx, ny, nz = size_xyz
    x = origin[0] + np.arange(nx) * spacing[0]
    y = origin[1] + np.arange(ny) * spacing[1]
    z = origin[2] + np.arange(nz) * spacing[2]
    gx, gy, gz = gradient_gy_per_mm
    dose = dose_at_origin_gy + gz * z[:, None, None] + gy * y[None, :, None] + gx * x[None, None, :]
    image = sitk.GetImageFromArray(np.clip(dose, 0, None).astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def sphere_contours(centre, radius: float, plane_z: np.ndarray, points: int = 180) -> list[np.ndarray]:
    """Axial circles of a sphere on the given planes (LPS mm), one (N, 3) polygon per plane that cuts it."""
    out = []
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    for z in plane_z:
        r2 = radius ** 2 - (z - centre[2]) ** 2
        if r2 <= 0:
            continue
        r = math.sqrt(r2)
        out.append(np.column_stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles),
                                    np.full(points, z)]))
    return out


def box_contours(low, high, plane_z: np.ndarray) -> list[np.ndarray]:
    """Axial rectangles of a box [low, high] (LPS mm) on the planes inside its z range."""
    return [np.array([[low[0], low[1], z], [high[0], low[1], z], [high[0], high[1], z], [low[0], high[1], z]])
            for z in plane_z if low[2] <= z <= high[2]]


def sphere_cap_fraction(distance_from_centre: np.ndarray | float, radius: float) -> np.ndarray:
    """Fraction of a sphere's volume beyond a plane at signed distance ``d`` from the centre (the cap of height
    ``R - d``)."""
    d = np.clip(np.asarray(distance_from_centre, dtype=float), -radius, radius)
    h = radius - d
    return np.pi * h ** 2 * (3 * radius - h) / 3 / (4 / 3 * np.pi * radius ** 3)


def sphere_dose_at_volume(fraction: float, centre_dose: float, gradient: float, radius: float) -> float:
    """Exact D_v for a sphere in a linear gradient: the dose above which the hottest ``fraction`` of it lies."""
    from scipy.optimize import brentq

    d = brentq(lambda t: sphere_cap_fraction(t, radius) - fraction, -radius, radius)
    return centre_dose + gradient * d


def write_rt_pair(folder: str | Path, dose: sitk.Image, structures: dict[str, list[np.ndarray]]
                  ) -> tuple[Path, Path]:
    """Write ``dose`` (Gy, axial grid) as RTDOSE and the contours as RTSTRUCT in one frame of reference."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame, study = generate_uid(), generate_uid()

    def base(sop_class: str, modality: str) -> FileDataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Phantom^DVH", "PHANTOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, generate_uid(), frame
        ds.StudyDate = ds.SeriesDate = "20240101"
        return ds

    values = sitk.GetArrayFromImage(dose).astype(np.float64)
    scaling = max(float(values.max()), 1e-6) / 60000.0
    rd = base("1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE")
    nz, ny, nx = values.shape
    sx, sy, sz = dose.GetSpacing()
    rd.ImagePositionPatient = [f"{v:.6f}" for v in dose.GetOrigin()]
    rd.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    rd.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
    rd.SliceThickness = f"{sz:.6f}"
    rd.Rows, rd.Columns, rd.NumberOfFrames = ny, nx, nz
    rd.GridFrameOffsetVector = [f"{k * sz:.6f}" for k in range(nz)]
    rd.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    rd.SamplesPerPixel, rd.PhotometricInterpretation = 1, "MONOCHROME2"
    rd.BitsAllocated = rd.BitsStored = 32
    rd.HighBit, rd.PixelRepresentation = 31, 0
    rd.DoseUnits, rd.DoseType, rd.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    rd.DoseGridScaling = f"{scaling:.10g}"
    rd.PixelData = np.round(values / scaling).astype(np.uint32).tobytes()
    dose_path = folder / "rtdose.dcm"
    rd.save_as(dose_path, enforce_file_format=True)

    rs = base("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT")
    rs.StructureSetLabel = "phantom"
    ref_frame = pydicom.Dataset()
    ref_frame.FrameOfReferenceUID = frame
    rs.ReferencedFrameOfReferenceSequence = [ref_frame]
    rois, roi_contours, observations = [], [], []
    for number, (name, contours) in enumerate(structures.items(), start=1):
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        items = []
        for points in contours:
            item = pydicom.Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}" for v in np.asarray(points, float).ravel()]
            items.append(item)
        rc.ContourSequence = items
        roi_contours.append(rc)
        obs = pydicom.Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType = "PTV" if name.upper().startswith("PTV") else "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    rs.StructureSetROISequence = rois
    rs.ROIContourSequence = roi_contours
    rs.RTROIObservationsSequence = observations
    struct_path = folder / "rtstruct.dcm"
    rs.save_as(struct_path, enforce_file_format=True)
    return dose_path, struct_path
