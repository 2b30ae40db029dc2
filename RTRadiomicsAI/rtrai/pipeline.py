"""One case end to end. ``rtrai run``, ``rtrai demo`` and the hub module's workflow all call :func:`run_case`.

Steps, each a small function that records its status (done / skipped), seconds, the process's peak memory after it,
a one-line summary and, when skipped, why:

1. ``load``       read the input (OpenKBP patient, DICOM folder with RTSTRUCT/RTPLAN/RTDOSE, case folder, image) and
                  apply ``--prescription`` overrides. Its failure stops the case (bad input), as does the report's.
2. ``segment``    AutoSegment (``hn-oar-ct``): the model's organs replace given ones of the same name, which are kept
                  as the reference the report compares with (Dice); skipped with ``--keep-structures`` when the input
                  has structures.
3. ``dose``       DosePredict (``hn-dose-openkbp``) from CT, structures and prescriptions (from the RTPLAN, target
                  names such as PTV70, or ``--prescription``). A dose that came with the input is kept as
                  ``InputDose.nrrd`` and compared with the prediction. Skipped with the reason when there is no
                  target or the model cannot be loaded; the input's dose (if any) is then used.
4. ``dvh``        cumulative DVHs of every target and OAR, the usual metrics and common H&N constraints.
5. ``radiomics``  CT and dose features inside every target and OAR (:mod:`rtrai.radiomics.case_features`).
6. ``outcome``    with an outcome model (``--outcome-model M``): the predicted risk and its risk group.
7. ``report``     ``report.html``, the Slicer scene ``scene.mrb``, and every file written into OUT atomically with
                  ``provenance.json`` (models with sha256, steps, timings). A failure here fails the run: nothing
                  is written then. Only the scene is optional (without MRML installed; the report says so).

A model asked for that cannot be found (``--segmentation-model``, ``--dose-model``, ``--outcome-model``) is an error
before any step runs, never a silently skipped step.

A folder of patients or a ``--cohort`` list runs each case into ``OUT/<case>/`` (:func:`run_cohort`): finished cases
are skipped, a failing case is recorded in ``OUT/cohort.csv`` and the cohort goes on; ``OUT/cohort_features.csv``
holds one row of features per case (the table ``rtrai outcome fit`` reads).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

STEPS = ("load", "segment", "dose", "dvh", "radiomics", "outcome", "report")
STEP_TITLES = {"load": "Load case", "segment": "AutoSegment", "dose": "DosePredict", "dvh": "DVH and constraints",
               "radiomics": "Radiomics", "outcome": "Outcome model", "report": "Report and scene"}
# Share of the progress bar each step takes (segmentation and radiomics are the long ones).
_WEIGHTS = {"load": 0.04, "segment": 0.36, "dose": 0.12, "dvh": 0.04, "radiomics": 0.28, "outcome": 0.02,
            "report": 0.14}
PENDING, DONE, SKIPPED = "pending", "done", "skipped"
OUTPUT_FILES = ("CT.nrrd", "Structures.seg.nrrd", "Dose.nrrd", "features.csv", "dvh.csv", "report.html", "scene.mrb",
                "provenance.json")
DVH_METRICS = ("Volume", "Dmean", "Dmax", "Dmin", "D98%", "D95%", "D50%", "D2%", "D0.03cc")


class StepSkipped(Exception):
    """Raised inside a step that cannot run; the message is the reason shown in the report and the log."""


@dataclass
class Options:
    """What ``rtrai run`` lets a user choose (defaults: the shipped models, everything on)."""

    keep_structures: bool = False
    segmentation_model: str = "hn-oar-ct"
    dose_model: str = "hn-dose-openkbp"
    prescription: dict[str, float] = field(default_factory=dict)
    outcome_model: str | None = None
    device: str = "auto"
    scene: bool = True
    jobs: int | None = None  # radiomics worker processes (default: up to 4, as many as there are CPUs)
    notes: list[str] = field(default_factory=list)  # plain sentences for the report's banner (the demo's)
    command: str = "run"  # what provenance.json names as the command ("demo" for the demo)
    provenance: dict = field(default_factory=dict)  # more for provenance.json (the demo's cohort and seeds)

    def to_dict(self) -> dict:
        return {"keep_structures": self.keep_structures, "segmentation_model": self.segmentation_model,
                "dose_model": self.dose_model, "prescription": dict(self.prescription),
                "outcome_model": self.outcome_model, "device": self.device, "scene": self.scene, "jobs": self.jobs}


@dataclass
class Step:
    name: str
    status: str = PENDING
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process and its finished workers: the work, whatever the load
    peak_rss_mib: float | None = None
    summary: str = ""
    reason: str = ""
    started: float = 0.0  # perf_counter at its start
    cpu_started: float = 0.0

    @property
    def title(self) -> str:
        return STEP_TITLES[self.name]

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "status": self.status, "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3), "peak_rss_mib": self.peak_rss_mib,
                "summary": self.summary, "reason": self.reason}


@dataclass
class CaseRun:
    """Everything one run produced; the report and the output files are written from it."""

    source: object  # a path, or a Case handed over in memory (the demo)
    options: Options
    outdir: Path
    steps: dict[str, Step] = field(default_factory=lambda: {name: Step(name) for name in STEPS})
    case: object = None  # rtrai.core.case.Case
    structure_source: dict[str, str] = field(default_factory=dict)  # name -> "AutoSegment <model>" | "input"
    reference_structures: dict = field(default_factory=dict)  # given structures AutoSegment replaced
    dice: dict[str, float] = field(default_factory=dict)  # AutoSegment vs the given structure
    input_dose: object = None  # the input's own dose when a predicted one replaced it
    dose_source: str = ""
    dose_comparison: dict = field(default_factory=dict)
    dvh_samples: dict = field(default_factory=dict)
    dvh_table: dict = field(default_factory=dict)
    dvh_metrics: list[dict] = field(default_factory=list)
    constraints: list = field(default_factory=list)
    features: object = None  # pandas DataFrame (long format)
    outcome: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    scene_note: str = ""
    started: float = field(default_factory=time.time)

    @property
    def synthetic(self) -> bool:
        return bool(self.case is not None and self.case.metadata.get("synthetic"))

    @property
    def source_label(self) -> str:
        if isinstance(self.source, (str, os.PathLike)):
            return str(self.source)
        return f"in-memory case ({getattr(self.case, 'metadata', {}).get('description', 'built by rtrai')})"

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.steps.values())


# --------------------------------------------------------------------------------------------------------- running

def run_case(source, outdir, options: Options | None = None, progress=None) -> CaseRun:
    """Run one case (a path, or a :class:`~rtrai.core.case.Case`) into ``outdir``; returns what it did.

    Raises :class:`~rtrai.core.errors.RTRAIError` only for input the load step refuses (nothing is written then);
    a later step that cannot run is skipped with its reason.
    """
    from rtrai.core.progress import silent, sub

    run = CaseRun(source, options or Options(), Path(outdir))
    check_models(run.options)
    report = progress or silent
    start = 0.0
    for name in STEPS:
        stop = min(1.0, start + _WEIGHTS[name])
        _run_step(run, name, sub(report, start, stop))
        start = stop
    report(1.0, "report: done")
    return run


def _run_step(run: CaseRun, name: str, progress) -> None:
    from rtrai.core.errors import RTRAIError

    step = run.steps[name]
    progress(0.0, f"{name}: {STEP_TITLES[name]}")
    started = step.started = time.perf_counter()
    cpu = step.cpu_started = cpu_seconds()
    try:
        step.summary = _STEP_FUNCTIONS[name](run, progress) or ""
        step.status = DONE
    except StepSkipped as exc:
        step.status, step.reason = SKIPPED, str(exc)
    except RTRAIError as exc:
        if name in ("load", "report"):  # no case to work on, or nothing written: the run failed
            raise
        step.status, step.reason = SKIPPED, str(exc)
    finally:
        step.seconds = time.perf_counter() - started
        step.cpu_seconds = cpu_seconds() - cpu
        step.peak_rss_mib = peak_rss_mib()
    run.log.append(_log_line(step))
    progress(1.0, f"{name}: {step.status}")


def check_models(options: Options) -> None:
    """The models a run names exist (their manifests read; weights are checked by sha256 when loaded): a model asked
    for and not found is an error, not a skipped step."""
    from rtrai.core.errors import ModelError
    from rtrai.models import read_manifest

    for role, name in (("segmentation", options.segmentation_model), ("dose", options.dose_model)):
        try:
            manifest = read_manifest(name)
        except ModelError as exc:
            raise ModelError(f"{role} model: {exc}") from None
        if manifest.get("task") not in (None, role):
            raise ModelError(f"{role} model '{name}' is a {manifest.get('task')} model")
    if options.outcome_model is not None:
        path = Path(options.outcome_model)
        if not (path / "model.json").is_file() and not path.is_file():
            raise ModelError(f"--outcome-model {options.outcome_model}: no outcome model there (a folder written by "
                             "rtrai outcome fit, with model.json)")


def _log_line(step: Step) -> str:
    return (f"{step.name}: {step.status} in {step.seconds:.1f} s" + (f" - {step.summary}" if step.summary else "")
            + (f" - {step.reason}" if step.reason else ""))


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and its finished child processes."""
    try:
        import resource
    except ImportError:  # Windows
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mib() -> float | None:
    """The peak resident memory of this process so far (MiB), where the platform says it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ----------------------------------------------------------------------------------------------------------- steps

def _step_load(run: CaseRun, progress) -> str:
    from rtrai.core.case import Case
    from rtrai.core.errors import InputError
    from rtrai.io.case_io import input_kind, read_case

    if isinstance(run.source, Case):
        case = run.source
        kind = case.metadata.get("source", "case")
    else:
        path = Path(run.source)
        kind = input_kind(path)
        case = read_case(path)
    if case.ct is None:
        raise InputError(f"{run.source_label}: rtrai run needs a CT (the input has none)")
    for name, level in run.options.prescription.items():
        if name not in case.structures:
            raise InputError(f"--prescription names '{name}', which the case does not have "
                             f"(structures: {', '.join(sorted(case.structures)) or 'none'})")
        case.prescription[name] = float(level)
    case.validate()
    run.case = case
    run.structure_source = {name: "input" for name in case.structures}
    size = " x ".join(str(s) for s in case.ct.GetSize())
    parts = [f"{kind}: CT {size}", f"{len(case.structures)} structures"]
    if case.dose is not None:
        parts.append("with dose")
    if case.prescription:
        parts.append("prescription " + ", ".join(f"{k} {v:g} Gy" for k, v in case.prescription.items()))
    return ", ".join(parts)


@lru_cache(maxsize=2)
def _segmenter(model: str, device: str):
    from rtrai.segmentation.inference import Segmenter

    return Segmenter(model, device)


@lru_cache(maxsize=2)
def _dose_predictor(model: str, device: str):
    from rtrai.dose.prediction import DosePredictor

    return DosePredictor(model, device)


def _model_info(manifest: dict, role: str) -> dict:
    return {"role": role, "name": manifest.get("name"), "version": manifest.get("version"),
            "sha256": manifest.get("sha256")}


def _step_segment(run: CaseRun, progress) -> str:
    import numpy as np
    import SimpleITK as sitk

    from rtrai.core.structures import color_of

    case, options = run.case, run.options
    given = [n for n in case.structures if n != "External"]
    if options.keep_structures and given:
        raise StepSkipped(f"structures given ({len(given)}) and --keep-structures: AutoSegment not run")
    progress(0.05, f"segment: loading model {options.segmentation_model}")
    segmenter = _segmenter(options.segmentation_model, options.device)
    progress(0.15, f"segment: AutoSegment ({segmenter.manifest['name']})")
    masks = segmenter.segment(case, run.source if isinstance(run.source, (str, os.PathLike))
                              and Path(run.source).is_dir() else None)
    label = f"AutoSegment {segmenter.manifest['name']}"
    found, missing = [], []
    for name, mask in masks.items():
        ai = sitk.GetArrayViewFromImage(mask) > 0
        if name in case.structures:
            ref = sitk.GetArrayViewFromImage(case.structures[name]) > 0
            total = int(ai.sum()) + int(ref.sum())
            run.dice[name] = float(2 * np.logical_and(ai, ref).sum() / total) if total else float("nan")
            run.reference_structures[name] = case.structures.pop(name)
        if ai.any():  # missing is not empty: an organ the model did not find is left out
            case.add_structure(name, mask, color_of(name), keep_name=True)
            run.structure_source[name] = label
            found.append(name)
        else:
            run.structure_source.pop(name, None)
            missing.append(name)
    run.models.append(_model_info(segmenter.manifest, "segmentation"))
    summary = f"{len(found)} organs by {segmenter.manifest['name']}"
    if missing:
        summary += f"; not found: {', '.join(missing)}"
    if run.dice:
        summary += f"; Dice against the given contours: median {np.nanmedian(list(run.dice.values())):.2f}"
    return summary


def _step_dose(run: CaseRun, progress) -> str:
    import SimpleITK as sitk

    from rtrai.core.errors import InputError, RTRAIError
    from rtrai.core.image import Grid, mask_array, resample_to
    from rtrai.dose.prediction import prescription_levels
    from rtrai.models import read_manifest

    case, options = run.case, run.options
    had_dose = case.dose is not None
    try:
        levels = prescription_levels(case)
    except InputError as exc:
        run.dose_source = "from the input" if had_dose else ""
        raise StepSkipped(f"{exc}{'; the dose of the input is used' if had_dose else ''}") from None
    progress(0.1, f"dose: loading model {options.dose_model}")
    try:
        read_manifest(options.dose_model)  # an unknown model is said before torch is imported
        predictor = _dose_predictor(options.dose_model, options.device)
        progress(0.3, f"dose: DosePredict ({predictor.manifest['name']})")
        predicted = predictor.predict(case)
    except RTRAIError as exc:
        run.dose_source = "from the input" if had_dose else ""
        raise StepSkipped(f"model '{options.dose_model}' cannot be used: {exc}"
                          + ("; the dose of the input is used" if had_dose else "")) from None
    run.models.append(_model_info(predictor.manifest, "dose"))
    summary = f"predicted by {predictor.manifest['name']} for " + \
        ", ".join(f"{k} {v:g} Gy" for k, v in sorted(levels.items(), key=lambda kv: -kv[1]))
    if had_dose:
        run.input_dose = case.dose
        reference = case.dose if not Grid.of(case.dose).differences(Grid.of(case.ct)) else \
            resample_to(sitk.Cast(case.dose, sitk.sitkFloat32), case.ct, "linear", 0.0)
        from rtrai.dose.scores import openkbp_dose_score

        region = case.possible_dose_mask if case.possible_dose_mask is not None else case.structures.get("External")
        mask = mask_array(region) if region is not None else sitk.GetArrayViewFromImage(case.ct) > -500
        score = openkbp_dose_score(sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(predicted),
                                   mask)
        run.dose_comparison = {"reference": "the dose of the input", "dose_score_gy": score,
                               "definition": "OpenKBP dose score: mean |predicted - input| over the possible-dose "
                                             "region (Gy)"}
        summary += f"; mean absolute difference to the input's dose {score:.2f} Gy"
    case.dose = predicted
    run.dose_source = f"predicted by {predictor.manifest['name']}"
    return summary


def _is_rtrai_error(exc: Exception) -> bool:
    from rtrai.core.errors import RTRAIError

    return isinstance(exc, RTRAIError)


def _step_dvh(run: CaseRun, progress) -> str:
    from rtrai.dose.constraints import evaluate_constraints
    from rtrai.dose.dvh import dvh_table, metric, samples_from_mask
    from rtrai.core.image import check_dose
    from rtrai.radiomics.case_features import structure_order

    case = run.case
    if case.dose is None:
        raise StepSkipped("no dose: the input has none and no dose was predicted")
    check_dose(case.dose, "dose")
    names = structure_order(case)
    if not names:
        raise StepSkipped("no structures to compute DVHs of")
    for i, name in enumerate(names):
        progress(i / len(names), f"dvh: {name}")
        run.dvh_samples[name] = samples_from_mask(case.dose, case.structures[name])
    run.dvh_table = dvh_table(run.dvh_samples, 0.1)
    run.dvh_metrics = [{"structure": n, "metric": m, "value": metric(s, m)}
                       for n, s in run.dvh_samples.items() for m in DVH_METRICS]
    run.constraints = evaluate_constraints(run.dvh_samples, {t: case.prescription_for(t) for t in case.targets()})
    met = sum(c.passed for c in run.constraints)
    return f"{len(names)} structures; {met} of {len(run.constraints)} common constraints met"


def _step_radiomics(run: CaseRun, progress) -> str:
    from rtrai.radiomics.case_features import case_features, default_jobs

    jobs = run.options.jobs or default_jobs()
    frame = case_features(run.case, jobs=jobs,
                          progress=lambda f, m="": progress(f, f"radiomics: {m}" if m else "radiomics"))
    run.features = frame
    failed = frame[frame["error"].fillna("") != ""]
    n_features = len([c for c in frame.columns if c not in ("ID", "Structure", "Image", "error")])
    images = sorted(set(frame["Image"]))
    summary = f"{n_features} features of {' and '.join(images)} in {frame['Structure'].nunique()} structures"
    if len(failed):
        summary += f"; refused: {', '.join(f'{r.Structure} ({r.Image})' for r in failed.itertuples())}"
    return summary


def _step_outcome(run: CaseRun, progress) -> str:
    if not run.options.outcome_model:
        raise StepSkipped("no outcome model given (rtrai run ... --outcome-model MODEL_FOLDER, a folder written by "
                          "rtrai outcome fit)")
    if run.features is None:
        raise StepSkipped("no radiomics features to predict from (the radiomics step was skipped)")
    from rtrai.core.provenance import sha256_file
    from rtrai.outcome.models import OutcomeModel
    from rtrai.radiomics.case_features import wide_features
    path = Path(run.options.outcome_model)
    model = OutcomeModel.load(path)
    file = path / "model.json" if path.is_dir() else path
    row = wide_features(run.features)
    prediction = model.predict(row).iloc[0].to_dict()
    run.models.append({"role": "outcome", "name": model.name, "version": model.state.get("format_version"),
                       "sha256": sha256_file(file), "file": str(file)})
    training = model.state.get("training", {})
    run.outcome = {"model": model, "kind": model.kind, "name": model.name, "file": str(file),
                   "endpoint": model.state.get("endpoint"), "prediction": prediction,
                   "description": model.state.get("description", ""),
                   "coefficients": model.state.get("coefficients", {}), "features": list(model.features),
                   "training_n": training.get("n"), "training_events": training.get("events"),
                   "cv": {k: training.get("cv", {}).get(k) for k in ("metric", "mean", "sd", "folds")}}
    if model.kind == "survival":
        horizon = model.state["horizon"]
        run.outcome.update(risk_score=float(prediction["risk_score"]), risk_group=str(prediction["risk_group"]),
                           horizon=horizon, survival=float(prediction[f"survival_at_{horizon:g}"]))
        return (f"{model.name}: risk score {run.outcome['risk_score']:.2f}, {run.outcome['risk_group']} risk group, "
                f"S({horizon:g}) = {run.outcome['survival']:.2f}")
    run.outcome.update(probability=float(prediction["probability"]),
                       risk_group="positive" if int(prediction["predicted_class"]) else "negative")
    return f"{model.name}: probability {run.outcome['probability']:.2f} ({run.outcome['risk_group']})"


def _step_report(run: CaseRun, progress) -> str:
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder, write_text
    from rtrai.io.case_io import write_case

    case = run.case
    with output_folder(run.outdir) as tmp:
        progress(0.05, "report: writing the case files")
        write_case(case, tmp)
        if run.input_dose is not None:
            from rtrai.io.images import write_image

            write_image(run.input_dose, tmp / "InputDose.nrrd")
        if run.reference_structures:
            from rtrai.io.segfile import write_segmentation

            write_segmentation(run.reference_structures, tmp / "InputStructures.seg.nrrd",
                               {n: case.color(n) for n in run.reference_structures}, case.ct)
        _write_tables(run, tmp)
        if run.options.scene:
            progress(0.3, "report: Slicer scene")
            run.scene_note = _write_scene(run, tmp / "scene.mrb")
        else:
            run.scene_note = "not written (--no-scene)"
        progress(0.55, "report: report.html")
        from rtrai.report.html import write_report

        write_report(run, tmp / "report.html")
        run.written = sorted(p.name for p in tmp.iterdir())
        step = run.steps["report"]
        step.status, step.summary = DONE, f"{len(run.written) + 2} files"
        step.seconds, step.peak_rss_mib = time.perf_counter() - step.started, peak_rss_mib()
        step.cpu_seconds = cpu_seconds() - step.cpu_started
        record = provenance.record(
            run.options.command, run.options.to_dict(),
            inputs=[run.source] if isinstance(run.source, (str, os.PathLike)) else [],
            models=run.models,
            extra={"status": "complete", "input": run.source_label, "synthetic_data": run.synthetic,
                   "case": case.summary(), "steps": [s.to_dict() for s in run.steps.values()],
                   "dose_source": run.dose_source, "dose_comparison": run.dose_comparison,
                   "outcome": _outcome_record(run), "scene": run.scene_note,
                   "outputs": sorted(run.written + ["provenance.json", "run.log"]), **run.options.provenance})
        write_text(tmp / "run.log", "\n".join(run.log + [_log_line(step)]) + "\n")
        provenance.write(tmp, record)
    return step.summary


def _outcome_record(run: CaseRun) -> dict:
    return {k: v for k, v in run.outcome.items() if k not in ("model",)}


def _write_tables(run: CaseRun, folder: Path) -> None:
    import csv
    import io

    from rtrai.core.outputs import write_text
    from rtrai.dose.dvh import dvh_csv

    if run.features is not None:
        with open(folder / "features.csv", "w", newline="", encoding="utf-8") as handle:
            run.features.to_csv(handle, index=False)
    if run.dvh_samples:
        write_text(folder / "dvh.csv", dvh_csv(run.dvh_table, run.dvh_samples))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["structure", "metric", "value"])
        writer.writerows([r["structure"], r["metric"], f"{r['value']:.5f}"] for r in run.dvh_metrics)
        write_text(folder / "dvh_metrics.csv", text.getvalue())
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["structure", "metric", "value_gy", "goal", "limit_gy", "passed"])
        writer.writerows([c.structure, c.metric, f"{c.value_gy:.4f}", c.goal, f"{c.limit_gy:.4f}", c.passed]
                         for c in run.constraints)
        write_text(folder / "constraints.csv", text.getvalue())


def _write_scene(run: CaseRun, path: Path) -> str:
    """The case and its tables in a Slicer scene bundle, when MRML is available (slicer-core or Slicer)."""
    try:
        from rtrai.mrml import case_to_scene, save_scene_bundle
        from rtrai.mrml.results import add_result_tables, run_tables
    except ImportError as exc:  # the one optional output: said in the report, the log and provenance
        return f"not written: MRML is not available ({exc}); install rtradiomicsai[mrml]"
    nodes = case_to_scene(run.case)
    steps = [s.to_dict() for s in run.steps.values()]
    add_result_tables(nodes["scene"], run_tables(path.parent, steps), nodes.get("study_item"))
    save_scene_bundle(nodes["scene"], path)
    return path.name


_STEP_FUNCTIONS = {"load": _step_load, "segment": _step_segment, "dose": _step_dose, "dvh": _step_dvh,
                   "radiomics": _step_radiomics, "outcome": _step_outcome, "report": _step_report}


def load_results(folder, scene=None) -> dict:
    """Read a run's output folder and put it into an MRML scene (:func:`rtrai.mrml.results.results_to_scene`): the
    case, the result tables, the report's path and the steps. What the hub module does after "Run all"."""
    from rtrai.core.errors import InputError
    from rtrai.io.case_io import is_case_folder, read_case
    from rtrai.mrml.results import results_to_scene

    folder = Path(folder)
    if not is_case_folder(folder):
        raise InputError(f"{folder} is not the output folder of rtrai run (no CT.nrrd or Structures.seg.nrrd)")
    return results_to_scene(read_case(folder), folder, scene)


