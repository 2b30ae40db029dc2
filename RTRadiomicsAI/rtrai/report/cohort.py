"""``OUT/cohort_report.html``: the cohort that ``rtrai run`` wrote into OUT, on one self-contained page (styles
inline, images as base64 PNG, no script, no network), built from the files alone (``cohort.csv``, each
``OUT/<case>/`` folder, ``cohort_features.csv``), so it can be (re)built at any time after a run.

Sections: the status of every case (done, finished before, failed with the reason; seconds); DVH bands per structure
across the cohort (median and 10-90 % of the cumulative DVHs); the pass rate of each common constraint; the
distributions of headline features per structure; AutoSegment's agreement (Dice) with the contours that came with the
cases, when they came with some; and, with an endpoint (``time,event`` or a binary ``label`` column of a clinical
table), the cohort's outcome model: LASSO fitted with nested cross-validation (:func:`rtrai.outcome.models.fit`) and
its plots (:mod:`rtrai.outcome.plots`: Kaplan-Meier by risk group, calibration, nomogram; ROC for a label).
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rtrai.core.errors import InputError
from rtrai.core.outputs import write_text
from rtrai.report.html import _CSS, _e, _img, _num, _Raw, _table

REPORT_NAME = "cohort_report.html"
BAND = (10, 50, 90)  # percentiles of the DVH bands and feature summaries
DVH_METRICS = ("Dmean", "D98%", "D2%")
# Headline features shown per structure (all of them are in cohort_features.csv): column suffix, title, scale.
HEADLINE = (("CT", "original_shape_MeshVolume", "volume (cc)", 1e-3),
            ("CT", "original_firstorder_Mean", "mean CT (HU)", 1.0),
            ("dose", "dvh_Dmean_Gy", "mean dose (Gy)", 1.0))


def write_cohort_report(outdir: str | os.PathLike, clinical: str | os.PathLike | None = None,
                        endpoint: str | None = None, id_column: str | None = None, seed: int = 0,
                        progress=None) -> Path:
    """Write ``outdir/cohort_report.html`` (atomically) for the cohort in ``outdir``; returns its path.

    ``endpoint``: ``"TIME,EVENT"`` (survival) or ``"LABEL"`` (binary), columns of the ``clinical`` table, which is
    joined to the features by ``id_column`` (default: its ``ID`` column, else ``case``, the folder names)."""
    from rtrai.core.progress import silent

    report = progress or silent
    outdir = Path(outdir)
    check_endpoint(clinical, endpoint, id_column)
    report(0.0, "cohort report: reading the cases")
    cohort = read_cohort(outdir)
    sections = [_cases_section(cohort)]
    report(0.2, "cohort report: DVH bands")
    sections += [_dvh_section(cohort), _constraints_section(cohort)]
    report(0.4, "cohort report: features")
    sections.append(_features_section(cohort))
    report(0.5, "cohort report: auto-contour agreement")
    sections.append(_agreement_section(cohort))
    if endpoint:
        report(0.6, "cohort report: outcome model")
        sections.append(_outcome_section(cohort, clinical, endpoint, id_column, seed))
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"RTRadiomicsAI cohort report: {len(cohort['cases'])} cases"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"meta\">Generated {_e(now)} by rtrai from <code>{_e(outdir)}</code>. "
            "Research software, not for clinical use.</p>" + "".join(s for s in sections if s)
            + "<footer>RTRadiomicsAI. Structure names follow AAPM TG-263; doses in Gy, volumes in cc. Each case's "
              "own report is <code>&lt;case&gt;/report.html</code>; the features are in "
              "<code>cohort_features.csv</code>.</footer></main></body></html>\n")
    path = write_text(outdir / REPORT_NAME, page)
    report(1.0, "cohort report written")
    return path


# -------------------------------------------------------------------------------------------------------- reading

def read_cohort(outdir: Path) -> dict:
    """The cohort's tables: cases (cohort.csv, or the partial table of a run still going), and, from each finished
    case folder, its DVHs, DVH metrics, constraints, features and AutoSegment's Dice against the given contours."""
    import pandas as pd

    table = outdir / "cohort.csv"
    if not table.is_file():
        table = outdir / "cohort.partial.csv"
    if not table.is_file():
        raise InputError(f"{outdir} holds no cohort of rtrai run (no cohort.csv)")
    cases = pd.read_csv(table, dtype={"case": str, "error": str, "skipped_steps": str}).fillna(
        {"error": "", "skipped_steps": ""})
    if "case" not in cases.columns or "status" not in cases.columns:
        raise InputError(f"{table} is not a cohort table of rtrai run (columns case, status, ...)")
    dvh, metrics, constraints, dice, ids = [], [], [], [], {}
    for name in cases.loc[cases["status"] != "failed", "case"]:
        folder = outdir / name
        for file, frames in (("dvh.csv", dvh), ("dvh_metrics.csv", metrics), ("constraints.csv", constraints)):
            if (folder / file).is_file():
                frames.append(pd.read_csv(folder / file).assign(case=name))
        if (folder / "features.csv").is_file():
            first = pd.read_csv(folder / "features.csv", dtype={"ID": str}, usecols=["ID"], nrows=1)
            if len(first):
                ids[name] = first["ID"].iloc[0]
        dice += _dice_rows(folder, name)
    features = None
    if (outdir / "cohort_features.csv").is_file():
        features = pd.read_csv(outdir / "cohort_features.csv", dtype={"ID": str})

    def join(frames):
        return pd.concat(frames, ignore_index=True) if frames else None

    return {"folder": outdir, "table": table, "cases": cases, "dvh": join(dvh), "metrics": join(metrics),
            "constraints": join(constraints), "dice": pd.DataFrame(dice), "features": features, "ids": ids}


