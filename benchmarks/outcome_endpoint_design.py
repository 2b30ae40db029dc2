"""How much a SIMULATED spatial xerostomia endpoint leaves a DVH model to miss, for the size of the cranial part.

The worked example of the outcome CNN (README, *Deep learning for outcomes*) needs an endpoint that depends on where
the dose lies inside the parotids. On OpenKBP's plans, whole-organ DVH features predict a sub-region's mean dose well,
so how far a logistic model on them falls below the oracle depends on the sub-region. For each cranial fraction this
script draws labels from the LKB curve (m 0.40) on the cranial parts' mean dose, TD50 scaled to keep the whole-gland
endpoint's number of events (39.9 Gy x cohort mean of the part's dose / cohort mean gland dose), several times, and
reports the mean 5-fold cross-validated AUC of logistic models on the DVH features, on the parotids' mean dose and on
the true driver itself (the best any learner of the driver can do), beside the oracle's.

    python benchmarks/outcome_endpoint_design.py [--draws 8]  (output: benchmarks/results/outcome_endpoint_design.txt)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openkbp"
FRACTIONS = (0.5, 0.25, 0.1)


def cv_auc(features: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    held = np.zeros(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(features, y):
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss",
                                                                     max_iter=5000))
        model.fit(features[train], y[train])
        held[test] = model.predict_proba(features[test])[:, 1]
    return roc_auc_score(y, held)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    folders = sorted(DATA.glob("train-pats/pt_*")) + sorted(DATA.glob("validation-pats/pt_*"))
    if not folders:
        raise SystemExit(f"OpenKBP data not found in {DATA}")
    warnings.simplefilter("ignore")
    from sklearn.metrics import roc_auc_score

    from rtrai.io.case_io import read_case
    from rtrai.outcome.simulate import M, TD50_GY, dose_metrics, lkb_ntcp

    rows = {f: [] for f in FRACTIONS}
    for folder in folders:
        case = read_case(folder)
        for f in FRACTIONS:
            rows[f].append(dose_metrics(case, cranial_fraction=f))
    lines = [f"{len(folders)} OpenKBP patients; LKB m {M}; {args.draws} label draws per row; mean AUCs "
             f"(5-fold CV logistic models; 'driver' = logistic on the true cranial-part mean dose)"]
    for f in FRACTIONS:
        table = pd.DataFrame(rows[f])
        table = table[table["parotids"] > 0].reset_index(drop=True)
        dvh = [c for c in table.columns if c.startswith("Parotid_") and not c.endswith("volume_cc")]
        features = table[dvh].fillna(table[dvh].median()).to_numpy(float)
        driver, whole = table["dmean_cranial"].to_numpy(), table["dmean_parotids"].to_numpy()
        td50 = TD50_GY * driver.mean() / whole.mean()
        ntcp = lkb_ntcp(driver, td50, M)
        results = []
        for draw in range(args.draws):
            y = (np.random.default_rng(draw).random(len(ntcp)) < ntcp).astype(int)
            results.append([roc_auc_score(y, ntcp), cv_auc(features, y, draw), cv_auc(whole[:, None], y, draw),
                            cv_auc(driver[:, None], y, draw), y.sum()])
        r = np.array(results)
        gap = r[:, 0] - r[:, 1]
        lines.append(f"cranial {f:g}: {len(table)} patients, part dose {driver.mean():.1f} Gy (r with gland mean "
                     f"{np.corrcoef(driver, whole)[0, 1]:.3f}), TD50 {td50:.1f} Gy, {r[:, 4].mean():.0f} events; "
                     f"oracle {r[:, 0].mean():.3f}, DVH {r[:, 1].mean():.3f}, Dmean {r[:, 2].mean():.3f}, driver "
                     f"{r[:, 3].mean():.3f}; oracle - DVH {gap.mean():.3f} +- {gap.std():.3f}")
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / "results" / "outcome_endpoint_design.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
