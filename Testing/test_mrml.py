"""The Case <-> MRML bridge on a real vtkMRMLScene (slicer-core), including bundles written and read back.

The geometry is checked against an independent reader as well as by round trip: a round trip alone would pass with
the LPS/RAS flip wrong both ways, so the NRRD files MRML writes are read with SimpleITK and must carry the original
LPS geometry, and the .seg.nrrd is read with slicerio.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import DependencyError, FormatError, GeometryError, InputError
from rtrai.core.image import Grid, from_array

mrml = pytest.importorskip("rtrai.mrml", reason="MRML (slicer-core) is not installed", exc_type=ImportError)
from rtrai.mrml import slicerrt  # noqa: E402
from rtrai.mrml._slicer import slicer  # noqa: E402

SHAPE = (9, 11, 13)  # z, y, x: three different sizes so that a swapped axis cannot go unnoticed


def _direction() -> tuple[float, ...]:
    """An oblique, non-identity direction (rotation about z, then the y and z axes exchanged, right-handed)."""
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    swap = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    return tuple((rotation @ swap).ravel())


def _case(patient: str = "pt_test", seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    ct = from_array(rng.integers(-1000, 2000, SHAPE).astype(np.int16), spacing=(1.1, 2.3, 3.7),
                    origin=(-12.5, 33.1, -7.25), direction=_direction())
    case = Case(ct=ct, metadata={"patient_id": patient, "source": "unit test"}, prescription={"PTV70": 70.0},
                fractions=35)
    parotid = np.zeros(SHAPE, np.uint8)
    parotid[2:5, 3:6, 4:8] = 1
    ptv = np.zeros(SHAPE, np.uint8)
    ptv[3:7, 4:9, 5:11] = 1  # overlaps the parotid: needs its own layer
    corner = np.zeros(SHAPE, np.uint8)
    corner[0, 0, 0] = corner[-1, -1, -1] = 1  # touches both ends of every axis
    case.add_structure("LeftParotid", parotid)  # -> Parotid_L
    case.add_structure("PTV70", ptv)
    case.add_structure("Odd name", corner, color=(0.1, 0.2, 0.3))
    # Dose on a grid of its own (coarser, shifted), as an RTDOSE has.
    case.dose = from_array((rng.random((5, 6, 7)) * 70).astype(np.float32), spacing=(2.5, 2.5, 3.0),
                           origin=(-10.0, 30.0, -5.0), direction=_direction())
    case.possible_dose_mask = from_array((rng.random(SHAPE) > 0.5).astype(np.uint8), ct)
    return case


def _assert_same_image(a: sitk.Image, b: sitk.Image, exact_geometry: bool = True) -> None:
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    if exact_geometry:
        assert Grid.of(a) == Grid.of(b)
    else:  # through a text file header: equal to a few ulps
        assert not Grid.of(a).differences(Grid.of(b))
        np.testing.assert_allclose(Grid.of(a).origin, Grid.of(b).origin, rtol=0, atol=1e-9)
        np.testing.assert_allclose(Grid.of(a).spacing, Grid.of(b).spacing, rtol=0, atol=1e-9)
        np.testing.assert_allclose(Grid.of(a).direction, Grid.of(b).direction, rtol=0, atol=1e-12)


def _assert_same_case(original: Case, back: Case, exact_geometry: bool = True) -> None:
    _assert_same_image(original.ct, back.ct, exact_geometry)
    assert back.ct.GetPixelID() == original.ct.GetPixelID()
    assert list(back.structures) == list(original.structures)
    for name in original.structures:
        _assert_same_image(original.structures[name], back.structures[name], exact_geometry)
        np.testing.assert_allclose(back.colors[name], original.colors[name], rtol=0, atol=1e-6)
    _assert_same_image(original.dose, back.dose, exact_geometry)
    assert back.dose.GetPixelID() == sitk.sitkFloat32
    _assert_same_image(original.possible_dose_mask, back.possible_dose_mask, exact_geometry)
    assert back.prescription == original.prescription
    assert back.fractions == original.fractions
    assert back.metadata == original.metadata


def test_ras_geometry_matches_lps_image():
    case = _case()
    nodes = mrml.case_to_scene(case)
    ct_node = nodes["ct"]
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    for index in [(0, 0, 0), (12, 0, 0), (3, 7, 5), (12, 10, 8)]:
        ras = ijk_to_ras.MultiplyPoint((*index, 1.0))[:3]
        lps = case.ct.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ras, (-lps[0], -lps[1], lps[2]), rtol=0, atol=1e-9)
    assert ct_node.GetImageData().GetDimensions() == case.ct.GetSize()
    assert mrml.node_grid(ct_node) == Grid.of(case.ct)


def test_round_trip_in_memory_is_exact():
    case = _case()
    nodes = mrml.case_to_scene(case)
    assert {"scene", "ct", "structures", "dose", "possible_dose_mask"} <= set(nodes)
    assert nodes["ct"].GetName() == "pt_test_CT"
    assert nodes["possible_dose_mask"].IsA("vtkMRMLLabelMapVolumeNode")
    back = mrml.scene_to_case(nodes["scene"])
    _assert_same_case(case, back)
    assert sorted(back.structures) == ["Odd name", "PTV70", "Parotid_L"]


def test_segmentation_is_one_node_with_named_coloured_segments():
    case = _case()
    nodes = mrml.case_to_scene(case)
    segmentation_node = nodes["structures"]
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == "Binary labelmap"
    assert segmentation.GetNumberOfSegments() == 3
    # Overlapping parotid and PTV cannot share a layer; the single-voxel structure can share the parotid's.
    assert segmentation.GetNumberOfLayers() == 2
    assert segmentation.GetLayerIndex("Parotid_L") != segmentation.GetLayerIndex("PTV70")
    segment = segmentation.GetSegment("Parotid_L")
    assert segment.GetName() == "Parotid_L"
    np.testing.assert_allclose(segment.GetColor(), case.colors["Parotid_L"])
    reference = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    assert reference is nodes["ct"]
    assert len([n for n in _nodes(nodes["scene"], "vtkMRMLSegmentationNode")]) == 1


def test_dose_carries_slicerrt_attributes_and_colour_wash():
    case = _case()
    nodes = mrml.case_to_scene(case)
    dose = nodes["dose"]
    # vtkSlicerRtCommon::IsDoseVolumeNode: a scalar volume with the DicomRtImport.DoseVolume attribute
    assert dose.IsA("vtkMRMLScalarVolumeNode") and dose.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert mrml.is_dose_volume(dose) and not mrml.is_dose_volume(nodes["ct"])
    # DVH and Isodose read the unit from the study ancestor, exactly like this:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(nodes["scene"])
    item = sh.GetItemByDataNode(dose)
    study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    assert sh.GetAttributeFromItemAncestor(item, "DicomRtImport.DoseUnitName", study_level) == "GY"
    assert float(sh.GetAttributeFromItemAncestor(item, "DicomRtImport.DoseUnitValue", study_level)) == 1.0
    study = sh.GetItemParent(item)
    assert sh.GetItemLevel(study) == study_level
    assert sh.GetItemName(sh.GetItemParent(study)) == "pt_test"
    for role in ("ct", "structures", "possible_dose_mask"):
        assert sh.GetItemParent(sh.GetItemByDataNode(nodes[role])) == study
    # Colour wash: SlicerRT's isodose colours stretched over 256 entries, green (5 Gy) to magenta (35 Gy).
    display = dose.GetDisplayNode()
    table = display.GetColorNode()
    assert table.GetName() == slicerrt.DOSE_COLOR_TABLE_NAME and table.GetNumberOfColors() == 256
    first, last = [0.0] * 4, [0.0] * 4
    table.GetColor(0, first)
    table.GetColor(255, last)
    np.testing.assert_allclose(first[:3], (0, 1, 0), atol=1e-6)
    np.testing.assert_allclose(last[:3], (221 / 255, 18 / 255, 123 / 255), atol=1e-6)
    dose_max = float(sitk.GetArrayViewFromImage(case.dose).max())
    assert display.GetAutoWindowLevel() == 0
    np.testing.assert_allclose((display.GetWindowLevelMin(), display.GetWindowLevelMax()), (0, dose_max), rtol=1e-6)
    # A second case reuses the one colour table
    mrml.case_to_scene(_case("pt_other"), nodes["scene"])
    assert len(_nodes(nodes["scene"], "vtkMRMLColorTableNode")) == 2  # dose wash + possible-dose mask labels


def test_bundle_written_and_read_into_new_scene(tmp_path):
    case = _case()
    nodes = mrml.case_to_scene(case)
    features = pd.DataFrame({"feature": ["original_firstorder_Mean", "original_shape_Volume"],
                             "value": [12.5, 3.25e4], "count": np.array([3, 4], np.int32), "kept": [True, False]})
    mrml.table_to_node(features, nodes["scene"], "Radiomics features")
    bundle = mrml.save_scene_bundle(nodes["scene"], tmp_path / "case.mrb")
    assert [p.name for p in tmp_path.iterdir()] == ["case.mrb"]  # nothing left beside it

    names = zipfile.ZipFile(bundle).namelist()
    for expected in ("case/case.mrml", "case/Data/pt_test_CT.nrrd", "case/Data/pt_test_Structures.seg.nrrd",
                     "case/Data/pt_test_Dose.nrrd", "case/Data/pt_test_PossibleDoseMask.nrrd",
                     "case/Data/Radiomics features.tsv"):
        assert expected in names

    scene = mrml.load_scene(bundle)
    assert scene is not nodes["scene"]
    back = mrml.scene_to_case(scene)
    _assert_same_case(case, back, exact_geometry=False)
    dose_node = next(n for n in _nodes(scene, "vtkMRMLScalarVolumeNode") if mrml.is_dose_volume(n))
    assert slicerrt.study_attribute(dose_node, "DicomRtImport.DoseUnitName") == "GY"
    assert dose_node.GetDisplayNode().GetColorNode().GetName() == slicerrt.DOSE_COLOR_TABLE_NAME
    tables = _nodes(scene, "vtkMRMLTableNode")
    assert len(tables) == 1
    pd.testing.assert_frame_equal(mrml.node_to_table(tables[0]), features)
    # The scene that was saved can be saved again (its data are in memory, not in the removed staging folder),
    # and so can the scene that was read.
    for source, name in ((nodes["scene"], "again.mrb"), (scene, "resaved.mrb")):
        again = mrml.scene_to_case(mrml.load_scene(mrml.save_scene_bundle(source, tmp_path / name)))
        _assert_same_case(case, again, exact_geometry=False)


def test_bundle_files_carry_lps_geometry_for_other_readers(tmp_path):
    """SimpleITK and slicerio, not MRML, read what MRML wrote: same voxels, same LPS geometry, same segments."""
    slicerio = pytest.importorskip("slicerio")
    case = _case()
    bundle = mrml.save_scene_bundle(mrml.case_to_scene(case)["scene"], tmp_path / "case.mrb")
    zipfile.ZipFile(bundle).extractall(tmp_path / "unpacked")
    data = tmp_path / "unpacked" / "case" / "Data"
    _assert_same_image(case.ct, sitk.ReadImage(str(data / "pt_test_CT.nrrd")), exact_geometry=False)
    _assert_same_image(case.dose, sitk.ReadImage(str(data / "pt_test_Dose.nrrd")), exact_geometry=False)

    segmentation = slicerio.read_segmentation(str(data / "pt_test_Structures.seg.nrrd"))
    by_name = {segment["name"]: segment for segment in segmentation["segments"]}
    assert set(by_name) == set(case.structures)
    np.testing.assert_allclose(by_name["Odd name"]["color"], (0.1, 0.2, 0.3), atol=1e-6)
    # slicerio gives IJK->LPS of the (possibly cropped) voxel array; compare every voxel in physical space
    ijk_to_lps = np.array(segmentation["ijkToLPS"])
    for name, mask in case.structures.items():
        extracted = slicerio.extract_segments(segmentation, [(name, 1)])
        voxels = np.argwhere(extracted["voxels"] == 1)  # slicerio arrays are (i, j, k)
        points = (ijk_to_lps @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
        indices = {tuple(int(round(c)) for c in mask.TransformPhysicalPointToContinuousIndex(p)) for p in points}
        expected = {tuple(int(v) for v in zyx[::-1]) for zyx in np.argwhere(sitk.GetArrayViewFromImage(mask))}
        assert indices == expected, name


def test_case_without_ct_uses_the_first_mask_as_reference():
    case = _case()
    structures_only = Case(metadata={"patient_id": "no_ct"})
    for name, mask in case.structures.items():
        structures_only.add_structure(name, mask, color=case.colors[name])
    nodes = mrml.case_to_scene(structures_only)
    assert "ct" not in nodes and "dose" not in nodes
    back = mrml.scene_to_case(nodes["scene"])
    assert back.ct is None
    for name, mask in case.structures.items():
        _assert_same_image(mask, back.structures[name], exact_geometry=False)


def test_segment_on_a_cropped_extent_is_placed_exactly(tmp_path):
    """A segment stored on a sub-block of the CT lattice (as Slicer's editor leaves them) lands on the right voxels."""
    case = _case()
    nodes = mrml.case_to_scene(Case(ct=case.ct, metadata={"patient_id": "crop"}))
    block = np.zeros((3, 4, 5), np.uint8)
    block[1, 2, 3] = block[0, 0, 0] = 1
    start = (4, 2, 6)  # x, y, z index of the block's first voxel on the CT grid
    sub = from_array(block, spacing=case.ct.GetSpacing(), origin=case.ct.TransformIndexToPhysicalPoint(start),
                     direction=case.ct.GetDirection())
    segmentation = mrml.masks_to_segmentation({"Cropped": sub}, {"Cropped": (1, 0, 1)}, nodes["scene"], "Crop",
                                              reference_node=nodes["ct"])
    back = mrml.scene_to_case(nodes["scene"], ct=nodes["ct"], structures=segmentation)
    expected = np.zeros(SHAPE, np.uint8)
    expected[6 + 1, 2 + 2, 4 + 3] = expected[6, 2, 4] = 1
    assert np.array_equal(sitk.GetArrayViewFromImage(back.structures["Cropped"]), expected)


def test_segment_reaching_outside_the_ct_keeps_the_part_inside():
    case = _case()
    nodes = mrml.case_to_scene(Case(ct=case.ct, metadata={"patient_id": "outside"}))
    block = np.ones((4, 4, 4), np.uint8)
    start = (-2, -2, -2)  # half of the block lies before the CT's first voxel on every axis
    sub = from_array(block, spacing=case.ct.GetSpacing(), origin=case.ct.TransformIndexToPhysicalPoint(start),
                     direction=case.ct.GetDirection())
    segmentation = mrml.masks_to_segmentation({"Edge": sub}, {"Edge": (1, 1, 0)}, nodes["scene"], "Edge",
                                              reference_node=nodes["ct"])
    back = mrml.scene_to_case(ct=nodes["ct"], structures=segmentation)
    expected = np.zeros(SHAPE, np.uint8)
    expected[:2, :2, :2] = 1
    assert np.array_equal(sitk.GetArrayViewFromImage(back.structures["Edge"]), expected)


def test_scene_made_like_slicerrt_is_read_and_dose_units_converted():
    """No rtrai attributes: CT, segmentation and dose found as SlicerRT lays them out; cGy becomes Gy."""
    case = _case()
    scene = slicer.vtkMRMLScene()
    ct = mrml.image_to_volume_node(case.ct, scene, "CT series")
    segmentation = mrml.masks_to_segmentation(case.structures, case.colors, scene, "RTSTRUCT", reference_node=ct)
    dose = mrml.image_to_volume_node(sitk.Cast(case.dose * 100.0, sitk.sitkFloat32), scene, "RTDOSE")
    dose.SetAttribute("DicomRtImport.DoseVolume", "1")
    _, study = slicerrt.patient_study(scene, "Anonymous")
    for node in (ct, segmentation, dose):
        slicerrt.place_under(scene, node, study)
    sh = slicerrt.subject_hierarchy(scene)
    sh.SetItemAttribute(study, "DicomRtImport.DoseUnitName", "CGY")
    back = mrml.scene_to_case(scene)
    _assert_same_image(case.ct, back.ct)
    assert sorted(back.structures) == sorted(case.structures)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(back.dose), sitk.GetArrayViewFromImage(case.dose),
                               rtol=1e-6)
    assert back.patient_id == "Anonymous"
    assert mrml.scene_to_case(scene, patient_id="Anonymous").structures.keys() == back.structures.keys()
    with pytest.raises(InputError, match="no CT, segmentation or dose"):
        mrml.scene_to_case(scene, patient_id="Someone else")

    sh.SetItemAttribute(study, "DicomRtImport.DoseUnitName", "RELATIVE")
    with pytest.raises(InputError, match="RELATIVE"):
        mrml.scene_to_case(scene)


