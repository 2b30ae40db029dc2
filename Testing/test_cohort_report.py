"""``cohort_report.html`` (rtrai.report.cohort): built from the output folder of a real ``rtrai run`` over a folder
of phantom patients (one of them unreadable), its numbers checked against the case files computed here another way;
with an endpoint, the cohort's outcome model and its plots; every image decodes in headless Chromium."""

from __future__ import annotations

import base64
import html
import re
import struct
import subprocess

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from rtrai import cli
from rtrai.core.errors import InputError
from rtrai.io.case_io import write_case
from rtrai.io.segfile import read_segmentation
from rtrai.phantom import make_phantom
from rtrai.report.cohort import REPORT_NAME, write_cohort_report
from test_pipeline import CHECK_IMAGES, _browser

IMAGE = re.compile(r'src="data:image/png;base64,([^"]+)"')


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory):
    """``rtrai run PATIENTS -o OUT``: three small phantoms (AutoSegment replaces their given contours, which are kept
    as the reference) and a case that cannot be read."""
    folder = tmp_path_factory.mktemp("cohort-run")
    for seed in (0, 1, 2):
        phantom = make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
        write_case(phantom, folder / "patients" / f"p{seed}")
    (folder / "patients" / "bad").mkdir()
    (folder / "patients" / "bad" / "CT.nrrd").write_bytes(b"NRRD0004\nnot really an image\n")
    out = folder / "out"
    assert cli.main(["run", str(folder / "patients"), "-o", str(out), "--no-scene"]) == 2  # the bad case
    return out


@pytest.fixture(scope="module")
def outcome_cohort(tmp_path_factory):
    """A cohort folder as ``rtrai run`` leaves it for the outcome section: cohort.csv and cohort_features.csv of 30
    phantom patients (their real features, from the pipeline's radiomics code), and a clinical table with the
    demo's planted endpoint (exponential failure times from PTV70 volume and D98%)."""
    from rtrai.demo import EVENT, TIME, cohort_table

    table = cohort_table(30, seed=1)
    out = tmp_path_factory.mktemp("outcome-cohort")
    pd.DataFrame({"case": table["ID"], "input": "", "status": "done", "error": "", "seconds": 1.0,
                  "skipped_steps": ""}).to_csv(out / "cohort.csv", index=False)
    table.drop(columns=[TIME, EVENT]).to_csv(out / "cohort_features.csv", index=False)
    clinical = table[["ID", TIME, EVENT]].assign(age=np.linspace(50, 80, len(table)).round())
    clinical.to_csv(out / "clinical.csv", index=False)
    return out, f"{TIME},{EVENT}", EVENT


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _band(values, digits=2) -> str:
    lo, mid, hi = np.percentile(np.asarray(values, float), (10, 50, 90))
    return f"{mid:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def test_cohort_report_of_a_run_matches_its_case_files(cohort_run):
    path = write_cohort_report(cohort_run)
    assert path == cohort_run / REPORT_NAME
    page = path.read_text()
    text = " ".join(_text(page).split())
    cases = pd.read_csv(cohort_run / "cohort.csv").set_index("case")
    assert list(cases["status"]).count("done") == 3 and cases.loc["bad", "status"] == "failed"
    assert "4 cases: 3 done, 1 failed" in text and "cannot read image" in text
    for case in ("p0", "p1", "p2"):
        assert f"{case} done {cases.loc[case, 'seconds']:.1f}" in text

    # DVH bands: each structure's Dmean band equals the percentiles of the cases' own dvh_metrics.csv values.
    metrics = pd.concat(pd.read_csv(cohort_run / c / "dvh_metrics.csv") for c in ("p0", "p1", "p2"))
    dmean = metrics[(metrics["structure"] == "PTV70") & (metrics["metric"] == "Dmean")]["value"]
    assert len(dmean) == 3 and f"PTV70 3 {_band(dmean)}" in text
    # Constraints: the pass counts of the cases' constraints.csv.
    constraints = pd.concat(pd.read_csv(cohort_run / c / "constraints.csv") for c in ("p0", "p1", "p2"))
    first = constraints.iloc[0]
    rows = constraints[(constraints["structure"] == first["structure"]) & (constraints["metric"] == first["metric"])
                       & (constraints["goal"] == first["goal"])]
    met = int(rows["passed"].astype(str).str.lower().eq("true").sum())
    assert f"{first['structure']} {first['metric']} {first['goal']} {len(rows)} {met} {100 * met / len(rows):.0f}" \
        in text
    # Features: the headline volumes of cohort_features.csv (mm3 -> cc).
    features = pd.read_csv(cohort_run / "cohort_features.csv")
    volume = features["CT_PTV70_original_shape_MeshVolume"] / 1000
    assert f"volume (cc) PTV70 3 {_band(volume)}" in text
    # Agreement: Dice of Structures.seg.nrrd against InputStructures.seg.nrrd, computed here with numpy.
    scores = []
    for case in ("p0", "p1", "p2"):
        folder = cohort_run / case
        scores.append(_dice_of(folder / "Structures.seg.nrrd", folder / "InputStructures.seg.nrrd", "Parotid_L"))
    assert f"Parotid_L 3 {_band(scores, 3)}" in text
    assert len(IMAGE.findall(page)) == 4  # DVH bands, constraints, features, agreement
    assert "Outcome model" not in text


