"""DICOM SEG: coded anatomy, dciodvfy on what we write, voxel-identical round trips through ``rtrai convert`` (beside
the CT and alone), ``rtrai export-dicom --seg`` and ``rtrai segment --format dicom-seg`` on OpenKBP pt_201."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from rtrai.core.errors import GeometryError
from rtrai.core.image import Grid
from test_dicomrt import _cli, dciodvfy_errors, small_case

pytest.importorskip("highdicom")
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy not installed (Debian dicom3tools, which install.sh installs)")


def arrays(case) -> dict[str, np.ndarray]:
    return {name: sitk.GetArrayFromImage(mask) for name, mask in case.structures.items()}


def test_tg263_names_map_to_snomed_codes():
    from rtrai.io.dicom_seg import segment_codes

    category, kind, side = segment_codes("Parotid_L")
    assert (category.value, category.scheme_designator) == ("91723000", "SCT")  # Anatomical Structure
    assert (kind.value, kind.meaning, side.value) == ("45289007", "Parotid gland", "7771000")  # Left
    assert segment_codes("Parotid_R")[2].value == "24028007"  # Right
    assert segment_codes("Brainstem")[1].value == "119238007"
    assert segment_codes("Bone_Mandible")[1].value == "91609006"
    category, kind, side = segment_codes("PTV70")
    assert (category.value, category.scheme_designator, kind.value, side) == ("130041", "DCM", "228793007", None)
    assert segment_codes("Lesion 3")[1].meaning == "Tissue"  # unknown: Tissue / Tissue, as 3D Slicer writes


@needs_dciodvfy
def test_seg_of_a_small_case_passes_dciodvfy_and_reads_back_exactly(tmp_path):
    from rtrai.io.case_io import read_case
    from rtrai.io.dicom_seg import write_dicom_seg_case

    case = small_case()
    for anonymize in (False, True):
        out = tmp_path / f"out{anonymize}"
        written = write_dicom_seg_case(case, out, anonymize=anonymize)
        assert {k: len(v) for k, v in written.items()} == {"CT": 6, "RTSTRUCT": 1, "RTPLAN": 1, "RTDOSE": 1, "SEG": 1}
        assert dciodvfy_errors(written["SEG"][0]) == []
        ds = pydicom.dcmread(written["SEG"][0])
        assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
        ct = [pydicom.dcmread(p) for p in written["CT"]]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
        assert ds.FrameOfReferenceUID == ct[0].FrameOfReferenceUID and ds.PatientID == ct[0].PatientID
        sources = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                   for f in ds.PerFrameFunctionalGroupsSequence}
        assert sources <= {c.SOPInstanceUID for c in ct} and len(sources) >= 2
        labels = {s.SegmentLabel: s for s in ds.SegmentSequence}
        assert set(labels) == set(case.structures)
        parotid = labels["Parotid_L"].SegmentedPropertyTypeCodeSequence[0]
        assert parotid.CodeValue == "45289007"
        assert parotid.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
        assert labels["PTV60"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "130041"
        if anonymize:
            assert ds.PatientIdentityRemoved == "YES" and b"SECRET-ID-42" not in written["SEG"][0].read_bytes()

        back = read_case(out)
        assert set(back.structures) == set(case.structures)
        for name, array in arrays(case).items():
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures[name]), array)
            assert back.colors[name] == pytest.approx(case.color(name), abs=2 / 255)
        assert any("DICOM SEG" in note for note in back.metadata["dicom"]["notes"])


def test_seg_in_another_frame_of_reference_is_refused(tmp_path):
    from rtrai.io.case_io import read_case
    from rtrai.io.dicom_seg import write_dicom_seg_case

    written = write_dicom_seg_case(small_case(), tmp_path / "out")
    ds = pydicom.dcmread(written["SEG"][0])
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(written["SEG"][0])
    (tmp_path / "out" / "RTSTRUCT.dcm").unlink()
    with pytest.raises(GeometryError, match="frame of reference"):
        read_case(tmp_path / "out")
    assert _cli(["convert", tmp_path / "out", tmp_path / "case"]) == 2
    assert not (tmp_path / "case").exists()


@needs_dciodvfy
def test_export_dicom_seg_round_trips_openkbp_voxel_identical(tmp_path, openkbp_pt201):
    from rtrai.io.case_io import read_case
    from rtrai.io.openkbp import read_openkbp

    original = read_openkbp(openkbp_pt201)
    assert _cli(["export-dicom", openkbp_pt201, tmp_path / "dicom", "--seg"]) == 0
    assert dciodvfy_errors(tmp_path / "dicom" / "SEG.dcm") == []
    assert _cli(["convert", tmp_path / "dicom", tmp_path / "case"]) == 0
    back = read_case(tmp_path / "case")
    assert set(back.structures) == set(original.structures) and len(original.structures) == 10
    for name, array in arrays(original).items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures[name]), array, err_msg=name)
    assert not Grid.of(back.ct).differences(Grid.of(original.ct))

    # The SEG alone: its own grid (the span of its frames), the same voxels in physical space.
    alone = read_case(tmp_path / "dicom" / "SEG.dcm")
    assert alone.ct is None and set(alone.structures) == set(original.structures)
    for name, array in arrays(original).items():
        mask = alone.structures[name]
        assert np.allclose(mask.GetDirection(), np.eye(3).ravel())
        on_ct = sitk.Resample(mask, original.ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_ct), array, err_msg=name)


@needs_dciodvfy
def test_segment_writes_dicom_seg_equal_to_its_seg_nrrd(tmp_path, openkbp_pt201):
    pytest.importorskip("torch")
    from rtrai.io.case_io import read_case
    from rtrai.io.segfile import read_segmentation

    assert _cli(["segment", openkbp_pt201, "-o", tmp_path / "nrrd", "--device", "cpu"]) == 0
    assert _cli(["segment", openkbp_pt201, "-o", tmp_path / "seg", "--device", "cpu", "--format", "dicom-seg"]) == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["CT", "SEG.dcm", "provenance.json"]
    assert dciodvfy_errors(tmp_path / "seg" / "SEG.dcm") == []
    ds = pydicom.dcmread(tmp_path / "seg" / "SEG.dcm")
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"AUTOMATIC"}
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "hn-oar-ct"
    masks, _ = read_segmentation(tmp_path / "nrrd" / "Structures.seg.nrrd")
    back = read_case(tmp_path / "seg")
    assert set(back.structures) == set(masks) and len(masks) >= 5
    for name, mask in masks.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures[name]), sitk.GetArrayFromImage(mask))


def test_a_truncated_seg_is_one_format_error(tmp_path):
    from rtrai.core.errors import FormatError
    from rtrai.io.case_io import read_case
    from rtrai.io.dicom_seg import write_dicom_seg_case

    written = write_dicom_seg_case(small_case(), tmp_path / "out")
    data = written["SEG"][0].read_bytes()
    written["SEG"][0].write_bytes(data[: len(data) * 2 // 3])
    for source in (tmp_path / "out", written["SEG"][0]):
        with pytest.raises(FormatError, match="DICOM SEG .* is corrupt or incomplete"):
            read_case(source)
