"""Validate a fitted model on a table it never saw: discrimination with bootstrap CIs, calibration, risk groups.

Nothing is refitted on the validation table: the threshold (binary) and the risk cut-off (survival) come from the
model file. Uno's C and the time-dependent AUC weight by the censoring distribution of the validation table itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rtrai.core.errors import InputError
from rtrai.outcome.models import OutcomeModel


def bootstrap_ci(statistic, n: int, n_bootstrap: int, seed: int, valid=None) -> list[float]:
    """Percentile 95% CI of ``statistic(indices)`` over ``n_bootstrap`` resamples of ``n`` rows.

    ``valid(indices)`` rejects resamples where the statistic is undefined (one class, no events).
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        if valid is None or valid(idx):
            values.append(statistic(idx))
    values = [v for v in values if np.isfinite(v)]
    if len(values) < max(10, n_bootstrap // 2):
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration (Cox 1958): slope of y on logit(p), and the intercept with logit(p) as offset."""
    from scipy.optimize import minimize

    eps = 1e-12
    lp = np.log(np.clip(p, eps, 1 - eps) / np.clip(1 - p, eps, 1 - eps))

    def nll(params, slope_free):
        a, b = params[0], params[1] if slope_free else 1.0
        eta = a + b * lp
        return np.sum(np.logaddexp(0, eta) - y * eta)

    slope = minimize(nll, [0.0, 1.0], args=(True,), method="BFGS").x[1]
    intercept = minimize(lambda a: nll([a[0]], False), [0.0], method="BFGS").x[0]
    return float(slope), float(intercept)


def evaluate(model: OutcomeModel, table: pd.DataFrame, clinical: pd.DataFrame | None = None,
             out_dir: str | Path | None = None, n_bootstrap: int = 1000, seed: int = 0, shap_values: bool = True,
             progress=None) -> dict:
    """Metrics of ``model`` on ``table`` (which must hold the endpoint); writes PNG plots into ``out_dir``."""
    from rtrai.core.progress import silent
    from rtrai.outcome import plots

    report = progress or silent
    data = model.dataset(table, clinical, require_endpoint=True)
    Z = model.transform(data.X)
    score = model.score(Z)
    report(0.1, "metrics")
    if model.kind == "binary":
        metrics = _binary_metrics(model, data.label, score, n_bootstrap, seed)
    else:
        metrics = _survival_metrics(model, data.time, data.event, score, Z, n_bootstrap, seed)
    if out_dir is not None:
        out_dir = Path(out_dir)
        report(0.6, "plots")
        written = []
        if model.kind == "binary":
            written.append(plots.roc(data.label, score, metrics, out_dir / "roc.png"))
            written.append(plots.calibration_binary(data.label, score, metrics, out_dir / "calibration.png"))
        else:
            groups = np.where(score > model.state["risk_cutoff"], "high", "low")
            written.append(plots.kaplan_meier(data.time, data.event, groups, metrics, out_dir / "km.png"))
            written.append(plots.calibration_survival(metrics["calibration"], out_dir / "calibration.png"))
            if metrics.get("time_dependent_auc"):
                written.append(plots.time_dependent_auc(metrics["time_dependent_auc"], out_dir / "td_auc.png"))
            if model.is_linear and model.features:
                written.append(plots.nomogram(model, out_dir / "nomogram.png"))
        if shap_values:
            report(0.8, "SHAP values")
            written.append(plots.shap_summary(model, Z, out_dir / "shap_summary.png", seed=seed))
        metrics["plots"] = sorted(p.name for p in written if p is not None)
    report(1.0, "done")
    return metrics


def _binary_metrics(model: OutcomeModel, y: np.ndarray, p: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError(f"the validation table has only one class ({int(classes[0])}); AUC needs both 0 and 1")
    threshold = model.state["threshold"]
    predicted = p >= threshold
    slope, intercept = calibration_slope_intercept(y, p)
    auc = float(roc_auc_score(y, p))
    return {
        "n": int(len(y)), "n_positive": int(y.sum()), "auc": auc,
        "auc_ci": bootstrap_ci(lambda i: roc_auc_score(y[i], p[i]), len(y), n_bootstrap, seed,
                               valid=lambda i: 0 < y[i].sum() < len(i)),
        "brier": float(brier_score_loss(y, p)), "threshold": threshold,
        "sensitivity": float(predicted[y == 1].mean()), "specificity": float((~predicted[y == 0]).mean()),
        "calibration_slope": slope, "calibration_intercept": intercept, "n_bootstrap": n_bootstrap,
    }


def _survival_metrics(model: OutcomeModel, time: np.ndarray, event: np.ndarray, risk: np.ndarray, Z: np.ndarray,
                      n_bootstrap: int, seed: int) -> dict:
    from lifelines.statistics import logrank_test
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
    from sksurv.util import Surv

    if event.sum() == 0:
        raise InputError("every patient of the validation table is censored; a C-index needs events")
    y = Surv.from_arrays(event=event.astype(bool), time=time)
    ev = event.astype(bool)
    # Uno's C and the time-dependent AUC need the censoring distribution to be positive up to tau: stop at the
    # 80th percentile of observed times.
    tau = float(np.percentile(time, 80))

    def harrell(i):
        return concordance_index_censored(ev[i], time[i], risk[i])[0]

    def uno(i):
        yi = y[i]
        return concordance_index_ipcw(yi, yi, risk[i], tau=tau)[0]

    has_events = lambda i: ev[i].sum() >= 2  # noqa: E731
    c_index = float(harrell(np.arange(len(time))))
    metrics = {"n": int(len(time)), "events": int(event.sum()), "c_index": c_index,
               "c_index_ci": bootstrap_ci(harrell, len(time), n_bootstrap, seed, has_events)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            metrics["uno_c_index"] = float(uno(np.arange(len(time))))
            metrics["uno_c_index_ci"] = bootstrap_ci(_guard(uno), len(time), n_bootstrap, seed, has_events)
        except ValueError as exc:  # censoring survival reaches 0 before tau: Uno's C is undefined here
            metrics["uno_c_index"], metrics["uno_c_index_note"] = None, str(exc)
        times = np.unique(np.percentile(time[ev], [25, 50, 75]))
        times = times[(times > time.min()) & (times < time.max())]
        try:
            auc, _ = cumulative_dynamic_auc(y, y, risk, times)
            metrics["time_dependent_auc"] = {"time": times.tolist(), "auc": [float(a) for a in auc]}
        except ValueError as exc:
            metrics["time_dependent_auc"], metrics["time_dependent_auc_note"] = None, str(exc)

    high = risk > model.state["risk_cutoff"]
    metrics["risk_cutoff"] = model.state["risk_cutoff"]
    metrics["n_high_risk"], metrics["n_low_risk"] = int(high.sum()), int((~high).sum())
    if high.any() and (~high).any():
        test = logrank_test(time[high], time[~high], event[high], event[~high])
        metrics["logrank_p"] = float(test.p_value)
    else:
        metrics["logrank_p"] = None
    metrics["calibration"] = _survival_calibration(model, Z, time, event)
    metrics["n_bootstrap"] = n_bootstrap
    return metrics


def _guard(statistic):
    """A statistic that is NaN (dropped from the bootstrap) where the resample makes it undefined."""
    def safe(i):
        try:
            return statistic(i)
        except ValueError:
            return np.nan
    return safe


def _survival_calibration(model: OutcomeModel, Z: np.ndarray, time: np.ndarray, event: np.ndarray,
                          groups: int = 3) -> dict:
    """Predicted S(horizon) against Kaplan-Meier S(horizon) in tertiles of predicted survival."""
    from lifelines import KaplanMeierFitter

    horizon = model.state["horizon"]
    predicted = model.survival_at(Z, horizon)
    order = np.argsort(predicted)
    rows = []
    for part in np.array_split(order, groups):
        if len(part) == 0:
            continue
        km = KaplanMeierFitter().fit(time[part], event[part])
        observed = float(km.predict(horizon)) if time[part].max() >= horizon else None
        rows.append({"n": int(len(part)), "predicted": float(predicted[part].mean()), "observed": observed})
    return {"time": horizon, "groups": rows}