def _dice_of(predicted, given, name: str) -> float:
    a = sitk.GetArrayFromImage(read_segmentation(predicted)[0][name]) > 0
    b = sitk.GetArrayFromImage(read_segmentation(given)[0][name]) > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_outcome_section_fits_the_cohort_model_and_shows_its_plots(outcome_cohort):
    from rtrai.outcome.models import fit

    out, survival, label = outcome_cohort
    page = write_cohort_report(out, out / "clinical.csv", survival).read_text()
    text = " ".join(_text(page).split())
    names = re.findall(r'alt="([a-z_]+\.png)"', page)
    assert names == ["km.png", "calibration.png", "td_auc.png", "nomogram.png"]
    features = pd.read_csv(out / "cohort_features.csv")
    clinical = pd.read_csv(out / "clinical.csv")
    model = fit(features, time="months_to_failure", event="failure", id_column="ID", clinical=clinical, seed=0)
    cv = model.state["training"]["cv"]
    assert f"Cross-validated {cv['metric']}: {cv['mean']:.3f}" in text  # the same fit, done here
    assert "lasso-cox" in text.lower() and "on 30 cases" in text
    assert "CT_PTV70_original_shape_MeshVolume" in model.features and "CT_PTV70_original_shape_MeshVolume" in text

    binary = write_cohort_report(out, out / "clinical.csv", label).read_text()
    assert re.findall(r'alt="([a-z_]+\.png)"', binary) == ["roc.png", "calibration.png"]
    assert "binary label failure" in " ".join(_text(binary).split())


def test_bad_endpoint_and_missing_cohort_are_one_line_errors(outcome_cohort, tmp_path):
    out, _, _ = outcome_cohort
    with pytest.raises(InputError, match="no column survival_months"):
        write_cohort_report(out, out / "clinical.csv", "survival_months,failure")
    with pytest.raises(InputError, match="TIME,EVENT"):
        write_cohort_report(out, out / "clinical.csv", "a,b,c")
    with pytest.raises(InputError, match="needs --clinical"):
        write_cohort_report(out, None, "failure")
    with pytest.raises(InputError, match="no cohort of rtrai run"):
        write_cohort_report(tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def test_cohort_reports_in_headless_chromium(cohort_run, outcome_cohort, tmp_path, artifacts):
    """Every image of both reports decodes in a real browser at its PNG size; screenshots are kept."""
    browser = _browser()
    out, survival, _ = outcome_cohort
    pages = {"run": write_cohort_report(cohort_run), "outcome": write_cohort_report(out, out / "clinical.csv",
                                                                                     survival)}
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    for name, path in pages.items():
        page = path.read_text()
        expected = []
        for data in IMAGE.findall(page):
            header = base64.b64decode(data[:64])
            expected.append("{}x{}".format(*struct.unpack(">II", header[16:24])))
        assert len(expected) >= 4
        probe = tmp_path / f"{name}.html"
        probe.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"))
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                             check=False)
        title = re.search(r"<title>(.*?)</title>", dom.stdout)
        assert title, dom.stderr[-2000:]
        assert title.group(1) == f"IMAGES {len(expected)}/{len(expected)} {','.join(expected)}"
        shot = artifacts / f"cohort-report-{name}.png"
        shot.unlink(missing_ok=True)
        subprocess.run(flags + ["--window-size=1200,5000", f"--screenshot={shot}", path.as_uri()],
                       capture_output=True, text=True, timeout=120, check=False)
        import matplotlib.image as mpimg

        pixels = mpimg.imread(shot)[..., :3]
        assert pixels.shape[:2] == (5000, 1200) and pixels.std() > 0.1
        (artifacts / f"cohort-report-{name}.html").write_text(page)
