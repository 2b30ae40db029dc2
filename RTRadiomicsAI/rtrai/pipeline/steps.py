"""The ten steps of one run, in order (the runner, :mod:`rtrai.pipeline.runner`, times and records them):

1. ``load``       read the input (OpenKBP patient, DICOM folder with RTSTRUCT/RTPLAN/RTDOSE, case folder, image) and
                  apply ``--prescription`` overrides. Its failure stops the case (bad input), as does the report's.
2. ``segment``    AutoSegment (``hn-oar-ct``, or a MONAI bundle, TorchScript file or nnU-Net folder:
                  :func:`rtrai.segmentation.engines.load_segmenter`): the model's organs replace given ones of the
                  same name, which are kept as the reference the report compares with (Dice); skipped with
                  ``--keep-structures`` when the input has structures.
3. ``qa``         contour QA of the structures the case now has (:func:`rtrai.segmentation.qa.check_case`): flags for
                  implausible volume, components, laterality and position (``contour_qa.csv``).
4. ``dose``       DosePredict (``hn-dose-openkbp``) from CT, structures and prescriptions (from the RTPLAN, target
                  names such as PTV70, or ``--prescription``). A dose that came with the input is kept as
                  ``InputDose.nrrd`` and compared with the prediction. Skipped with the reason when there is no
                  target or the model cannot be loaded; the input's dose (if any) is then used.
5. ``dvh``        cumulative DVHs of every target and OAR, the usual metrics and common H&N constraints.
6. ``plan``       with ``--plan``: a photon IMRT fluence plan whose dose mimics the predicted dose (the input's when
                  none was predicted; :func:`rtrai.plan.mimicking.plan_case`), into ``plan/``.
7. ``plan_qa``    with ``--plan``: the plan's dose checked against the input's own dose when it has one, else against
                  the predicted dose (:func:`rtrai.dose.qa.qa_case`; ``plan/qa.csv``).
8. ``radiomics``  CT and dose features inside every target and OAR (:mod:`rtrai.radiomics.case_features`).
9. ``outcome``    with an outcome model (``--outcome-model M``): the predicted risk and its risk group.
10. ``report``    ``report.html``, the Slicer scene ``scene.mrb``, and every file written into OUT atomically with
                  ``provenance.json`` (models with sha256, steps, timings). A failure here fails the run: nothing
                  is written then. Only the scene is optional (without MRML installed; the report says so).

Each step function takes the :class:`~rtrai.pipeline.case_run.CaseRun` and a progress sink and returns a one-line
summary, or raises :class:`~rtrai.pipeline.case_run.StepSkipped` with the reason.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from rtrai.pipeline.case_run import DVH_METRICS, CaseRun, StepSkipped

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
    run.structures.source = {name: "input" for name in case.structures}
    size = " x ".join(str(s) for s in case.ct.GetSize())
    parts = [f"{kind}: CT {size}", f"{len(case.structures)} structures"]
    if case.dose is not None:
        parts.append("with dose")
    if case.prescription:
        parts.append("prescription " + ", ".join(f"{k} {v:g} Gy" for k, v in case.prescription.items()))
    return ", ".join(parts)



@lru_cache(maxsize=2)
def _segmenter(model: str, device: str):
    """The engine ``model`` needs (a zoo name, a MONAI bundle, a TorchScript file or an nnU-Net folder)."""
    from rtrai.segmentation.engines import load_segmenter

    return load_segmenter(model, device)


@lru_cache(maxsize=2)
def _dose_predictor(model: str, device: str):
    from rtrai.dose.inference import DosePredictor

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
    info = segmenter.info  # engine, name, version, sha256 (of every model file for bundle/TorchScript/nnU-Net)
    progress(0.15, f"segment: AutoSegment ({info['name']})")
    masks = segmenter.segment(case, run.source if isinstance(run.source, (str, os.PathLike))
                              and Path(run.source).is_dir() else None)
    label = f"AutoSegment {info['name']}"
    found, missing = [], []
    for name, mask in masks.items():
        ai = sitk.GetArrayViewFromImage(mask) > 0
        if name in case.structures:
            ref = sitk.GetArrayViewFromImage(case.structures[name]) > 0
            total = int(ai.sum()) + int(ref.sum())
            run.structures.dice[name] = float(2 * np.logical_and(ai, ref).sum() / total) if total else float("nan")
            run.structures.reference[name] = case.structures.pop(name)
        if ai.any():  # missing is not empty: an organ the model did not find is left out
            case.add_structure(name, mask, color_of(name), keep_name=True)
            run.structures.source[name] = label
            found.append(name)
        else:
            run.structures.source.pop(name, None)
            missing.append(name)
    run.models.append({"role": "segmentation", **info})
    summary = f"{len(found)} organs by {info['name']}" + (f" ({info['engine']})" if info.get("engine") != "zoo" else "")
    if missing:
        summary += f"; not found: {', '.join(missing)}"
    if run.structures.dice:
        summary += f"; Dice against the given contours: median {np.nanmedian(list(run.structures.dice.values())):.2f}"
    return summary


def _step_qa(run: CaseRun, progress) -> str:
    from rtrai.segmentation.qa import check_case, load_reference

    case = run.case
    if not case.structures:
        raise StepSkipped("no structures to check")
    reference = load_reference()
    progress(0.1, f"qa: {len(case.structures)} structures")
    rows = check_case(case, reference)
    run.contour_qa = {"rows": rows, "reference": {"name": reference.get("name"),
                                                  "thresholds": reference["thresholds"]}}
    flagged = [r["structure"] for r in rows if r["flagged"]]
    return f"{len(rows)} structures checked, {len(flagged)} flagged" + (f": {', '.join(flagged)}" if flagged else "")


def _on_ct_grid(dose, ct):
    import SimpleITK as sitk

    from rtrai.core.image import Grid, resample_to

    if not Grid.of(dose).differences(Grid.of(ct)):
        return dose
    return resample_to(sitk.Cast(dose, sitk.sitkFloat32), ct, "linear", 0.0)


def _step_plan(run: CaseRun, progress) -> str:
    import numpy as np
    import SimpleITK as sitk

    case, options = run.case, run.options
    if not options.plan:
        raise StepSkipped("not asked for (rtrai run --plan)")
    if case.dose is None:
        raise StepSkipped("no dose to mimic: none was predicted and the input has none")
    from rtrai.plan.engine import body_mask
    from rtrai.plan.mimicking import plan_case
    from rtrai.plan.outputs import comparison_rows

    predicted = run.dose.source.startswith("predicted")
    own = run.dose.input_dose if predicted else case.dose  # the input's own dose (a clinical plan), if any
    run.plan.mimicked = "the predicted dose" if predicted else "the dose of the input (none was predicted)"
    run.plan.own_dose = _on_ct_grid(own, case.ct) if own is not None else None
    mimic = _on_ct_grid(case.dose, case.ct)
    result = plan_case(case, mimic, options.plan_beams, options.plan_bixel_mm, options.plan_grid_mm,
                       options.plan_iterations, progress=lambda f, m="": progress(f, f"plan: {m}" if m else "plan"))
    run.plan.result = result
    run.plan.comparison = comparison_rows(case, result.dose, result.mimicked, run.plan.own_dose)
    body = body_mask(case)
    error = np.abs(sitk.GetArrayViewFromImage(result.dose) - sitk.GetArrayViewFromImage(result.mimicked))[body]
    return (f"{len(result.influence.beams)} beams, {result.influence.bixels} bixels mimicking {run.plan.mimicked}: "
            f"mean |plan - mimicked| {float(error.mean()):.2f} Gy in the body (matrix {result.matrix_s:.0f} s, "
            f"{result.iterations} iterations in {result.optimisation_s:.1f} s)")


def _step_plan_qa(run: CaseRun, progress) -> str:
    if not run.options.plan:
        raise StepSkipped("not asked for (rtrai run --plan)")
    if run.plan.result is None:
        raise StepSkipped(f"no plan ({run.steps['plan'].reason})")
    from rtrai.dose.qa import DEFAULT_MARGIN_GY, qa_case

    margin = DEFAULT_MARGIN_GY if run.options.qa_margin_gy is None else run.options.qa_margin_gy
    if run.plan.own_dose is not None:
        reference, run.plan.qa_reference = run.plan.own_dose, "the dose of the input"
    else:
        reference, run.plan.qa_reference = run.plan.result.mimicked, "the predicted dose"
    run.plan.qa = qa_case(run.case, run.plan.result.dose, reference, margin)
    return f"against {run.plan.qa_reference}: {run.plan.qa.verdict}"


def _step_dose(run: CaseRun, progress) -> str:
    import SimpleITK as sitk

    from rtrai.core.errors import InputError, RTRAIError
    from rtrai.core.image import Grid, mask_array, resample_to
    from rtrai.dose.encoding import prescription_levels
    from rtrai.models import read_manifest

    case, options = run.case, run.options
    had_dose = case.dose is not None
    try:
        levels = prescription_levels(case)
    except InputError as exc:
        run.dose.source = "from the input" if had_dose else ""
        raise StepSkipped(f"{exc}{'; the dose of the input is used' if had_dose else ''}") from None
    progress(0.1, f"dose: loading model {options.dose_model}")
    try:
        read_manifest(options.dose_model)  # an unknown model is said before torch is imported
        predictor = _dose_predictor(options.dose_model, options.device)
        progress(0.3, f"dose: DosePredict ({predictor.manifest['name']})")
        predicted = predictor.predict(case)
    except RTRAIError as exc:
        run.dose.source = "from the input" if had_dose else ""
        raise StepSkipped(f"model '{options.dose_model}' cannot be used: {exc}"
                          + ("; the dose of the input is used" if had_dose else "")) from None
    run.models.append(_model_info(predictor.manifest, "dose"))
    summary = f"predicted by {predictor.manifest['name']} for " + \
        ", ".join(f"{k} {v:g} Gy" for k, v in sorted(levels.items(), key=lambda kv: -kv[1]))
    if had_dose:
        run.dose.input_dose = case.dose
        reference = case.dose if not Grid.of(case.dose).differences(Grid.of(case.ct)) else \
            resample_to(sitk.Cast(case.dose, sitk.sitkFloat32), case.ct, "linear", 0.0)
        from rtrai.dose.scores import openkbp_dose_score

        region = case.possible_dose_mask if case.possible_dose_mask is not None else case.structures.get("External")
        mask = mask_array(region) if region is not None else sitk.GetArrayViewFromImage(case.ct) > -500
        score = openkbp_dose_score(sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(predicted),
                                   mask)
        run.dose.comparison = {"reference": "the dose of the input", "dose_score_gy": score,
                               "definition": "OpenKBP dose score: mean |predicted - input| over the possible-dose "
                                             "region (Gy)"}
        summary += f"; mean absolute difference to the input's dose {score:.2f} Gy"
    case.dose = predicted
    run.dose.source = f"predicted by {predictor.manifest['name']}"
    return summary


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
        run.dvh.samples[name] = samples_from_mask(case.dose, case.structures[name])
    run.dvh.table = dvh_table(run.dvh.samples, 0.1)
    run.dvh.metrics = [{"structure": n, "metric": m, "value": metric(s, m)}
                       for n, s in run.dvh.samples.items() for m in DVH_METRICS]
    run.dvh.constraints = evaluate_constraints(run.dvh.samples, {t: case.prescription_for(t) for t in case.targets()})
    met = sum(c.passed for c in run.dvh.constraints)
    return f"{len(names)} structures; {met} of {len(run.dvh.constraints)} common constraints met"


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


def _step_report(run: CaseRun, progress):
    """Writes every file into a temporary folder, yields its summary, then (its own step recorded) provenance.json
    and run.log; the folder becomes OUT only when all of it is written."""
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder, write_text
    from rtrai.io.case_io import write_case

    case = run.case
    with output_folder(run.outdir) as tmp:
        progress(0.05, "report: writing the case files")
        write_case(case, tmp)
        if run.dose.input_dose is not None:
            from rtrai.io.images import write_image

            write_image(run.dose.input_dose, tmp / "InputDose.nrrd")
        if run.structures.reference:
            from rtrai.io.segfile import write_segmentation

            write_segmentation(run.structures.reference, tmp / "InputStructures.seg.nrrd",
                               {n: case.color(n) for n in run.structures.reference}, case.ct)
        _write_tables(run, tmp)
        if run.contour_qa:
            from rtrai.segmentation.qa import write_report as write_contour_qa

            write_contour_qa(tmp, run.contour_qa["rows"], {"reference": run.contour_qa["reference"]})
        if run.plan.result is not None:
            progress(0.2, "report: the plan's files")
            _write_plan(run, tmp / "plan")
        if run.options.scene:
            progress(0.3, "report: Slicer scene")
            run.scene_note = _write_scene(run, tmp / "scene.mrb")
        else:
            run.scene_note = "not written (--no-scene)"
        progress(0.55, "report: report.html")
        from rtrai.report.html import write_report

        write_report(run, tmp / "report.html")
        run.written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        yield f"{len(run.written) + 2} files"  # the runner records the step as done, then this goes on
        record = provenance.record(
            run.options.command, run.options.to_dict(),
            inputs=[run.source] if isinstance(run.source, (str, os.PathLike)) else [],
            models=run.models,
            extra={"status": "complete", "input": run.source_label, "synthetic_data": run.synthetic,
                   "case": case.summary(), "steps": [s.to_dict() for s in run.steps.values()],
                   "dose_source": run.dose.source, "dose_comparison": run.dose.comparison,
                   "outcome": _outcome_record(run), "scene": run.scene_note, "plan": _plan_record(run),
                   "contour_qa": {"flagged": [r["structure"] for r in run.contour_qa.get("rows", []) if r["flagged"]]}
                   if run.contour_qa else {},
                   "outputs": sorted(run.written + ["provenance.json", "run.log"]), **run.options.provenance})
        write_text(tmp / "run.log", "\n".join(run.log) + "\n")
        provenance.write(tmp, record)


def _write_plan(run: CaseRun, folder: Path) -> None:
    """What ``rtrai plan`` writes (PlanDose.nrrd, plan.json, fluence.png, dvh.png, dvh_comparison.csv) and what
    ``rtrai dose qa`` writes (qa.csv, qa.png) into ``folder``; the report shows the two figures."""
    import dataclasses

    from rtrai.core.outputs import write_text
    from rtrai.plan.outputs import write_plan_outputs

    folder.mkdir()
    own = dataclasses.replace(run.case, dose=run.plan.own_dose)  # "input" in the comparison: the input's own dose
    write_plan_outputs(folder, own, run.plan.result)
    run.plan.images = {"dvh": (folder / "dvh.png").read_bytes(), "fluence": (folder / "fluence.png").read_bytes()}
    if run.plan.qa is not None:
        from rtrai.dose.qa import qa_figure

        write_text(folder / "qa.csv", run.plan.qa.csv())
        run.plan.images["qa"] = qa_figure(run.plan.qa, folder / "qa.png").read_bytes()


def _plan_record(run: CaseRun) -> dict:
    if run.plan.result is None:
        return {}
    from rtrai.plan.outputs import plan_record

    record = {k: v for k, v in plan_record(run.plan.result, run.case).items() if k != "beams"}
    record["mimicked"] = run.plan.mimicked
    if run.plan.qa is not None:
        record["qa"] = {"reference": run.plan.qa_reference, "margin_gy": run.plan.qa.margin_gy,
                        "verdict": run.plan.qa.verdict, "flagged": len(run.plan.qa.flagged)}
    return record


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
    if run.dvh.samples:
        write_text(folder / "dvh.csv", dvh_csv(run.dvh.table, run.dvh.samples))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["structure", "metric", "value"])
        writer.writerows([r["structure"], r["metric"], f"{r['value']:.5f}"] for r in run.dvh.metrics)
        write_text(folder / "dvh_metrics.csv", text.getvalue())
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["structure", "metric", "value_gy", "goal", "limit_gy", "passed"])
        writer.writerows([c.structure, c.metric, f"{c.value_gy:.4f}", c.goal, f"{c.limit_gy:.4f}", c.passed]
                         for c in run.dvh.constraints)
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


STEP_FUNCTIONS = {"load": _step_load, "segment": _step_segment, "qa": _step_qa, "dose": _step_dose, "dvh": _step_dvh,
                  "plan": _step_plan, "plan_qa": _step_plan_qa, "radiomics": _step_radiomics,
                  "outcome": _step_outcome, "report": _step_report}
