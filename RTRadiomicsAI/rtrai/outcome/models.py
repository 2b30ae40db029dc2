"""Fit outcome models with nested cross-validation and keep them as data (JSON), never as pickles.

Every estimator is a ``Pipeline(Preprocessor, model)``; hyper-parameters are chosen by an inner cross-validation
(preprocessing refitted on the training rows of every inner fold), and the training
performance is estimated by an outer cross-validation around that search (nested CV). The final model is the search
refitted on all training rows. Its parameters are then exported as lists of numbers and predicted by our own small
evaluators (linear, RBF-SVM, trees, MLP), checked against scikit-learn in Testing/test_outcome_models.py.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rtrai.core.errors import InputError, ModelError
from rtrai.outcome.data import Dataset, Endpoint, OutcomeWarning, check_trainable, prepare
from rtrai.outcome.preprocess import Preprocessor

SURVIVAL_MODELS = ("lasso-cox", "cox")
BINARY_MODELS = ("lasso-logistic", "svm", "rf", "mlp")
MODELS = SURVIVAL_MODELS + BINARY_MODELS
FORMAT = "rtrai-outcome-model"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------- fitting
def _search(model: str, seed: int, inner_folds: int, pre: Preprocessor, X: pd.DataFrame, y):
    """The inner-CV estimator for one training set (preprocessing refitted in every inner fold)."""
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import Pipeline

    if model == "cox":
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        return Pipeline([("pre", pre), ("model", CoxPHSurvivalAnalysis(alpha=0.0, ties="efron", n_iter=200,
                                                                         tol=1e-12))])
    labels = (y if model in BINARY_MODELS else y["event"]).astype(int)
    cv = StratifiedKFold(inner_folds, shuffle=True, random_state=seed) if np.bincount(labels).min() >= inner_folds \
        else KFold(inner_folds, shuffle=True, random_state=seed)
    splits = list(cv.split(X, labels))
    if model == "lasso-cox":
        return _LassoCoxSearch(pre, splits)
    if model == "lasso-logistic":
        from sklearn.linear_model import LogisticRegression

        grid = [float(c) for c in np.logspace(-2, 1, 13)]
        make = lambda c: LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=seed,  # noqa: E731
                                            max_iter=5000)
        # One-SE rule towards the smallest C (the strongest penalty): grid is ascending, take the first.
        return _GridSearch(pre, splits, "C", grid, make, pick_first=True)
    if model == "svm":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        make = lambda c: CalibratedClassifierCV(SVC(kernel="rbf", C=c, random_state=seed),  # noqa: E731
                                                method="sigmoid", cv=3, ensemble=False)
        return _GridSearch(pre, splits, "C", [0.1, 1.0, 10.0], make)
    if model == "rf":
        from sklearn.ensemble import RandomForestClassifier

        make = lambda leaf: RandomForestClassifier(n_estimators=200, max_features="sqrt",  # noqa: E731
                                                   min_samples_leaf=leaf, random_state=seed, n_jobs=1)
        return _GridSearch(pre, splits, "min_samples_leaf", [3, 10], make)
    if model == "mlp":
        from sklearn.neural_network import MLPClassifier

        make = lambda a: MLPClassifier(hidden_layer_sizes=(16,), alpha=a, max_iter=2000,  # noqa: E731
                                       random_state=seed)
        return _GridSearch(pre, splits, "alpha", [1e-2, 1.0, 10.0], make)
    raise InputError(f"unknown model '{model}'; choose one of {', '.join(MODELS)}")


class _GridSearch:
    """Inner CV over one hyper-parameter of a binary classifier, scored by AUC.

    Like ``GridSearchCV(Pipeline(pre, model))`` but the preprocessing is fitted once per inner fold (on that fold's
    training rows) and shared by all grid values, which makes the search several times faster.
    ``pick_first``: take the first grid value within one standard error of the best (the one-SE rule).
    """

    def __init__(self, pre, splits, name, grid, make, pick_first=False):
        self.pre, self.splits, self.name, self.grid, self.make, self.pick_first = pre, splits, name, grid, make, \
            pick_first

    def fit(self, X: pd.DataFrame, y):
        from sklearn.base import clone
        from sklearn.metrics import roc_auc_score
        from sklearn.pipeline import Pipeline

        scores = np.full((len(self.splits), len(self.grid)), np.nan)
        for k, (train, test) in enumerate(self.splits):
            pre = clone(self.pre).fit(X.iloc[train])
            Z_train, Z_test = pre.transform(X.iloc[train]), pre.transform(X.iloc[test])
            for j, value in enumerate(self.grid):
                prob = self.make(value).fit(Z_train, y[train]).predict_proba(Z_test)[:, 1]
                scores[k, j] = roc_auc_score(y[test], prob) if len(np.unique(y[test])) == 2 else np.nan
        mean, sd = np.nanmean(scores, axis=0), np.nanstd(scores, axis=0)
        best = _within_one_se(mean, sd, len(self.splits))[0] if self.pick_first else int(np.nanargmax(mean))
        self.best_params_ = {self.name: self.grid[best]}
        self.cv_results_ = {self.name: self.grid, "mean_test_score": mean, "std_test_score": sd}
        self.best_estimator_ = Pipeline([("pre", clone(self.pre)), ("model", self.make(self.grid[best]))]).fit(X, y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.best_estimator_.predict_proba(X)


def _within_one_se(mean: np.ndarray, sd: np.ndarray, n_splits: int) -> np.ndarray:
    """Indices of settings within one standard error of the best mean CV score.

    LASSO at the best CV score tends to keep noise features; the one-SE rule (Hastie et al.) then takes the most
    penalised of these, a sparser signature whose performance cannot be told apart from the best.
    """
    best = int(np.nanargmax(mean))
    return np.where(mean >= mean[best] - sd[best] / np.sqrt(n_splits))[0]


class _LassoCoxSearch:
    """Inner CV for LASSO-Cox along one regularisation path per fold (GridSearchCV would refit the path per alpha).

    The alpha grid is the path of the whole training set (alpha_max down to 1 % of it); each inner fold refits
    preprocessing and the path on its own rows and scores every alpha by Harrell's C on its held-out rows.
    """

    def __init__(self, pre: Preprocessor, splits, n_alphas: int = 25):
        self.pre, self.splits, self.n_alphas = pre, splits, n_alphas

    def fit(self, X: pd.DataFrame, y):
        from sklearn.base import clone
        from sklearn.pipeline import Pipeline
        from sksurv.linear_model import CoxnetSurvivalAnalysis
        from sksurv.metrics import concordance_index_censored

        def path(alphas=None):
            return CoxnetSurvivalAnalysis(l1_ratio=1.0, n_alphas=self.n_alphas, alpha_min_ratio=0.01,
                                          alphas=alphas, max_iter=100000)

        alphas = path().fit(clone(self.pre).fit_transform(X), y).alphas_
        scores = np.full((len(self.splits), len(alphas)), np.nan)
        for k, (train, test) in enumerate(self.splits):
            pre = clone(self.pre).fit(X.iloc[train])
            fold = path(alphas).fit(pre.transform(X.iloc[train]), y[train])
            Z = pre.transform(X.iloc[test])
            event, time = y["event"][test], y["time"][test]
            for j, alpha in enumerate(alphas):
                risk = fold.predict(Z, alpha=alpha)
                if event.any() and np.ptp(risk) > 0:
                    scores[k, j] = concordance_index_censored(event, time, risk)[0]
                else:
                    scores[k, j] = 0.5  # no coefficient survives: a constant risk ranks nobody
        mean, sd = scores.mean(axis=0), scores.std(axis=0)
        ok = _within_one_se(mean, sd, len(self.splits))
        alpha = float(alphas[ok].max())
        self.cv_results_ = {"alphas": alphas, "mean_test_score": mean, "std_test_score": sd}
        self.best_params_ = {"alpha": alpha}
        self.best_estimator_ = Pipeline([("pre", clone(self.pre)), ("model", path([alpha]))]).fit(X, y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.best_estimator_.predict(X)


def fit(table: pd.DataFrame, time: str | None = None, event: str | None = None, label: str | None = None,
        id_column: str | None = None, exclude: list[str] | None = None, clinical: pd.DataFrame | None = None,
        categorical: list[str] | None = None, model: str | None = None, batch: str | None = None, seed: int = 0,
        icc: dict[str, float] | None = None, icc_threshold: float = 0.75, corr_threshold: float | None = 0.9,
        outer_folds: int = 5, inner_folds: int = 5, progress=None) -> OutcomeModel:
    """Fit an outcome model on ``table`` (joined with ``clinical`` by ``id_column`` when given).

    ``model`` defaults to "lasso-cox" for a survival endpoint and "lasso-logistic" for a binary one.
    Returns the final model, with the nested-CV estimate of its performance in ``training["cv"]``.
    """
    from rtrai.core.progress import silent
    from rtrai.outcome import data as datamod

    report = progress or silent
    endpoint = Endpoint.from_columns(time, event, label)
    model = model or ("lasso-cox" if endpoint.kind == "survival" else "lasso-logistic")
    if model not in MODELS:
        raise InputError(f"unknown model '{model}'; choose one of {', '.join(MODELS)}")
    if (model in SURVIVAL_MODELS) != (endpoint.kind == "survival"):
        raise InputError(f"model '{model}' is for {'survival' if model in SURVIVAL_MODELS else 'binary'} endpoints "
                         f"but the endpoint given is {endpoint.kind}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutcomeWarning)
        joined = datamod.join(table, clinical, id_column)
        clinical_columns = [c for c in (clinical.columns if clinical is not None else []) if c != id_column]
        data = prepare(joined, endpoint, id_column, exclude, categorical, batch, clinical_columns=clinical_columns)
        check_trainable(data)
    notes = [str(w.message) for w in caught if issubclass(w.category, OutcomeWarning)]
    for w in caught:  # pass them on to the caller (the CLI prints them)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    pre = Preprocessor(categorical=data.categorical, batch=batch, icc=icc, icc_threshold=icc_threshold,
                       corr_threshold=corr_threshold)
    y = data.y()
    with warnings.catch_warnings():
        # Convergence chatter from inner folds of very penalised settings says nothing about the chosen model.
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        report(0.0, "nested cross-validation")
        cv = _nested_cv(model, seed, outer_folds, inner_folds, pre, data, y, report)
        report(0.85, "final model")
        final = _search(model, seed, inner_folds, pre, data.X, y).fit(data.X, y)
    pipeline = getattr(final, "best_estimator_", final)
    state = _export(model, pipeline, data, y, cv, seed)
    state["data"] = {"id": data.ids.name, "exclude": list(exclude or []),
                     "categorical": data.categorical, "batch": batch, "clinical_columns": clinical_columns}
    state["hyperparameters"] = _jsonable(getattr(final, "best_params_", {}))
    state["training"]["warnings"] = notes
    report(1.0, "done")
    return OutcomeModel(state)


def _nested_cv(model, seed, outer_folds, inner_folds, pre, data: Dataset, y, report) -> dict:
    """Outer CV around the inner search: out-of-fold scores of models that never saw those patients."""
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sksurv.metrics import concordance_index_censored

    labels = data.label if data.endpoint.kind == "binary" else data.event
    folds = min(outer_folds, int(np.bincount(labels).min()))
    if folds < 2:
        raise InputError("too few events (or cases of the rarer class) for a cross-validated estimate: need at "
                         "least 2")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    oof = np.full(len(data.X), np.nan)
    per_fold = []
    for k, (train, test) in enumerate(splitter.split(data.X, labels)):
        report(0.8 * k / folds, f"outer fold {k + 1}/{folds}")
        search = _search(model, seed, inner_folds, clone(pre), data.X.iloc[train], y[train])
        fitted = search.fit(data.X.iloc[train], y[train])
        X_test = data.X.iloc[test]
        if data.endpoint.kind == "binary":
            oof[test] = fitted.predict_proba(X_test)[:, 1]
            per_fold.append(float(roc_auc_score(data.label[test], oof[test])))
        else:
            oof[test] = fitted.predict(X_test)
            per_fold.append(float(concordance_index_censored(data.event[test].astype(bool), data.time[test],
                                                             oof[test])[0]))
    metric = "auc" if data.endpoint.kind == "binary" else "c_index"
    return {"metric": metric, "folds": folds, "inner_folds": inner_folds, "mean": float(np.mean(per_fold)),
            "sd": float(np.std(per_fold, ddof=1)), "per_fold": per_fold, "oof": oof}


# ----------------------------------------------------------------------------------------------------------- export
def _export(model: str, pipeline, data: Dataset, y, cv: dict, seed: int) -> dict:
    from sklearn.metrics import roc_curve

    pre: Preprocessor = pipeline.named_steps["pre"]
    est = pipeline.named_steps["model"]
    names = list(pre.features_)
    Z = pre.transform(data.X)
    oof = cv.pop("oof")
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "kind": data.endpoint.kind,
             "endpoint": data.endpoint.to_dict(), "seed": seed, "design_features": names}
    if model in ("cox", "lasso-cox", "lasso-logistic"):
        coef = np.ravel(est.coef_)
        intercept = float(np.ravel(est.intercept_)[0]) if model == "lasso-logistic" else 0.0
        state["estimator"] = {"type": "linear", "coef": coef, "intercept": intercept}
        selected = [n for n, c in zip(names, coef) if c != 0.0]
        state["features"] = selected
        state["coefficients"] = {n: float(c) for n, c in zip(names, coef) if c != 0.0}
        state["coefficients_original_units"] = {
            n: float(c) / pre.original_scale(n)[1] for n, c in zip(names, coef) if c != 0.0}
    elif model == "svm":
        calibrated = est.calibrated_classifiers_[0]
        svc, sigmoid = calibrated.estimator, calibrated.calibrators[0]
        state["estimator"] = {"type": "rbf-svm", "support_vectors": svc.support_vectors_,
                              "dual_coef": np.ravel(svc.dual_coef_), "intercept": float(svc.intercept_[0]),
                              "gamma": float(svc._gamma),  # noqa: SLF001 - the fitted RBF width
                              "platt_a": float(sigmoid.a_), "platt_b": float(sigmoid.b_)}
        state["features"] = names
    elif model == "rf":
        trees = []
        for tree in est.estimators_:
            t = tree.tree_
            value = t.value[:, 0, :]
            trees.append({"left": t.children_left, "right": t.children_right, "feature": t.feature,
                          "threshold": t.threshold, "p1": value[:, 1] / value.sum(axis=1)})
        state["estimator"] = {"type": "forest", "trees": trees}
        state["features"] = names
    elif model == "mlp":
        state["estimator"] = {"type": "mlp", "activation": est.activation, "weights": est.coefs_,
                              "biases": est.intercepts_}
        state["features"] = names
    state["preprocessing"] = pre.to_dict()

    training = {"n": int(len(Z))}
    if data.endpoint.kind == "binary":
        training["n_positive"] = int(data.label.sum())
        # Threshold by Youden's J on out-of-fold probabilities: chosen on training data, never on the test set.
        fpr, tpr, thresholds = roc_curve(data.label, oof)
        state["threshold"] = float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))
    else:
        from sksurv.linear_model.coxph import BreslowEstimator

        training["events"] = int(data.event.sum())
        lp = Z @ np.asarray(state["estimator"]["coef"])
        # Risk groups split at the training median of the linear predictor (not an outcome-optimised cut-off).
        state["risk_cutoff"] = float(np.median(lp))
        breslow = BreslowEstimator().fit(lp, data.event.astype(bool), data.time)
        state["baseline_cumulative_hazard"] = {"time": breslow.cum_baseline_hazard_.x,
                                               "value": breslow.cum_baseline_hazard_.y}
        # Calibration horizon: the median follow-up of the training events (rounded for people to read).
        state["horizon"] = float(np.round(np.median(data.time[data.event == 1]), 1))
        training["risk_groups"] = _risk_group_curves(lp > state["risk_cutoff"], data.time, data.event)
    training["cv"] = cv
    state["training"] = training
    state["versions"] = _versions()
    return _jsonable(state)


def _risk_group_curves(high: np.ndarray, time: np.ndarray, event: np.ndarray) -> dict:
    """Kaplan-Meier curves of the training risk groups (apparent: the model saw these patients) and the log-rank
    p-value between them, so a report can show a new patient's group against them without the training data."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    curves = {}
    for name, rows in (("low", ~high), ("high", high)):
        if rows.any():
            t, s = kaplan_meier_estimator(event[rows].astype(bool), time[rows])
            curves[name] = {"n": int(rows.sum()), "events": int(event[rows].sum()), "time": t, "survival": s}
    p = None
    if high.any() and (~high).any():
        y = np.array(list(zip(event.astype(bool), time)), dtype=[("event", bool), ("time", float)])
        p = float(compare_survival(y, np.where(high, "high", "low"))[1])
    return {"data": "training (apparent)", "logrank_p": p, "curves": curves}