def test_several_patients_in_one_scene_need_a_choice():
    first = mrml.case_to_scene(_case("pt_a", seed=1))
    mrml.case_to_scene(_case("pt_b", seed=2), first["scene"])
    with pytest.raises(InputError, match="2 candidates"):
        mrml.scene_to_case(first["scene"])
    back = mrml.scene_to_case(first["scene"], patient_id="pt_b")
    _assert_same_case(_case("pt_b", seed=2), back)
    with pytest.raises(InputError, match="no CT, segmentation or dose"):
        mrml.scene_to_case(first["scene"], patient_id="pt_nobody")


def test_node_under_a_transform_is_refused():
    nodes = mrml.case_to_scene(_case())
    transform = nodes["scene"].AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    nodes["ct"].SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(GeometryError, match="harden the transform"):
        mrml.scene_to_case(nodes["scene"])


def test_wrong_node_type_is_refused():
    nodes = mrml.case_to_scene(_case())
    with pytest.raises(InputError, match="given as ct"):
        mrml.scene_to_case(ct=nodes["structures"])


def test_table_round_trip_types_and_index():
    scene = slicer.vtkMRMLScene()
    frame = pd.DataFrame({"name": ["a", None, "c"], "x": [1.5, np.nan, -2.0], "n": [1, 2, 3],
                          "f32": np.array([0.5, 1.5, 2.5], np.float32), "flag": [True, False, True]},
                         index=pd.Index(["p1", "p2", "p3"], name="patient"))
    node = mrml.table_to_node(frame, scene, "Outcomes")
    assert node.IsA("vtkMRMLTableNode") and node.GetNumberOfRows() == 3
    back = mrml.node_to_table(node)
    assert list(back.columns) == ["patient", "name", "x", "n", "f32", "flag"]
    assert list(back["patient"]) == ["p1", "p2", "p3"]
    assert list(back["name"]) == ["a", "", "c"]  # missing text becomes empty text
    np.testing.assert_array_equal(back["x"].to_numpy(), [1.5, np.nan, -2.0])
    assert back["n"].dtype == np.int64 and back["f32"].dtype == np.float32 and back["flag"].dtype == bool
    with pytest.raises(InputError, match="DataFrame"):
        mrml.table_to_node({"x": [1]}, scene, "bad")
    with pytest.raises(InputError, match="vtkMRMLTableNode"):
        mrml.node_to_table(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v"))


def test_bundle_errors(tmp_path):
    scene = mrml.case_to_scene(_case())["scene"]
    with pytest.raises(InputError, match="mrb"):
        mrml.save_scene_bundle(scene, tmp_path / "case.zip")
    with pytest.raises(InputError, match="not found"):
        mrml.load_scene(tmp_path / "missing.mrb")
    corrupt = tmp_path / "corrupt.mrb"
    corrupt.write_bytes(b"this is not a zip file")
    cwd = os.getcwd()
    with pytest.raises(FormatError):
        mrml.load_scene(corrupt)
    assert os.getcwd() == cwd  # MRML's failed unzip leaves the process in its (deleted) cache folder otherwise


def test_scene_file_with_data_folder_loads(tmp_path):
    """A .mrml beside its data files (what an unpacked bundle is) also reads into a new scene."""
    case = _case()
    bundle = mrml.save_scene_bundle(mrml.case_to_scene(case)["scene"], tmp_path / "case.mrb")
    zipfile.ZipFile(bundle).extractall(tmp_path)
    back = mrml.scene_to_case(mrml.load_scene(tmp_path / "case" / "case.mrml"))
    _assert_same_case(case, back, exact_geometry=False)


def test_openkbp_patient_through_a_bundle_is_exact(openkbp_pt201, tmp_path):
    """A real OpenKBP patient (128^3 CT, dose, ten structures) survives scene -> .mrb -> new scene voxel for voxel."""
    from rtrai.io.openkbp import read_openkbp

    case = read_openkbp(openkbp_pt201)
    nodes = mrml.case_to_scene(case)
    back = mrml.scene_to_case(mrml.load_scene(mrml.save_scene_bundle(nodes["scene"], tmp_path / "pt_201.mrb")))
    _assert_same_image(case.ct, back.ct, exact_geometry=False)
    _assert_same_image(case.dose, back.dose, exact_geometry=False)
    assert list(back.structures) == list(case.structures) and len(case.structures) >= 7
    for name, mask in case.structures.items():
        _assert_same_image(mask, back.structures[name], exact_geometry=False)
    if case.possible_dose_mask is not None:
        _assert_same_image(case.possible_dose_mask, back.possible_dose_mask, exact_geometry=False)


def test_missing_mrml_is_an_import_error_and_a_dependency_error():
    assert issubclass(mrml.MRMLUnavailable, ImportError)
    assert issubclass(mrml.MRMLUnavailable, DependencyError)


def _nodes(scene, class_name):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
