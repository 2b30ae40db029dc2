"""Preprocessing that is *fitted*, hence lives inside every cross-validation fold.

:class:`Preprocessor` is a scikit-learn transformer on DataFrames, put first in a ``Pipeline`` so that every fit
(inner folds, outer folds, the final model) learns its own statistics from its own training rows only:

1. ICC filter: drop features whose robustness ICC is below a threshold (external table, no data used);
2. imputation: median of numeric columns, most frequent level of categorical columns;
3. ComBat harmonisation of the numeric features by a batch column (:mod:`rtrai.outcome.combat`);
4. one-hot encoding of categorical columns (first level dropped, levels unseen in training ignored);
5. standardisation to zero mean and unit variance (constant columns dropped);
6. correlation pruning: of every pair with |Pearson r| above a threshold, drop the one more correlated with the rest.

Its state is plain lists and numbers (:meth:`to_dict` / :meth:`from_dict`), so a model file holds it as JSON.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from rtrai.core.errors import InputError
from rtrai.outcome import combat


def read_icc_table(path) -> dict[str, float]:
    """A robustness table with a feature-name column and an ICC column -> {feature: icc}."""
    from rtrai.outcome.data import read_table

    table = read_table(path)
    lower = {c.lower(): c for c in table.columns}
    name = next((lower[c] for c in ("feature", "features", "name") if c in lower), None)
    icc = next((c for c in table.columns if c.lower().startswith("icc")), None)
    if name is None or icc is None:
        raise InputError(f"robustness table {path} needs a 'feature' column and an 'icc' column "
                         f"(found {list(table.columns)})")
    values = pd.to_numeric(table[icc], errors="coerce")
    return dict(zip(table[name].astype(str), values.astype(float)))


class Preprocessor(TransformerMixin, BaseEstimator):
    """Leakage-free preprocessing of a DataFrame of candidate variables (see the module docstring)."""

    def __init__(self, categorical=(), batch=None, icc=None, icc_threshold=0.75, corr_threshold=0.9):
        self.categorical = categorical
        self.batch = batch
        self.icc = icc
        self.icc_threshold = icc_threshold
        self.corr_threshold = corr_threshold

    def fit(self, X: pd.DataFrame, y=None):
        categorical = [c for c in self.categorical if c in X.columns]
        candidates = [c for c in X.columns if c != self.batch]
        icc = self.icc or {}
        # Features not in the robustness table (clinical variables, typically) are kept.
        self.icc_dropped_ = [c for c in candidates if c in icc and not icc[c] >= self.icc_threshold]
        kept = [c for c in candidates if c not in self.icc_dropped_]
        self.numeric_ = [c for c in kept if c not in categorical]
        self.categorical_ = [c for c in kept if c in categorical]
        if not kept:
            raise InputError(f"no feature passes the ICC filter (threshold {self.icc_threshold})")

        numeric = X[self.numeric_].astype(float)
        self.medians_ = [float(v) if np.isfinite(v) else 0.0 for v in numeric.median()]
        filled = numeric.fillna(dict(zip(self.numeric_, self.medians_))).to_numpy()
        self.combat_ = None
        if self.batch is not None and self.numeric_:
            self.combat_ = combat.fit(filled, X[self.batch].to_numpy())
        self.modes_, self.levels_ = [], []
        for column in self.categorical_:
            values = X[column].dropna().astype(str)
            mode = sorted(values.value_counts().pipe(lambda c: c[c == c.max()]).index)[0] if len(values) else ""
            self.modes_.append(mode)
            self.levels_.append(sorted(set(values) | {mode})[1:])  # first level is the reference

        design = self._encode(X)
        mean, sd = design.mean(axis=0), design.std(axis=0)
        varying = sd > 1e-12 * np.maximum(1.0, np.abs(mean))
        columns = [c for c, keep in zip(self.encoded_names_, varying) if keep]
        self.means_, self.scales_ = mean[varying].tolist(), sd[varying].tolist()
        self.standardised_ = columns
        self.constant_dropped_ = [c for c, keep in zip(self.encoded_names_, varying) if not keep]
        z = (design[:, varying] - mean[varying]) / sd[varying]
        self.correlated_dropped_ = _prune_correlated(z, columns, self.corr_threshold)
        self.features_ = [c for c in columns if c not in self.correlated_dropped_]
        if not self.features_:
            raise InputError("no feature is left after dropping constant columns")
        return self

    @property
    def encoded_names_(self) -> list[str]:
        return self.numeric_ + [f"{c}={level}" for c, levels in zip(self.categorical_, self.levels_)
                                for level in levels]

    def _encode(self, X: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.numeric_ + self.categorical_ + ([self.batch] if self.batch else [])
                   if c not in X.columns]
        if missing:
            raise InputError(f"the table lacks columns the model was trained with: {missing[:5]}"
                             + (f" ... (+{len(missing) - 5})" if len(missing) > 5 else ""))
        numeric = X[self.numeric_].astype(float).fillna(dict(zip(self.numeric_, self.medians_))).to_numpy()
        if self.combat_ is not None:
            batch = X[self.batch]
            if batch.isna().any():
                raise InputError(f"batch column '{self.batch}' has missing values; ComBat needs every patient's batch")
            numeric = combat.apply(numeric, batch.to_numpy(), self.combat_)
        blocks = [numeric]
        for column, mode, levels in zip(self.categorical_, self.modes_, self.levels_):
            values = X[column].astype("string").fillna(mode).astype(str).to_numpy()
            blocks.append(np.column_stack([values == level for level in levels]).astype(float)
                          if levels else np.empty((len(X), 0)))
        return np.hstack(blocks) if blocks else np.empty((len(X), 0))

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        design = self._encode(X)
        position = {c: i for i, c in enumerate(self.encoded_names_)}
        index = [position[c] for c in self.standardised_]
        z = (design[:, index] - np.asarray(self.means_)) / np.asarray(self.scales_)
        keep = [self.standardised_.index(c) for c in self.features_]
        return z[:, keep]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.features_, dtype=object)

    def original_scale(self, feature: str) -> tuple[float, float]:
        """(mean, sd) that standardised ``feature``, to express coefficients in the table's units."""
        i = self.standardised_.index(feature)
        return self.means_[i], self.scales_[i]

    _STATE = ("icc_dropped_", "numeric_", "categorical_", "medians_", "combat_", "modes_", "levels_", "means_",
              "scales_", "standardised_", "constant_dropped_", "correlated_dropped_", "features_")

    def to_dict(self) -> dict:
        return {"parameters": {"categorical": list(self.categorical), "batch": self.batch,
                               "icc_threshold": self.icc_threshold, "corr_threshold": self.corr_threshold},
                "fitted": {k.rstrip("_"): getattr(self, k) for k in self._STATE}}

    @classmethod
    def from_dict(cls, state: dict) -> Preprocessor:
        pre = cls(**state["parameters"])
        for key in cls._STATE:
            setattr(pre, key, state["fitted"][key.rstrip("_")])
        return pre


def _prune_correlated(z: np.ndarray, names: list[str], threshold: float | None) -> list[str]:
    """Greedy pruning as in caret's findCorrelation: drop the member of the worst pair with the larger mean |r|."""
    if threshold is None or z.shape[1] < 2:
        return []
    r = np.abs(np.corrcoef(z, rowvar=False))
    np.fill_diagonal(r, 0.0)
    alive = np.ones(len(names), bool)
    while True:
        sub = np.where(alive[:, None] & alive[None, :], r, 0.0)
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        if sub[i, j] <= threshold:
            break
        mean_i, mean_j = sub[i, alive].mean(), sub[j, alive].mean()
        alive[i if mean_i > mean_j or (mean_i == mean_j and i > j) else j] = False
    return [n for n, keep in zip(names, alive) if not keep]