def _dice_rows(folder: Path, case: str) -> list[dict]:
    """AutoSegment against the contours that came with the case (``InputStructures.seg.nrrd``, the given structures
    it replaced): Dice per structure, as the case's report computes it (a structure AutoSegment did not find: 0)."""
    import SimpleITK as sitk

    from rtrai.io.segfile import read_segmentation
    from rtrai.segmentation.metrics import dice

    given, ours = folder / "InputStructures.seg.nrrd", folder / "Structures.seg.nrrd"
    if not given.is_file() or not ours.is_file():
        return []
    reference, _ = read_segmentation(given)
    predicted, _ = read_segmentation(ours)
    rows = []
    for name, mask in reference.items():
        ref = sitk.GetArrayViewFromImage(mask) > 0
        pred = sitk.GetArrayViewFromImage(predicted[name]) > 0 if name in predicted else np.zeros_like(ref)
        if pred.shape == ref.shape:
            rows.append({"case": case, "structure": name, "dice": dice(pred, ref)})
    return rows


def _structure_order(names) -> list[str]:
    from rtrai.core.structures import is_target

    return sorted(set(names), key=lambda n: (not is_target(n), n.lower()))


def _band(values) -> tuple[float, float, float]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (float("nan"),) * 3
    return tuple(float(v) for v in np.percentile(values, BAND))


def _band_text(values, digits: int = 2) -> str:
    lo, mid, hi = _band(values)
    return f"{_num(mid, digits)} ({_num(lo, digits)} to {_num(hi, digits)})" if np.isfinite(mid) else ""


def _figure_png(fig) -> bytes:
    from rtrai.report.figures import figure_png

    return figure_png(fig, dpi=100)


def _subplots(count: int, columns: int = 4, size=(3.6, 2.7)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, count))
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat[:count])


# ------------------------------------------------------------------------------------------------------- sections

def _cases_section(cohort: dict) -> str:
    cases = cohort["cases"]
    counts = cases["status"].value_counts()
    badge = {"done": "done", "finished before": "done", "failed": "fail"}
    # failed cases first: those are the ones to read in a cohort of hundreds
    rows = [[r.case, _Raw(f'<span class="{badge.get(r.status, "skipped")}">{_e(r.status)}</span>'),
             _num(r.seconds, 1) if r.status != "finished before" else "", r.skipped_steps, r.error]
            for r in cases.sort_values("status", key=lambda s: s != "failed", kind="stable").itertuples()]
    done = cases.loc[cases["status"] == "done", "seconds"].astype(float)
    timing = (f" The cases run here took {_num(done.median(), 1)} s each (median; {_num(done.sum() / 60, 1)} min "
              "in all)." if len(done) else "")
    summary = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in ("done", "finished before", "failed")
                        if counts.get(s, 0))
    return (f"<h2>Cases</h2><p>{len(cases)} cases: {_e(summary)}.{_e(timing)} A failed case's reason is the one "
            f"line <code>rtrai run</code> gave; run the same command again to retry the failed cases (finished ones "
            f"are kept).</p>"
            + _table(["case", "status", "seconds", "steps skipped", "reason"], rows, numeric={2}))


