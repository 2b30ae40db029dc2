"""``rtrai demo -o OUT``: the main job on built-in data, with no downloads.

1. With ``--phantom``, a small synthetic cohort for the outcome step: phantom patients (``rtrai.phantom``, seeds
   1..N; the phantom demo case, seed 0, is not among them) with cheap features from the pipeline's own radiomics code
   (shape and first-order of the PTV70 and the parotids, DVH columns of the phantom's dose) and a *planted* endpoint:
   exponential times to "locoregional failure" with log hazard ``1.0 z(PTV70 volume) - 0.8 z(PTV70 D98%)`` and uniform
   censoring. A LASSO-Cox model is fitted on it (nested cross-validation) into ``OUT/outcome-model/``.
2. The built-in real case, OpenKBP patient pt_236 (``rtrai/data/openkbp``, MIT; no shipped model was trained or
   selected on it), through the whole pipeline (:func:`rtrai.pipeline.run_case`) with the shipped models:
   AutoSegment against the plan's own contours, DosePredict against the plan's own dose, ``OUT/report.html``, the
   case files, ``scene.mrb`` and ``provenance.json``. The outcome step is skipped there (the patient has no
   follow-up, and a model of synthetic phantoms would extrapolate). ``--phantom`` runs the synthetic phantom (seed
   ``--seed``) instead, the case the tests use, with the synthetic outcome model of 1.

The report says plainly what is real and what is synthetic, and how to run the same on other data.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# The built-in real case: OpenKBP validation patient pt_236 (source, licence and why this patient: data/openkbp/).
BUILTIN_CASE = Path(__file__).resolve().parent / "data" / "openkbp" / "pt_236"

COHORT_SIZE = 40
COHORT_SEED = 1  # phantom seeds COHORT_SEED .. COHORT_SEED + n - 1; seed 0 is the demo case
COHORT_STRUCTURES = ("PTV70", "Parotid_L", "Parotid_R")
PLANTED = {"CT_PTV70_original_shape_MeshVolume": 1.0, "dose_PTV70_dvh_D98%_Gy": -0.8}
CANDIDATES = ("CT_PTV70_original_shape_MeshVolume", "CT_PTV70_original_shape_Sphericity",
              "CT_PTV70_original_firstorder_Mean", "dose_PTV70_dvh_D98%_Gy", "dose_PTV70_dvh_D2%_Gy",
              "dose_Parotid_L_dvh_Dmean_Gy", "dose_Parotid_R_dvh_Dmean_Gy")
BASELINE_MEDIAN_MONTHS = 36.0
CENSORING_MONTHS = (24.0, 72.0)
TIME, EVENT = "months_to_failure", "failure"


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the main job on a built-in real patient (OpenKBP pt_236; no downloads)",
                          description="A built-in real head-and-neck patient (OpenKBP pt_236, MIT licence) through "
                                      "the whole pipeline: AutoSegment and DosePredict against the plan's own "
                                      "contours and dose, DVH, radiomics, an outcome model fitted on a synthetic "
                                      "cohort, report.html, scene.mrb. The same on your data: rtrai run.")
    demo.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    demo.add_argument("--phantom", action="store_true",
                      help="run the synthetic geometric phantom instead of the real patient")
    demo.add_argument("--seed", type=int, default=0,
                      help="with --phantom: phantom variant of the case (0 = the canonical phantom case)")
    demo.add_argument("--cohort-size", type=int, default=COHORT_SIZE,
                      help=f"with --phantom: synthetic patients for the outcome model (default {COHORT_SIZE})")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    demo.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from rtrai.core.progress import default

    from rtrai.core.errors import InputError

    if not args.phantom and (args.seed or args.cohort_size != COHORT_SIZE):
        raise InputError("--seed and --cohort-size are for the synthetic phantom: give them with --phantom")
    if not args.phantom:
        from rtrai.core.paths import check_output

        check_output(args.output, [BUILTIN_CASE])  # the built-in case is an input like any other
    run = demo(Path(args.output), seed=args.seed, cohort_size=args.cohort_size, device=args.device,
               progress=default("rtrai demo"), phantom=args.phantom)
    for line in run.log:
        print(line)
    for step in run.steps.values():
        if step.status == "skipped":
            print(f"rtrai: note: {step.title} skipped: {step.reason}", file=sys.stderr)
    print(f"wrote the demo into {args.output}: open {Path(args.output) / 'report.html'} in a browser and "
          f"{Path(args.output) / 'scene.mrb'} in 3D Slicer")
    return 0


def demo(outdir: Path, seed: int = 0, cohort_size: int = COHORT_SIZE, device: str = "auto", progress=None,
         phantom: bool = False):
    """Run the built-in real case through the pipeline, or with ``phantom`` fit the synthetic outcome model and run
    the phantom of ``seed``; returns the CaseRun."""
    from rtrai.core.errors import InputError
    from rtrai.core.progress import silent, sub
    from rtrai.phantom import make_phantom
    from rtrai.pipeline import Options, run_case

    if cohort_size < 10:
        raise InputError(f"--cohort-size must be at least 10 (a survival model needs events), got {cohort_size}")
    report = progress or silent
    outdir = Path(outdir)
    if not phantom:
        notes = ["The case is real: OpenKBP head-and-neck patient pt_236 (Babier et al., Med. Phys. 2021; MIT "
                 "licence; CT from TCIA), shipped inside rtrai. Neither shipped model was trained or selected on it. "
                 "AutoSegment is compared with the plan's own contours and DosePredict with the plan's own dose "
                 "(OpenKBP's automated IMRT plan, 70/63/56 Gy in 35 fractions).",
                 "No outcome model is applied: the patient has no follow-up, and a model fitted on synthetic patients "
                 "would only extrapolate. rtrai demo --phantom shows the outcome step with a synthetic cohort; "
                 "rtrai outcome fit builds a model from your own cohort."]
        options = Options(device=device, command="demo", notes=notes,
                          provenance={"demo": {"case": "OpenKBP validation patient pt_236 (built in)"}})
        return run_case(BUILTIN_CASE, outdir, options, report)
    model_dir = outdir / "outcome-model"
    started = time.perf_counter()
    fit_outcome_model(model_dir, cohort_size, sub(report, 0.0, 0.3))
    fit_seconds = time.perf_counter() - started
    notes = [f"The outcome model is synthetic too: a LASSO-Cox model fitted, at the start of this demo, on "
             f"{cohort_size} other phantom patients whose endpoint was generated from a formula (see Predicted "
             f"outcome; the cohort and the fit took {fit_seconds:.0f} s, before the steps below). It shows the "
             "machinery, not a clinical prediction.",
             "AutoSegment's and DosePredict's models were trained on real CT (OpenKBP); the phantom's simplified "
             "anatomy is not what they learnt, so their agreement with the phantom's own contours and dose is lower "
             "than on patients (rtrai demo without --phantom runs a real patient)."]
    options = Options(outcome_model=str(model_dir), device=device, command="demo", notes=notes,
                      provenance={"demo": {"case": "synthetic phantom", "seed": seed, "cohort_size": cohort_size,
                                           "cohort_seeds": [COHORT_SEED, COHORT_SEED + cohort_size - 1],
                                           "planted": PLANTED, "outcome_model_seconds": round(fit_seconds, 2)}})
    return run_case(make_phantom(seed=seed), outdir, options, sub(report, 0.3, 1.0))


def cohort_table(n: int = COHORT_SIZE, seed: int = COHORT_SEED, jobs: int | None = None, progress=None):
    """The synthetic cohort: one row per phantom patient with :data:`CANDIDATES` and the planted endpoint."""
    import numpy as np
    import pandas as pd

    from rtrai.core.progress import silent
    from rtrai.core.workers import process_pool
    from rtrai.radiomics.case_features import default_jobs

    report = progress or silent
    seeds = list(range(seed, seed + n))
    jobs = max(1, min(jobs or default_jobs(), n)) if default_jobs() > 1 else 1  # 1 where processes cannot fork
    rows = []
    if jobs == 1:
        for i, s in enumerate(seeds):
            report(i / n, f"synthetic cohort: patient {i + 1}/{n}")
            rows.append(_patient_features(s))
    else:
        with process_pool(jobs, "fork") as pool:  # workers that exit with this process
            for i, row in enumerate(pool.map(_patient_features, seeds)):
                report(i / n, f"synthetic cohort: patient {i + 1}/{n}")
                rows.append(row)
    table = pd.DataFrame(rows)
    z = {c: (table[c] - table[c].mean()) / table[c].std(ddof=0) for c in PLANTED}
    log_hazard = sum(beta * z[c] for c, beta in PLANTED.items())
    rng = np.random.default_rng([seed, n, 7])
    scale = BASELINE_MEDIAN_MONTHS / np.log(2)
    failure = rng.exponential(scale / np.exp(log_hazard.to_numpy()))
    censoring = rng.uniform(*CENSORING_MONTHS, n)
    table[TIME] = np.maximum(np.round(np.minimum(failure, censoring), 1), 0.1)
    table[EVENT] = (failure <= censoring).astype(int)
    report(1.0, "synthetic cohort ready")
    return table


def _patient_features(seed: int) -> dict:
    from rtrai.phantom import make_phantom
    from rtrai.radiomics.case_features import case_features, wide_features

    case = make_phantom(seed=seed)
    frame = case_features(case, structures=list(COHORT_STRUCTURES), feature_classes=("shape", "firstorder"))
    wide = wide_features(frame).iloc[0]
    return {"ID": case.patient_id, **{c: float(wide[c]) for c in CANDIDATES}}


def fit_outcome_model(folder: Path, n: int = COHORT_SIZE, progress=None):
    """Build the synthetic cohort, fit LASSO-Cox on it and write ``folder/model.json`` and ``folder/cohort.csv``
    (atomically, with provenance); returns the model."""
    import warnings

    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import silent, sub
    from rtrai.outcome.data import OutcomeWarning
    from rtrai.outcome.models import fit

    report = progress or silent
    table = cohort_table(n, progress=sub(report, 0.0, 0.8))
    report(0.8, "synthetic cohort: fitting LASSO-Cox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutcomeWarning)  # few events per variable: known and said in the report
        warnings.filterwarnings("ignore", message="all coefficients are zero")  # the strongest penalties of the path
        model = fit(table, time=TIME, event=EVENT, id_column="ID", model="lasso-cox", seed=0)
    formula = " ".join(f"{'+' if beta > 0 else '-'} {abs(beta):g} z({name})" for name, beta in PLANTED.items())
    model.state["description"] = (
        f"Synthetic outcome, fitted at demo time: {n} phantom patients (seeds {COHORT_SEED}-{COHORT_SEED + n - 1}) "
        f"with exponential times to 'locoregional failure' (baseline median {BASELINE_MEDIAN_MONTHS:g} months), log "
        f"hazard {formula.lstrip('+ ')}, censored uniformly between {CENSORING_MONTHS[0]:g} and "
        f"{CENSORING_MONTHS[1]:g} months; LASSO-Cox chose among {len(CANDIDATES)} candidate features. A "
        "demonstration of the machinery, not a clinical model.")
    with output_folder(folder) as tmp:
        model.save(tmp)
        table.to_csv(tmp / "cohort.csv", index=False)
        provenance.write(tmp, provenance.record("demo outcome model", {"n": n, "seed": COHORT_SEED,
                                                                       "planted": PLANTED,
                                                                       "candidates": list(CANDIDATES)},
                                                extra={"synthetic_data": True}))
    report(1.0, "synthetic cohort: model fitted")
    return model
