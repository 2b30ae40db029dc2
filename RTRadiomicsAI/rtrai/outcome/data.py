"""Outcome data: read and join tables, pick the endpoint, check it, and make a planted-signal cohort for tests.

Nothing here is fitted: imputation, encoding and scaling are learned inside cross-validation
(:mod:`rtrai.outcome.preprocess`), so this module only decides *which* columns are candidate variables.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rtrai.core.errors import InputError

# Below this many events (survival) or minority-class cases (binary) per candidate variable a model is likely to
# overfit (Peduzzi et al. 1996 for the classic 10; penalised models tolerate less, so we warn, not refuse).
MIN_EVENTS_PER_VARIABLE = 10


class OutcomeWarning(UserWarning):
    """A result can be computed but may not be trusted (few events per variable, dropped rows, ...)."""


@dataclass
class Endpoint:
    """What to predict: ``kind`` is "survival" (``time``, ``event`` columns) or "binary" (``label`` column)."""

    kind: str
    time: str | None = None
    event: str | None = None
    label: str | None = None

    @classmethod
    def from_columns(cls, time: str | None = None, event: str | None = None, label: str | None = None) -> Endpoint:
        if label is not None and (time is not None or event is not None):
            raise InputError("give either a survival endpoint (--time and --event) or a binary one (--label), not both")
        if label is not None:
            return cls("binary", label=label)
        if time is None or event is None:
            raise InputError("a survival endpoint needs both --time and --event (or give --label for a binary one)")
        return cls("survival", time=time, event=event)

    @property
    def columns(self) -> list[str]:
        return [self.label] if self.kind == "binary" else [self.time, self.event]

    def to_dict(self) -> dict:
        return {k: v for k, v in {"kind": self.kind, "time": self.time, "event": self.event,
                                   "label": self.label}.items() if v is not None}


@dataclass
class Dataset:
    """Candidate variables ``X`` (numeric and categorical columns, NaN where missing) and the endpoint."""

    X: pd.DataFrame
    endpoint: Endpoint
    ids: pd.Series
    categorical: list[str] = field(default_factory=list)
    batch: str | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    label: np.ndarray | None = None

    @property
    def features(self) -> list[str]:
        """Candidate variables (the batch column is carried in X for ComBat but is not a predictor)."""
        return [c for c in self.X.columns if c != self.batch]

    def y(self):
        """The target as scikit-learn / scikit-survival estimators take it."""
        if self.endpoint.kind == "binary":
            return self.label
        from sksurv.util import Surv

        return Surv.from_arrays(event=self.event.astype(bool), time=self.time)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (or TSV) table; an unreadable or empty file is an :class:`InputError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"table not found: {path}")
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read table {path}: {exc}") from exc
    if table.empty:
        raise InputError(f"table {path} has no rows")
    return table


def guess_id_column(table: pd.DataFrame) -> str | None:
    """The first column when it holds unique non-numeric values (how radiomics feature tables name patients)."""
    first = table.columns[0]
    values = table[first]
    if values.dtype == object and values.notna().all() and values.is_unique:
        return first
    return None


def join(features: pd.DataFrame, clinical: pd.DataFrame | None, id_column: str | None) -> pd.DataFrame:
    """Inner join of the feature table with the clinical table on ``id_column``; says how many rows matched."""
    if clinical is None:
        return features
    if id_column is None:
        raise InputError("joining a clinical table needs --id (the patient ID column present in both tables)")
    for name, table in (("feature", features), ("clinical", clinical)):
        if id_column not in table.columns:
            raise InputError(f"ID column '{id_column}' not in the {name} table (columns: {_preview(table.columns)})")
        duplicated = table[id_column][table[id_column].duplicated()].unique()
        if len(duplicated):
            raise InputError(f"the {name} table repeats IDs in '{id_column}': {_preview(duplicated)}")
    overlap = [c for c in clinical.columns if c in features.columns and c != id_column]
    if overlap:
        raise InputError(f"columns present in both the feature and the clinical table: {_preview(overlap)}; "
                         f"rename or drop them in one table")
    left = features.assign(**{id_column: features[id_column].astype(str)})
    right = clinical.assign(**{id_column: clinical[id_column].astype(str)})
    joined = left.merge(right, on=id_column, how="inner", sort=False)
    if joined.empty:
        raise InputError(f"no IDs in '{id_column}' are shared by the feature and the clinical table")
    dropped = len(features) + len(clinical) - 2 * len(joined)
    if dropped:
        warnings.warn(f"joined {len(joined)} patients on '{id_column}'; {len(features) - len(joined)} feature rows "
                      f"and {len(clinical) - len(joined)} clinical rows had no partner", OutcomeWarning, stacklevel=2)
    return joined


def join_tables(tables: list[tuple[str, pd.DataFrame]], id_column: str | None) -> pd.DataFrame:
    """Inner join of several feature tables (handcrafted, deep, dosiomic, clinical ...) on ``id_column``.

    ``tables``: (name shown in messages, table). One table is returned as it is. Without ``id_column`` the tables must
    share their first column as an ID column (:func:`guess_id_column`). Says how many rows of each had no partner."""
    if len(tables) == 1:
        return tables[0][1]
    if id_column is None:
        guessed = {guess_id_column(table) for _, table in tables}
        if len(guessed) != 1 or None in guessed:
            raise InputError("joining several --table files needs --id (the patient ID column present in all)")
        id_column = guessed.pop()
    seen: dict[str, str] = {}
    for name, table in tables:
        if id_column not in table.columns:
            raise InputError(f"ID column '{id_column}' not in {name} (columns: {_preview(table.columns)})")
        duplicated = table[id_column][table[id_column].duplicated()].unique()
        if len(duplicated):
            raise InputError(f"{name} repeats IDs in '{id_column}': {_preview(duplicated)}")
        for column in table.columns:
            if column != id_column and column in seen:
                raise InputError(f"column '{column}' is in both {seen[column]} and {name}; rename or drop it in one")
            seen.setdefault(column, name)
    joined = None
    for name, table in tables:
        table = table.assign(**{id_column: table[id_column].astype(str)})
        joined = table if joined is None else joined.merge(table, on=id_column, how="inner", sort=False)
    if joined.empty:
        raise InputError(f"no ID in '{id_column}' is in all {len(tables)} tables")
    unmatched = [f"{name}: {len(table) - len(joined)}" for name, table in tables if len(table) > len(joined)]
    if unmatched:
        warnings.warn(f"joined {len(tables)} tables on '{id_column}': {len(joined)} patients are in all of them; rows "
                      f"without a partner were left out ({'; '.join(unmatched)})", OutcomeWarning, stacklevel=2)
    return joined


def prepare(table: pd.DataFrame, endpoint: Endpoint, id_column: str | None = None, exclude: list[str] | None = None,
            categorical: list[str] | None = None, batch: str | None = None, require_endpoint: bool = True,
            clinical_columns: list[str] | None = None) -> Dataset:
    """Split a joined table into candidate variables and a checked endpoint.

    Numeric columns are features. A non-numeric column is an error unless it is listed in ``categorical`` or comes
    from the clinical table (``clinical_columns``), where text columns are categories to one-hot encode.
    ``require_endpoint=False`` (prediction) allows the endpoint columns to be absent.
    """
    exclude = list(exclude or [])
    categorical = list(categorical or [])
    if id_column is None:
        id_column = guess_id_column(table)
    elif id_column not in table.columns:
        raise InputError(f"ID column '{id_column}' not in the table (columns: {_preview(table.columns)})")
    missing = [c for c in exclude + categorical + ([batch] if batch else []) if c not in table.columns]
    if missing:
        raise InputError(f"columns not in the table: {_preview(missing)}")
    has_endpoint = all(c in table.columns for c in endpoint.columns)
    if require_endpoint and not has_endpoint:
        absent = [c for c in endpoint.columns if c not in table.columns]
        raise InputError(f"endpoint column(s) {_preview(absent)} not in the table (columns: {_preview(table.columns)})")

    table = table.reset_index(drop=True)
    ids = table[id_column].astype(str) if id_column else pd.Series(np.arange(len(table)).astype(str))
    if id_column and ids.duplicated().any():
        raise InputError(f"IDs repeat in '{id_column}': {_preview(ids[ids.duplicated()].unique())}")
    dropped_columns = set(exclude) | set(endpoint.columns) | ({id_column} if id_column else set())
    candidates = [c for c in table.columns if c not in dropped_columns]
    auto_categorical = set(clinical_columns or [])
    columns = {}
    cats = []
    for column in candidates:
        values = table[column]
        if column == batch:
            columns[column] = values.astype("string")
            continue
        if column in categorical or (column in auto_categorical and not _is_numeric(values)):
            columns[column] = values.astype("string")
            cats.append(column)
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numeric.isna()
        if bad.any():
            examples = _preview(values[bad].astype(str).unique(), 3)
            raise InputError(f"feature column '{column}' is not numeric (values like {examples}); list it in "
                             f"--categorical to one-hot encode it, --exclude it, or put it in the --clinical table")
        columns[column] = numeric.astype(float)
    X = pd.DataFrame(columns, index=table.index)
    if not [c for c in X.columns if c != batch]:
        raise InputError("the table has no feature columns left after removing the ID, endpoint and excluded columns")

    data = Dataset(X=X, endpoint=endpoint, ids=ids, categorical=cats, batch=batch)
    if has_endpoint:
        _attach_endpoint(data, table)
    return data


def _attach_endpoint(data: Dataset, table: pd.DataFrame) -> None:
    endpoint = data.endpoint
    values = {c: pd.to_numeric(table[c], errors="coerce") for c in endpoint.columns}
    for column, numeric in values.items():
        bad = table[column].notna() & numeric.isna()
        if bad.any():
            raise InputError(f"endpoint column '{column}' is not numeric (values like "
                             f"{_preview(table[column][bad].astype(str).unique(), 3)})")
    missing = np.zeros(len(table), bool)
    for numeric in values.values():
        missing |= numeric.isna().to_numpy()
    if missing.all():
        raise InputError(f"every row has a missing endpoint ({', '.join(endpoint.columns)})")
    if missing.any():
        # Rows without an outcome cannot be used; imputing an endpoint would invent results.
        warnings.warn(f"dropped {int(missing.sum())} of {len(table)} rows with a missing endpoint "
                      f"({', '.join(endpoint.columns)}): {_preview(data.ids[missing])}", OutcomeWarning, stacklevel=3)
        keep = ~missing
        data.X = data.X[keep].reset_index(drop=True)
        data.ids = data.ids[keep].reset_index(drop=True)
        values = {c: v[keep].reset_index(drop=True) for c, v in values.items()}
    if endpoint.kind == "binary":
        label = values[endpoint.label].to_numpy()
        classes = np.unique(label)
        if not set(classes) <= {0.0, 1.0}:
            raise InputError(f"label column '{endpoint.label}' must hold 0 and 1 (found {_preview(classes)})")
        data.label = label.astype(int)
    else:
        time = values[endpoint.time].to_numpy(float)
        event = values[endpoint.event].to_numpy()
        if not set(np.unique(event)) <= {0.0, 1.0}:
            raise InputError(f"event column '{endpoint.event}' must hold 1 (event) and 0 (censored), "
                             f"found {_preview(np.unique(event))}")
        if (time < 0).any():
            raise InputError(f"time column '{endpoint.time}' has negative values: {_preview(time[time < 0])}")
        data.time, data.event = time, event.astype(int)


def check_trainable(data: Dataset) -> None:
    """Refuse endpoints nothing can be learned from; warn (with the numbers) when events per variable are few."""
    n_vars = len(data.features)
    if data.endpoint.kind == "binary":
        counts = np.bincount(data.label, minlength=2)
        if counts.min() == 0:
            raise InputError(f"label '{data.endpoint.label}' has only one class ({int(np.argmax(counts))}) in "
                             f"{len(data.label)} rows; a classifier needs both 0 and 1")
        events, what = int(counts.min()), "minority-class cases"
    else:
        events, what = int(data.event.sum()), "events"
        if events == 0:
            raise InputError(f"all {len(data.event)} patients are censored ('{data.endpoint.event}' is 0 everywhere); "
                             f"a survival model needs events")
    if events < 2:
        raise InputError(f"only {events} {what}: too few to fit or validate a model")
    if events < MIN_EVENTS_PER_VARIABLE * n_vars:
        warnings.warn(f"{events} {what} for {n_vars} candidate variables ({events / n_vars:.2f} per variable, "
                      f"{MIN_EVENTS_PER_VARIABLE} recommended): expect an optimistic fit; rely on the penalised "
                      f"model and the cross-validated estimate", OutcomeWarning, stacklevel=2)


def _is_numeric(values: pd.Series) -> bool:
    numeric = pd.to_numeric(values, errors="coerce")
    return bool((values.isna() | numeric.notna()).all())


def _preview(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
    return ", ".join(repr(i) for i in items[:limit]) + more


def make_planted_cohort(n: int = 300, n_features: int = 40, seed: int = 0, n_planted: int = 3,
                        censoring: float = 0.3, n_batches: int = 0) -> pd.DataFrame:
    """A radiomics-like cohort whose outcome depends on ``n_planted`` known features only.

    Features come in correlated blocks (like families of texture features) on radiomics-like scales (offsets and
    units from 1e-2 to 1e4) with a few missing values. The true log-hazard is ``X[planted] @ beta`` on the
    standardised features; survival times are exponential with that hazard, censored uniformly at random so that
    about ``censoring`` of patients are censored; the binary ``label`` is Bernoulli(sigmoid(1.5 * log-hazard)).
    With ``n_batches`` > 0 a ``centre`` column shifts and scales every feature per centre (for ComBat).
    ``table.attrs``: ``planted`` (names), ``beta`` (their coefficients) and ``oracle`` (ID -> true log-hazard,
    see :func:`oracle_risk`).
    """
    block = 5
    if n_features < block * n_planted:
        raise InputError(f"a planted cohort with {n_planted} planted features needs at least {block * n_planted} "
                         f"features (one block of {block} per planted feature)")
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, (n_features + block - 1) // block))
    z = np.empty((n, n_features))
    for j in range(n_features):
        # Each feature shares a block factor with its neighbours (correlation ~0.5 within a block).
        z[:, j] = (latent[:, j // block] + rng.standard_normal(n)) / np.sqrt(2.0)
    # Planted features sit in different blocks, so pruning correlated features does not remove one for another.
    planted_idx = [j * block for j in range(n_planted)]
    beta = np.array([1.0, -0.8, 0.7, 0.6, -0.5][:n_planted] if n_planted <= 5 else rng.uniform(0.5, 1, n_planted))
    linear = z[:, planted_idx] @ beta
    scales = 10.0 ** rng.uniform(-2, 4, n_features)
    offsets = rng.uniform(-1, 5, n_features) * scales
    X = z * scales + offsets
    names = [f"original_feature_{j:03d}" for j in range(n_features)]
    table = pd.DataFrame(X, columns=names)
    if n_batches:
        centre = rng.integers(0, n_batches, n)
        shift = rng.normal(0, 0.8, (n_batches, n_features))
        stretch = np.exp(rng.normal(0, 0.3, (n_batches, n_features)))
        table = pd.DataFrame((z * stretch[centre] + shift[centre]) * scales + offsets, columns=names)
        table.insert(0, "centre", [f"C{c}" for c in centre])
    mask = rng.random(table[names].shape) < 0.01
    mask[:, planted_idx] = False  # keep the oracle exactly computable
    table[names] = table[names].mask(mask)

    hazard = 0.01 * np.exp(linear)
    event_time = rng.exponential(1.0 / hazard)
    # Uniform censoring on [0, c]: pick c on a grid so that about `censoring` of the patients are censored.
    u = rng.random(n)
    grid = np.quantile(event_time, np.linspace(0.05, 1, 400)) * 4
    censored_share = np.array([np.mean(u * c < event_time) for c in grid])
    censor_time = u * grid[int(np.argmin(np.abs(censored_share - censoring)))]
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(int)
    label = (rng.random(n) < 1 / (1 + np.exp(-1.5 * linear))).astype(int)

    table.insert(0, "PatientID", [f"P{i:04d}" for i in range(n)])
    table["time"] = np.round(time, 3)
    table["event"] = event
    table["label"] = label
    table.attrs.update(planted=[names[j] for j in planted_idx], beta=beta.tolist(),
                       oracle=dict(zip(table["PatientID"], linear.tolist())))
    return table


def oracle_risk(table: pd.DataFrame, oracle: dict | None = None) -> np.ndarray:
    """The true log-hazard (higher = worse) of the rows of a planted cohort, looked up by PatientID."""
    oracle = oracle if oracle is not None else table.attrs["oracle"]
    return np.array([oracle[i] for i in table["PatientID"]])
