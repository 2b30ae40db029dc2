"""``rtrai outcome fit | evaluate | predict``: outcome models from feature and clinical tables."""

from __future__ import annotations

import sys
from pathlib import Path

MODEL_CHOICES = ("lasso-cox", "cox", "lasso-logistic", "svm", "rf", "mlp")


def register(sub) -> None:
    outcome = sub.add_parser("outcome", help="fit, validate and apply outcome models (classifiers, survival)",
                             description="Outcome models on tables of numeric features and clinical variables, "
                                         "with all preprocessing fitted inside cross-validation folds.")
    commands = outcome.add_subparsers(dest="outcome_command", metavar="STEP", required=True)

    fit = commands.add_parser("fit", help="fit a model with nested cross-validation; writes MODEL_DIR/model.json",
                              description="Fit a survival (--time/--event) or binary (--label) model. Writes "
                                          "MODEL_DIR/model.json (selected features, coefficients, preprocessing, "
                                          "cross-validated performance, versions) and provenance.json.")
    fit.add_argument("--table", required=True, metavar="T.csv", help="feature table (one row per patient)")
    fit.add_argument("--time", metavar="COL", help="survival time column")
    fit.add_argument("--event", metavar="COL", help="event column (1 = event, 0 = censored)")
    fit.add_argument("--label", metavar="COL", help="binary label column (0/1)")
    fit.add_argument("--id", metavar="COL", help="patient ID column (needed with --clinical)")
    fit.add_argument("--exclude", metavar="COLS", default="", help="comma-separated columns that are not predictors")
    fit.add_argument("--clinical", metavar="C.csv", help="clinical table joined by --id; text columns are one-hot "
                                                         "encoded")
    fit.add_argument("--categorical", metavar="COLS", default="",
                     help="comma-separated text columns of --table to one-hot encode")
    fit.add_argument("--model", choices=MODEL_CHOICES,
                     help="default: lasso-cox for survival, lasso-logistic for a binary label")
    fit.add_argument("--batch", metavar="COL", help="batch column (centre/scanner) for ComBat harmonisation")
    fit.add_argument("--icc", metavar="ROBUSTNESS.csv", help="robustness table (feature, icc columns): drop "
                                                             "features below --icc-threshold")
    fit.add_argument("--icc-threshold", type=float, default=0.75, metavar="X")
    fit.add_argument("--corr-threshold", type=float, default=0.9, metavar="R",
                     help="prune one of every feature pair with |r| above R (default 0.9; 1 disables)")
    fit.add_argument("--folds", type=int, default=5, metavar="K", help="outer cross-validation folds (default 5)")
    fit.add_argument("--inner-folds", type=int, default=5, metavar="K",
                     help="inner (hyper-parameter) cross-validation folds (default 5)")
    fit.add_argument("--seed", type=int, default=0, metavar="N")
    fit.add_argument("-o", "--output", required=True, metavar="MODEL_DIR")
    fit.set_defaults(func=run_fit)

    evaluate = commands.add_parser("evaluate", help="validate a model on another table; metrics.json and plots",
                                   description="External validation: writes EVAL_DIR/metrics.json, PNG plots "
                                               "(KM, ROC, calibration, nomogram, SHAP as they apply) and "
                                               "provenance.json. Nothing is refitted.")
    evaluate.add_argument("--model", required=True, metavar="MODEL_DIR")
    evaluate.add_argument("--table", required=True, metavar="T.csv")
    evaluate.add_argument("--clinical", metavar="C.csv")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples for CIs")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N")
    evaluate.add_argument("--no-shap", action="store_true", help="skip the SHAP summary plot")
    evaluate.add_argument("-o", "--output", required=True, metavar="EVAL_DIR")
    evaluate.set_defaults(func=run_evaluate)

    predict = commands.add_parser("predict", help="apply a model to a table; writes predictions.csv")
    predict.add_argument("--model", required=True, metavar="MODEL_DIR")
    predict.add_argument("--table", required=True, metavar="T.csv")
    predict.add_argument("--clinical", metavar="C.csv")
    predict.add_argument("-o", "--output", required=True, metavar="predictions.csv")
    predict.set_defaults(func=run_predict)


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _print_warnings(caught) -> None:
    from rtrai.outcome.data import OutcomeWarning

    for w in caught:
        if issubclass(w.category, OutcomeWarning):
            print(f"rtrai: warning: {w.message}", file=sys.stderr)


