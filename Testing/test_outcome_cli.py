"""``rtrai outcome fit | evaluate | predict`` end to end, and bad input: one stderr line, exit 2, no output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rtrai import cli
from rtrai.outcome import make_planted_cohort


@pytest.fixture
def rtrai(capsys):
    """Run the real ``rtrai`` entry point."""

    def run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outcome")
    table = make_planted_cohort(260, 20, seed=1)
    table.iloc[:180].to_csv(folder / "train.csv", index=False)
    table.iloc[180:].to_csv(folder / "test.csv", index=False)
    return folder, table


def test_fit_evaluate_predict_survival(rtrai, tables, tmp_path):
    folder, table = tables
    code, out, err = rtrai("outcome", "fit", "--table", folder / "train.csv", "--time", "time", "--event", "event",
                           "--id", "PatientID", "--exclude", "label", "--folds", 3, "--inner-folds", 3,
                           "-o", tmp_path / "model")
    assert code == 0, err
    assert "rtrai: warning:" in err and "per variable" in err
    model = json.loads((tmp_path / "model" / "model.json").read_text())
    assert set(table.attrs["planted"]) <= set(model["features"])
    assert {"coefficients", "preprocessing", "training", "versions"} <= set(model)
    assert (tmp_path / "model" / "provenance.json").is_file()

    code, out, err = rtrai("outcome", "evaluate", "--model", tmp_path / "model", "--table", folder / "test.csv",
                           "--bootstrap", 200, "--no-shap", "-o", tmp_path / "eval")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"n", "c_index", "c_index_ci", "logrank_p", "events"} <= set(metrics)
    assert metrics["n"] == 80 and metrics["logrank_p"] < 0.01
    assert (tmp_path / "eval" / "km.png").is_file() and (tmp_path / "eval" / "nomogram.png").is_file()

    code, out, err = rtrai("outcome", "predict", "--model", tmp_path / "model", "--table", folder / "test.csv",
                           "-o", tmp_path / "predictions.csv")
    assert code == 0, err
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert list(pred.columns[:3]) == ["ID", "risk_score", "risk_group"] and len(pred) == 80
    assert set(pred["risk_group"]) == {"high", "low"}


def test_fit_twice_same_seed_same_bytes_and_binary_evaluate(rtrai, tables, tmp_path):
    folder, _ = tables
    args = ["outcome", "fit", "--table", folder / "train.csv", "--label", "label", "--id", "PatientID",
            "--exclude", "time,event", "--model", "lasso-logistic", "--folds", 3, "--inner-folds", 3, "--seed", 3]
    assert rtrai(*args, "-o", tmp_path / "a")[0] == 0
    assert rtrai(*args, "-o", tmp_path / "b")[0] == 0
    assert (tmp_path / "a" / "model.json").read_bytes() == (tmp_path / "b" / "model.json").read_bytes()
    code, _, err = rtrai("outcome", "evaluate", "--model", tmp_path / "a", "--table", folder / "test.csv",
                         "--bootstrap", 200, "-o", tmp_path / "eval")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"n", "auc", "auc_ci", "brier"} <= set(metrics)
    assert {"roc.png", "calibration.png", "shap_summary.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}


def _bad(tmp_path, table: pd.DataFrame) -> str:
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("case, args, message", [
    ("missing endpoint", ["--time", "os_days", "--event", "event"], "endpoint column(s) 'os_days' not in the table"),
    ("non-numeric feature", ["--time", "time", "--event", "event"], "feature column 'original_feature_001' is not "
                                                                    "numeric"),
    ("all censored", ["--time", "time", "--event", "event"], "all 60 patients are censored"),
    ("one class", ["--label", "label"], "has only one class"),
    ("all endpoints missing", ["--label", "label"], "every row has a missing endpoint"),
    ("both endpoints", ["--label", "label", "--time", "time", "--event", "event"], "not both"),
])
def test_bad_input_exits_2_with_one_line(rtrai, tmp_path, case, args, message):
    table = make_planted_cohort(60, 15, seed=5)
    if case == "non-numeric feature":
        table["original_feature_001"] = table["original_feature_001"].astype(object)
        table.loc[4, "original_feature_001"] = "n/a (scanner)"
    elif case == "all censored":
        table["event"] = 0
    elif case == "one class":
        table["label"] = 1
    elif case == "all endpoints missing":
        table["label"] = np.nan
    exclude = ",".join(c for c in ("time", "event", "label") if c not in args)
    code, out, err = rtrai("outcome", "fit", "--table", _bad(tmp_path, table), *args, "--id", "PatientID",
                           *(["--exclude", exclude] if exclude else []), "-o", tmp_path / "model")
    assert code == 2
    assert err.startswith("rtrai: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "model").exists()


def test_nan_endpoints_are_dropped_with_a_warning(rtrai, tmp_path):
    table = make_planted_cohort(120, 15, seed=6)
    table.loc[[3, 7], "time"] = np.nan
    code, _, err = rtrai("outcome", "fit", "--table", _bad(tmp_path, table), "--time", "time", "--event", "event",
                         "--id", "PatientID", "--exclude", "label", "--folds", 2, "--inner-folds", 2,
                         "-o", tmp_path / "model")
    assert code == 0, err
    assert "dropped 2 of 120 rows with a missing endpoint" in err and "'P0003'" in err
    assert json.loads((tmp_path / "model" / "model.json").read_text())["training"]["n"] == 118


def test_evaluate_rejects_table_without_model_columns(rtrai, tables, tmp_path):
    folder, table = tables
    assert rtrai("outcome", "fit", "--table", folder / "train.csv", "--label", "label", "--id", "PatientID",
                 "--exclude", "time,event", "--folds", 2, "--inner-folds", 2, "-o", tmp_path / "m")[0] == 0
    features = json.loads((tmp_path / "m" / "model.json").read_text())["features"]
    reduced = table.iloc[180:].drop(columns=[features[0]])
    code, _, err = rtrai("outcome", "evaluate", "--model", tmp_path / "m", "--table", _bad(tmp_path, reduced),
                         "-o", tmp_path / "eval")
    assert code == 2 and "lacks columns the model was trained with" in err
    assert not (tmp_path / "eval").exists()
    code, _, err = rtrai("outcome", "predict", "--model", tmp_path / "nowhere", "--table", folder / "test.csv",
                         "-o", tmp_path / "p.csv")
    assert code == 2 and "no model.json" in err


def test_clinical_join_and_combat_batch(rtrai, tmp_path):
    table = make_planted_cohort(150, 15, seed=8, n_batches=3)
    clinical = pd.DataFrame({"PatientID": table["PatientID"],
                             "stage": np.where(np.arange(150) % 3 == 0, "III", "II"),
                             "time": table["time"], "event": table["event"]})
    features = table.drop(columns=["time", "event", "label"])
    features.to_csv(tmp_path / "features.csv", index=False)
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    code, _, err = rtrai("outcome", "fit", "--table", tmp_path / "features.csv",
                         "--clinical", tmp_path / "clinical.csv",
                         "--id", "PatientID", "--time", "time", "--event", "event", "--batch", "centre",
                         "--folds", 2, "--inner-folds", 2, "-o", tmp_path / "model")
    assert code == 0, err
    model = json.loads((tmp_path / "model" / "model.json").read_text())
    fitted = model["preprocessing"]["fitted"]
    assert fitted["combat"]["batches"] == ["C0", "C1", "C2"]
    assert "stage=III" in model["design_features"]
