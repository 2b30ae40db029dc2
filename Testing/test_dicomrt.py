"""DICOM-RT: rasterisation against known answers, RTSTRUCT/RTDOSE/RTPLAN import on real files, export validated by
dciodvfy, the OpenKBP round trip through the command line, anonymisation, and the bad-input rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as MplPath
from pydicom.data import get_testdata_file

from conftest import shared_path
from rtrai.core.case import Case
from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.image import Grid, from_array
from rtrai.io.contours import fill_polygons, index_to_physical, mask_to_contours, polygon_area, rasterize
from rtrai.io.dicomrt import read_dicom_folder, read_rtdose, read_rtplan, read_rtstruct, rasterize_rtstruct
from rtrai.io.dicomrt_export import write_dicom_case

DICOMPYLER = ("dicom-rt", "dicompyler-core_example")


def axial_grid(size=(60, 50, 5), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Grid:
    return Grid(size, spacing, origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def circle(cx, cy, r, z, n=720):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)]


# ------------------------------------------------------------------------------------------------ rasterisation

def test_circle_area_with_subvoxel_sampling():
    grid = axial_grid((80, 80, 1), (0.9, 1.3, 3.0), (-36.0, -52.0, 0.0))
    r = 21.7
    for supersample, tolerance in ((1, 0.02), (8, 0.002)):
        filled = rasterize([circle(1.3, -0.4, r, 0.0)], grid, supersample)
        area = float(filled.sum()) * 0.9 * 1.3
        assert area == pytest.approx(np.pi * r * r, rel=tolerance)


def test_even_odd_holes_and_several_contours_per_slice():
    grid = axial_grid((40, 40, 1))
    def square(lo, hi):
        return np.array([[lo, lo, 0], [hi, lo, 0], [hi, hi, 0], [lo, hi, 0]], float)

    # Edges half-way between voxel centres (integers here): 4.5..34.5 holds 30 x 30 centres, etc.
    mask = rasterize([square(4.5, 34.5), square(11.5, 27.5), square(17.5, 21.5)], grid)[0]
    assert mask.sum() == 30 * 30 - 16 * 16 + 4 * 4
    assert mask[20, 20] and not mask[14, 14] and mask[8, 8]
    # Edges through voxel centres: each such centre counts on one side only (top-left rule), so two squares
    # sharing an edge never both claim it.
    left, right = rasterize([square(5, 15)], grid)[0], rasterize([square(15, 25) - [0, 10, 0]], grid)[0]
    assert left.sum() == 100 and not (left & right).any()


def test_fill_agrees_with_matplotlib_on_random_polygons():
    rng = np.random.default_rng(3)
    nx, ny = 37, 29
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.c_[xx.ravel(), yy.ravel()]
    for _ in range(30):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = rng.uniform(3, 16, 12)
        poly = np.c_[18 + radii * np.cos(angles), 14 + radii * np.sin(angles)] + rng.uniform(-0.3, 0.3, 2)
        ours = fill_polygons([poly], nx, ny).ravel()
        theirs = MplPath(np.vstack([poly, poly[:1]]), closed=True).contains_points(centres)
        assert (ours != theirs).sum() == 0


def test_contours_between_slices_and_points_off_the_grid():
    grid = axial_grid((20, 20, 4), spacing=(1.0, 1.0, 3.0))
    # Planes at z = 1.4 and 4.6: not on the slices (0, 3, 6, 9); each slice takes the nearest plane within reach.
    square = np.array([[-50, -50], [10.5, -50], [10.5, 10.5], [-50, 10.5]], float)  # reaches beyond the grid
    contours = [np.c_[square, np.full(4, 1.4)], np.c_[square[:, :] * [1, 1] - [0, 0], np.full(4, 4.6)]]
    mask = rasterize(contours, grid)
    assert [int(m.sum()) for m in mask] == [121, 121, 121, 0]


def test_mask_to_contours_round_trip_is_exact():
    rng = np.random.default_rng(0)
    grid = Grid((23, 17, 4), (0.8, 1.1, 2.5), (-10.0, 4.0, -3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for trial in range(6):
        mask = (rng.random((4, 17, 23)) > (0.5 if trial % 2 else 0.3)).astype(np.uint8)
        points = [index_to_physical(np.c_[loop, np.full(len(loop), k)], grid)
                  for k, loops in mask_to_contours(mask).items() for loop in loops]
        np.testing.assert_array_equal(rasterize(points, grid), mask)


# ------------------------------------------------------------------------------------------------ RTSTRUCT

def test_pydicom_rtstruct_names_colours_points():
    rois, meta = read_rtstruct(get_testdata_file("rtstruct.dcm"))
    by_name = {roi.name: roi for roi in rois}
    assert by_name["patient"].tg263 == "External"
    assert by_name["patient"].color == pytest.approx((220 / 255, 160 / 255, 120 / 255))
    assert len(by_name["patient"].contours) == 3 and by_name["Isocenter 1"].skipped == 1
    assert meta["FrameOfReferenceUIDs"] == ["1.2.826.0.1.3680043.8.498.2010020400001.2"]
    grid = axial_grid((100, 80, 3), (5.0, 5.0, 5.0), (-250.0, -200.0, -205.0))
    masks, colors, info = rasterize_rtstruct(get_testdata_file("rtstruct.dcm"), grid)
    assert set(masks) == {"External"} and info["without_contours"] == ["Isocenter 1", "Isocenter 2"]
    # The first contour is a 400 x 300 mm rectangle at z = -200 (slice 1 of this grid).
    assert int(sitk.GetArrayViewFromImage(masks["External"])[1].sum()) * 25 == pytest.approx(400 * 300, rel=0.03)


def test_dicompyler_rtstruct_areas_match_shoelace():
    path = shared_path(*DICOMPYLER, "rtss.dcm")
    rois, _ = read_rtstruct(path)
    checked = 0
    for roi in rois:
        planes: dict[float, list] = {}
        for c in roi.contours:
            planes.setdefault(round(float(c[0, 2]), 2), []).append(c)
        for z, contours in list(planes.items())[:3]:
            if len(contours) != 1:
                continue
            pts = contours[0]
            lo, hi = pts[:, :2].min(axis=0) - 2, pts[:, :2].max(axis=0) + 2
            size = tuple(int(v) for v in np.ceil((hi - lo) / 0.5)) + (1,)
            grid = Grid(size, (0.5, 0.5, 3.0), (lo[0], lo[1], z), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
            area = float(rasterize([pts], grid, supersample=4).sum()) * 0.25
            exact = abs(polygon_area(pts[:, :2]))
            perimeter = float(np.linalg.norm(np.diff(np.vstack([pts, pts[:1]])[:, :2], axis=0), axis=1).sum())
            # Sampling error of a 0.125 mm sub-grid scales with the perimeter, not the area (small ROIs).
            assert area == pytest.approx(exact, abs=max(0.005 * exact, 0.02 * perimeter)), roi.name
            checked += 1
    assert checked >= 20


def test_dicompyler_folder_into_case():
    folder = shared_path(*DICOMPYLER)
    case = read_dicom_folder(folder)
    assert case.ct.GetSize() == (512, 512, 1)
    assert set(case.structures) == {"External"}  # the only ROI contoured on the one CT slice (z = 168.56)
    assert case.colors["External"] == pytest.approx((154 / 255, 155 / 255, 100 / 255))
    assert case.prescription == pytest.approx({"Breast": 14.0, "CALC POINT": 11.3113869239676})
    assert case.fractions == 7 and len(case.metadata["dicom"]["rtplan"]["beams"]) == 4
    notes = " ".join(case.metadata["dicom"]["notes"])
    assert "Areola" in notes and "outside the image grid" in notes


# ------------------------------------------------------------------------------------------------ RTDOSE / RTPLAN

def test_pydicom_rtdose_variants():
    with pytest.raises(InputError, match="RELATIVE"):
        read_rtdose(get_testdata_file("rtdose.dcm"))
    dose, meta = read_rtdose(get_testdata_file("rtdose.dcm"), allow_relative=True)
    assert dose.GetSize() == (10, 10, 15) and dose.GetSpacing() == (10.0, 10.0, 5.0)
    assert dose.GetOrigin() == pytest.approx((189.43125, 199.43125, -761.87))
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(dose), ds.pixel_array * 1e-6, rtol=1e-6)
    for name in ("rtdose_expb.dcm", "rtdose_rle.dcm"):
        other, _ = read_rtdose(get_testdata_file(name), allow_relative=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(other), sitk.GetArrayFromImage(dose))
    single, _ = read_rtdose(get_testdata_file("rtdose_1frame.dcm"), allow_relative=True)
    assert single.GetSize() == (10, 10, 1)


def _edited_dose(tmp_path, **changes) -> Path:
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    ds.DoseUnits = "GY"
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / "dose.dcm"
    ds.save_as(path)
    return path


def test_absolute_and_reversed_frame_offsets(tmp_path):
    relative, _ = read_rtdose(_edited_dose(tmp_path))
    absolute, _ = read_rtdose(_edited_dose(tmp_path, GridFrameOffsetVector=[-761.87 + 5 * k for k in range(15)]))
    assert Grid.of(absolute) == Grid.of(relative)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(absolute), sitk.GetArrayFromImage(relative))
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    frames = ds.pixel_array[::-1].copy()
    reversed_path = _edited_dose(tmp_path, GridFrameOffsetVector=[-5 * k for k in range(14, -1, -1)][::-1],
                                 PixelData=frames.astype("<u4").tobytes())
    flipped, _ = read_rtdose(reversed_path)
    np.testing.assert_allclose(flipped.GetOrigin(), np.array(relative.GetOrigin()) - [0, 0, 70])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(flipped), sitk.GetArrayFromImage(relative))


def test_bad_doses(tmp_path):
    with pytest.raises(FormatError, match="no GridFrameOffsetVector"):
        read_rtdose(_edited_dose(tmp_path, GridFrameOffsetVector=None))
    with pytest.raises(GeometryError, match="unevenly spaced"):
        read_rtdose(_edited_dose(tmp_path, GridFrameOffsetVector=[0, 5, 10, 16] + [20 + 5 * k for k in range(11)]))
    with pytest.raises(FormatError, match="DoseGridScaling"):
        read_rtdose(_edited_dose(tmp_path, DoseGridScaling=None))
    with pytest.raises(FormatError, match="2 values for 15 frames"):
        read_rtdose(_edited_dose(tmp_path, GridFrameOffsetVector=[0, 5]))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(_edited_dose(tmp_path).read_bytes()[:-500])
    (tmp_path / "dose.dcm").unlink()
    with pytest.raises(FormatError, match="corrupt or incomplete"):
        read_rtdose(truncated)
    with pytest.raises(FormatError, match="corrupt or incomplete"):
        read_dicom_folder(tmp_path)  # the folder read meets the same truncated file


def test_rtplan_prescription_fractions_beams():
    plan = read_rtplan(get_testdata_file("rtplan.dcm"))
    assert plan["prescription"] == pytest.approx({"PTV": 30.826203})
    assert plan["fractions"] == 30
    assert plan["beams"] == [{"number": 1, "name": "Field 1", "type": "STATIC", "radiation": "PHOTON",
                              "delivery": "TREATMENT", "machine": "unit001", "energy_mv": 6.0,
                              "gantry_start_deg": 0.0, "gantry_stop_deg": 0.0, "control_points": 2,
                              "meterset": pytest.approx(116.0036697)}]


def test_non_rt_objects_are_refused():
    with pytest.raises(InputError, match="is a CT object, not an RTDOSE"):
        read_rtdose(get_testdata_file("CT_small.dcm"))
    with pytest.raises(InputError, match="is a RTDOSE object, not an RTSTRUCT"):
        read_rtstruct(get_testdata_file("rtdose.dcm"))
    with pytest.raises(InputError, match="not an RTPLAN"):
        read_rtplan(get_testdata_file("rtstruct.dcm"))


# ------------------------------------------------------------------------------------------------ export

def small_case() -> Case:
    ct = from_array(np.arange(6 * 20 * 24, dtype=np.int16).reshape(6, 20, 24) - 1000,
                    spacing=(1.5, 1.25, 2.0), origin=(-17.0, 12.0, -5.0))
    case = Case(ct=ct, metadata={"patient_id": "SECRET-ID-42"})
    ring = np.zeros((6, 20, 24), np.uint8)
    ring[1:5, 3:17, 4:20] = 1
    ring[2:4, 7:12, 9:14] = 0  # a hole
    case.add_structure("Lt Parotid", ring)
    target = np.zeros_like(ring)
    target[2:4, 8:11, 10:13] = 1
    case.add_structure("PTV 60", target)
    case.dose = from_array(np.linspace(0, 61.3, 6 * 20 * 24, dtype=np.float32).reshape(6, 20, 24), ct)
    case.prescription, case.fractions = {"PTV60": 60.0}, 30
    return case


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0 or not any("Assertion" in line for line in lines), lines
    return [line for line in lines if line.startswith("Error")]


def test_export_import_small_case(tmp_path):
    case = small_case()
    written = write_dicom_case(case, tmp_path / "out")
    assert {k: len(v) for k, v in written.items()} == {"CT": 6, "RTSTRUCT": 1, "RTPLAN": 1, "RTDOSE": 1}
    back = read_dicom_folder(tmp_path / "out")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.ct), sitk.GetArrayFromImage(case.ct))
    assert not Grid.of(back.ct).differences(Grid.of(case.ct))
    for name in ("Parotid_L", "PTV60"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures[name]),
                                      sitk.GetArrayFromImage(case.structures[name]))
        assert back.colors[name] == pytest.approx(case.color(name), abs=0.5 / 255)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back.dose), sitk.GetArrayFromImage(case.dose),
                               atol=61.3 / 65000)
    assert back.prescription == {"PTV60": 60.0} and back.fractions == 30
    ds = pydicom.dcmread(written["RTSTRUCT"][0])
    ct_uids = {pydicom.dcmread(p).SOPInstanceUID for p in written["CT"]}
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                  for item in ds.ROIContourSequence for c in item.ContourSequence}
    assert referenced <= ct_uids and len(referenced) == 4
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert sorted(types.values()) == ["ORGAN", "PTV"]
    dose = pydicom.dcmread(written["RTDOSE"][0])
    plan = pydicom.dcmread(written["RTPLAN"][0])
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert (tmp_path / "out" / "provenance.json").is_file()

    # Exporting the re-imported case keeps the CT's UIDs and frame of reference.
    again = write_dicom_case(back, tmp_path / "again")
    assert {pydicom.dcmread(p).SOPInstanceUID for p in again["CT"]} == ct_uids
    assert pydicom.dcmread(again["RTDOSE"][0]).FrameOfReferenceUID == dose.FrameOfReferenceUID


def test_dose_on_its_own_grid_stays_native(tmp_path):
    case = small_case()
    coarse = sitk.Image([8, 7, 3], sitk.sitkFloat32)
    coarse.SetSpacing((4.0, 3.5, 4.0))
    coarse.SetOrigin((-18.0, 10.0, -6.0))
    coarse = sitk.Add(coarse, 12.5)
    case.dose = coarse
    write_dicom_case(case, tmp_path / "out")
    back = read_dicom_folder(tmp_path / "out")
    assert not Grid.of(back.dose).differences(Grid.of(coarse))
    assert float(sitk.GetArrayViewFromImage(back.dose).max()) == pytest.approx(12.5, abs=1e-3)


def test_anonymized_export_leaks_nothing(tmp_path):
    case = small_case()
    written = write_dicom_case(case, tmp_path / "anon", anonymize=True, anonymous_id="STUDY-007",
                               inputs=[tmp_path])
    for paths in written.values():
        for path in paths:
            assert b"SECRET-ID-42" not in path.read_bytes()
            ds = pydicom.dcmread(path)
            assert ds.PatientID == "STUDY-007" and ds.PatientIdentityRemoved == "YES" and not ds.StudyDate
    assert b"SECRET-ID-42" not in (tmp_path / "anon" / "provenance.json").read_bytes()
    assert str(tmp_path) not in (tmp_path / "anon" / "provenance.json").read_text()


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
def test_dciodvfy_accepts_what_we_write(tmp_path):
    for anonymize in (False, True):
        written = write_dicom_case(small_case(), tmp_path / f"out{anonymize}", anonymize=anonymize)
        for kind in ("RTSTRUCT", "RTDOSE", "RTPLAN", "CT"):
            assert dciodvfy_errors(written[kind][0]) == [], kind


def test_rtstruct_in_another_frame_of_reference(tmp_path):
    written = write_dicom_case(small_case(), tmp_path / "out")
    ds = pydicom.dcmread(written["RTSTRUCT"][0])
    other = pydicom.uid.generate_uid()
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = other
    ds.save_as(written["RTSTRUCT"][0])
    with pytest.raises(GeometryError, match="frame of reference"):
        read_dicom_folder(tmp_path / "out")


# ------------------------------------------------------------------------------------------------ OpenKBP round trip

def _cli(argv) -> int:
    from rtrai import cli

    return cli.main([str(a) for a in argv])


def test_openkbp_round_trip_through_the_commands(tmp_path, monkeypatch, openkbp_pt201):
    from rtrai.io.case_io import read_case
    from rtrai.io.openkbp import read_openkbp

    original = read_openkbp(openkbp_pt201)
    assert _cli(["export-dicom", openkbp_pt201, tmp_path / "dicom"]) == 0
    assert _cli(["convert", tmp_path / "dicom", tmp_path / "case"]) == 0
    back = read_case(tmp_path / "case")
    assert not Grid.of(back.ct).differences(Grid.of(original.ct))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.ct), sitk.GetArrayFromImage(original.ct))
    dose, reference = sitk.GetArrayFromImage(back.dose), sitk.GetArrayFromImage(original.dose)
    assert np.abs(dose - reference).max() <= 0.01 * reference.max()
    dice = {}
    for name, mask in original.structures.items():
        a = sitk.GetArrayViewFromImage(mask) > 0
        b = sitk.GetArrayViewFromImage(back.structures[name]) > 0
        dice[name] = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert set(back.structures) == set(original.structures)
    assert np.mean(list(dice.values())) >= 0.95 and min(dice.values()) >= 0.85, dice
    assert back.prescription == original.prescription and back.fractions == 35
    if shutil.which("dciodvfy"):
        for name in ("RTSTRUCT.dcm", "RTDOSE.dcm"):
            assert dciodvfy_errors(tmp_path / "dicom" / name) == [], name


def test_export_command_bad_input_exits_2_without_output(tmp_path, monkeypatch, capsys):
    from test_dicom_series import write_series

    write_series(tmp_path / "gap", z=[0, 2.5, 7.5, 10])
    assert _cli(["export-dicom", tmp_path / "gap", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing slice" in err[0]
    assert not (tmp_path / "out").exists()
    assert _cli(["export-dicom", tmp_path / "nowhere", tmp_path / "out"]) == 2
    assert not (tmp_path / "out").exists()


def test_imported_rt_objects_in_mrml_as_slicerrt_shows_them(tmp_path):
    from rtrai.mrml import slicerrt
    from rtrai.mrml.scene import case_to_scene

    write_dicom_case(small_case(), tmp_path / "out")
    case = read_dicom_folder(tmp_path / "out")
    nodes = case_to_scene(case)
    segmentation = nodes["structures"].GetSegmentation()
    segments = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i).GetColor()
                for i in range(segmentation.GetNumberOfSegments())}
    assert set(segments) == {"Parotid_L", "PTV60"}
    for name, color in segments.items():
        assert tuple(color) == pytest.approx(case.colors[name], abs=1e-6)
    assert slicerrt.is_dose_volume(nodes["dose"])
    assert slicerrt.study_attribute(nodes["dose"], slicerrt.DOSE_UNIT_NAME_ATTRIBUTE) == "GY"
