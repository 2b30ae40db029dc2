"""Outcome models: leakage-free preprocessing, binary classifiers and survival models, validation, plots.

The public API (imported lazily, so ``rtrai.outcome.commands`` stays light):

- :func:`fit` (table -> :class:`OutcomeModel`), :meth:`OutcomeModel.load`, ``.predict(df)``, ``.risk_group(df)``;
- :func:`evaluate` (model + table -> metrics dict and plots);
- :func:`make_planted_cohort` / :func:`oracle_risk` (a synthetic cohort with a known signal).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fit": "rtrai.outcome.models", "OutcomeModel": "rtrai.outcome.models", "MODELS": "rtrai.outcome.models",
    "evaluate": "rtrai.outcome.evaluation", "make_planted_cohort": "rtrai.outcome.data",
    "oracle_risk": "rtrai.outcome.data", "read_table": "rtrai.outcome.data", "OutcomeWarning": "rtrai.outcome.data",
    "Preprocessor": "rtrai.outcome.preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rtrai.outcome' has no attribute '{name}'")