def _dvh_section(cohort: dict) -> str:
    dvh = cohort["dvh"]
    if dvh is None or dvh.empty:
        return "<h2>DVH bands</h2><p>No DVHs: no case of the cohort has a dose (dvh.csv).</p>"
    names = _structure_order(dvh["structure"])
    grid = np.arange(0.0, float(dvh["dose_gy"].max()) + 0.5, 0.5)
    fig, axes = _subplots(len(names))
    from rtrai.core.structures import color_of

    for ax, name in zip(axes, names):
        curves = []
        for _, rows in dvh[dvh["structure"] == name].groupby("case"):
            rows = rows.sort_values("dose_gy")
            curves.append(np.interp(grid, rows["dose_gy"], rows["volume_pct"], right=0.0))
        curves = np.array(curves)
        lo, mid, hi = np.percentile(curves, BAND, axis=0)
        colour = color_of(name)
        ax.fill_between(grid, lo, hi, color=colour, alpha=0.3, lw=0, label="10-90 %")
        ax.plot(grid, mid, color=colour, lw=1.8, label="median")
        ax.set_title(f"{name} (n={len(curves)})", fontsize=9)
        ax.set(xlim=(0, grid[-1]), ylim=(0, 102))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("dose (Gy)", fontsize=8)
        ax.set_ylabel("volume (%)", fontsize=8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    figure = _img(_figure_png(fig), "DVH bands per structure",
                  "Cumulative DVH of each structure across the cohort: median (line) and 10th-90th percentile of the "
                  "cases (band).")
    metrics = cohort["metrics"]
    table = ""
    if metrics is not None and not metrics.empty:
        rows = []
        for name in names:
            mine = metrics[metrics["structure"] == name]
            rows.append([name, int(mine["case"].nunique())]
                        + [_band_text(mine.loc[mine["metric"] == m, "value"]) for m in DVH_METRICS])
        table = _table(["structure", "cases"] + [f"{m} (Gy): median (10th to 90th percentile)" for m in DVH_METRICS],
                       rows, numeric={1, 2, 3, 4})
    return "<h2>DVH bands</h2>" + figure + table


def _constraints_section(cohort: dict) -> str:
    constraints = cohort["constraints"]
    if constraints is None or constraints.empty:
        return ""
    constraints = constraints.assign(passed=constraints["passed"].astype(str).str.lower() == "true")
    groups = constraints.groupby(["structure", "metric", "goal", "limit_gy"], sort=False)
    rows, labels, rates = [], [], []
    for (structure, metric, goal, limit), rows_of in groups:
        rate = 100.0 * rows_of["passed"].mean()
        rows.append([structure, f"{metric} {goal}", len(rows_of), int(rows_of["passed"].sum()), _num(rate, 0),
                     _band_text(rows_of["value_gy"])])
        labels.append(f"{structure} {metric} {goal}")
        rates.append(rate)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.32 * len(labels)))
    order = np.arange(len(labels))[::-1]
    ax.barh(order, rates, color=["#17693a" if r >= 90 else "#e0a800" if r >= 50 else "#b3261e" for r in rates])
    ax.set_yticks(order, labels, fontsize=8)
    ax.set(xlim=(0, 100), xlabel="cases meeting the constraint (%)")
    fig.tight_layout()
    return ("<h2>Constraints</h2>" + _img(_figure_png(fig), "constraint pass rates",
                                          "Share of the cases that meet each common constraint (the same constraints "
                                          "as each case's report).")
            + _table(["structure", "constraint", "cases", "met", "met (%)", "value (Gy): median (10th to 90th)"],
                     rows, numeric={2, 3, 4, 5}))