# ---------------------------------------------------------------------------------------------------------- cohort

def is_finished(folder: Path) -> bool:
    """True when ``folder`` holds a complete ``rtrai run`` result: its provenance (moved in last, atomically, and
    removed first when a folder is written again) says so, and every output it lists is there."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("command") not in ("run", "demo") \
            or record.get("status") != "complete":
        return False
    outputs = record.get("outputs")
    return not isinstance(outputs, list) or all(isinstance(n, str) and (folder / n).is_file() for n in outputs)


def read_cohort_list(path: str | os.PathLike) -> list[Path]:
    """Case paths from a list file: one per line, relative to the file; blank lines and ``#`` comments ignored."""
    from rtrai.core.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort list not found: {path}")
    from rtrai.io.text import read_text

    text = read_text(path, "a cohort list (one case path per line)")
    cases = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            item = Path(line)
            cases.append(item if item.is_absolute() else (path.parent / item))
    if not cases:
        raise InputError(f"{path}: no case paths in the list")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: several cases are named {', '.join(duplicates)} (each gets OUT/<name>/)")
    return cases


def run_cohort(cases: list[Path], outdir, options: Options | None = None, progress=None) -> dict:
    """Run each case into ``outdir/<name>``; returns counts and writes ``cohort.csv`` and ``cohort_features.csv``.

    Kill-safe: while the cohort runs its table is ``cohort.partial.csv`` (rewritten atomically after each case, a
    case recorded as done only once its folder is finished), renamed to ``cohort.csv`` at the end; a ``cohort.csv``
    of an earlier run is removed when a new run starts. Run again, finished cases are skipped and the others redone.
    """
    import pandas as pd

    from rtrai.core.outputs import write_text
    from rtrai.core.progress import silent, sub

    outdir = Path(outdir)
    report = progress or silent
    table, partial = outdir / "cohort.csv", outdir / "cohort.partial.csv"
    if table.is_file() and not table.is_symlink():
        table.unlink()  # it described the cohort as finished; from now on it is not, until this run ends
    rows = []
    for i, path in enumerate(cases):
        target = outdir / path.name
        part = sub(report, i / len(cases), (i + 1) / len(cases))
        started = time.perf_counter()
        row = {"case": path.name, "input": str(path), "status": "done", "error": "", "seconds": 0.0,
               "skipped_steps": ""}
        if is_finished(target):
            row["status"] = "finished before"
            part(1.0, f"{path.name}: finished before")
        else:
            try:
                run = run_case(path, target, options,
                               lambda f, m="", n=path.name, p=part: p(f, f"{n}: {m}" if m else n))
                row["skipped_steps"] = " ".join(s.name for s in run.steps.values() if s.status == SKIPPED)
                if not is_finished(target):
                    row["status"], row["error"] = "failed", f"{target} is not a finished result folder"
            except Exception as exc:  # noqa: BLE001 - a failing case is recorded and the cohort goes on
                row["status"] = "failed"
                row["error"] = str(exc) if _is_rtrai_error(exc) else f"unexpected {type(exc).__name__}: {exc}"
            row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
        outdir.mkdir(parents=True, exist_ok=True)
        write_text(partial, pd.DataFrame(rows).to_csv(index=False))
    features = []
    for row in rows:
        case_table = outdir / row["case"] / "features.csv"
        if row["status"] != "failed" and case_table.is_file():
            from rtrai.radiomics.case_features import wide_features

            features.append(wide_features(pd.read_csv(case_table, dtype={"ID": str, "error": str})))
    if features:
        write_text(outdir / "cohort_features.csv", pd.concat(features, ignore_index=True).to_csv(index=False))
    if rows:
        os.replace(partial, table)  # the finished table takes its final name last
    report(1.0, "cohort done")
    return {"cases": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "finished_before": sum(r["status"] == "finished before" for r in rows),
            "failed": [r for r in rows if r["status"] == "failed"]}


