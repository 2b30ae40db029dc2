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
    fit.add_argument("--table", required=True, metavar="T.csv", nargs="+", action="extend",
                     help="feature table (one row per patient); several (handcrafted, deep, dosiomic ...) are joined "
                          "by --id, and feature selection runs on all of them inside the CV folds")
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
    evaluate.add_argument("--table", required=True, metavar="T.csv", nargs="+", action="extend",
                          help="feature table(s), joined by the model's ID column as in fit")
    evaluate.add_argument("--clinical", metavar="C.csv")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples for CIs")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N")
    evaluate.add_argument("--no-shap", action="store_true", help="skip the SHAP summary plot")
    evaluate.add_argument("-o", "--output", required=True, metavar="EVAL_DIR")
    evaluate.set_defaults(func=run_evaluate)

    predict = commands.add_parser("predict", help="apply a model to a table; writes predictions.csv")
    predict.add_argument("--model", required=True, metavar="MODEL_DIR")
    predict.add_argument("--table", required=True, metavar="T.csv", nargs="+", action="extend",
                         help="feature table(s), joined by the model's ID column as in fit")
    predict.add_argument("--clinical", metavar="C.csv")
    predict.add_argument("-o", "--output", required=True, metavar="predictions.csv")
    predict.set_defaults(func=run_predict)

    _register_cnn(commands)


