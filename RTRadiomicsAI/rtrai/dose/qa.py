"""Plan QA against the predicted achievable dose: ``rtrai dose qa``.

A knowledge-based check: a model that predicts what a good plan achieves for this anatomy says where a plan falls
short. For every OAR its ``Dmean`` and ``D0.1cc``, for every target its ``D95%``, ``D99%`` and ``D1%`` (rtrai's DVH
metrics, :mod:`rtrai.dose.dvh`) are computed on the plan dose and on the predicted dose. ``excess`` is how much worse
the plan is, in Gy: plan minus predicted for OAR doses and the target hot spot (D1%), predicted minus plan for target
coverage (D95%, D99%). Flagged, as a plan QA reads it: an OAR metric that exceeds the prediction by more than the
margin, or a target's coverage (D95%, D99%) that falls below it by more than the margin. The target hot spot (D1%)
is reported (its excess: plan above predicted) but never flagged.

The default margin (:data:`DEFAULT_MARGIN_GY`, 5 Gy) is the smallest whole-Gy margin that flagged fewer than 5 % of the
metrics of the 33 OpenKBP validation patients' own plans (good plans) against the shipped model's predictions: 3.6 %
with ``hn-dose-openkbp`` version 6 (3 Gy: 11.2 %; versions 3-5 chose the same margin, at 4.0 %, 4.2 % and 2.7 %;
``benchmarks/results/plan_qa_margins.txt``, ``python benchmarks/bench_plan.py qa-margins``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.image import check_dose, check_same_grid
from rtrai.core.structures import is_target

OAR_METRICS = ("Dmean", "D0.1cc")
TARGET_METRICS = ("D95%", "D99%", "D1%")
COVERAGE_METRICS = ("D95%", "D99%")  # a target is worse when these are lower; every other metric when higher
UNFLAGGED_METRICS = ("D1%",)  # the target hot spot: in the table, not a QA flag
NOT_ORGANS = ("External",)  # structures that are neither target nor organ at risk
DEFAULT_MARGIN_GY = 5.0
COLUMNS = ("structure", "metric", "plan", "predicted", "excess", "flag")


@dataclass
class QAResult:
    rows: list[dict]  # COLUMNS
    margin_gy: float

    @property
    def flagged(self) -> list[dict]:
        return [r for r in self.rows if r["flag"]]

    @property
    def verdict(self) -> str:
        """One line: PASS or FLAG, how many metrics, and the flagged ones with their excess."""
        n, bad = len(self.rows), self.flagged
        if not bad:
            return f"QA PASS: none of {n} DVH metrics is worse than the prediction by more than {self.margin_gy:g} Gy"
        worst = ", ".join(f"{r['structure']} {r['metric']} +{r['excess']:.1f} Gy"
                          for r in sorted(bad, key=lambda r: -r["excess"]))
        return (f"QA FLAG: {len(bad)} of {n} DVH metrics worse than the prediction by more than "
                f"{self.margin_gy:g} Gy: {worst}")

    def csv(self) -> str:
        lines = [",".join(COLUMNS)]
        for r in self.rows:
            lines.append(f"{r['structure']},{r['metric']},{r['plan']:.3f},{r['predicted']:.3f},{r['excess']:.3f},"
                         f"{int(r['flag'])}")
        return "\n".join(lines) + "\n"


def metrics_for(name: str) -> tuple[str, ...]:
    return TARGET_METRICS if is_target(name) else OAR_METRICS


def qa_structures(case: Case) -> list[str]:
    """The structures QA looks at: targets and OARs (not the body outline), in the case's order."""
    names = [n for n in case.structures if n not in NOT_ORGANS]
    if not names:
        raise InputError("plan QA needs structures (OARs, targets); the case has none")
    return names


def structure_metrics(case: Case, dose: sitk.Image, names: list[str] | None = None) -> dict[tuple[str, str], float]:
    """(structure, metric) -> Gy for the QA metrics of every structure (``names``: default :func:`qa_structures`)."""
    from rtrai.dose.dvh import metric, samples_from_mask

    out = {}
    for name in names or qa_structures(case):
        samples = samples_from_mask(dose, case.structures[name])
        for m in metrics_for(name):
            out[(name, m)] = metric(samples, m)
    return out


def excess_gy(metric_name: str, plan: float, predicted: float) -> float:
    """How much worse the plan is than the prediction (Gy; negative: better)."""
    return predicted - plan if metric_name in COVERAGE_METRICS else plan - predicted


def qa_case(case: Case, plan_dose: sitk.Image, predicted_dose: sitk.Image,
            margin_gy: float = DEFAULT_MARGIN_GY) -> QAResult:
    """QA of ``plan_dose`` against ``predicted_dose`` (both Gy on the case's CT grid): the in-process entry point of
    ``rtrai dose qa`` (and of ``rtrai run --plan``)."""
    if not (math.isfinite(margin_gy) and margin_gy >= 0):
        raise InputError(f"--margin-gy must be a dose >= 0 Gy, not {margin_gy}")
    if case.ct is not None:
        check_same_grid(case.ct, plan_dose, ("CT", "plan dose"))
        check_same_grid(case.ct, predicted_dose, ("CT", "predicted dose"))
    check_dose(plan_dose, "the plan dose")
    check_dose(predicted_dose, "the predicted dose")
    names = qa_structures(case)
    plan = structure_metrics(case, plan_dose, names)
    predicted = structure_metrics(case, predicted_dose, names)
    rows = []
    for (name, m), value in plan.items():
        excess = excess_gy(m, value, predicted[(name, m)])
        rows.append({"structure": name, "metric": m, "plan": value, "predicted": predicted[(name, m)],
                     "excess": excess, "flag": bool(m not in UNFLAGGED_METRICS and excess > margin_gy)})
    return QAResult(rows, float(margin_gy))