# ---------------------------------------------------------------------------------------------------- command line

def register(sub) -> None:
    run = sub.add_parser(
        "run", help="one case end to end: AutoSegment, DosePredict, DVH, radiomics, outcome, HTML report, scene",
        description="Writes OUT/CT.nrrd, Structures.seg.nrrd, Dose.nrrd, features.csv, dvh.csv, report.html, "
                    "scene.mrb and provenance.json (plus dvh_metrics.csv, constraints.csv, case.json, run.log). "
                    "INPUT is what `rtrai convert` reads (OpenKBP patient, DICOM folder, case folder, image); a "
                    "folder of patients or --cohort LIST runs each into OUT/<case>/ (finished cases are skipped).")
    run.add_argument("input", nargs="?", metavar="INPUT")
    run.add_argument("-o", "--output", required=True, metavar="OUT")
    run.add_argument("--cohort", metavar="LIST", help="text file with one case path per line")
    run.add_argument("--keep-structures", action="store_true",
                     help="use the input's structures instead of AutoSegment when it has some")
    run.add_argument("--prescription", help="target prescriptions, e.g. PTV70=70,PTV56=56 (default: the RTPLAN's, "
                                            "or the level in the target's name)")
    run.add_argument("--outcome-model", metavar="M", help="outcome model folder (from `rtrai outcome fit`)")
    run.add_argument("--segmentation-model", default="hn-oar-ct", help="AutoSegment model (default: hn-oar-ct)")
    run.add_argument("--dose-model", default="hn-dose-openkbp", help="DosePredict model (default: hn-dose-openkbp)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--jobs", type=int, help="radiomics worker processes (default: the CPUs, at most 4)")
    run.add_argument("--no-scene", action="store_true", help="do not write scene.mrb")
    run.set_defaults(func=run_command)