def _versions() -> dict:
    import platform

    import sklearn
    import sksurv

    from rtrai import __version__

    return {"rtrai": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "scikit-survival": sksurv.__version__, "pandas": pd.__version__}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


# ------------------------------------------------------------------------------------------------------- the model
class OutcomeModel:
    """A fitted model held as plain data (the content of ``model.json``)."""

    def __init__(self, state: dict):
        if state.get("format") != FORMAT:
            raise ModelError("not an rtrai outcome model (model.json lacks format 'rtrai-outcome-model')")
        if state.get("format_version", 0) > FORMAT_VERSION:
            raise ModelError(f"model format {state['format_version']} is newer than this rtrai reads "
                             f"({FORMAT_VERSION}); update rtrai")
        self.state = state
        self.preprocessor = Preprocessor.from_dict(state["preprocessing"])

    # --- metadata
    @property
    def kind(self) -> str:
        return self.state["kind"]

    @property
    def name(self) -> str:
        return self.state["model"]

    @property
    def features(self) -> list[str]:
        return self.state["features"]

    @property
    def endpoint(self) -> Endpoint:
        e = self.state["endpoint"]
        return Endpoint(e["kind"], e.get("time"), e.get("event"), e.get("label"))

    @property
    def is_linear(self) -> bool:
        return self.state["estimator"]["type"] == "linear"

    # --- files
    def to_json(self) -> str:
        return json.dumps(self.state, indent=1, sort_keys=True, allow_nan=False) + "\n"

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/model.json`` (same model -> same bytes)."""
        from rtrai.core.outputs import write_text

        return write_text(Path(folder) / "model.json", self.to_json())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> OutcomeModel:
        path = Path(folder)
        path = path / "model.json" if path.is_dir() else path
        if not path.is_file():
            raise ModelError(f"no model.json in {folder}")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls(state)

    # --- data
    def dataset(self, table: pd.DataFrame, clinical: pd.DataFrame | None = None,
                require_endpoint: bool = False) -> Dataset:
        """The rows of ``table`` (joined with ``clinical``) as this model's candidate variables and endpoint."""
        from rtrai.outcome import data as datamod

        spec = self.state["data"]
        table = datamod.join(table, clinical, spec["id"])
        pre = self.preprocessor
        needed = pre.numeric_ + pre.categorical_ + ([pre.batch] if pre.batch else [])
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise InputError(f"the table lacks columns the model was trained with: {missing[:5]}"
                             + (f" ... (+{len(missing) - 5})" if len(missing) > 5 else ""))
        id_column = spec["id"] if spec["id"] in table.columns else None
        keep = [c for c in [id_column, *self.endpoint.columns] if c and c in table.columns] + needed
        return prepare(table[list(dict.fromkeys(keep))], self.endpoint, id_column,
                       categorical=pre.categorical_, batch=pre.batch, require_endpoint=require_endpoint)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Candidate variables -> the standardised design matrix the estimator sees (``design_features``)."""
        return self.preprocessor.transform(X)

    def score(self, Z: np.ndarray) -> np.ndarray:
        """Probability of class 1 (binary) or linear predictor / log relative hazard (survival) from ``Z``."""
        est = self.state["estimator"]
        Z = np.asarray(Z, float)
        kind = est["type"]
        if kind == "linear":
            out = Z @ np.asarray(est["coef"]) + est["intercept"]
            return 1.0 / (1.0 + np.exp(-out)) if self.kind == "binary" else out
        if kind == "rbf-svm":
            sv = np.asarray(est["support_vectors"])
            sq = (Z ** 2).sum(1)[:, None] + (sv ** 2).sum(1)[None, :] - 2 * Z @ sv.T
            decision = np.exp(-est["gamma"] * np.maximum(sq, 0)) @ np.asarray(est["dual_coef"]) + est["intercept"]
            return 1.0 / (1.0 + np.exp(est["platt_a"] * decision + est["platt_b"]))
        if kind == "forest":
            Z32 = Z.astype(np.float32).astype(float)  # scikit-learn's trees split on float32 copies of the data
            return np.mean([_tree_predict(tree, Z32) for tree in est["trees"]], axis=0)
        if kind == "mlp":
            h = Z
            layers = list(zip(est["weights"], est["biases"]))
            for i, (w, b) in enumerate(layers):
                h = h @ np.asarray(w) + np.asarray(b)
                if i < len(layers) - 1:
                    h = _ACTIVATIONS[est["activation"]](h)
            return 1.0 / (1.0 + np.exp(-h[:, 0]))
        raise ModelError(f"unknown estimator type '{kind}' in model.json")

    def survival_at(self, Z: np.ndarray, t: float) -> np.ndarray:
        """S(t | x) = exp(-H0(t) exp(lp)) with the Breslow baseline of the training data."""
        base = self.state["baseline_cumulative_hazard"]
        times = np.asarray(base["time"])
        i = np.searchsorted(times, t, side="right") - 1
        h0 = 0.0 if i < 0 else float(np.asarray(base["value"])[i])
        return np.exp(-h0 * np.exp(self.score(Z)))

    def predict(self, table: pd.DataFrame, clinical: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per patient: ID, then probability and class (binary) or risk score, group and S(horizon)."""
        data = self.dataset(table, clinical)
        Z = self.transform(data.X)
        score = self.score(Z)
        out = pd.DataFrame({"ID": data.ids})
        if self.kind == "binary":
            out["probability"] = score
            out["predicted_class"] = (score >= self.state["threshold"]).astype(int)
        else:
            out["risk_score"] = score
            out["risk_group"] = np.where(score > self.state["risk_cutoff"], "high", "low")
            out[f"survival_at_{self.state['horizon']:g}"] = self.survival_at(Z, self.state["horizon"])
        return out

    def risk_group(self, table: pd.DataFrame, clinical: pd.DataFrame | None = None) -> pd.Series:
        """"high"/"low" at the training cut-off (survival) or "positive"/"negative" at the training threshold."""
        pred = self.predict(table, clinical)
        if self.kind == "binary":
            return pd.Series(np.where(pred["predicted_class"] == 1, "positive", "negative"), index=pred["ID"])
        return pd.Series(pred["risk_group"].to_numpy(), index=pred["ID"])


_ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "identity": lambda x: x,
                "logistic": lambda x: 1 / (1 + np.exp(-x))}


def _tree_predict(tree: dict, Z: np.ndarray) -> np.ndarray:
    left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
    feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"])
    node = np.zeros(len(Z), int)
    rows = np.arange(len(Z))
    while True:
        inner = left[node] != -1
        if not inner.any():
            break
        n = node[inner]
        go_left = Z[rows[inner], feature[n]] <= threshold[n]
        node[inner] = np.where(go_left, left[n], right[n])
    return np.asarray(tree["p1"])[node]
