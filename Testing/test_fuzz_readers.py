"""Readers raise only rtrai errors: a short seeded run of benchmarks/fuzz_inputs.py (mutated real files through every
reader), and one test per case that once gave a traceback or a silent success instead of one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtrai.core.errors import FormatError, GeometryError, InputError

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "benchmarks" / "fuzz_inputs.py"
def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO / "RTRadiomicsAI"), os.environ.get("PYTHONPATH")) if p))


def rtrai(*args, cwd=None) -> subprocess.CompletedProcess:
    """The rtrai command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "rtrai", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2 and exactly one line on stderr, 'rtrai: error: ...', with no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("rtrai: error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _fuzz(tmp_path: Path, count: int, readers: list[str] | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the fuzz script in its own process (its memory limit and alarms stay out of pytest's)."""
    command = [sys.executable, str(FUZZ), str(count), "--seed", "0", "--json"]
    if readers:
        command += ["--readers", ",".join(readers)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


# -- the fuzz run ---------------------------------------------------------------------------------------------------
def test_short_fuzz_run_raises_only_rtrai_errors(tmp_path):
    summary, result = _fuzz(tmp_path, 1500)  # every reader
    assert sum(r["inputs"] for r in summary["readers"].values()) > 1200, result.stdout[-3000:]
    assert len(summary["readers"]) >= 12, summary["readers"]  # DICOM, OpenKBP, NRRD, seg, configs, tables...
    assert summary["bugs"] == [], result.stdout[-4000:]
    assert summary["slow"] == [], summary["slow"]
    assert all(r["multiline"] == 0 for r in summary["readers"].values()), summary["multiline_examples"]
    assert all(r["refused"] > 0 for r in summary["readers"].values())  # the mutations do reach the readers
    assert result.returncode == 0


# -- rtrai ibsi -----------------------------------------------------------------------------------------------------
def _write(array: np.ndarray, path: Path, spacing=(2.0, 2.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def ibsi_inputs(tmp_path):
    pytest.importorskip("mirp")
    rng = np.random.default_rng(0)
    image = _write(rng.integers(1, 7, (4, 4, 5)).astype(np.int16), tmp_path / "image.nrrd")
    mask = _write(np.ones((4, 4, 5), np.uint8), tmp_path / "mask.nrrd")
    return tmp_path, image, mask


def test_ibsi_empty_mask_is_one_line_error(ibsi_inputs):
    folder, image, _ = ibsi_inputs
    empty = _write(np.zeros((4, 4, 5), np.uint8), folder / "empty.nrrd")
    for config in ("digital", "A"):  # was AttributeError ('NoneType' object has no attribute 'iloc')
        assert_one_line_error(rtrai("ibsi", "--config", config, "--image", image, "--mask", empty,
                                    "-o", folder / "out.csv"), "empty.nrrd", "empty")
    assert not (folder / "out.csv").exists()


def test_ibsi_grid_mismatch_is_one_line_error(ibsi_inputs):
    folder, image, _ = ibsi_inputs
    other = _write(np.ones((6, 6, 6), np.uint8), folder / "other.nrrd", spacing=(1.0, 1.0, 1.0))
    for config in ("digital", "A"):  # A was IndexError in the diagnostics; digital computed on mismatched grids
        assert_one_line_error(rtrai("ibsi", "--config", config, "--image", image, "--mask", other,
                                    "-o", folder / "out.csv"), "different grids", "size")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_ibsi_nan_in_image_is_one_line_error(ibsi_inputs, suffix):
    folder, _, mask = ibsi_inputs
    values = np.random.default_rng(1).integers(1, 7, (4, 4, 5)).astype(np.float32)
    values[1, 2, 3] = np.nan
    image = _write(values, folder / f"nan{suffix}")
    mask = _write(np.ones((4, 4, 5), np.uint8), folder / f"mask{suffix}")
    # ITK reads NaN in NIfTI as 0, so the NIfTI case is found in the file itself (rtrai.io.images)
    assert_one_line_error(rtrai("ibsi", "--config", "B", "--image", image, "--mask", mask, "-o",
                                folder / "out.csv"), "NaN", f"nan{suffix}")


@pytest.mark.parametrize("table", [b"\xff\xfe not a table \x00\x01", b"a,b\n1,2\n",
                                   "dataset,family,feature,reference value,tolerance,tag\n"
                                   "x,Statistics,Mean,1..2,0,stat_mean\n".encode()])
def test_ibsi_unreadable_reference_table_is_an_error(ibsi_inputs, table):
    folder, image, mask = ibsi_inputs
    reference = folder / "reference.csv"
    reference.write_bytes(table)
    result = rtrai("ibsi", "--config", "digital", "--image", image, "--mask", mask, "--reference", reference,
                   "-o", folder / "out.csv")
    assert_one_line_error(result, "reference.csv")  # was exit 0 with an empty report, or a traceback
    assert not (folder / "out.report.csv").exists()


def test_reference_table_checks_its_numbers(tmp_path):
    from rtrai.radiomics.ibsi import compare, reference_table

    header = "dataset,family,feature,consensus,reference value,tolerance,your result,difference,check,tag\n"
    good = tmp_path / "good.csv"
    good.write_text(header + "d,Statistics,Mean,strong,2.15,0.01,,,,stat_mean\nd,Morph,OMBB,,,,,,,morph_ombb\n",
                    encoding="utf-8-sig")
    assert [r["within"] for r in compare({"stat_mean": 2.151}, reference_table(good))] == [True]
    for value, tolerance in (("1..2", "0"), ("nan", "0"), ("1e309", "0"), ("0E+500", "0"), ("2", "-1"),
                             ("2", "inf")):
        bad = tmp_path / "bad.csv"
        bad.write_text(header + f"d,Statistics,Mean,strong,{value},{tolerance},,,,stat_mean\n", encoding="utf-8")
        with pytest.raises(FormatError, match="line 2"):
            reference_table(bad)


# -- cohorts --------------------------------------------------------------------------------------------------------
def test_radiomics_cohort_not_utf8_is_one_line_error(tmp_path):
    cohort = tmp_path / "cohort.csv"
    cohort.write_bytes(b"ID,Image,Mask\npt1,\xff\xfeimage.nrrd,mask.nrrd\n")
    assert_one_line_error(rtrai("radiomics", "--cohort", cohort, "-o", tmp_path / "out" / "features.csv"),
                          "cohort.csv", "UTF-8")


def test_read_batch_refuses_nul_and_bad_encodings(tmp_path):
    from rtrai.radiomics.cohort import read_batch

    path = tmp_path / "batch.csv"
    for data in (b"ID,Image,Mask\npt1,a\x00b.nrrd,m.nrrd\n", "ID,Image,Mask\npt1,a.nrrd,m.nrrd\n".encode("utf-16")):
        path.write_bytes(data)
        with pytest.raises(FormatError, match="batch.csv"):
            read_batch(path)
    path.write_text("ID,Image,Mask\npt1,a.nrrd,m.nrrd,extra\npt2,b.nrrd\n")
    rows = read_batch(path)  # a long row's extra field is ignored, a short row's missing Mask is empty
    assert [r["ID"] for r in rows] == ["pt1", "pt2"] and rows[1]["Mask"] == ""


def test_run_cohort_list_not_utf8_is_one_line_error(tmp_path):
    cohort = tmp_path / "cases.txt"
    cohort.write_bytes(b"pt_\xff\xfe1\n")
    assert_one_line_error(rtrai("run", "--cohort", cohort, "-o", tmp_path / "out"), "cases.txt")


# -- configs --------------------------------------------------------------------------------------------------------
def test_dose_config_yaml_syntax_error_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnetwork: {type: prior-unet, channels: [16, 32\nsteps: 10\n")
    line = assert_one_line_error(rtrai("dose", "train", "--data", tmp_path, "--config", bad, "-o",
                                       tmp_path.parent / f"{tmp_path.name}-work"), "bad.yaml", "line")
    assert "column" in line


@pytest.mark.parametrize("text, needle", [
    ("name: x\nlabels: [Brainstem\n", "line 3"),           # unclosed flow sequence
    ("name: x\n  steps: 3\n", "line 2"),                     # bad indentation
    ("name: x\nsteps: *anchor\n", "undefined alias"),
    ("name: x\x00\n", "NUL byte"),                           # a NUL: binary, not text
    ("steps: [1, 2]\n", "'steps'"),                          # wrong type for a setting
    ("? [a, b]\n: 1\n", "YAML"),                             # an unhashable key
    ("7: 1\nNone: 2\n", "unknown settings"),                 # keys that are not names
])
def test_segmentation_config_errors_are_one_line(tmp_path, text, needle):
    from rtrai.segmentation.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "config.yaml" in message and needle in message, message


def test_config_loaders_refuse_non_utf8(tmp_path):
    from rtrai.dose.config import load_config as load_dose_config
    from rtrai.segmentation.config import load_config

    path = tmp_path / "config.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    for load in (load_config, load_dose_config):
        with pytest.raises(InputError, match="UTF-8"):
            load(str(path))


@pytest.mark.parametrize("text", ["setting:\n  binWidth: 25\n  notAKey: 3\n", "setting:\n  binWidth: [\n"])
def test_radiomics_params_errors_are_one_line(tmp_path, text):
    pytest.importorskip("radiomics")
    image = _write(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), tmp_path / "image.nrrd")
    mask_values = np.zeros((8, 8, 8), np.uint8)
    mask_values[2:6, 2:6, 2:6] = 1
    mask = _write(mask_values, tmp_path / "mask.nrrd")
    params = tmp_path / "params.yaml"
    params.write_text(text)
    assert_one_line_error(rtrai("radiomics", "--image", image, "--mask", mask, "--params", params, "-o",
                                tmp_path / "out" / "features.csv"), "params.yaml")


# -- images and segmentations: what the fuzz run found --------------------------------------------------------------
def test_image_header_declaring_more_data_than_its_file_is_refused_before_reading(tmp_path):
    from rtrai.io.images import read_image

    path = _write(np.zeros((10, 24, 24), np.int16), tmp_path / "ct.nrrd")
    sitk.WriteImage(sitk.ReadImage(str(path)), str(path), True)
    raw = path.read_bytes()
    assert b"sizes: 24 24 10" in raw
    for sizes in (b"2000 2000 2000", b"100000 100000 100000"):  # the first made ITK zero 16 GB before failing
        path.write_bytes(raw.replace(b"sizes: 24 24 10", b"sizes: " + sizes))
        with pytest.raises(FormatError, match="declares"):
            read_image(path)


def test_segmentation_with_damaged_fields_is_a_format_error(tmp_path):
    from rtrai.io.segfile import read_segmentation, write_segmentation

    mask = sitk.GetImageFromArray(np.pad(np.ones((2, 2, 2), np.uint8), 2))
    path = write_segmentation({"Brainstem": mask, "PTV70": mask}, tmp_path / "s.seg.nrrd")
    raw = path.read_bytes()
    assert set(read_segmentation(path)[0]) == {"Brainstem", "PTV70"}
    damaged = {b"Segment1_Layer:=1": b"Segment1_Layer:=256",                 # was IndexError
               b"Segment0_LabelValue:=1": b"Segment0_LabelValue:=x",
               b"Segment0_Color:=": b"Segment0_Color:=nan 1 ",
               b"space directions: none (1,0,0)": b"space directions: none (1,0,0) (1,0,0) (0,0,1) #"}
    for old, new in damaged.items():
        assert old in raw, old
        (tmp_path / "bad.seg.nrrd").write_bytes(raw.replace(old, new))
        with pytest.raises((FormatError, GeometryError)):
            read_segmentation(tmp_path / "bad.seg.nrrd")
    body = raw.index(b"\n\n") + 2
    (tmp_path / "bad.seg.nrrd").write_bytes(raw[:body] + raw[body:body + 10] + b"\x00" * 8 + raw[body + 18:])
    with pytest.raises(FormatError, match="bad.seg.nrrd"):  # a corrupt gzip stream was zlib.error
        read_segmentation(tmp_path / "bad.seg.nrrd")


def test_case_json_of_the_wrong_shape_is_a_format_error(tmp_path):
    from rtrai.io.case_io import read_case, write_case
    from rtrai.phantom import make_phantom

    folder = tmp_path / "case"
    write_case(make_phantom(0, size=(16, 16, 8), spacing=(20.0, 20.0, 12.0)), folder)
    info = json.loads((folder / "case.json").read_text())
    for change in ({"metadata": False}, {"prescription_gy": 0}, {"prescription_gy": {"PTV70": [1]}},
                   {"prescription_gy": {"PTV70": "x"}}, {"fractions": "35"}):
        (folder / "case.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(FormatError, match="case.json"):
            read_case(folder)
    (folder / "case.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="object"):
        read_case(folder)
