"""Outcome models on real tables (Lung1, scikit-survival's breast_cancer) and on a planted-signal cohort."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path

from rtrai.outcome import OutcomeModel, fit, make_planted_cohort, oracle_risk
from rtrai.outcome.data import OutcomeWarning, read_table
from rtrai.outcome.evaluation import evaluate

LUNG1 = ("outcomes", "NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.subset200_pulmoscan.csv")
NODULE = ["Nodule_X", "Nodule_Y", "Nodule_Width", "Nodule_Height"]  # not part of the TCIA table


@pytest.fixture(scope="module")
def cohort():
    table = make_planted_cohort(400, 40, seed=0)
    return table, table.iloc[:250], table.iloc[250:]


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutcomeWarning)
        return fit(*args, **kwargs)


def test_planted_survival_finds_signal_and_reaches_oracle(cohort, tmp_path):
    from sksurv.metrics import concordance_index_censored

    table, train, test = cohort
    model = _quiet_fit(train, time="time", event="event", id_column="PatientID", exclude=["label"], seed=0,
                       outer_folds=3, inner_folds=3)
    assert model.name == "lasso-cox"
    assert set(table.attrs["planted"]) <= set(model.features)
    assert len(model.features) <= 6  # the one-SE rule keeps the signature sparse
    metrics = evaluate(model, test, out_dir=tmp_path, n_bootstrap=200, shap_values=False)
    oracle = concordance_index_censored(test["event"].astype(bool), test["time"], oracle_risk(test))[0]
    assert metrics["c_index"] > oracle - 0.05
    assert metrics["c_index_ci"][0] < metrics["c_index"] < metrics["c_index_ci"][1]
    assert metrics["logrank_p"] < 0.01
    assert {"km.png", "calibration.png", "nomogram.png", "td_auc.png"} <= set(metrics["plots"])
    assert all((tmp_path / name).stat().st_size > 5000 for name in metrics["plots"])
    # Survival predictions at the horizon follow the risk order.
    pred = model.predict(test)
    s = pred[[c for c in pred.columns if c.startswith("survival_at_")][0]]
    assert np.all(np.diff(s.to_numpy()[np.argsort(pred["risk_score"].to_numpy())]) <= 1e-12)


def test_planted_binary_finds_signal_and_reaches_oracle(cohort, tmp_path):
    from sklearn.metrics import roc_auc_score

    table, train, test = cohort
    model = _quiet_fit(train, label="label", id_column="PatientID", exclude=["time", "event"], seed=0,
                       outer_folds=3, inner_folds=3)
    assert model.name == "lasso-logistic"
    assert set(table.attrs["planted"]) <= set(model.features)
    metrics = evaluate(model, test, out_dir=tmp_path, n_bootstrap=200)
    assert metrics["auc"] > roc_auc_score(test["label"], oracle_risk(test)) - 0.05
    assert metrics["auc_ci"][0] < metrics["auc"] < metrics["auc_ci"][1]
    assert 0 < metrics["brier"] < 0.25
    # LASSO shrinks coefficients (more so with the one-SE rule): predictions are under-confident, slope above 1.
    assert 1.0 < metrics["calibration_slope"] < 3.0
    assert 0.5 < metrics["sensitivity"] < 1 and 0.5 < metrics["specificity"] < 1
    assert {"roc.png", "calibration.png", "shap_summary.png"} <= set(metrics["plots"])


@pytest.mark.parametrize("name", ["svm", "rf", "mlp", "lasso-logistic"])
def test_exported_classifiers_predict_like_scikit_learn(name):
    """The JSON model's own evaluator reproduces the fitted scikit-learn pipeline."""
    from rtrai.outcome import models
    from rtrai.outcome.data import Endpoint, prepare
    from rtrai.outcome.preprocess import Preprocessor

    table = make_planted_cohort(120, 15, seed=2)
    data = prepare(table, Endpoint.from_columns(label="label"), "PatientID", exclude=["time", "event"])
    search = models._search(name, 0, 3, Preprocessor(), data.X, data.y()).fit(data.X, data.y())
    pipeline = search.best_estimator_
    cv = {"metric": "auc", "mean": 0.5, "sd": 0.0, "per_fold": [], "oof": pipeline.predict_proba(data.X)[:, 1]}
    state = models._export(name, pipeline, data, data.y(), cv, seed=0)
    state["data"] = {"id": "PatientID", "exclude": [], "categorical": [], "batch": None, "clinical_columns": []}
    model = OutcomeModel(state)
    new = make_planted_cohort(60, 15, seed=9)
    expected = pipeline.predict_proba(new[data.X.columns])[:, 1]
    np.testing.assert_allclose(model.predict(new)["probability"], expected, rtol=1e-9, atol=1e-12)


def test_same_seed_gives_identical_model_files(cohort):
    _, train, _ = cohort
    kwargs = dict(label="label", id_column="PatientID", exclude=["time", "event"], model="rf", seed=7,
                  outer_folds=2, inner_folds=2)
    first, second = _quiet_fit(train.iloc[:120], **kwargs), _quiet_fit(train.iloc[:120], **kwargs)
    assert first.to_json() == second.to_json()
    assert "pickle" not in first.to_json()


def test_lung1_clinical_cox_equals_lifelines():
    from lifelines import CoxPHFitter

    table = read_table(shared_path(*LUNG1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutcomeWarning)
        model = fit(table, time="Survival.time", event="deadstatus.event", id_column="PatientID", exclude=NODULE,
                    categorical=["Overall.Stage", "Histology", "gender"], model="cox", seed=0, outer_folds=3)
    data = model.dataset(table, require_endpoint=True)
    design = pd.DataFrame(model.transform(data.X), columns=model.state["design_features"])
    assert "Overall.Stage=IIIb" in design.columns and "Histology=nos" in design.columns
    design["T"], design["E"] = data.time, data.event
    reference = CoxPHFitter().fit(design, "T", "E", fit_options={"precision": 1e-12, "max_steps": 500})
    ours = pd.Series(model.state["estimator"]["coef"], index=model.state["design_features"])
    np.testing.assert_allclose(ours.to_numpy(), reference.params_[ours.index].to_numpy(), atol=1e-6)
    assert model.state["training"]["events"] == int(table["deadstatus.event"].sum())


def test_breast_cancer_high_dimensional_lasso_cox():
    from sklearn.model_selection import train_test_split
    from sksurv.datasets import load_breast_cancer

    X, y = load_breast_cancer()
    table = X.astype({c: str for c in ("er", "grade")})
    table.insert(0, "ID", [f"B{i:03d}" for i in range(len(table))])
    table["time"], table["event"] = y["t.tdm"], y["e.tdm"].astype(int)
    train, test = train_test_split(table, test_size=1 / 3, stratify=table["event"], random_state=0)
    with pytest.warns(OutcomeWarning, match=r"34 events for 80 candidate variables \(0.42 per variable"):
        model = fit(train, time="time", event="event", id_column="ID", categorical=["er", "grade"], seed=0,
                    outer_folds=3, inner_folds=3)
    assert 0 < len(model.features) < 60
    assert model.state["training"]["cv"]["mean"] > 0.55
    metrics = evaluate(model, test, n_bootstrap=200, shap_values=False)
    assert metrics["events"] == 17 and metrics["n"] == 66
    assert metrics["c_index_ci"][0] < metrics["c_index"] < metrics["c_index_ci"][1]