def _register_cnn(commands) -> None:
    cnn = commands.add_parser("cnn", help="a 3D CNN on the dose, CT and structures of each case (fit, evaluate "
                                          "with Grad-CAM, predict)",
                              description="A small 3D CNN (MONAI) for a binary endpoint from the cases themselves: "
                                          "dose, CT and structures resampled onto one grid around the structures. "
                                          "Cases are case folders or OpenKBP patients, matched to the table's ID by "
                                          "folder name.")
    steps = cnn.add_subparsers(dest="cnn_command", metavar="STEP", required=True)

    def cases_arguments(parser, table_required: bool) -> None:
        parser.add_argument("--cases", required=True, nargs="+", action="extend", metavar="DIR",
                            help="folder(s) of patients (case folders or OpenKBP patients), named by their ID")
        parser.add_argument("--table", required=table_required, metavar="T.csv",
                            help="table with the ID and label columns" + ("" if table_required else
                                                                          " (default: every case in --cases)"))
        parser.add_argument("--id", metavar="COL", help="ID column of the table (default: the model's, else ID)")
        parser.add_argument("--cache", metavar="DIR", help="keep each case's preprocessed arrays here (outside the "
                                                           "output): later runs read 200 cases in seconds")

    fit = steps.add_parser("fit", help="train a CNN; writes MODEL/weights.safetensors + manifest.json",
                           description="Train with seeded augmentation (translations; lateral flips only with "
                                       "--flip, which swaps the _L/_R channels), class weights and early stopping "
                                       "on a stratified inner validation split.")
    cases_arguments(fit, table_required=True)
    fit.add_argument("--label", required=True, metavar="COL", help="binary label column (0/1)")
    fit.add_argument("--inputs", default="dose,ct,structures", metavar="LIST",
                     help="comma-separated channels: dose, ct, structures (default all three)")
    fit.add_argument("--structures", default="Parotid_L,Parotid_R", metavar="NAMES",
                     help="structure channels, TG-263 names (default Parotid_L,Parotid_R)")
    fit.add_argument("--around", default="", metavar="NAMES",
                     help="centre the box on these structures, or 'body' (default: the --structures)")
    fit.add_argument("--spacing", type=float, default=4.0, metavar="MM", help="voxel size of the grid (default 4)")
    fit.add_argument("--box", default="128,160,160", metavar="Z,Y,X",
                     help="box size in mm, cranio-caudal, antero-posterior, lateral (default 128,160,160)")
    fit.add_argument("--region", choices=("organs", "subregions", "box"), default=None,
                     help="organs: the network's features are kept inside the structures (an organ's toxicity from "
                          "the dose in it; Grad-CAM shows where inside it); subregions: the images' means inside "
                          "learned soft sub-regions of each structure (toxicity from the dose in a part of an organ); "
                          "box: the whole box (default: organs when the inputs have structures, else box)")
    fit.add_argument("--members", type=int, default=1, metavar="N",
                     help="organs and subregions regions: average N networks, each with its own seed and inner "
                          "validation split (default 1; N times the training time)")
    fit.add_argument("--flip", action="store_true",
                     help="lateral flips (with _L/_R channels swapped): only for endpoints symmetric in left/right")
    fit.add_argument("--epochs", type=int, default=80, metavar="N")
    fit.add_argument("--patience", type=int, default=15, metavar="N", help="early-stopping patience in epochs")
    fit.add_argument("--batch", type=int, default=16, metavar="N")
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--validation", type=float, default=0.2, metavar="F", help="inner validation share")
    fit.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default RTRAI_THREADS "
                                                                             "or 1)")
    fit.add_argument("--seed", type=int, default=0, metavar="N")
    fit.add_argument("-o", "--output", required=True, metavar="MODEL")
    fit.set_defaults(func=run_cnn_fit)

    evaluate = steps.add_parser("evaluate", help="AUC with CI, Brier, ROC and calibration plots, metrics.json; "
                                                 "--gradcam maps")
    evaluate.add_argument("--model", required=True, metavar="MODEL")
    cases_arguments(evaluate, table_required=True)
    evaluate.add_argument("--label", metavar="COL", help="label column (default: the model's)")
    evaluate.add_argument("--gradcam", action="store_true",
                          help="write gradcam/<ID>.nrrd on each case's grid, gradcam_montage.png, "
                               "gradcam_mean_positive.nrrd and gradcam_structures.csv")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="B")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N")
    evaluate.add_argument("-o", "--output", required=True, metavar="EVAL_DIR")
    evaluate.set_defaults(func=run_cnn_evaluate)

    predict = steps.add_parser("predict", help="apply a CNN to cases; writes predictions.csv")
    predict.add_argument("--model", required=True, metavar="MODEL")
    cases_arguments(predict, table_required=False)
    predict.add_argument("-o", "--output", required=True, metavar="predictions.csv")
    predict.set_defaults(func=run_cnn_predict)


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _read_tables(paths: list[str], id_column: str | None):
    """One table, or several joined by ``id_column`` (:func:`rtrai.outcome.data.join_tables`)."""
    from rtrai.outcome.data import join_tables, read_table

    return join_tables([(path, read_table(path)) for path in paths], id_column)


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

    clinical = read_table(args.clinical) if args.clinical else None
    icc = read_icc_table(args.icc) if args.icc else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = _read_tables(args.table, args.id)
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
            "outcome fit", parameters, inputs=[*args.table, *(p for p in (args.clinical, args.icc) if p)],
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
    clinical = read_table(args.clinical) if args.clinical else None
    with warnings.catch_warnings(record=True) as caught, output_folder(args.output) as tmp:
        warnings.simplefilter("always")
        table = _read_tables(args.table, model.state["data"]["id"])
        metrics = evaluate(model, table, clinical, out_dir=tmp, n_bootstrap=args.bootstrap, seed=args.seed,
                           shap_values=not args.no_shap, progress=default("Evaluating"))
        write_text(tmp / "metrics.json", json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")
        provenance.write(tmp, provenance.record(
            "outcome evaluate", {k: v for k, v in vars(args).items() if k != "func"},
            inputs=[*args.table, *([args.clinical] if args.clinical else [])], seed=args.seed,
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
    clinical = read_table(args.clinical) if args.clinical else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = _read_tables(args.table, model.state["data"]["id"])
        predictions = model.predict(table, clinical)
    _print_warnings(caught)
    with atomic_file(args.output, suffix=".csv") as tmp:
        predictions.to_csv(tmp, index=False)
    print(f"wrote {len(predictions)} predictions to {args.output}")
    return 0


def _cnn_cohort(args, spec, id_column, label=None):
    """(paths, X, infos, labels or None) of the cases named by the table (every case without a table)."""
    from rtrai.core.progress import default
    from rtrai.outcome import cnn
    from rtrai.outcome.data import read_table

    labels = None
    if args.table:
        table = read_table(args.table)
        if label is None:
            ids = table[id_column].astype(str) if id_column in table.columns else None
            if ids is None:
                from rtrai.core.errors import InputError

                raise InputError(f"ID column '{id_column}' not in {args.table}; give --id")
        else:
            labels = cnn.read_labels(table, id_column, label)
            ids = labels["ID"]
        paths = cnn.match_cases(args.cases, ids)
    else:
        paths = cnn.match_cases(args.cases, None)
    X, infos = cnn.load_cohort(paths, spec, args.cache, default("Reading cases"))
    y = None
    if labels is not None:
        y = labels.set_index("ID").loc[[i["id"] for i in infos], "label"].to_numpy()
    return paths, X, infos, y


def _threads(value) -> int:
    import os

    return int(value or os.environ.get("RTRAI_THREADS") or 1)


def run_cnn_fit(args) -> int:
    import json
    import warnings

    from rtrai.core import provenance
    from rtrai.core.errors import InputError
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import default
    from rtrai.outcome import cnn

    try:
        box = tuple(float(v) for v in args.box.split(","))
    except ValueError:
        box = ()
    if len(box) != 3:
        raise InputError(f"--box {args.box}: give three sizes in mm, Z,Y,X (e.g. 128,160,160)")
    spec = cnn.GridSpec(inputs=_columns(args.inputs), structures=_columns(args.structures),
                        around=_columns(args.around), spacing_mm=args.spacing, box_mm=box)
    region = args.region or ("organs" if "structures" in spec.inputs else "box")
    cnn.network_spec(spec, {"region": region}, args.members)  # refuses a bad combination before reading the cases
    id_column = args.id or "ID"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, X, infos, y = _cnn_cohort(args, spec, id_column, args.label)
        config = cnn.TrainConfig(epochs=args.epochs, patience=args.patience, batch=args.batch, lr=args.lr,
                                 validation=args.validation, flip=args.flip, seed=args.seed,
                                 threads=_threads(args.threads), members=args.members)
        model = cnn.fit(X, y, spec, args.label, config, network={"region": region}, ids=[i["id"] for i in infos],
                        progress=default("Training"))
    _print_warnings(caught)
    model.manifest["training"].update(id_column=id_column, cases=[str(c) for c in args.cases],
                                      command="rtrai outcome cnn fit", table=str(args.table))
    with output_folder(args.output) as tmp:
        model.save(tmp)
        provenance.write(tmp, provenance.record(
            "outcome cnn fit", {k: v for k, v in vars(args).items() if k != "func"}, inputs=[args.table],
            seed=args.seed, extra={"cases": {i["id"]: i["path"] for i in infos},
                                   "model_sha256": provenance.sha256_file(tmp / "weights.safetensors")}))
    t = model.manifest["training"]
    print(json.dumps({"cases": t["n"], "positive": t["n_positive"], "best_epoch": t["best_epoch"],
                      "inner_validation_auc": t["validation_auc"], "seconds": t["seconds"]}))
    print(f"wrote {args.output}")
    return 0


def run_cnn_evaluate(args) -> int:
    import json
    import warnings

    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder, write_text
    from rtrai.core.progress import default
    from rtrai.outcome import cnn
    from rtrai.outcome.models import _jsonable

    model = cnn.OutcomeCNN.load(args.model)
    id_column = args.id or model.manifest["training"].get("id_column", "ID")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, X, infos, y = _cnn_cohort(args, model.spec, id_column, args.label or model.label)
        with output_folder(args.output) as tmp:
            metrics = cnn.evaluate(model, X, infos, y, tmp, gradcam=args.gradcam, n_bootstrap=args.bootstrap,
                                   seed=args.seed, progress=default("Evaluating"))
            metrics["model"] = model.info
            write_text(tmp / "metrics.json", json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")
            provenance.write(tmp, provenance.record(
                "outcome cnn evaluate", {k: v for k, v in vars(args).items() if k != "func"}, inputs=[args.table],
                seed=args.seed, models=[model.info], extra={"cases": {i["id"]: i["path"] for i in infos}}))
    _print_warnings(caught)
    lo, hi = metrics["auc_ci"]
    print(f"auc {metrics['auc']:.3f} (95% CI {lo:.3f} to {hi:.3f}), brier {metrics['brier']:.3f}, n={metrics['n']}; "
          f"wrote {args.output}")
    for name, share in metrics.get("gradcam", {}).get("structures", {}).items():
        print(f"  Grad-CAM inside {name}: {share['attribution_share_mean']:.1%} of the attribution "
              f"({share['volume_share_mean']:.1%} of the volume)")
    return 0


def run_cnn_predict(args) -> int:
    import warnings

    import pandas as pd

    from rtrai.core.outputs import atomic_file
    from rtrai.outcome import cnn

    model = cnn.OutcomeCNN.load(args.model)
    id_column = args.id or model.manifest["training"].get("id_column", "ID")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, X, infos, _ = _cnn_cohort(args, model.spec, id_column)
    _print_warnings(caught)
    predictions = pd.DataFrame({"ID": [i["id"] for i in infos], "probability": model.probabilities(X)})
    with atomic_file(args.output, suffix=".csv") as tmp:
        predictions.to_csv(tmp, index=False)
    print(f"wrote {len(predictions)} predictions to {args.output}")
    return 0
