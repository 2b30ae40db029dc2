"""Outcome CNN on OpenKBP doses with a SIMULATED xerostomia endpoint: the CNN against the oracle and DVH models.

No outcome here is observed: labels are drawn from a published NTCP model (rtrai.outcome.simulate), so the true
probability of every patient is known and its AUC (the oracle) is the best any model can reach on those patients.

1. Every OpenKBP patient (169 train + 33 validation) is read once; its dose metrics (parotid mean dose, cranial-half
   mean dose, whole-organ DVH features) and its CNN input (rtrai.outcome.cnn, cached in WORK/cache) are kept in WORK.
2. Two endpoints (seeded): ``mean`` (LKB on the parotids' mean dose, TD50 39.9 Gy, m 0.40, n 1) and ``cranial`` (the
   same curve, TD50 21.8 Gy, on the mean dose of the parotids' cranial quarters, after van Luijk et al. 2015).
3. Stratified K-fold cross-validation over all patients with an endpoint: in each fold the CNN (rtrai.outcome.cnn.fit,
   the code behind ``rtrai outcome cnn fit``) and two logistic models fitted with scikit-learn on the same training
   patients: "DVH" (L2-penalised, C by inner CV, on Dmean, D2, D50, D98, V10-V50 of each parotid) and "Dmean" (on the
   parotids' mean dose alone, i.e. a refitted LKB-type model). Pooled held-out AUCs with bootstrap CIs and paired
   bootstrap CIs of the differences; on the held-out patients, Grad-CAM's share inside the parotids and the cranial
   quarters' share of what lies inside them (a uniform map would give them 25 %).
4. The command line as a user runs it: ``rtrai outcome cnn fit`` on the 169 train patients and ``rtrai outcome cnn
   evaluate --gradcam`` on the 33 validation patients: training time, peak memory, inference per case, and the plots.

    nice -n 10 python benchmarks/bench_outcome_cnn.py --work /tmp/bench-outcome-cnn --endpoints cranial \
        [--docs Docs/OutcomeCNN]         (the subregions CNN: results/bench_outcome_cnn_subregions.txt)
    ... --region organs --lr 2e-3 --epochs 40 --patience 12   (the organs CNN: results/bench_outcome_cnn.txt)
    ... --seed 1                     (another label draw, folds and CNN seeds: a replicate)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openkbp"


# Runs one rtrai command and reports its own peak resident memory: VmHWM, which exec resets (ru_maxrss would start
# from this benchmark's own size at the fork, and children's maxrss would be the largest so far).
PEAK = ("import re, sys; from rtrai.cli import main; rc = main(sys.argv[1:]); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print('PEAK_RSS_KB', hwm, file=sys.stderr); sys.exit(rc)")


def log(text: str = "") -> None:
    print(text, flush=True)


def read_metrics(paths: dict, work: Path) -> pd.DataFrame:
    from rtrai.io.case_io import read_case
    from rtrai.outcome.simulate import CRANIAL_FRACTION, dose_metrics

    target = work / f"dose_metrics_cranial{CRANIAL_FRACTION:g}.csv"  # the cranial part's size is in the name
    if target.is_file():
        table = pd.read_csv(target)
        if set(table["ID"]) == set(paths):
            return table
    rows = [dose_metrics(read_case(path)) for path in paths.values()]
    table = pd.DataFrame(rows)
    table.to_csv(target, index=False)
    return table


def paired_ci(y, a, b, n_bootstrap: int, seed: int) -> list[float]:
    """95% bootstrap CI of AUC(a) - AUC(b) on the same patients."""
    from sklearn.metrics import roc_auc_score

    from rtrai.outcome.evaluation import bootstrap_ci

    return bootstrap_ci(lambda i: roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]), len(y), n_bootstrap, seed,
                        valid=lambda i: 0 < y[i].sum() < len(i))


def dvh_logistic(train: pd.DataFrame, test: pd.DataFrame, columns: list[str], label: str, seed: int) -> np.ndarray:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=5000))
    model.fit(train[columns].to_numpy(float), train[label].to_numpy())
    return model.predict_proba(test[columns].to_numpy(float))[:, 1]


def cross_validate(X, infos, table, spec, args) -> dict:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    import SimpleITK as sitk

    from rtrai.outcome import cnn
    from rtrai.outcome.evaluation import bootstrap_ci
    from rtrai.outcome.simulate import CRANIAL_FRACTION, cranial_part

    dvh_columns = [c for c in table.columns if c.startswith("Parotid_") and not c.endswith("volume_cc")]
    results = {}
    for variant in args.endpoints:
        label, truth = f"xero_{variant}", f"ntcp_{variant}"
        y = table[label].to_numpy()
        held = {k: np.zeros(len(y)) for k in ("cnn", "dvh", "dmean")}
        shares, cranial_shares, seconds, epochs = [], [], [], []
        folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(X, y)
        for k, (train, test) in enumerate(folds, start=1):
            started = time.time()
            model = cnn.fit(X[train], y[train], spec, label,
                            cnn.TrainConfig(epochs=args.epochs, patience=args.patience, flip=True, lr=args.lr,
                                            seed=args.seed + k, threads=args.threads, members=args.members),
                            network={"region": args.region})
            seconds.append(time.time() - started)
            epochs.append(model.manifest["training"]["epochs_run"])
            held["cnn"][test] = model.probabilities(X[test])
            held["dvh"][test] = dvh_logistic(table.iloc[train], table.iloc[test], dvh_columns, label, args.seed)
            held["dmean"][test] = dvh_logistic(table.iloc[train], table.iloc[test], ["dmean_parotids"], label,
                                               args.seed)
            cams = model.gradcam(X[test])
            box = cnn.crop(X[test], spec).astype(np.float32)
            organs = [spec.channels.index(n) for n in ("Parotid_L", "Parotid_R")]
            for i in range(len(test)):
                masks = {n: box[i, c] >= 0.5 for n, c in zip(("Parotid_L", "Parotid_R"), organs)}
                rows = cnn.attribution_shares(cams[i], masks, {"parotids": ["Parotid_L", "Parotid_R"]})
                both = next((r for r in rows if r["structure"] == "parotids"), None)
                if both is not None:
                    shares.append((both["attribution_share"], both["volume_share"]))
                    union = masks["Parotid_L"] | masks["Parotid_R"]
                    # the box is an identity-direction LPS grid: as an image, z runs superior as cranial_part expects
                    upper = np.logical_or.reduce([cranial_part(sitk.GetImageFromArray(masks[n].astype(np.uint8)),
                                                               CRANIAL_FRACTION) for n in ("Parotid_L", "Parotid_R")])
                    cranial_shares.append(float(cams[i][upper].sum() / max(cams[i][union].sum(), 1e-12)))
            auc = roc_auc_score(y[test], held["cnn"][test])
            log(f"  {variant} fold {k}: CNN {auc:.3f}, DVH {roc_auc_score(y[test], held['dvh'][test]):.3f}, oracle "
                f"{roc_auc_score(y[test], table[truth].to_numpy()[test]):.3f}; {seconds[-1]:.0f} s, "
                f"{epochs[-1]} epochs, {len(train)} training patients")
        oracle = table[truth].to_numpy()
        entry = {"n": int(len(y)), "positive": int(y.sum())}
        for name, p in (("oracle", oracle), *held.items()):
            entry[name] = {"auc": float(roc_auc_score(y, p)),
                           "auc_ci": bootstrap_ci(lambda i, p=p: roc_auc_score(y[i], p[i]), len(y), args.bootstrap,
                                                  args.seed, valid=lambda i: 0 < y[i].sum() < len(i))}
        entry["cnn_minus_oracle_ci"] = paired_ci(y, held["cnn"], oracle, args.bootstrap, args.seed)
        entry["cnn_minus_dvh_ci"] = paired_ci(y, held["cnn"], held["dvh"], args.bootstrap, args.seed)
        share = np.array(shares)
        entry["gradcam_share_parotids"] = {"median": float(np.median(share[:, 0])), "mean": float(share[:, 0].mean()),
                                           "volume_share_mean": float(share[:, 1].mean()),
                                           "cases_over_half": float((share[:, 0] > 0.5).mean()),
                                           "cranial_part_of_parotid_attribution": float(np.median(cranial_shares))}
        entry["train_seconds_per_fold"] = float(np.mean(seconds))
        entry["epochs_per_fold"] = float(np.mean(epochs))
        entry["held_out"] = {"ID": list(table["ID"]), **{k: v.tolist() for k, v in held.items()}}
        results[variant] = entry
    return results


def roc_figure(results: dict, table: pd.DataFrame, path: Path, folds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.6), squeeze=False)
    names = {"oracle": "oracle (true NTCP)", "cnn": "CNN (dose, CT, parotids)", "dvh": "logistic, DVH features",
             "dmean": "logistic, mean dose"}
    for ax, (variant, entry) in zip(axes[0], results.items()):
        y = table[f"xero_{variant}"].to_numpy()
        for key, label in names.items():
            p = table[f"ntcp_{variant}"].to_numpy() if key == "oracle" else np.array(entry["held_out"][key])
            fpr, tpr, _ = roc_curve(y, p)
            lo, hi = entry[key]["auc_ci"]
            ax.plot(fpr, tpr, lw=2 if key in ("cnn", "oracle") else 1.2,
                    label=f"{label}: {entry[key]['auc']:.3f} ({lo:.2f}-{hi:.2f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
               title=f"SIMULATED xerostomia, {'mean-dose' if variant == 'mean' else 'cranial-part'} LKB\n"
                     f"{entry['n']} OpenKBP patients, {entry['positive']} events, {folds}-fold CV")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_cli(args, table: pd.DataFrame, work: Path) -> dict:
    """fit on train-pats, evaluate --gradcam on validation-pats, as a user would; time and peak memory of each."""
    variant = args.cli_endpoint
    label = f"xero_{variant}"
    table[["ID", label]].to_csv(work / "endpoint.csv", index=False)
    env = {**os.environ, "RTRAI_PROGRESS": "lines", "OMP_NUM_THREADS": str(args.threads),
           "RTRAI_THREADS": str(args.threads)}
    out = {}
    for step, command in (
            ("fit", ["outcome", "cnn", "fit", "--cases", str(args.data[0]), "--table", str(work / "endpoint.csv"),
                     "--id", "ID", "--label", label, "--flip", "--region", args.region, "--lr", str(args.lr),
                     "--members", str(args.members),
                     "--epochs", str(args.epochs), "--patience",
                     str(args.patience), "--seed", str(args.seed), "--cache", str(work / "cache"), "-o",
                     str(work / "model")]),
            ("evaluate", ["outcome", "cnn", "evaluate", "--model", str(work / "model"), "--cases",
                          str(args.data[1]), "--table", str(work / "endpoint.csv"), "--gradcam", "--cache",
                          str(work / "cache"), "-o", str(work / "evaluation")])):
        shutil.rmtree(work / ("model" if step == "fit" else "evaluation"), ignore_errors=True)
        started = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run([sys.executable, "-c", PEAK, *command], env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
        if result.returncode != 0:
            raise SystemExit(f"rtrai {' '.join(command)} failed:\n{result.stderr[-2000:]}")
        lines = [line for line in result.stdout.splitlines() if not line.startswith("<filter-")]
        out[step] = {"seconds": round(time.time() - started, 1),
                     "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                     "peak_rss_mib": round(peak[0] / 1024, 1) if peak else None, "stdout": lines,
                     "command": "rtrai " + " ".join(command)}
    metrics = json.loads((work / "evaluation" / "metrics.json").read_text())
    predictions = pd.read_csv(work / "evaluation" / "predictions.csv")
    truth = table.set_index("ID").loc[predictions["ID"], f"ntcp_{variant}"].to_numpy()
    from sklearn.metrics import roc_auc_score

    out["metrics"] = metrics
    out["oracle_auc_validation"] = float(roc_auc_score(predictions[label], truth))
    manifest = json.loads((work / "model" / "manifest.json").read_text())
    out["training"] = {k: manifest["training"][k] for k in ("n", "n_positive", "best_epoch", "epochs_run",
                                                              "seconds", "cpu_seconds", "validation_auc")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=2, type=Path, default=[DATA / "train-pats", DATA / "validation-pats"],
                        metavar=("TRAIN", "VALIDATION"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-outcome-cnn"))
    parser.add_argument("--docs", type=Path, help="copy the plots the README shows here")
    parser.add_argument("--endpoints", default="mean,cranial")
    parser.add_argument("--cli-endpoint", default="cranial")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--region", choices=("organs", "subregions", "box"), default="subregions")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cv", action="store_true")
    args = parser.parse_args()
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if not all(d.is_dir() for d in args.data):
        raise SystemExit(f"OpenKBP data not found in {args.data}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    warnings.simplefilter("ignore")
    from rtrai.outcome import cnn
    from rtrai.outcome.simulate import M, TD50_CRANIAL_GY, TD50_GY, simulate

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log(f"outcome CNN benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start, torch threads {args.threads}")
    log("The endpoint is SIMULATED from a published NTCP model; no patient outcome is observed.")
    paths = cnn.match_cases(args.data, None)
    started = time.time()
    metrics = read_metrics(paths, work)
    log(f"dose metrics of {len(paths)} patients: {time.time() - started:.0f} s")
    table = simulate(metrics, seed=args.seed)
    log(f"LKB m {M}, n 1, TD50 {TD50_GY} Gy (mean dose) and {TD50_CRANIAL_GY} Gy (cranial quarters); {len(table)} "
        f"patients with a parotid; events: mean-dose endpoint "
        f"{int(table['xero_mean'].sum())}, cranial-part endpoint {int(table['xero_cranial'].sum())}; parotid mean dose "
        f"{table['dmean_parotids'].mean():.1f} +- {table['dmean_parotids'].std():.1f} Gy, cranial quarters "
        f"{table['dmean_cranial'].mean():.1f} +- {table['dmean_cranial'].std():.1f} Gy (r = "
        f"{np.corrcoef(table['dmean_parotids'], table['dmean_cranial'])[0, 1]:.3f})")
    spec = cnn.GridSpec()
    started = time.time()
    X, infos = cnn.load_cohort({i: paths[i] for i in table["ID"]}, spec, work / "cache")
    log(f"CNN inputs {X.shape} (float16, {X.nbytes / 2**20:.0f} MiB): {time.time() - started:.0f} s "
        f"(from the cache when it was filled before)")
    results = {}
    if not args.skip_cv:
        log(f"\n{args.folds}-fold cross-validation over {len(table)} patients (CNN {args.epochs} epochs max, "
            f"patience {args.patience}, lateral flips)")
        results = cross_validate(X, infos, table, spec, args)
        for variant, entry in results.items():
            log(f"\nendpoint '{variant}' (SIMULATED), {entry['n']} patients, {entry['positive']} events, pooled "
                f"held-out predictions:")
            for key, name in (("oracle", "oracle (true NTCP)"), ("cnn", "CNN"), ("dvh", "logistic on DVH features"),
                              ("dmean", "logistic on mean dose")):
                lo, hi = entry[key]["auc_ci"]
                log(f"  {name:28s} AUC {entry[key]['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
            lo, hi = entry["cnn_minus_oracle_ci"]
            log(f"  CNN - oracle: {entry['cnn']['auc'] - entry['oracle']['auc']:+.3f} (paired 95% CI {lo:+.3f} to "
                f"{hi:+.3f})")
            lo, hi = entry["cnn_minus_dvh_ci"]
            log(f"  CNN - DVH:    {entry['cnn']['auc'] - entry['dvh']['auc']:+.3f} (paired 95% CI {lo:+.3f} to "
                f"{hi:+.3f})")
            g = entry["gradcam_share_parotids"]
            log(f"  Grad-CAM inside the parotids: median {g['median']:.1%}, mean {g['mean']:.1%} of the attribution "
                f"(they fill {g['volume_share_mean']:.1%} of the box); over half in {g['cases_over_half']:.0%} of the "
                f"patients; cranial quarters' share of the parotids' attribution: median "
                f"{g['cranial_part_of_parotid_attribution']:.1%}")
            log(f"  training: {entry['train_seconds_per_fold']:.0f} s and {entry['epochs_per_fold']:.0f} epochs per "
                f"fold")
        roc_figure(results, table, work / "cv_roc.png", args.folds)
    log(f"\ncommand line: fit on {args.data[0].name}, evaluate --gradcam on {args.data[1].name} "
        f"(endpoint '{args.cli_endpoint}')")
    cli = run_cli(args, table, work)
    for step in ("fit", "evaluate"):
        s = cli[step]
        log(f"  {s['command']}")
        log(f"    {s['seconds']:.0f} s wall, {s['cpu_seconds']:.0f} s CPU, peak RSS {s['peak_rss_mib']:.0f} MiB")
        for line in s["stdout"]:
            log(f"    | {line}")
    m = cli["metrics"]
    log(f"  training: {cli['training']['n']} patients, best epoch {cli['training']['best_epoch']} of "
        f"{cli['training']['epochs_run']}, {cli['training']['seconds']:.0f} s")
    log(f"  validation ({m['n']} patients, {m['n_positive']} events): CNN AUC {m['auc']:.3f} (95% CI "
        f"{m['auc_ci'][0]:.3f}-{m['auc_ci'][1]:.3f}), Brier {m['brier']:.3f}; oracle AUC "
        f"{cli['oracle_auc_validation']:.3f}")
    log(f"  inference + Grad-CAM per case: {cli['evaluate']['seconds'] / m['n']:.2f} s")
    (work / "results.json").write_text(json.dumps({"cv": results, "cli": cli}, indent=2, default=float))
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        for source, name in ((work / "cv_roc.png", "outcome_cnn_cv_roc.png"),
                             (work / "evaluation" / "gradcam_montage.png", "outcome_cnn_gradcam_montage.png"),
                             (work / "evaluation" / "calibration.png", "outcome_cnn_calibration.png"),
                             (work / "evaluation" / "roc.png", "outcome_cnn_validation_roc.png")):
            if source.is_file():
                shutil.copyfile(source, args.docs / name)
        log(f"plots copied to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
