"""``rtrai run PATIENTS --scheduler local --jobs 2``: each case one task on a Dask LocalCluster of two workers; the
cohort's tables equal a serial run's, and every cohort run writes ``cohort_report.html``."""

from __future__ import annotations

import pandas as pd
import pytest
from rtrai import cli
from rtrai.io.case_io import write_case
from rtrai.phantom import make_phantom

pytest.importorskip("distributed")


def _case(seed: int):
    """A small phantom without targets: DosePredict is skipped at once (no target) and the input's dose is used,
    so the case's work is the DVH, contour QA and radiomics (CT and dose) that the comparison looks at."""
    case = make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    for name in ("PTV70", "PTV56"):
        del case.structures[name]
    case.prescription = {}
    return case


def test_run_on_a_local_cluster_equals_serial_and_writes_the_cohort_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RTRAI_THREADS", "1")
    for seed in (0, 1):
        write_case(_case(seed), tmp_path / "patients" / f"p{seed}")
    common = ["run", str(tmp_path / "patients"), "--keep-structures", "--no-scene"]
    assert cli.main([*common, "-o", str(tmp_path / "serial"), "--jobs", "1"]) == 0
    assert cli.main([*common, "-o", str(tmp_path / "dask"), "--scheduler", "local", "--jobs", "2"]) == 0
    assert "2 cases on 2 Dask workers at tcp://" in capsys.readouterr().err

    tables = {}
    for run in ("serial", "dask"):
        out = tmp_path / run
        cohort = pd.read_csv(out / "cohort.csv")
        assert list(cohort["case"]) == ["p0", "p1"] and list(cohort["status"]) == ["done", "done"]
        assert not (out / "cohort.partial.csv").exists()
        assert "2 cases: 2 done" in (out / "cohort_report.html").read_text()
        tables[run] = (cohort.drop(columns=["seconds", "input"]), pd.read_csv(out / "cohort_features.csv"))
    pd.testing.assert_frame_equal(tables["dask"][0], tables["serial"][0])
    features = tables["serial"][1]
    assert list(features["ID"]) == ["phantom-0", "phantom-1"] and "dose_Parotid_L_dvh_Dmean_Gy" in features.columns
    pd.testing.assert_frame_equal(tables["dask"][1], features, check_exact=False, rtol=1e-9)
    for case in ("p0", "p1"):  # each case's own files are the serial ones
        for name in ("features.csv", "dvh.csv", "contour_qa.csv"):
            assert (tmp_path / "dask" / case / name).read_text() == (tmp_path / "serial" / case / name).read_text()

    # Run again on the cluster: both cases are finished, kept, and the report is written again.
    stamp = (tmp_path / "dask" / "p0" / "provenance.json").stat().st_mtime_ns
    (tmp_path / "dask" / "cohort_report.html").unlink()
    assert cli.main([*common, "-o", str(tmp_path / "dask"), "--scheduler", "local", "--jobs", "2"]) == 0
    assert list(pd.read_csv(tmp_path / "dask" / "cohort.csv")["status"]) == ["finished before"] * 2
    assert (tmp_path / "dask" / "p0" / "provenance.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "dask" / "cohort_report.html").is_file()


def test_cluster_and_endpoint_options_are_checked_before_any_case_runs(tmp_path, capsys):
    write_case(_case(0), tmp_path / "patients" / "p0")
    (tmp_path / "clinical.csv").write_text("ID,time,event\nphantom-0,10,1\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "patients"), "-o", str(out), "--clinical", str(tmp_path / "clinical.csv"),
                     "--endpoint", "months,event"]) == 2
    assert "months" in capsys.readouterr().err and not out.exists()
    assert cli.main(["run", str(tmp_path / "patients" / "p0"), "-o", str(out), "--scheduler", "local"]) == 2
    assert "--scheduler is for a cohort" in capsys.readouterr().err and not out.exists()
