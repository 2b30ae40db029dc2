"""Preprocessing of outcome models: ComBat against neuroCombat, fold-local statistics, JSON round trip."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from rtrai.core.errors import InputError
from rtrai.outcome import combat
from rtrai.outcome.data import OutcomeWarning, make_planted_cohort
from rtrai.outcome.preprocess import Preprocessor


def _features(table):
    return [c for c in table.columns if c.startswith("original_")]


def test_combat_matches_neurocombat():
    from neuroCombat import neuroCombat as neurocombat  # the reference implementation (test extra)
    table = make_planted_cohort(150, 15, seed=3, n_batches=3)
    X = table[_features(table)].fillna(table[_features(table)].median()).to_numpy()
    batch = table["centre"].to_numpy()
    ours = combat.apply(X, batch, combat.fit(X, batch))
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        reference = neurocombat(X.T.copy(), pd.DataFrame({"batch": batch}), "batch")["data"].T
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9 * np.abs(X).max())
    # Harmonisation removes the per-centre shift that make_planted_cohort planted.
    before = pd.DataFrame(X).groupby(batch).mean().std().mean()
    after = pd.DataFrame(ours).groupby(batch).mean().std().mean()
    assert after < 0.2 * before


def test_combat_new_batch_is_mapped_with_a_warning():
    table = make_planted_cohort(90, 15, seed=4, n_batches=3)
    X = table[_features(table)].fillna(0).to_numpy()
    batch = table["centre"].to_numpy()
    train = batch != "C2"
    estimates = combat.fit(X[train], batch[train])
    with pytest.warns(OutcomeWarning, match="batch 'C2' was not in the training data"):
        out = combat.apply(X[~train], batch[~train], estimates)
    np.testing.assert_allclose(out.mean(axis=0), estimates["grand_mean"], rtol=1e-9, atol=1e-9)
    with pytest.raises(InputError, match="at least two batches"):
        combat.fit(X[:10], np.array(["A"] * 10))


def test_preprocessor_learns_from_training_rows_only():
    table = make_planted_cohort(120, 15, seed=5, n_batches=2)
    X = table[["centre", *_features(table)]]
    train, test = X.iloc[:80], X.iloc[80:]
    pre = Preprocessor(batch="centre").fit(train)
    # The statistics are those of the training rows: the test rows (with a shift) change nothing.
    shifted = test.copy()
    shifted[_features(table)] = shifted[_features(table)] * 10 + 1e6
    z_test = pre.transform(shifted)
    assert pre.medians_ == [float(v) for v in train[pre.numeric_].median()]
    z_train = pre.transform(train)
    np.testing.assert_allclose(z_train.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(z_train.std(axis=0), 1, atol=1e-10)
    assert np.median(np.abs(z_test)) > 10  # standardised with training statistics, so the shift shows
    assert np.isfinite(pre.transform(test)).all()  # missing values imputed with training medians


def test_preprocessor_round_trip_encoding_pruning_and_icc():
    rng = np.random.default_rng(0)
    n = 80
    a = rng.normal(size=n)
    X = pd.DataFrame({"a": a, "a_copy": 3 * a + 0.01 * rng.normal(size=n), "b": rng.normal(size=n),
                      "flat": np.ones(n), "fragile": rng.normal(size=n),
                      "stage": pd.Series(rng.choice(["I", "II", "III"], n)).astype("string")})
    X.loc[3, "stage"] = pd.NA
    X.loc[5, "b"] = np.nan
    pre = Preprocessor(categorical=["stage"], icc={"fragile": 0.4, "a": 0.95}, corr_threshold=0.9).fit(X)
    assert pre.icc_dropped_ == ["fragile"]
    assert pre.constant_dropped_ == ["flat"]
    assert len(pre.correlated_dropped_) == 1 and pre.correlated_dropped_[0] in ("a", "a_copy")
    assert [f for f in pre.features_ if f.startswith("stage=")] == ["stage=II", "stage=III"]  # "I" is the reference
    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(restored.transform(X), pre.transform(X))
    unseen = X.iloc[:4].assign(stage=pd.Series(["IV"] * 4, dtype="string"))
    assert (restored.transform(unseen)[:, -2:] == restored.transform(X.iloc[:4])[:, -2:].min(axis=0)).all()
    with pytest.raises(InputError, match="lacks columns"):
        restored.transform(X.drop(columns=["b"]))


def test_noise_only_table_gives_chance_cross_validated_auc():
    """With no signal at all, nested CV must not report an optimistic AUC (selection happens inside folds)."""
    from rtrai.outcome import fit

    rng = np.random.default_rng(11)
    n, p = 80, 120
    table = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{j}" for j in range(p)])
    table["label"] = rng.integers(0, 2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutcomeWarning)
        model = fit(table, label="label", seed=0, outer_folds=4, inner_folds=3)
    assert abs(model.state["training"]["cv"]["mean"] - 0.5) < 0.15