def options_from_args(args) -> Options:
    from rtrai.dose.commands import parse_prescription

    return Options(keep_structures=args.keep_structures, segmentation_model=args.segmentation_model,
                   dose_model=args.dose_model, prescription=parse_prescription(args.prescription),
                   outcome_model=args.outcome_model, device=args.device, scene=not args.no_scene, jobs=args.jobs)


def run_command(args) -> int:
    from rtrai.core.errors import InputError
    from rtrai.core.paths import check_output
    from rtrai.core.progress import default
    from rtrai.io.case_io import patients_or_case

    options = options_from_args(args)
    out = Path(args.output)
    if args.cohort:
        if args.input:
            raise InputError("give either INPUT or --cohort LIST, not both")
        cases = read_cohort_list(args.cohort)
        check_output(out, cases)  # the command line checked the list file; these are the cases it names
    elif not args.input:
        raise InputError("give INPUT (a case, or a folder of patients) or --cohort LIST")
    else:
        source = Path(args.input)
        cases = patients_or_case(source)
    if cases is None:
        run = run_case(source, out, options, default("rtrai run"))
        for line in run.log:
            print(line)
        for step in run.steps.values():
            if step.status == SKIPPED:
                print(f"rtrai: note: {step.title} skipped: {step.reason}", file=sys.stderr)
        print(f"wrote {out}: open {out / 'report.html'} in a browser, {out / 'scene.mrb'} in 3D Slicer")
        return 0
    counts = run_cohort(cases, out, options, default("rtrai run"))
    for row in counts["failed"]:
        print(f"rtrai: error: {row['case']}: {row['error']}", file=sys.stderr)
    print(f"{counts['done']} cases run, {counts['finished_before']} finished before, {len(counts['failed'])} failed: "
          f"{out / 'cohort.csv'}")
    return 2 if counts["failed"] else 0
