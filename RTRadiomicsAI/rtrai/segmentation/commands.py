"""``rtrai segment`` (inference), ``rtrai segment train`` and ``rtrai evaluate segmentation``.

``segment`` takes either an input or the word ``train`` or ``average``: argparse cannot put a positional INPUT and
sub-commands side by side, so these are recognised as the first word (a file or folder so named is still segmented).
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from pathlib import Path

from rtrai.core.commands import nested

FORMATS = ("nrrd", "openkbp", "dicom", "dicom-seg")


def register(sub) -> None:
    seg = sub.add_parser(
        "segment", help="auto-contour organs at risk / targets with a deep-learning model, or train one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="rtrai segment INPUT -o OUT [--model NAME] [--device auto|cpu|cuda] "
                    "[--format nrrd|openkbp|dicom|dicom-seg] [--qa]\n"
                    "  INPUT: a case folder, an image, a DICOM folder, an OpenKBP patient or a folder of patients.\n"
                    "  Writes OUT/Structures.seg.nrrd (or OUT/<patient>/... for a folder), OpenKBP CSVs, an "
                    "RTSTRUCT or a DICOM SEG (with the CT series), and provenance.json; --qa adds contour_qa.csv "
                    "and uncertainty/<structure>.nrrd.\n"
                    "rtrai segment train --data DIR --config CFG -o WORKDIR [--resume] [--max-steps N]\n"
                    "  Trains a model (config: a YAML/JSON file or a shipped name such as hn-oar-ct); WORKDIR gets "
                    "checkpoint.pt, train.log and the best model in WORKDIR/model/. A recipe config (base, "
                    "average_seeds) trains its runs in sub-folders and their average in WORKDIR/model/.\n"
                    "rtrai segment average MODEL MODEL... -o MODEL_DIR\n"
                    "  One model whose weights are the average of several of one network (runs warm-started from one "
                    "model with different --seed, or a run's checkpoint.pt): as fast as one, often better than each.\n"
                    "rtrai segment qa INPUT -o OUT [--qa-reference TABLE]\n"
                    "  Contour QA of a case's own structures (any source): OUT/contour_qa.csv, one row per structure "
                    "(empty, volume, components, laterality, position, flagged, reason), and contour_qa.json.")
    seg.add_argument("input", nargs="+", metavar="INPUT|train|average|qa")
    seg.add_argument("-o", "--output", required=True, metavar="OUT")
    run = seg.add_argument_group("segmenting")
    run.add_argument("--model", default="hn-oar-ct",
                     help="zoo model name or folder, MONAI bundle folder, TorchScript file (manifest NAME.json beside "
                          "it) or nnU-Net v2 trained-model folder (default: hn-oar-ct)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--format", default="nrrd", choices=FORMATS, dest="fmt")
    run.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                     help="average with the lateral mirror image (test-time augmentation: twice the inference time, "
                          "hn-oar-ct's mean DSC +0.005); default: as the model's manifest says")
    run.add_argument("--qa", action="store_true",
                     help="contour QA as well: OUT/contour_qa.csv (checks, flags and a confidence per structure: the "
                          "Dice between the model's contours on the image and on its lateral mirror) and "
                          "OUT/uncertainty/<structure>.nrrd (|p - p_mirror|, 0..1)")
    run.add_argument("--qa-reference", metavar="TABLE",
                     help="contour-QA reference table (default: the shipped one, from the OpenKBP train patients)")
    from rtrai.core.workers import add_cluster_arguments

    add_cluster_arguments(run)  # a folder of patients: --jobs N processes, or each patient a task on Dask
    run.add_argument("--gradcam", metavar="STRUCTURE",
                     help="also write gradcam_STRUCTURE.nrrd: the Grad-CAM map (MONAI) of what the network's contour "
                          "of STRUCTURE came from, on the CT's grid (rtrai.models.gradcam)")
    train = seg.add_argument_group("training (rtrai segment train ...)")
    train.add_argument("--data", help="folder of training patients (OpenKBP, case or DICOM folders)")
    train.add_argument("--config", help="training config: YAML/JSON file or shipped name (hn-oar-ct, ptv70)")
    train.add_argument("--val-data", help="validation patients for model selection (overrides the config)")
    train.add_argument("--resume", action="store_true", help="continue the run in WORKDIR from its checkpoint")
    train.add_argument("--max-steps", type=int, help="stop after this many more steps (the schedule is unchanged)")
    train.add_argument("--steps", type=int, help="total steps of the schedule (overrides the config)")
    train.add_argument("--seed", type=int, help="random seed of the run (overrides the config; runs that differ only "
                                                "in it can be weight-averaged with rtrai segment average)")
    train.add_argument("--init", metavar="MODEL", help="warm start from this zoo model or model folder (overrides the "
                                                       "config's init)")
    seg.set_defaults(func=run_segment)

    evaluate = nested(sub, "evaluate", "evaluate predictions against references", metavar="WHAT")
    ev = evaluate.add_parser("segmentation", help="DSC, HD95, mean surface distance and surface DSC per structure",
                             description="Compare predicted structures with reference ones (case folders, OpenKBP "
                                         "patients or .seg.nrrd files on the same grid, or folders of patients "
                                         "matched by name). Writes metrics.csv, metrics.json and provenance.json.")
    ev.add_argument("--pred", required=True)
    ev.add_argument("--ref", required=True)
    ev.add_argument("-o", "--output", required=True)
    ev.add_argument("--tolerance", type=float, default=2.0, help="surface DSC tolerance in mm (default 2)")
    ev.add_argument("--structures", nargs="+", metavar="NAME",
                    help="structures to score (default: those in both; with this list a structure the prediction "
                         "lacks scores DSC 0)")
    ev.add_argument("--imaged-slices", action="store_true",
                    help="score only the axial slices of the reference CT that hold image data (more than 1 %% CT "
                         "outside the contours): OpenKBP's cut CTs keep the contoured voxels beyond the cut, which "
                         "no clinical CT does (rtrai.io.openkbp.imaged_slices)")
    ev.set_defaults(func=run_evaluate)


def run_segment(args) -> int:
    from rtrai.core.errors import InputError

    word, *rest = args.input
    if word == "average" and not Path(word).exists():
        return run_average(rest, args.output)
    if word == "qa" and not Path(word).exists() and len(rest) == 1:
        return run_qa(rest[0], args.output, args.qa_reference)
    if rest:
        raise InputError(f"rtrai segment takes one INPUT (a folder of patients for a cohort), got {len(args.input)}")
    args.input = word
    if word == "train" and not Path(word).exists():
        return run_train(args)
    if word == "qa" and not Path(word).exists():
        raise InputError("rtrai segment qa takes one INPUT: rtrai segment qa INPUT -o OUT")
    from functools import partial

    from rtrai.core.progress import default
    from rtrai.core.workers import run_cases
    from rtrai.io.case_io import patients_or_case

    if args.fmt == "dicom":
        _dicom_writer()
    source, out = Path(args.input), Path(args.output)
    patients = patients_or_case(source)
    segmenter = _segmenter(args.model, args.device, args.mirror)  # a model that cannot load is said before any case
    if patients is None:
        segment_one(segmenter, source, out, args.fmt, gradcam=args.gradcam, qa=_qa_option(args))
        print(f"wrote {out}")
        return 0
    task = partial(_segment_patient, args.model, args.device, args.mirror, args.fmt, args.gradcam, out,
                   qa=_qa_option(args))
    todo = [p for p in patients if not _finished(segmenter, args, out, p)]
    failures = []  # one bad patient must not stop a cohort; finished patients are skipped
    for index, _, error in run_cases(task, todo, args.jobs, args.scheduler, args.worker_memory,
                                     start_method="spawn", progress=default("Segmenting"),  # torch: never fork
                                     names=[p.name for p in todo]):
        if error:
            failures.append(f"{todo[index].name}: {error}")
    if len(todo) < len(patients):
        print(f"{len(patients) - len(todo)} patients finished before (same input, model and format): kept")
    for line in failures:
        print(f"rtrai: error: {line}", file=sys.stderr)
    print(f"segmented {len(patients) - len(failures)} of {len(patients)} patients into {out}")
    return 2 if failures else 0


@lru_cache(maxsize=1)
def _segmenter(model: str, device: str, mirror):
    """The model, loaded once per process (each Dask or pool worker loads its own), by the engine its kind needs (a
    zoo name, a MONAI bundle, a TorchScript file or an nnU-Net folder: rtrai.segmentation.engines)."""
    from rtrai.segmentation.engines import load_segmenter

    return load_segmenter(model, device, mirror=mirror)


def _segment_patient(model, device, mirror, fmt, gradcam, out: Path, patient: Path, qa=None) -> str:
    """One patient of a folder into ``out/<patient>`` (a task of :func:`rtrai.core.workers.run_cases`)."""
    from rtrai.core.workers import finished_result

    segmenter, target = _segmenter(model, device, mirror), out / patient.name
    if not gradcam and not qa and finished_result(target, "segment", [patient], [segmenter.info], {"format": fmt}):
        return "finished before"  # e.g. run again by Dask after its worker was lost once it had written it
    segment_one(segmenter, patient, target, fmt, gradcam=gradcam, qa=qa)
    return "done"


def _finished(segmenter, args, out: Path, patient: Path) -> bool:
    from rtrai.core.workers import finished_result

    return not args.gradcam and not args.qa and finished_result(out / patient.name, "segment", [patient],
                                                                [segmenter.info], {"format": args.fmt})


def _dicom_writer():
    from rtrai.core.errors import DependencyError

    try:
        from rtrai.io.dicomrt_export import write_dicom_case
    except ImportError:
        raise DependencyError("RTSTRUCT export is not available in this version (rtrai.io.dicomrt_export is "
                              "missing); use --format nrrd or --format openkbp") from None
    return write_dicom_case


def segment_one(segmenter, source: Path, out: Path, fmt: str = "nrrd", gradcam: str | None = None,
                qa: str | bool | None = None) -> Path:
    """Segment one case into ``out`` (atomically): structures in the chosen format and provenance.json (and, with
    ``gradcam``, the Grad-CAM map of that structure, gradcam_<name>.nrrd)."""
    import time

    from rtrai.core import provenance
    from rtrai.core.case import Case
    from rtrai.core.outputs import output_folder
    from rtrai.core.structures import color_of
    from rtrai.io.case_io import read_case
    from rtrai.io.segfile import write_segmentation
    from rtrai.segmentation.inference import found_structures

    started = time.time()
    case = read_case(source)
    masks = segmenter.segment(case, source if source.is_dir() else None)
    found, empty = found_structures(masks)  # missing is not empty: an organ not found is written in no format
    result = Case(ct=case.ct, metadata=dict(case.metadata))
    for name, mask in found.items():
        result.add_structure(name, mask, color_of(name), keep_name=True)
    with output_folder(out) as tmp:
        if fmt == "openkbp":
            from rtrai.io.openkbp import write_openkbp

            write_openkbp(result, tmp, what=("structures",))
        elif fmt == "dicom":
            _dicom_writer()(result, tmp)
        elif fmt == "dicom-seg":  # CT series + SEG.dcm (one segment per structure), see rtrai.io.dicom_seg
            from rtrai.io.dicom_seg import write_seg_files

            write_seg_files(result, tmp, rtstruct=False, algorithm=segmenter.info)
        else:
            write_segmentation(result.structures, tmp / "Structures.seg.nrrd", result.colors, case.ct)
        if gradcam:
            from rtrai.core.structures import to_tg263
            from rtrai.io.images import write_image
            from rtrai.models.gradcam import segmentation_gradcam

            explained = to_tg263(gradcam)
            write_image(segmentation_gradcam(segmenter, case, explained), tmp / f"gradcam_{explained}.nrrd")
        if qa:
            from rtrai.segmentation.qa import segmentation_qa

            segmentation_qa(segmenter, case, masks, tmp, qa if isinstance(qa, str) else None,
                            source if source.is_dir() else None)
        provenance.write(tmp, provenance.record(
            "segment", {"input": str(source), "format": fmt, "device": str(segmenter.device),
                        **({"qa": qa if isinstance(qa, str) else "shipped reference"} if qa else {})}, inputs=[source],
            models=[segmenter.info], extra={"structures": sorted(masks), "not_found": empty,
                                            "seconds": round(time.time() - started, 2)}))
    return out


def run_train(args) -> int:
    from rtrai.core.errors import InputError
    from rtrai.core.progress import default
    from rtrai.segmentation.config import load_config
    from rtrai.segmentation.train import RECIPE, is_recipe, main_command, train, train_recipe

    if not args.data:
        raise InputError("rtrai segment train needs --data DIR (a folder of training patients)")
    if not args.resume and not args.config:
        raise InputError("rtrai segment train needs --config (a YAML/JSON file or a shipped name such as hn-oar-ct)")
    if args.resume and args.config:
        raise InputError("--resume continues with the config saved in the work folder; leave out --config")
    config = load_config(args.config) if args.config else None
    if config is not None and args.val_data:
        config["validation"]["data"] = args.val_data
    if config is not None and args.steps:
        config["steps"] = int(args.steps)
    if args.seed is not None:
        if config is None:
            raise InputError("--seed starts a new run; a resumed run keeps its own seed")
        config["seed"] = int(args.seed)
    if args.init:
        if config is None:
            raise InputError("--init starts a new run; a resumed run continues from its checkpoint")
        config["init"] = args.init
    if is_recipe(config) if config is not None else (Path(args.output) / RECIPE).is_file():
        if args.max_steps is not None or (args.resume and args.steps):
            raise InputError("a recipe (a config with base or average_seeds) runs each stage to its end: leave out "
                             "--max-steps and --steps; stop it at any time and --resume it")
        if args.seed is not None and config.get("average_seeds"):
            raise InputError("the runs of this recipe take their seeds from its average_seeds; leave out --seed")
        folder = train_recipe(args.data, config, args.output, resume=args.resume, command=main_command(),
                              progress=default("Loading cases"))
    else:
        folder = train(args.data, config, args.output, resume=args.resume, max_steps=args.max_steps,
                       command=main_command(), progress=default("Loading cases"), steps=args.steps)
    print(f"best model in {folder}")
    return 0


def _qa_option(args):
    """What segment_one's ``qa`` takes: None (no QA), True (shipped reference table) or a table's path."""
    if not args.qa:
        return None
    return args.qa_reference or True


def run_qa(source: str, output: str, reference: str | None) -> int:
    """``rtrai segment qa INPUT -o OUT``: the checks on a case's own structures, flags only."""
    from rtrai.core import provenance
    from rtrai.core.errors import InputError
    from rtrai.core.outputs import output_folder
    from rtrai.io.case_io import read_case
    from rtrai.segmentation.qa import check_case, load_reference, write_report

    table = load_reference(reference)  # a bad table is said before reading the case
    case = read_case(source)
    if not case.structures:
        raise InputError(f"{source}: no structures to check")
    rows = check_case(case, table)
    with output_folder(output) as tmp:
        write_report(tmp, rows, {"reference": {"name": table.get("name"), "thresholds": table["thresholds"]}})
        provenance.write(tmp, provenance.record("segment qa", {"input": str(source), "reference": reference or
                                                               table.get("name")}, inputs=[source]))
    for row in rows:
        if row["flagged"]:
            print(f"{row['structure']:16s} FLAGGED  {row['reason']}")
    flagged = sum(r["flagged"] for r in rows)
    print(f"{flagged} of {len(rows)} structures flagged; wrote {Path(output) / 'contour_qa.csv'}")
    return 0


