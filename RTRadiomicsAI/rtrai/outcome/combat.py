"""ComBat harmonisation (Johnson, Li & Rabinovic 2007, parametric empirical Bayes, batch only), fit on training data.

Why our own: ``neuroHarmonize`` pins numpy < 2, and ``neuroCombat``'s apply-to-new-data path is marked "under
development" by its authors; we need estimates we can store as JSON and apply to validation cohorts. The fit follows
neuroCombat 0.2.12 step by step and Testing/test_outcome_preprocess.py checks it against ``neuroCombat.neuroCombat``.

Arrays here are (samples, features), as in scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np

from rtrai.core.errors import InputError
from rtrai.outcome.data import OutcomeWarning


def fit(X: np.ndarray, batch: np.ndarray, tol: float = 1e-4, max_iter: int = 1000) -> dict:
    """Estimate the per-batch location/scale adjustments; returns JSON-ready estimates."""
    X = np.asarray(X, float)
    batch = np.asarray(batch).astype(str)
    levels, index, counts = np.unique(batch, return_inverse=True, return_counts=True)
    if len(levels) < 2:
        raise InputError(f"ComBat needs at least two batches in the training data; found only {list(levels)}")
    if counts.min() < 2:
        raise InputError(f"ComBat needs at least two patients per batch; batch '{levels[counts.argmin()]}' has 1")
    n = len(X)
    batch_means = np.array([X[index == b].mean(axis=0) for b in range(len(levels))])
    grand_mean = (counts / n) @ batch_means
    # Pooled variance of the residuals after removing the batch means (divided by n, as neuroCombat does).
    var_pooled = ((X - batch_means[index]) ** 2).mean(axis=0)
    var_pooled[var_pooled == 0] = 1.0  # a constant feature: nothing to scale
    s = (X - grand_mean) / np.sqrt(var_pooled)

    gamma_hat = np.array([s[index == b].mean(axis=0) for b in range(len(levels))])
    delta_hat = np.array([s[index == b].var(axis=0, ddof=1) for b in range(len(levels))])
    delta_hat[delta_hat == 0] = 1.0
    gamma_bar = gamma_hat.mean(axis=1)
    t2 = gamma_hat.var(axis=1, ddof=1)
    m, v = delta_hat.mean(axis=1), delta_hat.var(axis=1, ddof=1)
    a_prior = (2 * v + m ** 2) / v
    b_prior = (m * v + m ** 3) / v

    gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
    for b in range(len(levels)):
        sb = s[index == b]
        nb = len(sb)
        g_old, d_old = gamma_hat[b], delta_hat[b]
        for _ in range(max_iter):
            g_new = (t2[b] * nb * gamma_hat[b] + d_old * gamma_bar[b]) / (t2[b] * nb + d_old)
            sum2 = ((sb - g_new) ** 2).sum(axis=0)
            d_new = (0.5 * sum2 + b_prior[b]) / (nb / 2.0 + a_prior[b] - 1.0)
            change = max(np.max(np.abs(g_new - g_old) / np.abs(g_old)), np.max(np.abs(d_new - d_old) / d_old))
            g_old, d_old = g_new, d_new
            if change <= tol:
                break
        gamma_star[b], delta_star[b] = g_old, d_old
    return {"batches": levels.tolist(), "grand_mean": grand_mean.tolist(), "var_pooled": var_pooled.tolist(),
            "gamma_star": gamma_star.tolist(), "delta_star": delta_star.tolist()}


def apply(X: np.ndarray, batch: np.ndarray, estimates: dict) -> np.ndarray:
    """Harmonise ``X`` with training estimates.

    A batch the training data never saw (a new centre in an external cohort) is mapped onto the training reference
    with its own location and scale (no empirical Bayes, no outcome used), with a warning.
    """
    X = np.asarray(X, float)
    batch = np.asarray(batch).astype(str)
    grand_mean = np.asarray(estimates["grand_mean"])
    sd = np.sqrt(np.asarray(estimates["var_pooled"]))
    gamma = dict(zip(estimates["batches"], np.asarray(estimates["gamma_star"])))
    delta = dict(zip(estimates["batches"], np.asarray(estimates["delta_star"])))
    s = (X - grand_mean) / sd
    out = np.empty_like(s)
    for level in np.unique(batch):
        rows = batch == level
        if level not in gamma:
            if rows.sum() < 2:
                raise InputError(f"batch '{level}' was not in the training data and has only one patient; "
                                 f"ComBat cannot estimate its adjustment")
            warnings.warn(f"batch '{level}' was not in the training data: harmonised with its own mean and variance "
                          f"({int(rows.sum())} patients)", OutcomeWarning, stacklevel=2)
            g, d = s[rows].mean(axis=0), s[rows].var(axis=0, ddof=1)
            d[d == 0] = 1.0
        else:
            g, d = gamma[level], delta[level]
        out[rows] = (s[rows] - g) / np.sqrt(d)
    return out * sd + grand_mean
