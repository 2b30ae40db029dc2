"""What ``rtrai plan`` writes: PlanDose.nrrd, plan.json, fluence.png, dvh.png, dvh_comparison.csv (+ DICOM)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.outputs import atomic_file, write_text

FRACTIONS_DEFAULT = 35  # OpenKBP's plans; only for the DICOM RTPLAN when the case names none


def plan_record(result, case: Case) -> dict:
    """plan.json: beams (gantry angles, isocentre, bixel size, bixel positions and fluence weights), engine, the
    optimisation and its timing. The weights are those of the influence matrix (dose = matrix x weights, Gy over
    the whole course), in beam order."""
    influence = result.influence
    beams, start = [], 0
    for beam in influence.beams:
        n = len(beam["bixels_mm"])
        weights = result.weights[start:start + n]
        start += n
        beams.append({"gantry_deg": beam["gantry_deg"], "couch_deg": beam["couch_deg"],
                      "isocentre_mm_lps": beam["isocentre_mm"], "bixel_mm": influence.bixel_mm,
                      "bixels": [{"x_mm": x, "y_mm": y, "weight": round(float(w), 6)}
                                 for (x, y), w in zip(beam["bixels_mm"], weights)]})
    final = result.objective[-1] if result.objective else None
    return {
        "radiation": "photons, 6 MV", "technique": "IMRT (fluence), coplanar",
        "engine": {"name": "pyRadPlan", "dose_engine": influence.versions.get("engine"),
                   "machine": influence.versions.get("machine"), "version": influence.versions.get("pyRadPlan"),
                   "optimiser": "scipy L-BFGS-B (rtrai.plan.mimicking)"},
        "dose_grid_mm": influence.grid_mm, "bixel_mm": influence.bixel_mm, "prescription_gy": result.prescription,
        "fractions": case.fractions,
        "objective": {"kind": "dose mimicking with target coverage and OAR mean-dose priorities",
                      "priorities": {"mimic": 1.0, "target": result.priorities.target, "oar": result.priorities.oar,
                                     "coverage": result.priorities.coverage},
                      "iterations": result.iterations, "converged": result.converged, "message": result.message,
                      "final": final},
        "timing_s": {"matrix": round(result.matrix_s, 2), "optimisation": round(result.optimisation_s, 2)},
        "weights_unit": "relative fluence; dose (Gy, whole course) = dose-influence matrix x weights",
        "beams": beams,
    }


def fluence_maps(result) -> list[tuple[float, np.ndarray, tuple[float, float, float, float]]]:
    """Per beam: (gantry, 2D weight map in the beam's eye view at the isocentre, extent in mm for imshow)."""
    influence, out, start = result.influence, [], 0
    for beam in influence.beams:
        pos = np.asarray(beam["bixels_mm"], float).reshape(-1, 2)
        w = result.weights[start:start + len(pos)]
        start += len(pos)
        step = influence.bixel_mm
        ij = np.round((pos - pos.min(axis=0)) / step).astype(int)
        image = np.full((ij[:, 1].max() + 1, ij[:, 0].max() + 1), np.nan)
        image[ij[:, 1], ij[:, 0]] = w
        lo = pos.min(axis=0) - step / 2
        hi = pos.max(axis=0) + step / 2
        out.append((beam["gantry_deg"], image, (lo[0], hi[0], lo[1], hi[1])))
    return out


def fluence_figure(result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = fluence_maps(result)
    cols = min(3, len(maps))
    rows = math.ceil(len(maps) / cols)
    top = max(float(np.nanmax(m)) for _, m, _ in maps) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.0, 3.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (gantry, image, extent) in zip(axes.ravel(), maps):
        ax.axis("on")
        shown = ax.imshow(image, origin="lower", extent=extent, cmap="magma", vmin=0, vmax=top)
        ax.set_title(f"gantry {gantry:g}°", fontsize=9)
        ax.set_xlabel("x (mm)", fontsize=7)
        ax.set_ylabel("y (mm)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="fluence weight")
    fig.suptitle("Optimised fluence per beam (beam's eye view at the isocentre)", fontsize=10)
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def comparison_rows(case: Case, planned: sitk.Image, predicted: sitk.Image, own: sitk.Image | None) -> list[dict]:
    """Per structure and QA metric: the predicted (mimicked), planned and the input's own dose (when it has one)."""
    from rtrai.dose.qa import qa_structures, structure_metrics

    names = qa_structures(case)
    doses = {"predicted": predicted, "planned": planned, "input": own}
    values = {k: structure_metrics(case, d, names) for k, d in doses.items() if d is not None}
    rows = []
    for key in values["planned"]:
        rows.append({"structure": key[0], "metric": key[1],
                     **{k: values[k][key] if k in values else float("nan") for k in doses}})
    return rows


def comparison_csv(rows: list[dict]) -> str:
    lines = ["structure,metric,predicted,planned,input,planned_minus_predicted"]
    for r in rows:
        own = "" if math.isnan(r["input"]) else f"{r['input']:.3f}"
        lines.append(f"{r['structure']},{r['metric']},{r['predicted']:.3f},{r['planned']:.3f},{own},"
                     f"{r['planned'] - r['predicted']:.3f}")
    return "\n".join(lines) + "\n"


def dvh_figure(case: Case, planned: sitk.Image, predicted: sitk.Image, own: sitk.Image | None, path: Path) -> Path:
    """Cumulative DVHs: planned (solid), predicted/mimicked (dashed), the input's own dose (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtrai.dose.dvh import dose_axis, samples_from_mask
    from rtrai.dose.qa import qa_structures

    top = max(float(sitk.GetArrayViewFromImage(d).max()) for d in (planned, predicted, own) if d is not None)
    axis = dose_axis(top * 1.02, 0.2)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = (("planned", planned, "-"), ("predicted", predicted, "--"), ("input", own, ":"))
    for name in qa_structures(case):
        for label, dose, style in styles:
            if dose is None:
                continue
            samples = samples_from_mask(dose, case.structures[name])
            if samples.total_cc <= 0:
                continue
            ax.plot(axis, 100 * samples.cumulative(axis) / samples.total_cc, style, color=case.color(name),
                    linewidth=1.2, label=name if label == "planned" else None)
    for label, _, style in styles[: 3 if own is not None else 2]:
        ax.plot([], [], style, color="grey", label=label)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_xlim(0, axis[-1])
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title("DVH: planned (solid) vs predicted (dashed)" + (" vs input (dotted)" if own is not None else ""))
    fig.tight_layout()
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_plan_outputs(folder: Path, case: Case, result, fmt: str = "nrrd") -> list[str]:
    """Write the plan's files into ``folder`` (a temporary output folder); returns their names."""
    from rtrai.io.images import write_image

    folder = Path(folder)
    write_image(result.dose, folder / "PlanDose.nrrd")
    write_text(folder / "plan.json", json.dumps(plan_record(result, case), indent=1) + "\n")
    fluence_figure(result, folder / "fluence.png")
    dvh_figure(case, result.dose, result.mimicked, case.dose, folder / "dvh.png")
    write_text(folder / "dvh_comparison.csv",
               comparison_csv(comparison_rows(case, result.dose, result.mimicked, case.dose)))
    written = ["PlanDose.nrrd", "plan.json", "fluence.png", "dvh.png", "dvh_comparison.csv"]
    if fmt == "dicom":
        import dataclasses

        from rtrai.io.dicomrt_export import write_dicom_files

        planned = dataclasses.replace(case, dose=result.dose, prescription=dict(result.prescription),
                                      fractions=case.fractions or FRACTIONS_DEFAULT)
        (folder / "dicom").mkdir()
        files = write_dicom_files(planned, folder / "dicom")
        written += [f"dicom/{p.name}" for paths in files.values() for p in paths if p.name.startswith("RT")]
    return written