def _features_section(cohort: dict) -> str:
    features = cohort["features"]
    if features is None or features.empty:
        return "<h2>Features</h2><p>No features: no case has a features table (cohort_features.csv).</p>"
    columns = [c for c in features.columns if c != "ID"]
    structures = _structure_order({c.split("_", 1)[1].rsplit("_original_", 1)[0].rsplit("_dvh_", 1)[0]
                                   for c in columns if "_" in c})
    panels, rows = [], []
    for image, suffix, title, scale in HEADLINE:
        present = [(s, f"{image}_{s}_{suffix}") for s in structures if f"{image}_{s}_{suffix}" in features]
        if present:
            panels.append((title, [(s, features[c].to_numpy(float) * scale) for s, c in present]))
            rows += [[title, s, int(np.isfinite(v).sum()), _band_text(v)] for s, v in panels[-1][1]]
    text = (f"<h2>Features</h2><p>{len(features)} cases with features, {len(columns)} feature columns "
            "(<code>&lt;image&gt;_&lt;structure&gt;_&lt;feature&gt;</code>, pyradiomics names) in "
            "<code>cohort_features.csv</code>; their distributions per structure for the headline ones:</p>")
    if not panels:
        return text
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels):
        values = [v[np.isfinite(v)] for _, v in series]
        ax.boxplot(values, showfliers=True, widths=0.6)
        for i, v in enumerate(values, start=1):  # every case as a dot: small cohorts too
            ax.plot(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, ".", color="#3b6fb6", ms=4, alpha=0.7)
        ax.set_xticks(range(1, len(series) + 1), [s for s, _ in series], fontsize=8, rotation=30, ha="right")
        ax.set_ylabel(title, fontsize=9)
    fig.tight_layout()
    return (text + _img(_figure_png(fig), "feature distributions",
                        "Box plots (median, quartiles, 1.5 IQR whiskers) with every case as a dot.")
            + _table(["feature", "structure", "cases", "median (10th to 90th percentile)"], rows, numeric={2, 3}))


def _agreement_section(cohort: dict) -> str:
    dice = cohort["dice"]
    if dice.empty:
        return ("<h2>Auto-contour agreement</h2><p>No case came with contours that AutoSegment replaced (or "
                "AutoSegment was not run), so there is nothing to compare with.</p>")
    names = _structure_order(dice["structure"])
    rows = [[n, int((dice["structure"] == n).sum()), _band_text(dice.loc[dice["structure"] == n, "dice"], 3)]
            for n in names]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.2))
    values = [dice.loc[dice["structure"] == n, "dice"].to_numpy(float) for n in names]
    ax.boxplot(values, widths=0.6)
    for i, v in enumerate(values, start=1):
        ax.plot(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, ".", color="#3b6fb6", ms=4)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8, rotation=30, ha="right")
    ax.set(ylim=(0, 1.02), ylabel="Dice")
    fig.tight_layout()
    return ("<h2>Auto-contour agreement</h2><p>AutoSegment's contours against those that came with the "
            f"{dice['case'].nunique()} cases (<code>InputStructures.seg.nrrd</code>): Dice per structure.</p>"
            + _img(_figure_png(fig), "Dice per structure", "Dice of AutoSegment against the given contours, every "
                                                             "case a dot.")
            + _table(["structure", "cases", "Dice: median (10th to 90th percentile)"], rows, numeric={1, 2}))


# -------------------------------------------------------------------------------------------------------- outcome

def parse_endpoint(endpoint: str) -> dict:
    """``"TIME,EVENT"`` -> survival columns; ``"LABEL"`` -> a binary label column."""
    parts = [p.strip() for p in str(endpoint).split(",") if p.strip()]
    if len(parts) == 2:
        return {"time": parts[0], "event": parts[1]}
    if len(parts) == 1:
        return {"label": parts[0]}
    raise InputError(f"--endpoint {endpoint!r}: give TIME,EVENT (survival) or LABEL (binary), columns of --clinical")