def run_average(sources: list[str], output: str) -> int:
    from rtrai.models import average_models

    manifest = average_models(sources, output)
    print(f"averaged {len(sources)} models into {manifest.parent} (evaluate it before shipping)")
    return 0


def run_evaluate(args) -> int:
    import csv
    import io
    import json

    import numpy as np
    import SimpleITK as sitk

    from rtrai.core import provenance
    from rtrai.core.errors import GeometryError, InputError
    from rtrai.core.image import check_same_grid
    from rtrai.core.outputs import output_folder, write_text
    from rtrai.core.progress import default, track
    from rtrai.io.case_io import input_kind, list_cases, read_case
    from rtrai.io.openkbp import imaged_slices
    from rtrai.segmentation.metrics import evaluate

    pred, ref, out = Path(args.pred), Path(args.ref), Path(args.output)
    try:
        input_kind(ref)
        pairs = [(pred, ref)]
    except InputError:
        refs = {p.name: p for p in (list_cases(ref) if ref.is_dir() else [])}
        preds = {p.name: p for p in (list_cases(pred) if pred.is_dir() else [])}
        pairs = [(preds[name], refs[name]) for name in refs if name in preds]
        if not pairs:
            raise InputError(f"no patients to compare: {ref} and {pred} share no readable patient folder")
    rows = []
    for p, r in track(pairs, default("Evaluating"), message=""):
        predicted, reference = read_case(p), read_case(r)
        if not reference.structures:
            raise InputError(f"{r}: the reference has no structures")
        grid_ref = next(iter(reference.structures.values()))
        for name, mask in predicted.structures.items():
            try:
                check_same_grid(grid_ref, mask, ("reference", f"prediction '{name}'"))
            except GeometryError as exc:
                raise GeometryError(f"{p}: {exc}") from None
        scored = np.ones(grid_ref.GetSize()[2], bool)
        if args.imaged_slices:
            if reference.ct is None:
                raise InputError(f"{r}: --imaged-slices needs the reference's CT (it has none)")
            scored = imaged_slices(reference)

        def arrays(case) -> dict:  # absent where the reference has none of it on the scored slices
            out = {}
            for name, mask in case.structures.items():
                array = sitk.GetArrayFromImage(mask)
                array[~scored] = 0
                out[name] = array
            return out

        spacing = tuple(reversed(grid_ref.GetSpacing()))
        predicted_arrays, reference_arrays = arrays(predicted), arrays(reference)
        reference_arrays = {n: a for n, a in reference_arrays.items() if a.any()}
        names = args.structures or sorted(set(predicted.structures) & set(reference_arrays))
        for row in evaluate(predicted_arrays, reference_arrays, spacing, args.tolerance, names):
            rows.append({"patient": reference.patient_id, "scored_slices": int(scored.sum()), **row})
    columns = ["patient", "structure", "dsc", "hd95_mm", "msd_mm", "surface_dsc", "volume_pred_voxels",
               "volume_ref_voxels", "scored_slices"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    summary = {}
    for name in sorted({row["structure"] for row in rows}):
        mine = [row for row in rows if row["structure"] == name]
        summary[name] = {k: float(np.mean([row[k] for row in mine])) for k in ("dsc", "surface_dsc")}
        summary[name]["cases"] = len(mine)
    clean = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # noqa: E731 - JSON has no inf
    with output_folder(out) as tmp:
        write_text(tmp / "metrics.csv", text.getvalue())
        write_text(tmp / "metrics.json", json.dumps(
            {"tolerance_mm": args.tolerance, "imaged_slices_only": bool(args.imaged_slices),
             "per_structure_mean": summary,
             "rows": [{k: clean(v) for k, v in row.items()} for row in rows]}, indent=2) + "\n")
        provenance.write(tmp, provenance.record("evaluate segmentation", {"pred": str(pred), "ref": str(ref),
                                                                          "tolerance_mm": args.tolerance,
                                                                          "imaged_slices": bool(args.imaged_slices)},
                                                inputs=[pred, ref]))
    for name, values in summary.items():
        print(f"{name:16s} DSC {values['dsc']:.3f}  surface DSC {values['surface_dsc']:.3f}  ({values['cases']} cases)")
    print(f"wrote {out}")
    return 0
