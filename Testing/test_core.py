"""Core: grids, Case, TG-263 names, progress, atomic outputs, NRRD/NIfTI and .seg.nrrd files."""

from __future__ import annotations

import io
import json

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from rtrai.core import Case, GeometryError, InputError, check_same_grid, from_array, to_tg263
from rtrai.core import progress
from rtrai.core.outputs import atomic_file, output_folder
from rtrai.core.structures import color_of, target_dose_level, to_openkbp
from rtrai.io.case_io import read_case, write_case
from rtrai.io.images import read_image, write_image
from rtrai.io.segfile import read_segmentation, write_segmentation

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated 90 degrees about z


def grid_image(shape=(6, 8, 10), dtype=np.int16, **kw):
    geometry = dict(spacing=(0.9, 1.1, 2.5), origin=(-10.0, 20.0, 5.5), direction=DIRECTION)
    geometry.update(kw)
    return from_array(np.arange(np.prod(shape)).reshape(shape).astype(dtype), **geometry)


def test_grid_check_names_what_differs():
    a = grid_image()
    check_same_grid(a, grid_image())
    with pytest.raises(GeometryError) as err:
        check_same_grid(a, grid_image(spacing=(0.9, 1.1, 3.0), origin=(0, 0, 0)), ("CT", "dose"))
    text = str(err.value)
    assert "CT and dose" in text and "spacing" in text and "origin" in text and "size" not in text
    with pytest.raises(GeometryError, match="size"):
        check_same_grid(a, grid_image(shape=(6, 8, 11)))


@pytest.mark.parametrize("name, expected", [
    ("LeftParotid", "Parotid_L"), ("RightParotid", "Parotid_R"), ("Mandible", "Bone_Mandible"),
    ("Lt Parotid", "Parotid_L"), ("spinal cord", "SpinalCord"), ("BODY", "External"), ("PTV_70", "PTV70"),
    ("ptv 56 Gy", "PTV56"), ("Parotid_L", "Parotid_L"), ("MyStructure", "MyStructure"),
])
def test_tg263_mapping(name, expected):
    assert to_tg263(name) == expected


def test_structure_helpers():
    assert to_openkbp("Parotid_L") == "LeftParotid" and to_openkbp("Bone_Mandible") == "Mandible"
    assert target_dose_level("PTV63") == 63.0 and target_dose_level("Brainstem") is None
    assert color_of("Unknown1") == color_of("Unknown1") != color_of("Unknown2")


def test_case_keeps_tg263_names_and_rejects_other_grids():
    ct = grid_image()
    case = Case(ct=ct)
    mask = np.zeros(sitk.GetArrayFromImage(ct).shape, np.uint8)
    mask[1:3, 2:5, 3:7] = 1
    assert case.add_structure("LeftParotid", mask) == "Parotid_L"
    assert case.volume_cc("Parotid_L") == pytest.approx(2 * 3 * 4 * 0.9 * 1.1 * 2.5 / 1000)
    with pytest.raises(GeometryError, match="structure 'PTV70'"):
        case.add_structure("PTV70", grid_image(spacing=(1, 1, 1)))
    case.dose = from_array(np.full(mask.shape, np.nan, np.float32), ct)
    with pytest.raises(InputError, match="NaN"):
        case.validate()


def test_nrrd_and_nifti_round_trip_keep_geometry(tmp_path):
    image = grid_image(dtype=np.float32)
    for name in ("a.nrrd", "a.nii.gz"):
        write_image(image, tmp_path / name)
        back = read_image(tmp_path / name)
        check_same_grid(image, back)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_seg_nrrd_layers_names_colours_as_slicer_writes_them(tmp_path):
    ct = grid_image()
    shape = sitk.GetArrayFromImage(ct).shape
    a = np.zeros(shape, np.uint8)
    a[1:4, 1:5, 1:5] = 1
    b = np.zeros(shape, np.uint8)
    b[2:5, 3:7, 3:9] = 1  # overlaps a: must go to a second layer
    c = np.zeros(shape, np.uint8)
    c[0, 7, 9] = 1
    structures = {"Parotid_L": from_array(a, ct), "PTV70": from_array(b, ct), "Larynx": from_array(c, ct)}
    colors = {"Parotid_L": (0.1, 0.2, 0.3)}
    path = write_segmentation(structures, tmp_path / "S.seg.nrrd", colors, ct)
    data, header = nrrd.read(str(path))
    assert header["dimension"] == 4 and header["kinds"][0] == "list"  # layers, as Slicer stores overlaps
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    names = {header[f"Segment{i}_Name"] for i in range(3)}
    assert names == set(structures)
    masks, read_colors = read_segmentation(path)
    for name, image in structures.items():
        check_same_grid(ct, masks[name])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(masks[name]), sitk.GetArrayFromImage(image))
    assert read_colors["Parotid_L"] == pytest.approx((0.1, 0.2, 0.3))


def test_case_folder_round_trip(tmp_path):
    ct = grid_image()
    case = Case(ct=ct, prescription={"PTV70": 70.0}, fractions=35, metadata={"patient_id": "p1"})
    mask = np.zeros(sitk.GetArrayFromImage(ct).shape, np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    case.add_structure("PTV70", mask)
    case.dose = from_array(np.random.default_rng(0).random(mask.shape).astype(np.float32) * 70, ct)
    write_case(case, tmp_path / "c")
    back = read_case(tmp_path / "c")
    assert back.prescription == {"PTV70": 70.0} and back.fractions == 35 and back.patient_id == "p1"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.dose), sitk.GetArrayFromImage(case.dose))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures["PTV70"]), mask)
    assert json.loads((tmp_path / "c" / "case.json").read_text())["structures"]["PTV70"]["volume_cc"] > 0


def test_atomic_outputs_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "result"
    with pytest.raises(RuntimeError):
        with output_folder(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with output_folder(target) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (target / "done.txt").read_text() == "ok"


def test_progress_sinks():
    seen = []
    sink = progress.callback(lambda pct, msg: seen.append((pct, msg)))
    list(progress.track(["a", "b"], progress.sub(sink, 0.5, 1.0)))
    assert seen[0] == (50, "a") and seen[-1] == (100, "done")
    stream = io.StringIO()
    progress.machine_lines(stream)(0.25, "step")
    assert stream.getvalue() == "<filter-comment>step</filter-comment>\n<filter-progress>0.2500</filter-progress>\n"


def test_convert_refuses_a_mask_on_another_grid(tmp_path):
    import subprocess
    import sys

    ct = grid_image()
    folder = tmp_path / "case"
    folder.mkdir()
    write_image(ct, folder / "CT.nrrd")
    other = grid_image(spacing=(1.0, 1.0, 1.0))
    write_segmentation({"PTV70": from_array(np.ones(sitk.GetArrayFromImage(other).shape, np.uint8), other)},
                       folder / "Structures.seg.nrrd")
    result = subprocess.run([sys.executable, "-m", "rtrai", "convert", str(folder), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "different grids" in result.stderr and "spacing" in result.stderr
    assert not (tmp_path / "out").exists()