def check_endpoint(clinical, endpoint: str | None, id_column: str | None = None):
    """The clinical table, the endpoint's columns and the join key, checked (call it before a cohort runs, so that a
    mistake is said before hours of work): (table, {"time", "event"} or {"label"}, key column)."""
    from rtrai.outcome.data import read_table

    if not endpoint:
        if clinical:
            raise InputError("--clinical needs --endpoint (TIME,EVENT or LABEL: the columns to model)")
        return None
    columns = parse_endpoint(endpoint)
    if not clinical:
        raise InputError("--endpoint needs --clinical (the table with the endpoint columns, one row per case)")
    table = read_table(clinical)
    missing = [c for c in columns.values() if c not in table.columns]
    if missing:
        raise InputError(f"{clinical}: no column {', '.join(missing)} (columns: {', '.join(map(str, table.columns))})")
    key = id_column or ("ID" if "ID" in table.columns else "case" if "case" in table.columns else None)
    if key is None or key not in table.columns:
        raise InputError(f"{clinical}: no {id_column or 'ID or case'} column to join the cases by (ID: the patient "
                         "IDs of cohort_features.csv; case: the case folder names)")
    return table, columns, key


def _outcome_section(cohort: dict, clinical, endpoint: str, id_column: str | None, seed: int) -> str:
    from rtrai.outcome import models
    from rtrai.outcome.data import OutcomeWarning
    from rtrai.outcome.evaluation import evaluate

    table, columns, key = check_endpoint(clinical, endpoint, id_column)
    features = cohort["features"]
    if features is None or features.empty:
        raise InputError("an outcome model needs the cohort's features (cohort_features.csv), and there are none")
    ids = table[key].astype(str)
    if key == "case":  # folder names -> the IDs of the feature table
        ids = ids.map(cohort["ids"])
    table = table.drop(columns=[key]).assign(ID=ids).dropna(subset=["ID"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.fit(features, id_column="ID", clinical=table, seed=seed, **columns)
        with tempfile.TemporaryDirectory(prefix=".rtrai-cohort-plots-") as tmp:
            metrics = evaluate(model, features, table, out_dir=tmp, n_bootstrap=200, seed=seed, shap_values=False)
            figures = "".join(_img(Path(tmp, name).read_bytes(), name, _PLOT_CAPTIONS.get(name, name))
                              for name in _PLOT_ORDER if name in metrics.get("plots", []))
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, OutcomeWarning)})
    cv = model.state["training"]["cv"]
    key_metric = "auc" if model.kind == "binary" else "c_index"
    lo, hi = metrics.get(f"{key_metric}_ci", [float("nan")] * 2)
    what = (f"survival: time <code>{_e(columns['time'])}</code>, event <code>{_e(columns['event'])}</code>"
            if model.kind == "survival" else f"binary label <code>{_e(columns['label'])}</code>")
    selected = ", ".join(f"<code>{_e(f)}</code>" for f in model.features) or "none (no feature was kept)"
    return (f"<h2>Outcome model</h2><p>{_e(model.name)} on {metrics['n']} cases ({what}, from "
            f"<code>{_e(clinical)}</code>), fitted with nested cross-validation. Cross-validated {cv['metric']}: "
            f"<strong>{_num(cv['mean'], 3)}</strong> (SD {_num(cv['sd'], 3)}, {cv.get('folds', '')} folds), the "
            f"estimate to quote. The plots show the final model on the same cases (apparent {key_metric} "
            f"{_num(metrics[key_metric], 3)}, 95% CI {_num(lo, 3)} to {_num(hi, 3)}): optimistic by construction."
            f"</p><p>Selected features: {selected}.</p>"
            + "".join(f'<p class="banner note">{_e(n)}</p>' for n in notes) + figures)


_PLOT_ORDER = ("km.png", "roc.png", "calibration.png", "td_auc.png", "nomogram.png")
_PLOT_CAPTIONS = {"km.png": "Kaplan-Meier curves of the model's low and high risk groups (split at its training "
                            "cut-off).",
                  "roc.png": "ROC curve of the model's predicted probability.",
                  "calibration.png": "Calibration: predicted against observed.",
                  "td_auc.png": "Time-dependent (cumulative/dynamic) AUC.",
                  "nomogram.png": "Nomogram of the linear model: points per feature, total points to survival."}
