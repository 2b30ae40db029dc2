"""DICOM CT series reader: geometry against SimpleITK's own reader, and the bad-input rules."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import shared_path
from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.io.dicom_series import read_ct_series


def write_series(folder: Path, n: int = 6, *, z: list[float] | None = None, shape=(12, 10), spacing=(0.8, 0.7),
                 orientation=(1, 0, 0, 0, 1, 0), origin=(-20.0, 15.0, 0.0), step: float = 2.5, slope=1.0,
                 intercept=-1024.0, shift_per_slice=(0.0, 0.0), tilt: float | None = None, series_uid=None,
                 modality="CT", frame_uid=None, seed=0) -> tuple[Path, np.ndarray]:
    """A CT series written with pydicom (files in shuffled order); returns the folder and stored values (z, y, x)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    study_uid = generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    z = z if z is not None else [k * step for k in range(n)]
    stored = rng.integers(0, 3000, size=(len(z), *shape)).astype(np.uint16)
    order = list(range(len(z)))
    random.Random(seed).shuffle(order)
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID, ds.PatientName = "P1", "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = k + 1
        position = np.array(origin) + z[k] * normal + k * (shift_per_slice[0] * row + shift_per_slice[1] * col)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = step
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored[k].astype("<u2").tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder, stored


def sitk_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1),
                                         (0.8660254, 0.5, 0, -0.5, 0.8660254, 0)])
def test_geometry_and_values_match_simpleitk(tmp_path, orientation):
    folder, stored = write_series(tmp_path / "s", orientation=orientation)
    image, meta = read_ct_series(folder)
    reference = sitk_read(folder)
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(float),
                                  sitk.GetArrayFromImage(reference).astype(float))
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored.astype(int) - 1024)
    assert len(meta["SOPInstanceUIDs"]) == 6 and meta["PatientID"] == "P1"
    # SOP UIDs follow the image's slice order: slice k of the image is the file at the k-th position.
    first = pydicom.dcmread(meta["files"][0])
    assert first.SOPInstanceUID == meta["SOPInstanceUIDs"][0]


def test_fractional_rescale_gives_float_hu(tmp_path):
    folder, stored = write_series(tmp_path / "s", slope=0.5, intercept=-1000.25)
    image, _ = read_ct_series(folder)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), stored * 0.5 - 1000.25, atol=1e-3)


def test_most_slices_wins_and_series_can_be_named(tmp_path):
    write_series(tmp_path / "a", n=4, seed=1, series_uid="1.2.3.4")
    write_series(tmp_path / "b", n=7, seed=2, series_uid="1.2.3.5")
    image, meta = read_ct_series(tmp_path)
    assert image.GetSize()[2] == 7 and "most slices" in meta["series_choice"] and meta["other_series"] == ["1.2.3.4"]
    image, meta = read_ct_series(tmp_path, series_uid="1.2.3.4")
    assert image.GetSize()[2] == 4 and "requested" in meta["series_choice"]
    with pytest.raises(InputError, match="1.2.3.9 is not in"):
        read_ct_series(tmp_path, series_uid="1.2.3.9")


def test_missing_slice_is_named(tmp_path):
    folder, _ = write_series(tmp_path / "s", z=[0, 2.5, 5, 10, 12.5])
    with pytest.raises(GeometryError, match=r"1 missing slice\(s\) between positions 5.00 and 10.00"):
        read_ct_series(folder)


def test_uneven_spacing_is_refused_small_jitter_is_not(tmp_path):
    folder, _ = write_series(tmp_path / "bad", z=[0, 2.5, 5, 6.5, 9, 11.5])
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        read_ct_series(folder)
    folder, _ = write_series(tmp_path / "ok", z=[0, 2.51, 5, 7.49, 10])
    image, _ = read_ct_series(folder)
    assert image.GetSpacing()[2] == pytest.approx(2.5, abs=1e-6)


def test_gantry_tilt_is_refused(tmp_path):
    folder, _ = write_series(tmp_path / "sheared", shift_per_slice=(0.0, 0.4))
    with pytest.raises(GeometryError, match="gantry tilt"):
        read_ct_series(folder)
    folder, _ = write_series(tmp_path / "tagged", tilt=15.0)
    with pytest.raises(GeometryError, match="gantry tilt of 15 degrees"):
        read_ct_series(folder)


def test_mixed_orientation_and_duplicates_are_refused(tmp_path):
    folder, _ = write_series(tmp_path / "s", series_uid="1.2.9")
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    ds.save_as(sorted(folder.iterdir())[0])
    with pytest.raises(GeometryError, match="different orientations"):
        read_ct_series(folder)
    folder, _ = write_series(tmp_path / "d", series_uid="1.2.10")
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(folder / "copy_with_new_uid.dcm")
    with pytest.raises(GeometryError, match="same position"):
        read_ct_series(folder)


def test_truncated_slice_and_no_ct(tmp_path):
    folder, _ = write_series(tmp_path / "s")
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(FormatError, match="corrupt or incomplete"):
        read_ct_series(folder)
    folder, _ = write_series(tmp_path / "mr", modality="MR")
    with pytest.raises(InputError, match="no CT series.*MR"):
        read_ct_series(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT series"):
        read_ct_series(tmp_path / "empty")


def test_single_slice_files_from_pydicom_and_dicompyler():
    image, meta = read_ct_series(get_testdata_file("CT_small.dcm"))
    reference = sitk.ReadImage(get_testdata_file("CT_small.dcm"))
    assert image.GetSize() == (128, 128, 1)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(float),
                                  sitk.GetArrayFromImage(reference).astype(float))
    ct = shared_path("dicom-rt", "dicompyler-core_example", "ct.0.dcm")
    image, meta = read_ct_series(ct)
    assert image.GetSize() == (512, 512, 1) and image.GetSpacing()[2] == 3.0
    assert meta["FrameOfReferenceUID"] == "2.16.840.1.113662.2.12.0.3057.1241703565.36"
