"""Bad input and small defects, each through the real command line where a user meets it: exit status 2, one
``rtrai: error:`` line on stderr, no traceback, no output; and the library rules behind them (missing is not empty,
doses and prescriptions in Gy, the model folder setting, help that prints)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import shared_path
from rtrai.core.case import Case
from rtrai.core.errors import InputError, ModelError
from rtrai.core.image import from_array
from rtrai.io.case_io import read_case, write_case


def rtrai(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m rtrai ARGS`` in a child process, as a user or a Slicer background job runs it."""
    return subprocess.run([sys.executable, "-m", "rtrai", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=None if env is None else {**os.environ, **env})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``rtrai: error:`` line of a refused command (exit status 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtrai: error: "), result.stderr
    return lines[0]


def small_case(dose_scale: float = 1.0) -> Case:
    """A 12 x 20 x 24 CT with a target, an organ and a dose peaking at 72 Gy times ``dose_scale``."""
    ct = from_array(np.full((12, 20, 24), -50, np.int16), spacing=(2.0, 2.0, 3.0), origin=(-20.0, -20.0, 0.0))
    case = Case(ct=ct, metadata={"patient_id": "case201"})
    ptv = np.zeros((12, 20, 24), np.uint8)
    ptv[4:8, 6:14, 8:16] = 1
    case.add_structure("PTV70", ptv)
    organ = np.zeros_like(ptv)
    organ[2:10, 2:5, 3:20] = 1
    case.add_structure("Larynx", organ)
    z, y, x = np.mgrid[:12, :20, :24]
    dose = 72.0 * np.exp(-((z - 6) ** 2 / 20 + (y - 10) ** 2 / 40 + (x - 12) ** 2 / 40))
    case.dose = from_array((dose * dose_scale).astype(np.float32), ct)
    return case


# -- 1. an organ the model did not find is absent from Structures.seg.nrrd, not a copy of a neighbour -------------

def test_an_empty_mask_is_not_written_and_takes_no_label(tmp_path):
    import slicerio

    from rtrai.io.segfile import read_segmentation, write_segmentation

    case = small_case()
    empty = from_array(np.zeros((12, 20, 24), np.uint8), case.ct)
    structures = {"PTV70": case.structures["PTV70"], "Esophagus": empty, "Larynx": case.structures["Larynx"]}
    path = write_segmentation(structures, tmp_path / "S.seg.nrrd", reference=case.ct)
    masks, _ = read_segmentation(path)
    assert sorted(masks) == ["Larynx", "PTV70"]  # missing is not empty
    for name in masks:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(masks[name]),
                                      sitk.GetArrayFromImage(case.structures[name]))
    segments = slicerio.read_segmentation(str(path))["segments"]
    assert sorted(s["name"] for s in segments) == ["Larynx", "PTV70"]
    assert len({(s["layer"], s["labelValue"]) for s in segments}) == len(segments)  # no label shared


def test_segment_leaves_out_an_organ_not_found_on_a_cropped_ct(tmp_path, openkbp_pt201):
    """pt_201 cut to its top 66 slices (no esophagus imaged): the model finds no Esophagus, and the written file
    must not hold one, neither empty nor under another organ's label."""
    import slicerio

    from rtrai.io.segfile import read_segmentation

    full = read_case(openkbp_pt201)
    crop = lambda image: image[:, :, 62:128]  # noqa: E731 - SimpleITK slicing (x, y, z)
    case = Case(ct=crop(full.ct), metadata={"patient_id": "pt_201_top"})
    for name, mask in full.structures.items():
        if sitk.GetArrayFromImage(crop(mask)).any():  # a copy: a view of the temporary crop would read freed memory
            case.add_structure(name, crop(mask), full.colors.get(name), keep_name=True)
    assert "Esophagus" not in case.structures  # the scenario: the esophagus lies below these slices
    write_case(case, tmp_path / "case")

    result = rtrai("segment", tmp_path / "case", "-o", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert "Esophagus" in record["not_found"], record["not_found"]  # what the model says for these slices
    found = sorted(set(record["structures"]) - set(record["not_found"]))
    assert "Larynx" in found

    path = tmp_path / "out" / "Structures.seg.nrrd"
    ours, _ = read_segmentation(path)
    assert sorted(ours) == found
    assert all(sitk.GetArrayViewFromImage(mask).any() for mask in ours.values())
    larynx = sitk.GetArrayFromImage(ours["Larynx"]).astype(bool)
    for name, mask in ours.items():
        if name != "Larynx":
            assert not np.array_equal(sitk.GetArrayFromImage(mask).astype(bool), larynx), name

    theirs = slicerio.read_segmentation(str(path))
    segments = theirs["segments"]
    assert sorted(s["name"] for s in segments) == found
    assert len({(s["layer"], s["labelValue"]) for s in segments}) == len(segments)
    by_name = {s["name"]: slicerio.segment_mask(theirs, s).astype(bool) for s in segments}
    np.testing.assert_array_equal(by_name["Larynx"].transpose(2, 1, 0), larynx)
    assert not any(np.array_equal(m, by_name["Larynx"]) for n, m in by_name.items() if n != "Larynx")


# -- 2. doses and prescriptions in cGy are refused, as the DVH and gamma commands refuse them ---------------------

def test_convert_and_export_dicom_refuse_a_dose_in_cgy(tmp_path):
    write_case(small_case(dose_scale=100.0), tmp_path / "cgy")
    for command in ("convert", "export-dicom"):
        result = rtrai(command, tmp_path / "cgy", tmp_path / command)
        line = one_error_line(result)
        assert "cGy" in line and "7200" in line and str(tmp_path / "cgy") in line, line
        assert not (tmp_path / command).exists()

    write_case(small_case(), tmp_path / "gy")  # the same case in Gy goes through both
    assert rtrai("convert", tmp_path / "gy", tmp_path / "converted").returncode == 0
    result = rtrai("export-dicom", tmp_path / "gy", tmp_path / "dicom")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dicom" / "RTDOSE.dcm").is_file()


@pytest.mark.parametrize("text, says", [("PTV70=7000", "cGy"), ("PTV70=-5", "positive"), ("PTV70=0", "positive"),
                                        ("PTV70=nan", "positive"), ("=70", "no target name"),
                                        ("PTV70", "NAME=GY")])
def test_prescription_must_be_a_dose_in_gy(text, says):
    from rtrai.dose.commands import parse_prescription

    with pytest.raises(InputError, match=says):
        parse_prescription(text)


def test_prescription_in_gy_is_read():
    from rtrai.dose.commands import parse_prescription

    assert parse_prescription("PTV70=70, PTV56=56") == {"PTV70": 70.0, "PTV56": 56.0}
    assert parse_prescription("PTV_LDR=145") == {"PTV_LDR": 145.0}  # permanent-seed brachytherapy is real
    assert parse_prescription(None) == {}


def test_dose_predict_refuses_a_prescription_in_cgy(tmp_path):
    write_case(small_case(), tmp_path / "case")
    line = one_error_line(rtrai("dose", "predict", tmp_path / "case", "-o", tmp_path / "out",
                                "--prescription", "PTV70=7000", "--device", "cpu"))
    assert "PTV70=70" in line and "cGy" in line, line
    assert not (tmp_path / "out").exists()


# -- 3. every command's --help prints -----------------------------------------------------------------------------

def _command_paths(parser: argparse.ArgumentParser, path: tuple = ()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _command_paths(child, path + (name,))


def test_help_of_every_command_and_sub_command(capsys):
    from rtrai import cli

    paths = list(_command_paths(cli.build_parser()))
    assert ("dvh",) in paths and ("dose", "evaluate") in paths and len(paths) > 10
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        out, err = capsys.readouterr()
        assert exit_info.value.code in (0, None), (path, err)
        assert out.strip() and "usage: rtrai" in out and err == "", path


def test_dvh_help_through_the_command_line():
    result = rtrai("dvh", "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "D98%,D95%" in "".join(result.stdout.split()) and "--metrics" in result.stdout  # help wraps lines


# -- 4. RTRAI_MODEL_CACHE: models a user installed, beside the shipped zoo -----------------------------------------

def _install(cache: Path, folder_name: str, **manifest_changes) -> Path:
    from rtrai.models import ZOO

    target = cache / folder_name
    shutil.copytree(ZOO / "hn-oar-ct", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_models_in_the_model_cache_load_by_name_and_never_replace_a_shipped_one(tmp_path, monkeypatch):
    from rtrai.models import ZOO, list_models, load_state_dict, read_manifest

    if not (ZOO / "hn-oar-ct" / "manifest.json").is_file():
        pytest.skip("hn-oar-ct is not shipped in this checkout")
    cache = tmp_path / "models"
    mine = _install(cache, "my-oar", name="my-oar", version="user-1")
    _install(cache, "hn-oar-ct", version="tampered")  # a user's copy under a shipped name
    _install(cache, "renamed", name="other-name")  # its manifest names another model

    monkeypatch.delenv("RTRAI_MODEL_CACHE", raising=False)
    with pytest.raises(ModelError, match="unknown model 'my-oar'"):
        read_manifest("my-oar")

    monkeypatch.setenv("RTRAI_MODEL_CACHE", str(cache))
    manifest = read_manifest("my-oar")
    assert Path(manifest["folder"]) == mine and manifest["version"] == "user-1"
    assert load_state_dict(manifest)  # checksum checked as for a shipped model
    shipped = read_manifest("hn-oar-ct")
    assert Path(shipped["folder"]) == ZOO / "hn-oar-ct" and shipped["version"] != "tampered"
    listed = {m["name"]: m["source"] for m in list_models()}
    assert listed["my-oar"] == str(cache) and listed["hn-oar-ct"] == "shipped" and "other-name" not in listed
    assert [m["name"] for m in list_models()].count("hn-oar-ct") == 1
    with pytest.raises(ModelError, match="names the model 'other-name'"):
        read_manifest("renamed")
    with pytest.raises(ModelError, match="models in RTRAI_MODEL_CACHE .*my-oar"):
        read_manifest("no-such-model")

    result = rtrai("info", env={"RTRAI_MODEL_CACHE": str(cache)})  # a background job started by the hub
    assert result.returncode == 0 and "my-oar" in result.stdout, result.stderr


# -- 7. error messages that name the right thing ------------------------------------------------------------------

def test_radiomics_cohort_with_failed_rows_says_so_on_stderr(tmp_path):
    data = shared_path("pyradiomics", "data")
    batch = tmp_path / "batch.csv"
    batch.write_text(f"ID,Image,Mask\nok,{data / 'brain1_image.nrrd'},{data / 'brain1_label.nrrd'}\n"
                     f"bad,{data / 'brain1_image.nrrd'},{tmp_path / 'no_such_label.nrrd'}\n")
    result = rtrai("radiomics", "--cohort", batch, "-o", tmp_path / "features.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rtrai: error:" in result.stderr and ("bad" in result.stderr or "features.csv" in result.stderr)


def test_dose_evaluate_names_the_predicted_input_when_it_is_at_fault(tmp_path):
    write_case(small_case(), tmp_path / "case201")
    from rtrai.io.images import write_image

    cgy = small_case(dose_scale=100.0).dose
    write_image(cgy, tmp_path / "predicted_cgy.nrrd")
    line = one_error_line(rtrai("dose", "evaluate", "--pred", tmp_path / "predicted_cgy.nrrd",
                                "--ref", tmp_path / "case201", "-o", tmp_path / "out"))
    assert str(tmp_path / "predicted_cgy.nrrd") in line and "predicted" in line and "cGy" in line, line

    shifted = sitk.Image(small_case().dose)
    shifted.SetOrigin((0.0, 0.0, 50.0))
    write_image(shifted, tmp_path / "predicted_elsewhere.nrrd")
    line = one_error_line(rtrai("dose", "evaluate", "--pred", tmp_path / "predicted_elsewhere.nrrd",
                                "--ref", tmp_path / "case201", "-o", tmp_path / "out"))
    assert str(tmp_path / "predicted_elsewhere.nrrd") in line and "origin" in line, line

    line = one_error_line(rtrai("dose", "evaluate", "--pred", tmp_path / "case201", "--ref", tmp_path / "case201",
                                "--prescription", "7000", "-o", tmp_path / "out"))
    assert "cGy" in line, line
    assert not (tmp_path / "out").exists()


def _dicompyler_copy(folder: Path, strip_contours: bool) -> Path:
    source = shared_path("dicom-rt", "dicompyler-core_example")
    folder.mkdir()
    shutil.copy(source / "ct.0.dcm", folder / "ct.0.dcm")
    rtss = pydicom.dcmread(source / "rtss.dcm")
    if strip_contours:  # every ROI declared, none contoured: what a TPS exports before contouring
        for item in rtss.ROIContourSequence:
            if "ContourSequence" in item:
                del item.ContourSequence
    rtss.save_as(folder / "rtss.dcm")
    return folder


def test_convert_warns_about_an_rtstruct_without_contours(tmp_path):
    source = _dicompyler_copy(tmp_path / "empty", strip_contours=True)
    result = rtrai("convert", source, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtrai: warning: "), result.stderr
    assert "no structure" in lines[0] and "without contours" in lines[0] and "BODY, Areola" in lines[0]
    assert (tmp_path / "out" / "CT.nrrd").is_file()  # the CT is still converted
    assert not (tmp_path / "out" / "Structures.seg.nrrd").exists()
    assert not read_case(tmp_path / "out").structures

    # Some ROIs lost (the one-slice CT holds only External): named, the rest converted.
    source = _dicompyler_copy(tmp_path / "partial", strip_contours=False)
    result = rtrai("convert", source, tmp_path / "out2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("rtrai: warning: ") == 1 and "outside the image" in result.stderr
    assert "Areola" in result.stderr
    assert set(read_case(tmp_path / "out2").structures) == {"External"}
    # A case folder converts without repeating what its DICOM source lost.
    again = rtrai("convert", tmp_path / "out2", tmp_path / "out3")
    assert again.returncode == 0 and again.stderr == "", again.stderr
