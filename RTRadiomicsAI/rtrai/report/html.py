"""``report.html`` of a run: one self-contained page (styles inline, images as base64 PNG data URIs, no script, no
network), readable in any browser and attachable to an e-mail.

Sections: a plain banner when the data are synthetic (and how to run the same on real data), the workflow steps with
their status, time and reason when skipped, orthogonal slices with structure outlines and the dose colour wash, the
DVH plot and common constraints, structure volumes (and AutoSegment's agreement with given contours), a radiomics
summary, the predicted risk with the Kaplan-Meier curves of the model's risk groups, and the models with their
checksums and the timings.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from pathlib import Path

from rtrai.core.outputs import write_text

REAL_DATA_COMMANDS = (
    ("an OpenKBP patient", "rtrai run ../shared/data/openkbp/validation-pats/pt_201 -o out/pt_201"),
    ("a DICOM folder (CT series and RTSTRUCT, with RTPLAN and RTDOSE if available)",
     "rtrai run DICOM_FOLDER -o out/case"),
    ("a folder of patients, or a list of them", "rtrai run PATIENTS_FOLDER -o out/  (or --cohort LIST)"),
)

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2330;margin:0;
background:#f4f5f7;line-height:1.45}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:2px solid #e3e6eb;
padding-bottom:4px}
.meta{color:#5b6475;font-size:.9em;margin:0 0 12px}
.banner{border-radius:6px;padding:12px 16px;margin:14px 0}
.synthetic{background:#fff4d6;border:2px solid #e0a800}
.note{background:#eef3fb;border:1px solid #b8c9e6}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.9em}
th,td{border:1px solid #d6dae1;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.done{color:#17693a;font-weight:600}.skipped{color:#a15c00;font-weight:600}
.pass{color:#17693a;font-weight:600}.fail{color:#b3261e;font-weight:600}
figure{margin:10px 0 14px}figure img{max-width:100%;height:auto;border:1px solid #d6dae1}
figcaption{color:#5b6475;font-size:.88em;margin-top:4px}
code{background:#f0f1f4;padding:1px 4px;border-radius:3px;font-size:.92em}
.risk{font-size:1.15em;padding:10px 14px;border-left:5px solid #3b6fb6;background:#f3f6fb;margin:8px 0}
.risk.high,.risk.positive{border-color:#b3261e}.risk.low,.risk.negative{border-color:#17693a}
.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
footer{color:#5b6475;font-size:.85em;margin-top:30px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    if math.isnan(value):
        return ""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            raw = cell if isinstance(cell, _Raw) else _e(cell)
            cells.append(f'<td class="num">{raw}</td>' if i in numeric else f"<td>{raw}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """HTML that is already safe (a badge, a code span)."""


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


# --------------------------------------------------------------------------------------------------------- sections

def _banner(run) -> str:
    notes = "".join(f"<p>{_e(n)}</p>" for n in run.options.notes)
    howto = "".join(f"<li>{_e(what)}: <code>{_e(cmd)}</code></li>" for what, cmd in REAL_DATA_COMMANDS)
    if run.synthetic:
        return (f'<div class="banner synthetic"><p><strong>Synthetic data, not a patient.</strong> This case is '
                f"the built-in synthetic head-and-neck phantom (<code>rtrai.phantom</code>): its anatomy, CT and "
                f"reference dose are generated from geometric shapes, so every number below describes the software, "
                f"not a treatment.</p>{notes}<p>To run the same on real data:</p><ul>{howto}</ul>"
                f"<p>Each writes this page, the case files and <code>scene.mrb</code> (open it in 3D Slicer).</p>"
                f"</div>")
    return f'<div class="banner note">{notes}</div>' if notes else ""


def _steps(run) -> str:
    rows = []
    for step in run.steps.values():
        if step.name == "report" and step.status != "done":
            rows.append([step.title, _Raw('<span class="done">this page</span>'), "", "report.html, scene.mrb, "
                                                                                        "provenance.json"])
            continue
        badge = _Raw(f'<span class="{_e(step.status)}">{_e(step.status)}</span>')
        rows.append([step.title, badge, _num(step.seconds, 1), step.reason or step.summary])
    return "<h2>Workflow</h2>" + _table(["step", "status", "seconds", "details (the reason when skipped)"], rows,
                                        {2})


def _slices(run) -> str:
    import dataclasses

    import SimpleITK as sitk

    from rtrai.core.image import Grid, resample_to
    from rtrai.report.figures import figure_png, orthogonal_slices_figure

    case = run.case
    shown = case
    if case.dose is not None and Grid.of(case.dose).differences(Grid.of(case.ct)):  # an RTDOSE on its own grid
        shown = dataclasses.replace(case, dose=resample_to(sitk.Cast(case.dose, sitk.sitkFloat32), case.ct,
                                                           "linear", 0.0))
    png = figure_png(orthogonal_slices_figure(shown, title=f"{case.patient_id}"), dpi=85, facecolor="black")
    dose = f"dose colour wash ({run.dose.source})" if case.dose is not None else "no dose"
    target = max(case.targets(), key=lambda n: case.prescription_for(n) or 0, default=None)
    where = f"through the centre of {target}" if target else "through the image centre"
    return ("<h2>Images</h2>" + _img(png, "axial, coronal and sagittal slices with structure outlines and dose",
                                     f"Axial, coronal and sagittal CT slices {where} (window -160 to 240 HU), "
                                     f"outlines of {len(case.structures)} structures, {dose} from 10 % of its "
                                     "maximum."))


def _dose(run) -> str:
    from rtrai.dose.constraints import SOURCE
    from rtrai.dose.dvh import dvh_figure
    from rtrai.report.figures import figure_png

    out = ["<h2>Dose and DVH</h2>"]
    dose_step = run.steps["dose"]
    if run.dose.source:
        out.append(f"<p>Dose: {_e(run.dose.source)}.</p>")
    if dose_step.status == "skipped":
        out.append(f"<p>Dose prediction skipped: {_e(dose_step.reason)}</p>")
    if run.dose.comparison:
        c = run.dose.comparison
        out.append(f"<p>Against {_e(c['reference'])}: {_e(c['definition'])} = "
                   f"<strong>{_num(c['dose_score_gy'])} Gy</strong> (the dose of the input is kept as "
                   f"<code>InputDose.nrrd</code>).</p>")
    if not run.dvh.samples:
        out.append(f"<p>No DVH: {_e(run.steps['dvh'].reason)}</p>")
        return "".join(out)
    png = figure_png(dvh_figure(run.dvh.table, run.dvh.samples, colors=run.case.colors), dpi=90)
    out.append(_img(png, "cumulative dose-volume histograms",
                    "Cumulative DVHs (targets dashed); the values are in dvh.csv, metrics in dvh_metrics.csv."))
    rows = [[c.structure, c.metric, _num(c.value_gy), c.goal,
             _Raw('<span class="pass">met</span>' if c.passed else '<span class="fail">not met</span>')]
            for c in run.dvh.constraints]
    if rows:
        met = sum(c.passed for c in run.dvh.constraints)
        out.append(f"<p><strong>Common constraints: {met} of {len(rows)} met.</strong> "
                   f"Goals from {_e(SOURCE)}; D0.03cc is the near-maximum dose.</p>")
        out.append(_table(["structure", "metric", "value (Gy)", "goal", "result"], rows, {2}))
    else:
        out.append("<p>No structure with a common constraint (the usual head-and-neck organs or a target with a "
                   "prescription).</p>")
    return "".join(out)


def _structures(run) -> str:
    case = run.case
    metrics = {}
    for row in run.dvh.metrics:
        metrics.setdefault(row["structure"], {})[row["metric"]] = row["value"]
    rows = []
    for name in list(case.structures) + [n for n in run.structures.reference if n not in case.structures]:
        present = name in case.structures
        source = run.structures.source.get(name, "input") if present else "input only: AutoSegment did not find it"
        volume = case.volume_cc(name) if present else float("nan")
        rx = case.prescription_for(name) if name in case.targets() else None
        rows.append([name, source + (f" (prescription {rx:g} Gy)" if rx else ""), _num(volume, 1),
                     _num(run.structures.dice.get(name), 3), _num(metrics.get(name, {}).get("Dmean")),
                     _num(metrics.get(name, {}).get("D0.03cc"))])
    note = ""
    if run.structures.dice:
        note = ("<p>Dice: agreement of AutoSegment's contour with the contour that came with the input (kept as "
                "<code>InputStructures.seg.nrrd</code>); 1 is identical.</p>")
    return ("<h2>Structures</h2>" + note
            + _table(["structure", "source", "volume (cc)", "Dice vs given", "Dmean (Gy)", "D0.03cc (Gy)"], rows,
                     {2, 3, 4, 5}))


_RADIOMICS_COLUMNS = (("CT", "original_shape_MeshVolume", "volume (cc)", 1e-3),
                      ("CT", "original_shape_Sphericity", "sphericity", 1.0),
                      ("CT", "original_firstorder_Mean", "CT mean (HU)", 1.0),
                      ("CT", "original_glcm_JointEntropy", "CT GLCM joint entropy", 1.0),
                      ("dose", "dvh_Dmean_Gy", "dose mean (Gy)", 1.0),
                      ("dose", "dvh_D98%_Gy", "D98% (Gy)", 1.0),
                      ("dose", "dvh_D2%_Gy", "D2% (Gy)", 1.0),
                      ("dose", "original_glszm_ZoneEntropy", "dose GLSZM zone entropy", 1.0))


def _radiomics(run) -> str:
    out = ["<h2>Radiomics</h2>"]
    frame = run.features
    if frame is None:
        return "".join(out + [f"<p>Skipped: {_e(run.steps['radiomics'].reason)}</p>"])
    import radiomics

    feature_columns = [c for c in frame.columns if c not in ("ID", "Structure", "Image", "error")]
    out.append(f"<p>{len(feature_columns)} pyradiomics {_e(getattr(radiomics, '__version__', ''))} features per "
               f"structure and image in <code>features.csv</code> (one row per structure and image: CT with the "
               f"<code>CT</code> preset on the CT's own grid, bin width 25 HU; dose with the <code>dose</code> preset, "
               f"bins of 0.5 Gy, plus DVH columns). A few of them:</p>")
    columns = [c for c in _RADIOMICS_COLUMNS if c[1] in frame.columns]
    rows = []
    for structure in dict.fromkeys(frame["Structure"]):
        mine = frame[frame["Structure"] == structure]
        row = [structure]
        for image, column, _, scale in columns:
            values = mine[mine["Image"] == image][column]
            row.append(_num(float(values.iloc[0]) * scale, 3 if abs(float(values.iloc[0]) * scale) < 10 else 1)
                       if len(values) and values.notna().iloc[0] else "")
        rows.append(row)
    out.append(_table(["structure"] + [c[2] for c in columns], rows, set(range(1, len(columns) + 1))))
    refused = frame[frame["error"].fillna("") != ""]
    if len(refused):
        out.append("<p>Refused by pyradiomics: " + "; ".join(f"{_e(r.Structure)} ({_e(r.Image)}): {_e(r.error)}"
                                                             for r in refused.itertuples()) + "</p>")
    return "".join(out)


def _outcome(run) -> str:
    out = ["<h2>Predicted outcome</h2>"]
    step = run.steps["outcome"]
    if step.status != "done":
        return "".join(out + [f"<p>Skipped: {_e(step.reason)}</p>"])
    o = run.outcome
    model = o["model"]
    endpoint = o.get("endpoint") or {}
    if o["kind"] == "survival":
        cutoff = model.state.get("risk_cutoff")
        out.append(f'<div class="risk {_e(o["risk_group"])}"><strong>{_e(o["risk_group"])} risk group</strong>: '
                   f"risk score (log relative hazard) {_num(o['risk_score'])} against the training cut-off "
                   f"{_num(cutoff)}; predicted event-free probability at {_e(endpoint.get('time') or 'time')} = "
                   f"{o['horizon']:g}: "
                   f"<strong>{_num(o['survival'])}</strong>.</div>")
    else:
        out.append(f'<div class="risk {_e(o["risk_group"])}"><strong>{_e(o["risk_group"])}</strong>: predicted '
                   f"probability {_num(o['probability'])} (training threshold "
                   f"{_num(model.state.get('threshold'))}).</div>")
    if o.get("description"):
        out.append(f"<p>{_e(o['description'])}</p>")
    cv = o.get("cv") or {}
    metric = {"c_index": "C-index", "auc": "AUC"}.get(cv.get("metric"), str(cv.get("metric")))
    cv_text = (f"; nested cross-validation {metric} {_num(cv['mean'])} ± {_num(cv['sd'])} "
               f"over {cv['folds']} folds") if cv.get("mean") is not None else ""
    events = f", {o['training_events']} events" if o.get("training_events") is not None else ""
    what = ", ".join(f"{k} = {v}" for k, v in endpoint.items() if v and k != "kind")
    what = f", {what}" if what else ""
    out.append(f"<p>Model: <code>{_e(o['name'])}</code> ({_e(endpoint.get('kind', o['kind']))} endpoint"
               f"{_e(what)}), fitted on {o.get('training_n')} patients{events}{_e(cv_text)}. File: "
               f"<code>{_e(Path(o['file']).name)}</code>.</p>")
    if o.get("coefficients"):
        rows = [[name, _num(coef, 3), _num(_feature_value(run, name), 3)]
                for name, coef in sorted(o["coefficients"].items(), key=lambda kv: -abs(kv[1]))]
        out.append(_table(["feature", "coefficient (standardised)", "this case"], rows, {1, 2}))
    if o["kind"] == "survival":
        from rtrai.outcome.plots import risk_group_figure
        from rtrai.report.figures import figure_png

        fig = risk_group_figure(model, highlight=o["risk_group"], time_label=endpoint.get("time") or "time")
        if fig is None:
            out.append("<p>The model file holds no Kaplan-Meier curves of its training risk groups (fitted by an "
                       "earlier rtrai); refit it to see them here.</p>")
        else:
            out.append(_img(figure_png(fig, dpi=90), "Kaplan-Meier curves of the model's training risk groups",
                            "Kaplan-Meier curves of the training patients split at the training median of the risk "
                            "score (apparent: the model saw these patients); this case's group is drawn bold."))
    return "".join(out)


def _feature_value(run, name: str):
    from rtrai.radiomics.case_features import wide_features

    row = wide_features(run.features)
    return float(row[name].iloc[0]) if name in row.columns else float("nan")


def _contour_qa(run) -> str:
    """Contour QA (the ``qa`` step, rtrai.segmentation.qa): the flagged structures with the reasons."""
    step = run.steps.get("qa")
    if step is None:
        return ""
    out = ["<h2>Contour QA</h2>"]
    if step.status != "done":
        return "".join(out + [f"<p>Skipped: {_e(step.reason)}</p>"])
    rows = run.contour_qa["rows"]
    flagged = [r for r in rows if r["flagged"]]
    out.append(f"<p><strong>{len(flagged)} of {len(rows)} structures flagged</strong> by the checks of "
               "<code>contour_qa.csv</code> (empty, volume, components, laterality, position; thresholds from "
               f"{_e(run.contour_qa['reference'].get('name') or 'the reference table')}).</p>")
    if flagged:
        checks = ("empty", "volume", "components", "laterality", "position")
        out.append(_table(["structure", "source", "flagged checks", "reason"],
                          [[r["structure"], run.structures.source.get(r["structure"], "input"),
                            ", ".join(c for c in checks if r.get(c)), r["reason"]] for r in flagged]))
    return "".join(out)


def _plan(run) -> str:
    """The plan (``--plan``): its summary, the DVH comparison (predicted, planned, the input's own dose) and the QA
    flags; nothing when no plan was asked for."""
    step, qa_step = run.steps.get("plan"), run.steps.get("plan_qa")
    if step is None or not run.options.plan:
        return ""
    out = ["<h2>Treatment plan and plan QA</h2>"]
    if step.status != "done":
        return "".join(out + [f"<p>Planning skipped: {_e(step.reason)}</p>"])
    plan = run.plan
    out.append(f"<p>{_e(step.summary)}. Files in <code>plan/</code> (PlanDose.nrrd, plan.json, "
               "dvh_comparison.csv, qa.csv).</p>")
    if plan.images.get("dvh"):
        out.append(_img(plan.images["dvh"], "DVHs of the plan, the predicted dose and the input's dose",
                        "Cumulative DVHs: planned (solid), predicted (dashed)"
                        + (", the input's own dose (dotted)" if plan.own_dose is not None else "") + "."))
    own = plan.own_dose is not None
    mimicked = "predicted" if plan.mimicked.startswith("the predicted") else "mimicked"  # the input's, then
    rows = [[r["structure"], r["metric"], _num(r["predicted"]), _num(r["planned"])] + ([_num(r["input"])] if own
            else []) + [_num(r["planned"] - r["predicted"])] for r in plan.comparison]
    out.append("<p>DVH comparison (<code>plan/dvh_comparison.csv</code>, Gy):</p>"
               + _table(["structure", "metric", mimicked, "planned"] + (["input"] if own else [])
                        + [f"planned - {mimicked}"], rows, set(range(2, 6 if own else 5))))
    if plan.qa is None:
        out.append(f"<p>Plan QA skipped: {_e(qa_step.reason if qa_step else '')}</p>")
        return "".join(out)
    verdict = "fail" if plan.qa.flagged else "pass"
    out.append(f'<p>Plan QA against {_e(plan.qa_reference)}: <span class="{verdict}">{_e(plan.qa.verdict)}</span>'
               "</p>")
    if plan.qa.flagged:
        out.append(_table(["structure", "metric", "plan (Gy)", "reference (Gy)", "worse by (Gy)"],
                          [[r["structure"], r["metric"], _num(r["plan"]), _num(r["predicted"]), _num(r["excess"])]
                           for r in plan.qa.flagged], {2, 3, 4}))
    if plan.images.get("qa"):
        out.append(_img(plan.images["qa"], "plan QA: excess per structure and metric",
                        f"How much worse the plan is than {plan.qa_reference} per structure and metric; the "
                        "dashed line is the margin, flagged bars are red (plan/qa.csv)."))
    return "".join(out)


def _provenance(run) -> str:
    from rtrai import __version__

    rows = [[m.get("role", ""), m.get("name", ""), m.get("version", ""), _Raw(f'<span class="hash">'
                                                                           f'{_e(m.get("sha256", ""))}</span>')]
            for m in run.models]
    models = _table(["role", "model", "version", "sha256"], rows) if rows else "<p>No model was used.</p>"
    timing = [[s.title, s.status, _num(s.seconds, 2), _num(s.cpu_seconds, 2),
               _num(s.peak_rss_mib, 0) if s.peak_rss_mib else ""]
              if s.name != "report" or s.status == "done" else [s.title, "this page", "", "", ""]
              for s in run.steps.values()]
    total = sum(s.seconds for s in run.steps.values())
    scene = run.scene_note or ""
    return ("<h2>Models, files and timings</h2>" + models
            + _table(["step", "status", "seconds", "CPU seconds", "peak memory so far (MiB)"], timing, {2, 3, 4})
            + f"<p>Total before this page: {total:.1f} s. rtrai {_e(__version__)}; input: "
              f"<code>{_e(run.source_label)}</code>. Scene: {_e(scene)}. Every file of this folder is listed with "
              f"checksummed inputs and package versions in <code>provenance.json</code>.</p>")


def render(run) -> str:
    """The HTML text of the report of a :class:`~rtrai.pipeline.CaseRun`."""
    case = run.case
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"RTRadiomicsAI report: {case.patient_id}" + (" (synthetic)" if run.synthetic else "")
    sections = [_banner(run), _steps(run), _slices(run), _dose(run), _plan(run), _structures(run),
                _contour_qa(run), _radiomics(run), _outcome(run), _provenance(run)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"meta\">Generated {_e(now)} by rtrai from "
            f"<code>{_e(run.source_label)}</code>. Research software, not for clinical use.</p>"
            + "".join(sections)
            + "<footer>RTRadiomicsAI: deep learning and radiomics for radiotherapy. Structure names follow AAPM "
              "TG-263; doses in Gy, volumes in cc.</footer></main></body></html>\n")


def write_report(run, path: str | os.PathLike) -> Path:
    return write_text(path, render(run))