def qa_figure(result: QAResult, path: Path) -> Path:
    """Bars of the excess per structure and metric, the margin as a line, flagged bars red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtrai.core.outputs import atomic_file

    rows = result.rows
    labels = [f"{r['structure']} {r['metric']}" for r in rows]
    values = [r["excess"] for r in rows]
    colors = ["#c0392b" if r["flag"] else ("#7f8c8d" if r["excess"] <= 0 else "#2980b9") for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, values, color=colors)
    ax.axvline(result.margin_gy, color="#c0392b", linestyle="--", label=f"margin {result.margin_gy:g} Gy")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("plan worse than predicted by (Gy)")
    ax.set_title(result.verdict.split(":")[0])
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- the command

def register(dose_sub) -> None:
    """``rtrai dose qa`` under the ``rtrai dose`` sub-parsers."""
    p = dose_sub.add_parser("qa", help="check a plan's dose against the predicted achievable dose",
                            description="Writes OUT/qa.csv (structure, metric, plan, predicted, excess, flag), "
                                        "OUT/qa.png and provenance.json, and prints a one-line verdict. A metric "
                                        "is flagged when an OAR's Dmean/D0.1cc exceeds the prediction, or a "
                                        "target's D95%%/D99%% falls below it, by more than the margin (a target's "
                                        "D1%% is reported, not flagged).")
    p.add_argument("input", metavar="INPUT", help="case folder, OpenKBP patient or DICOM folder (CT + structures)")
    p.add_argument("--plan-dose", required=True, metavar="D", help="the plan's dose: NRRD/NIfTI in Gy or RTDOSE")
    p.add_argument("--predicted", metavar="P", help="predicted dose (default: predict it with --model)")
    p.add_argument("--margin-gy", type=float, default=DEFAULT_MARGIN_GY,
                   help=f"flag metrics worse than predicted by more than this (default {DEFAULT_MARGIN_GY:g} Gy)")
    p.add_argument("--model", default="hn-dose-openkbp", help="dose model for the prediction (default hn-dose-openkbp)")
    p.add_argument("--prescription", help="target prescriptions for the prediction, e.g. PTV70=70,PTV56=56")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.set_defaults(func=run_qa)


def read_dose_file(path: str | Path, what: str) -> sitk.Image:
    """A dose in Gy from an image file or an RTDOSE."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.suffix.lower() == ".dcm":
        from rtrai.io.dicomrt import read_rtdose

        return read_rtdose(path)[0]
    from rtrai.io.images import read_image

    return read_image(path)


def predict_dose(case: Case, model: str = "hn-dose-openkbp", device: str = "auto") -> sitk.Image:
    """The shipped (or given) dose model's prediction for the case, Gy on the CT grid."""
    from rtrai.dose.inference import DosePredictor

    return DosePredictor(model, device).predict(case)


def read_case_with_prescription(path: str | Path, prescription_text: str | None) -> Case:
    """The input case (as ``rtrai run`` reads it) with ``--prescription`` overrides applied."""
    from rtrai.dose.commands import parse_prescription
    from rtrai.io.case_io import read_case

    overrides = parse_prescription(prescription_text)
    case = read_case(path)
    for name, level in overrides.items():
        if name not in case.structures:
            raise InputError(f"--prescription names '{name}', which the case does not have "
                             f"(structures: {', '.join(sorted(case.structures)) or 'none'})")
        case.prescription[name] = level
    if case.ct is None:
        raise InputError(f"{path}: needs a CT (the input has none)")
    return case


def run_qa(args) -> int:
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder, write_text

    case = read_case_with_prescription(args.input, args.prescription)
    plan_dose = read_dose_file(args.plan_dose, "--plan-dose")
    models = []
    if args.predicted:
        predicted = read_dose_file(args.predicted, "--predicted")
    else:
        from rtrai.dose.inference import DosePredictor

        predictor = DosePredictor(args.model, args.device)
        predicted = predictor.predict(case)
        models.append(predictor.model_info)
    result = qa_case(case, plan_dose, predicted, args.margin_gy)
    with output_folder(args.output) as tmp:
        write_text(tmp / "qa.csv", result.csv())
        qa_figure(result, tmp / "qa.png")
        inputs = [args.input, args.plan_dose] + ([args.predicted] if args.predicted else [])
        provenance.write(tmp, provenance.record("dose qa", {"margin_gy": args.margin_gy,
                                                            "predicted": args.predicted or f"model {args.model}"},
                                                inputs=inputs, models=models,
                                                extra={"flagged": len(result.flagged), "metrics": len(result.rows)}))
    print(result.verdict)
    return 0