def run_fit(args) -> int:
    import json
    import warnings

    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import default
    from rtrai.outcome import models
    from rtrai.outcome.data import read_table
    from rtrai.outcome.preprocess import read_icc_table

    table = read_table(args.table)
    clinical = read_table(args.clinical) if args.clinical else None
    icc = read_icc_table(args.icc) if args.icc else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.fit(table, time=args.time, event=args.event, label=args.label, id_column=args.id,
                           exclude=_columns(args.exclude), clinical=clinical, categorical=_columns(args.categorical),
                           model=args.model, batch=args.batch, seed=args.seed, icc=icc,
                           icc_threshold=args.icc_threshold,
                           corr_threshold=None if args.corr_threshold >= 1 else args.corr_threshold,
                           outer_folds=args.folds, inner_folds=args.inner_folds, progress=default("Fitting"))
    _print_warnings(caught)
    parameters = {k: v for k, v in vars(args).items() if k != "func"}
    with output_folder(args.output) as tmp:
        model.save(tmp)
        provenance.write(tmp, provenance.record(
            "outcome fit", parameters, inputs=[p for p in (args.table, args.clinical, args.icc) if p],
            seed=args.seed, extra={"model_sha256": provenance.sha256_file(tmp / "model.json")}))
    cv = model.state["training"]["cv"]
    print(json.dumps({"model": model.name, "features": model.features,
                      f"cv_{cv['metric']}": round(cv["mean"], 4), "cv_sd": round(cv["sd"], 4)}))
    print(f"wrote {Path(args.output) / 'model.json'}")
    return 0


def run_evaluate(args) -> int:
    import json
    import warnings

    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder, write_text
    from rtrai.core.progress import default
    from rtrai.outcome.data import read_table
    from rtrai.outcome.evaluation import evaluate
    from rtrai.outcome.models import OutcomeModel, _jsonable

    model = OutcomeModel.load(args.model)
    table = read_table(args.table)
    clinical = read_table(args.clinical) if args.clinical else None
    with warnings.catch_warnings(record=True) as caught, output_folder(args.output) as tmp:
        warnings.simplefilter("always")
        metrics = evaluate(model, table, clinical, out_dir=tmp, n_bootstrap=args.bootstrap, seed=args.seed,
                           shap_values=not args.no_shap, progress=default("Evaluating"))
        write_text(tmp / "metrics.json", json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")
        provenance.write(tmp, provenance.record(
            "outcome evaluate", {k: v for k, v in vars(args).items() if k != "func"},
            inputs=[p for p in (args.table, args.clinical) if p], seed=args.seed,
            models=[{"name": model.name, "sha256": provenance.sha256_file(Path(args.model) / "model.json")}]))
    _print_warnings(caught)
    key = "auc" if model.kind == "binary" else "c_index"
    lo, hi = metrics[f"{key}_ci"]
    print(f"{key} {metrics[key]:.3f} (95% CI {lo:.3f} to {hi:.3f}), n={metrics['n']}; wrote {args.output}")
    return 0


def run_predict(args) -> int:
    import warnings

    from rtrai.core.outputs import atomic_file
    from rtrai.outcome.data import read_table
    from rtrai.outcome.models import OutcomeModel

    model = OutcomeModel.load(args.model)
    table = read_table(args.table)
    clinical = read_table(args.clinical) if args.clinical else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = model.predict(table, clinical)
    _print_warnings(caught)
    with atomic_file(args.output, suffix=".csv") as tmp:
        predictions.to_csv(tmp, index=False)
    print(f"wrote {len(predictions)} predictions to {args.output}")
    return 0
