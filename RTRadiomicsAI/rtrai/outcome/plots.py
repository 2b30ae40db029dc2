"""PNG plots of an evaluation: ROC, calibration, Kaplan-Meier, time-dependent AUC, nomogram, SHAP summary.

Each function writes one file atomically and returns its path. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtrai.core.outputs import atomic_file


def _figure(width=5.0, height=4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _ci(metrics, key):
    lo, hi = metrics.get(f"{key}_ci", [None, None])
    return f" (95% CI {lo:.2f}-{hi:.2f})" if lo is not None and np.isfinite(lo) else ""


def roc(y, p, metrics, path: Path) -> Path:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = _figure()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {metrics['auc']:.3f}{_ci(metrics, 'auc')}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.plot(1 - metrics["specificity"], metrics["sensitivity"], "o", color="black",
            label=f"training threshold {metrics['threshold']:.2f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _save(fig, path)


def calibration_binary(y, p, metrics, path: Path) -> Path:
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, p, n_bins=min(10, max(3, len(y) // 20)), strategy="quantile")
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="ideal")
    ax.plot(predicted, observed, "o-", label=f"slope {metrics['calibration_slope']:.2f}, "
                                             f"intercept {metrics['calibration_intercept']:.2f}")
    ax.set(xlabel="predicted probability", ylabel="observed frequency",
           title=f"Calibration (Brier {metrics['brier']:.3f})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return _save(fig, path)


def kaplan_meier(time, event, groups, metrics, path: Path) -> Path:
    from lifelines import KaplanMeierFitter

    fig, ax = _figure(6, 4.5)
    for name, colour in (("low", "tab:blue"), ("high", "tab:red")):
        rows = groups == name
        if rows.any():
            fitted = KaplanMeierFitter(label=f"{name} risk (n={int(rows.sum())})").fit(time[rows], event[rows])
            fitted.plot_survival_function(ax=ax, color=colour, ci_show=True)
    p = metrics.get("logrank_p")
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02),
           title=f"Kaplan-Meier by risk group (log-rank p = {p:.2g})" if p is not None else "Kaplan-Meier")
    return _save(fig, path)


def calibration_survival(calibration: dict, path: Path) -> Path:
    fig, ax = _figure()
    rows = [r for r in calibration["groups"] if r["observed"] is not None]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="ideal")
    ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], "o-", label="risk tertiles")
    ax.set(xlabel=f"predicted S({calibration['time']:g})", ylabel=f"Kaplan-Meier S({calibration['time']:g})",
           title=f"Calibration at t = {calibration['time']:g}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return _save(fig, path)


def time_dependent_auc(td: dict, path: Path) -> Path:
    fig, ax = _figure()
    ax.plot(td["time"], td["auc"], "o-")
    ax.axhline(0.5, ls="--", color="grey", lw=1)
    ax.set(xlabel="time", ylabel="cumulative/dynamic AUC", ylim=(0, 1), title="Time-dependent AUC")
    return _save(fig, path)


def nomogram(model, path: Path) -> Path:
    """Points nomogram of a linear Cox model in the table's units, with total points -> S(horizon)."""
    pre = model.preprocessor
    coef = model.state["coefficients"]
    names = list(coef)
    ranges = []
    for name in names:
        mean, sd = pre.original_scale(name)
        if "=" in name:  # one-hot column: 0/1
            lo, hi = 0.0, 1.0
        else:  # +-2 SD of the training data covers most patients
            lo, hi = mean - 2 * sd, mean + 2 * sd
        ranges.append((lo, hi, (lo - mean) / sd * coef[name], (hi - mean) / sd * coef[name]))
    spans = [abs(r[3] - r[2]) for r in ranges]
    scale = 100.0 / max(spans)
    fig, ax = _figure(8, 1.0 + 0.55 * (len(names) + 3))
    rows = len(names) + 2
    ax.set_xlim(-5, 105)
    ax.set_ylim(-0.5, rows + 0.5)
    ax.axis("off")

    def axis(y, label, values, positions):
        ax.plot([min(positions), max(positions)], [y, y], color="black", lw=1)
        for v, x in zip(values, positions):
            ax.plot([x, x], [y, y + 0.12], color="black", lw=1)
            ax.text(x, y + 0.18, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax.text(-6, y, label, ha="right", va="center", fontsize=8)

    axis(rows, "Points", np.linspace(0, 100, 11), np.linspace(0, 100, 11))
    minimum = 0.0
    for k, (name, (lo, hi, c_lo, c_hi)) in enumerate(zip(names, ranges)):
        values = np.linspace(lo, hi, 5 if "=" not in name else 2)
        contrib = (values - pre.original_scale(name)[0]) / pre.original_scale(name)[1] * coef[name]
        axis(rows - 1 - k, name, values, (contrib - min(c_lo, c_hi)) * scale)
        minimum += min(c_lo, c_hi)
    # Total points -> linear predictor -> survival at the horizon.
    total_max = sum(spans) * scale
    totals = np.linspace(0, total_max, 6)
    lp = minimum + totals / scale
    base = model.state["baseline_cumulative_hazard"]
    i = np.searchsorted(base["time"], model.state["horizon"], side="right") - 1
    h0 = base["value"][i] if i >= 0 else 0.0
    survival = np.exp(-h0 * np.exp(lp))
    positions = totals / total_max * 100
    axis(0.8, "Total points", totals, positions)
    axis(0.0, f"S({model.state['horizon']:g})", survival, positions)
    ax.set_title(f"Nomogram ({model.name}, {len(names)} variables)", fontsize=10)
    return _save(fig, path)


def shap_summary(model, Z: np.ndarray, path: Path, seed: int = 0, max_rows: int = 200) -> Path:
    """SHAP summary (beeswarm) of the model score on the design matrix ``Z``.

    Linear models: exact linear SHAP (coefficient x deviation from the training mean, which is 0 after
    standardisation). Others: permutation SHAP with the validation rows as background.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    names = model.state["design_features"]
    rng = np.random.default_rng(seed)
    rows = Z if len(Z) <= max_rows else Z[rng.choice(len(Z), max_rows, replace=False)]
    if model.is_linear:
        est = model.state["estimator"]
        explainer = shap.LinearExplainer((np.asarray(est["coef"]), est["intercept"]),
                                         shap.maskers.Independent(np.zeros((1, Z.shape[1]))))
        values = explainer(rows)
        keep = [i for i, c in enumerate(est["coef"]) if c != 0.0] or list(range(Z.shape[1]))
    else:
        background = rows[rng.choice(len(rows), min(50, len(rows)), replace=False)]
        explainer = shap.explainers.Permutation(model.score, shap.maskers.Independent(background), seed=seed)
        values = explainer(rows)
        keep = list(range(Z.shape[1]))
    shap.summary_plot(values.values[:, keep], rows[:, keep], feature_names=[names[i] for i in keep], show=False,
                      max_display=20)
    fig = plt.gcf()
    return _save(fig, path)


def risk_group_figure(model, highlight: str | None = None, time_label: str = "time"):
    """Kaplan-Meier curves of a survival model's training risk groups (stored in its model.json), with the group of
    a new patient (``highlight``: "low" or "high") drawn bold. Returns the figure (the caller saves and closes it),
    or None for a model without stored curves (fitted before they were stored, or a binary model)."""
    stored = model.state.get("training", {}).get("risk_groups")
    if not stored or not stored.get("curves"):
        return None
    fig, ax = _figure(6, 4.2)
    for name, colour in (("low", "tab:blue"), ("high", "tab:red")):
        curve = stored["curves"].get(name)
        if not curve:
            continue
        t = np.concatenate([[0.0], np.asarray(curve["time"], float)])
        s = np.concatenate([[1.0], np.asarray(curve["survival"], float)])
        mine = name == highlight
        label = f"{name} risk (n={curve['n']}, {curve['events']} events)" + ("  <- this patient" if mine else "")
        ax.step(t, s, where="post", color=colour, lw=3.0 if mine else 1.5, alpha=1.0 if mine else 0.7, label=label)
    p = stored.get("logrank_p")
    ax.set(xlabel=time_label, ylabel="event-free probability", ylim=(0, 1.02),
           title="Training risk groups (Kaplan-Meier" + (f", log-rank p = {p:.2g})" if p is not None else ")"))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
