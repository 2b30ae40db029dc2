"""Contour QA on real contours: the shipped reference table (OpenKBP train patients only) leaves the built-in
patient's own contours alone and flags the same contours corrupted on purpose (shifted 15 mm, half erased, left/right
swapped, a second component, empty); ``rtrai segment qa`` and ``rtrai segment --qa`` write what the issue asks."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path
from rtrai.core.case import Case
from rtrai.demo import BUILTIN_CASE
from rtrai.io.openkbp import read_openkbp
from rtrai.segmentation.qa import CHECKS, COLUMNS, check_case, fit_reference, load_reference

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_contour_qa import half_erased, shifted  # noqa: E402 - the benchmark's corruptions, not a second copy


@pytest.fixture(scope="module")
def demo() -> Case:
    return read_openkbp(BUILTIN_CASE)  # validation patient pt_236: never used to fit the table


def rtrai(*args) -> int:
    from rtrai import cli

    return cli.main([str(a) for a in args])


def corrupted(case: Case, **masks) -> Case:
    return Case(ct=case.ct, structures={**case.structures, **masks}, metadata=dict(case.metadata))


def rows_of(case: Case) -> dict[str, dict]:
    return {row["structure"]: row for row in check_case(case)}


def test_shipped_reference_comes_from_the_train_patients_and_refits_identically():
    table = load_reference()
    patients = table["provenance"]["patients"]
    assert table["patients"] == len(patients) == 169
    assert all(1 <= int(p.split("_")[1]) <= 200 for p in patients)  # train-pats; validation is pt_201 to pt_240
    assert table["alpha"] == 0.01 and all(v > 0 for v in table["thresholds"].values())
    assert table["structures"]["Parotid_L"]["single_component"] and not table["structures"]["PTV56"]["single_component"]
    records = json.loads((REPO / "training" / "contour-qa" / "train_measurements.json").read_text())
    assert fit_reference(records, alpha=table["alpha"])["thresholds"] == table["thresholds"]


def test_the_demo_patients_own_contours_pass(demo):
    rows = rows_of(demo)
    assert set(rows) == set(demo.structures) and len(rows) == 10
    assert [n for n, r in rows.items() if r["flagged"]] == []
    assert rows["Parotid_L"]["laterality"] == 0 and rows["Brainstem"]["laterality"] is None
    assert all(rows[n][c] == 0 for n in ("Brainstem", "Parotid_R", "Bone_Mandible") for c in
               ("volume", "components", "position"))


@pytest.mark.parametrize("name, corruption, check", [
    ("Bone_Mandible", "shift +x", "position"),
    ("SpinalCord", "shift -x", "position"),
    ("Brainstem", "shift +x", "position"),
    ("Larynx", "shift +x", "position"),
    ("Parotid_L", "half cranial", "volume"),
    ("Parotid_R", "half lateral", "volume"),
    ("Bone_Mandible", "half lateral", "position"),
])
def test_corrupted_contours_are_flagged(demo, name, corruption, check):
    mask = demo.structures[name]
    if corruption.startswith("shift"):
        changed = shifted(mask, (15.0 if corruption.endswith("+x") else -15.0, 0.0, 0.0))
    else:
        changed = half_erased(mask, 0 if corruption.endswith("cranial") else 2)
    rows = rows_of(corrupted(demo, **{name: changed}))
    assert rows[name]["flagged"] == 1 and rows[name][check] == 1, rows[name]
    assert name in rows[name]["reason"] or rows[name]["reason"]
    assert [n for n, r in rows.items() if r["flagged"] and n != name] == []  # the blame falls on the corrupted one


def test_left_right_swap_is_flagged_on_both_sides(demo):
    rows = rows_of(corrupted(demo, Parotid_L=demo.structures["Parotid_R"], Parotid_R=demo.structures["Parotid_L"]))
    for name in ("Parotid_L", "Parotid_R"):
        assert rows[name]["laterality"] == 1 and rows[name]["flagged"] == 1
        assert "from the midline (midline organs)" in rows[name]["reason"]
    assert [n for n, r in rows.items() if r["flagged"]] == ["Parotid_R", "Parotid_L"]


def test_a_second_component_and_an_empty_contour_are_flagged(demo):
    brainstem = sitk.GetArrayFromImage(demo.structures["Brainstem"])
    far = np.zeros_like(brainstem)
    far[5:9, 5:9, 5:9] = 1  # 64 voxels in a corner, far from the brainstem: over 5 % of its volume
    assert far.sum() >= 0.05 * brainstem.sum()
    with_blob = sitk.GetImageFromArray(np.maximum(brainstem, far))
    with_blob.CopyInformation(demo.ct)
    empty = sitk.Image(demo.ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(demo.ct)
    rows = rows_of(corrupted(demo, Brainstem=with_blob, Larynx=empty))
    assert rows["Brainstem"]["components"] == 1 and "2 components" in rows["Brainstem"]["reason"]
    assert rows["Larynx"]["empty"] == 1 and rows["Larynx"]["flagged"] == 1
    assert all(rows["Larynx"][c] is None for c in CHECKS if c != "empty")


def test_an_implausible_reference_in_the_validation_data_is_flagged():
    folder = shared_path("openkbp", "validation-pats", "pt_215")
    rows = rows_of(read_openkbp(folder))
    assert rows["SpinalCord"]["volume"] == 1 and "outside the training range" in rows["SpinalCord"]["reason"]


def test_segment_qa_command_writes_one_row_per_structure(tmp_path, demo):
    from rtrai.core.outputs import output_folder
    from rtrai.io.case_io import write_case

    assert rtrai("segment", "qa", BUILTIN_CASE, "-o", tmp_path / "qa") == 0
    with open(tmp_path / "qa" / "contour_qa.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(COLUMNS) == ["structure", "empty", "volume", "components", "laterality",
                                               "position", "flagged", "reason"]
    assert {r["structure"] for r in table} == set(demo.structures) and {r["flagged"] for r in table} == {"0"}
    assert (tmp_path / "qa" / "provenance.json").is_file()

    swapped = corrupted(demo, Parotid_L=demo.structures["Parotid_R"], Parotid_R=demo.structures["Parotid_L"])
    with output_folder(tmp_path / "swapped") as tmp:
        write_case(swapped, tmp)
    assert rtrai("segment", "qa", tmp_path / "swapped", "-o", tmp_path / "qa2") == 0
    with open(tmp_path / "qa2" / "contour_qa.csv", newline="") as handle:
        flagged = {r["structure"]: r["laterality"] for r in csv.DictReader(handle) if r["flagged"] == "1"}
    assert flagged == {"Parotid_L": "1", "Parotid_R": "1"}

    from rtrai.io.images import write_image

    write_image(demo.ct, tmp_path / "ct.nrrd")
    assert rtrai("segment", "qa", tmp_path / "ct.nrrd", "-o", tmp_path / "qa3") == 2  # no structures to check
    assert not (tmp_path / "qa3").exists()


def test_segment_with_qa_writes_confidence_and_uncertainty_maps(tmp_path):
    pytest.importorskip("torch")
    from rtrai.io.images import read_image

    assert rtrai("segment", BUILTIN_CASE, "-o", tmp_path / "out", "--device", "cpu", "--qa") == 0
    with open(tmp_path / "out" / "contour_qa.csv", newline="") as handle:
        table = {r["structure"]: r for r in csv.DictReader(handle)}
    labels = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"]
    assert list(table) == labels and list(next(iter(table.values())))[-1] == "confidence"
    found = [n for n, r in table.items() if r["empty"] == "0"]
    assert len(found) >= 5
    assert float(table["Bone_Mandible"]["confidence"]) > 0.8
    demo = read_openkbp(BUILTIN_CASE)
    for name in found:
        assert 0.0 < float(table[name]["confidence"]) <= 1.0
        uncertainty = read_image(tmp_path / "out" / "uncertainty" / f"{name}.nrrd")
        array = sitk.GetArrayViewFromImage(uncertainty)
        assert uncertainty.GetSize() == demo.ct.GetSize() and array.min() >= 0.0 and array.max() <= 1.0
        assert array.max() > 0.0  # the two views never agree to the last voxel
    report = json.loads((tmp_path / "out" / "contour_qa.json").read_text())
    assert report["reference"]["name"] == "hn-openkbp-train" and "mirror" in report["confidence"]
