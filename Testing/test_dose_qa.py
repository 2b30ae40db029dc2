"""``rtrai dose qa``: a plan's dose checked against the predicted achievable dose, on a real OpenKBP patient.

Known answer: the patient's own dose taken as the prediction, and as the plan the same dose made 5 Gy worse inside one
OAR (in its voxels that belong to no other structure): QA must flag that OAR's Dmean and D0.1cc (excess 5 Gy) and
nothing else; the unchanged dose flags nothing.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from rtrai import cli
from rtrai.core.image import from_array
from rtrai.dose.qa import COLUMNS, qa_case
from rtrai.io.images import write_image
from rtrai.io.openkbp import read_openkbp


@pytest.fixture(scope="module")
def patient():
    folder = shared_path("openkbp", "validation-pats", "pt_201")
    return folder, read_openkbp(folder)


def _isolated_oar(case) -> tuple[str, np.ndarray]:
    """The OAR with the largest share of voxels in no other structure, and those voxels (so that 5 Gy more there
    changes no other structure's metrics)."""
    masks = {n: sitk.GetArrayViewFromImage(m).astype(bool) for n, m in case.structures.items()}
    best = None
    for name in ("SpinalCord", "Brainstem", "Parotid_L", "Parotid_R", "Esophagus"):
        if name in masks:
            own = masks[name] & ~np.any([m for n, m in masks.items() if n != name], axis=0)
            if best is None or own.sum() / masks[name].sum() > best[1].sum() / masks[best[0]].sum():
                best = (name, own)
    assert best[1].sum() > 0.95 * masks[best[0]].sum(), "pt_201's OARs overlap others by more than 5 %"
    return best


def _worse_at(case, voxels: np.ndarray, gy: float) -> sitk.Image:
    dose = sitk.GetArrayFromImage(case.dose)
    dose[voxels] += gy
    return from_array(dose, case.dose)


def test_qa_flags_the_one_oar_made_worse(patient):
    _, case = patient
    oar, voxels = _isolated_oar(case)
    result = qa_case(case, _worse_at(case, voxels, 5.0), case.dose, margin_gy=3.0)
    targets = case.targets()
    assert len(result.rows) == 3 * len(targets) + 2 * (len(case.structures) - len(targets))
    flagged = {(r["structure"], r["metric"]) for r in result.flagged}
    assert flagged == {(oar, "Dmean"), (oar, "D0.1cc")}
    for r in result.rows:
        if r["structure"] == oar:  # all but the few voxels it shares are 5 Gy hotter
            assert 4.75 <= r["excess"] <= 5.0 + 1e-3, r
        else:
            assert r["excess"] == pytest.approx(0.0, abs=1e-3), r
    assert result.verdict.startswith("QA FLAG: 2 of") and oar in result.verdict
    # The same dose as plan and prediction: nothing to flag; a margin above 5 Gy lets the worse plan pass.
    assert not qa_case(case, case.dose, case.dose, 3.0).flagged
    assert not qa_case(case, _worse_at(case, voxels, 5.0), case.dose, margin_gy=5.5).flagged


def test_qa_target_coverage_shortfall_is_flagged(patient):
    _, case = patient
    dose = sitk.GetArrayFromImage(case.dose)
    dose[sitk.GetArrayViewFromImage(case.structures["PTV70"]) != 0] *= 0.9  # PTV70 7 Gy colder
    result = qa_case(case, from_array(dose, case.dose), case.dose, margin_gy=3.0)
    flagged = {(r["structure"], r["metric"]) for r in result.flagged}
    assert ("PTV70", "D95%") in flagged and ("PTV70", "D99%") in flagged
    assert ("PTV70", "D1%") not in flagged  # colder is no hot spot
    assert all(s == "PTV70" or not f for s, _, f in ((r["structure"], r["metric"], r["flag"]) for r in result.rows)
               if s in case.targets())


def test_qa_command_writes_table_plot_and_verdict(patient, tmp_path, capsys):
    folder, case = patient
    oar, voxels = _isolated_oar(case)
    write_image(_worse_at(case, voxels, 5.0), tmp_path / "plan.nrrd")
    write_image(case.dose, tmp_path / "predicted.nrrd")
    out = tmp_path / "qa"
    code = cli.main(["dose", "qa", str(folder), "--plan-dose", str(tmp_path / "plan.nrrd"),
                     "--predicted", str(tmp_path / "predicted.nrrd"), "--margin-gy", "3", "-o", str(out)])
    assert code == 0
    verdict = capsys.readouterr().out.strip().splitlines()
    assert len(verdict) == 1 and verdict[0].startswith("QA FLAG") and oar in verdict[0]
    with open(out / "qa.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert {(r["structure"], r["metric"]) for r in rows if r["flag"] == "1"} == {(oar, "Dmean"), (oar, "D0.1cc")}
    assert {r["metric"] for r in rows if r["structure"] == "PTV70"} == {"D95%", "D99%", "D1%"}
    assert (out / "qa.png").stat().st_size > 5000 and (out / "provenance.json").is_file()


def test_qa_bad_inputs_are_one_line_errors(patient, tmp_path, capsys):
    folder, case = patient
    write_image(case.dose, tmp_path / "dose.nrrd")
    shifted = sitk.Image(case.dose)
    shifted.SetOrigin(tuple(np.array(case.dose.GetOrigin()) + 10.0))
    write_image(shifted, tmp_path / "shifted.nrrd")
    base = ["dose", "qa", str(folder), "--predicted", str(tmp_path / "dose.nrrd")]
    cases = [
        (["--plan-dose", str(tmp_path / "shifted.nrrd"), "-o", str(tmp_path / "a")], "origin"),
        (["--plan-dose", str(tmp_path / "dose.nrrd"), "--margin-gy", "-1", "-o", str(tmp_path / "b")], "margin"),
        (["--plan-dose", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "c")], "not found"),
    ]
    for extra, words in cases:
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rtrai: error:") and words in err[0], err
