"""``rtrai radiomics`` (one case, a cohort, voxel maps, robustness) and ``rtrai ibsi``. Nothing heavy is imported
at module level: pyradiomics and mirp load inside the handlers."""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _add_input_arguments(parser, mask_required: bool = False) -> None:
    parser.add_argument("--image", help="image file, or a case folder from `rtrai convert`")
    parser.add_argument("--mask", required=mask_required, help="labelmap or .seg.nrrd (not needed with a case folder "
                                                               "and --structure)")
    parser.add_argument("--label", type=int, help="label value of the ROI in the mask (default: the parameter "
                                                  "file's, else 1)")
    parser.add_argument("--structure", help="segment name in a case folder or .seg.nrrd")
    parser.add_argument("--dose", action="store_true", help="with a case folder: use Dose.nrrd instead of CT.nrrd")
    parser.add_argument("--resample-mask", action="store_true",
                        help="resample the mask onto the image grid (nearest neighbour) instead of refusing")
    parser.add_argument("--params", help="pyradiomics parameter file (YAML/JSON)")
    parser.add_argument("--preset", help="built-in parameter file: CT, MR or dose")


def register(sub) -> None:
    radiomics = sub.add_parser(
        "radiomics", help="pyradiomics features of a region (one case, a cohort, voxel maps, robustness)",
        description="Extract pyradiomics features with pyradiomics' own column names and values. One case: "
                    "--image/--mask -o features.csv. A cohort: --cohort batch.csv (columns Image, Mask, optional "
                    "ID, Label, Structure) -o features.csv [--jobs N] [--resume]. Voxel maps: --voxel -o DIR. "
                    "Robustness to contour changes: `rtrai radiomics robustness ...`.")
    _add_input_arguments(radiomics)
    radiomics.add_argument("--cohort", help="pyradiomics batch CSV")
    radiomics.add_argument("--jobs", type=int, default=1, help="worker processes (cohort and voxel maps)")
    from rtrai.core.workers import add_cluster_arguments

    add_cluster_arguments(radiomics, jobs=False)  # --scheduler, --worker-memory: cohort and robustness
    radiomics.add_argument("--resume", action="store_true", help="continue an interrupted cohort output")
    radiomics.add_argument("--dvh", action="store_true",
                           help="add dvh_* columns (Dmean, D2/50/98%%, V5..V70 Gy); implied by --preset dose")
    radiomics.add_argument("--voxel", action="store_true", help="voxel-wise feature maps, one NRRD per feature")
    radiomics.add_argument("-o", "--output", required=False, help="features.csv (or a folder with --voxel)")
    radiomics.set_defaults(func=run_radiomics)
    # `rtrai radiomics robustness ...` is an optional first word rather than a nested sub-parser, so that the plain
    # `rtrai radiomics --image ...` form keeps working with the same options.
    radiomics.add_argument("mode", nargs="?", choices=["robustness", "deep"],
                           help="robustness: ICC(3,1)/CV of each feature under contour perturbations; deep: the "
                                "encoder activations of a shipped network pooled inside the ROI (rtrai.radiomics.deep)")
    radiomics.add_argument("--model", help="deep: zoo model or model folder whose encoder is used (default hn-oar-ct)")
    radiomics.add_argument("--perturbations", type=int, default=10, help="robustness: number of contours (>= 3)")
    radiomics.add_argument("--seed", type=int, default=0, help="robustness: seed of the random perturbations")

    ibsi = sub.add_parser(
        "ibsi", help="IBSI-1 features under a reference configuration (digital, A-E)",
        description="Compute IBSI-1 features with mirp under the settings of an IBSI configuration and write "
                    "tag,value rows with the reference tables' tags. With --reference TABLE, also write "
                    "<out>.report.csv: per family, referenced / computed / within tolerance.")
    ibsi.add_argument("--config", required=True, choices=["digital", "A", "B", "C", "D", "E"])
    ibsi.add_argument("--image", required=True)
    ibsi.add_argument("--mask", required=True)
    ibsi.add_argument("--reference", help="IBSI reference-value table to compare with")
    ibsi.add_argument("-o", "--output", required=True, help="out.csv")
    ibsi.set_defaults(func=run_ibsi)


def _params(args):
    dvh = args.dvh or (args.preset or "").lower() == "dose"
    return args.params, args.preset, dvh


def run_radiomics(args) -> int:
    from rtrai.core.errors import InputError

    if args.mode == "deep":
        from rtrai.radiomics.deep import run_deep

        return run_deep(args)
    if args.mode == "robustness":
        return run_robustness(args)
    if not args.output:
        raise InputError("name the output with -o")
    if not args.voxel and Path(args.output).is_dir():
        raise InputError(f"-o {args.output} is a folder: name the features file, e.g. -o "
                         f"{Path(args.output) / 'features.csv'} (a folder is for --voxel maps)")
    if args.cohort:
        return _run_cohort(args)
    if not args.image:
        raise InputError("give --image (and --mask or --structure), or --cohort")
    if args.voxel:
        return _run_voxel(args)
    return _run_single(args)


def _inputs(args, extractor):
    from rtrai.radiomics.extract import load_inputs

    return load_inputs(args.image, args.mask, args.label, args.structure, args.dose, args.resample_mask,
                       extractor.settings.get("label", 1))


def _run_single(args) -> int:
    from rtrai.core.outputs import atomic_file
    from rtrai.radiomics.extract import extract_row, format_value, make_extractor

    params, preset, dvh = _params(args)
    extractor = make_extractor(params, preset)
    inputs = _inputs(args, extractor)
    row = extract_row(extractor, inputs, dvh)
    output = Path(args.output)
    with atomic_file(output, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(row))
            writer.writerow([format_value(v) for v in row.values()])
    _provenance(output, "radiomics", args, [args.image, args.mask, args.params])
    print(f"wrote {sum(1 for k in row if not k.startswith('diagnostics_')) - 4} features to {output}")
    return 0


def _run_cohort(args) -> int:
    from rtrai.core.progress import default
    from rtrai.radiomics.cohort import run_cohort

    params, preset, dvh = _params(args)
    counts = run_cohort(args.cohort, args.output, params, preset, args.jobs, args.resume, dvh, args.dose,
                        args.resample_mask, default("Radiomics"), args.scheduler, args.worker_memory)
    _provenance(Path(args.output), "radiomics --cohort", args, [args.cohort, args.params])
    print(f"{counts['extracted']} extracted, {counts['failed']} failed, {counts['skipped']} kept from before: "
          f"{args.output}")
    if counts["failed"]:
        _report_failed_rows(Path(args.output))
    return 2 if counts["failed"] else 0


def _report_failed_rows(table: Path, shown: int = 10) -> None:
    """One stderr line per failed row of a cohort table (the first ``shown``), then where the rest are."""
    import pandas as pd

    from rtrai.radiomics.cohort import ERROR_COLUMN

    frame = pd.read_csv(table, dtype=str, usecols=lambda c: c in ("ID", ERROR_COLUMN)).fillna("")
    failed = frame[frame[ERROR_COLUMN] != ""]
    for row in failed.head(shown).itertuples(index=False):
        print(f"rtrai: error: {row.ID}: {getattr(row, ERROR_COLUMN)}", file=sys.stderr)
    print(f"rtrai: error: {len(failed)} of {len(frame)} rows failed; their reasons are in the '{ERROR_COLUMN}' "
          f"column of {table}", file=sys.stderr)


def _run_voxel(args) -> int:
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import default
    from rtrai.radiomics.extract import make_extractor
    from rtrai.radiomics.voxel_maps import voxel_maps, write_maps

    params, preset, _ = _params(args)
    inputs = _inputs(args, make_extractor(params, preset))
    maps = voxel_maps(inputs.image, inputs.mask, inputs.label, params, preset, args.jobs, default("Voxel maps"))
    with output_folder(args.output) as tmp:
        write_maps(maps, tmp)
        provenance.write(tmp, provenance.record("radiomics --voxel", _arguments(args),
                                                inputs=[p for p in (args.image, args.mask, args.params) if p]))
    print(f"wrote {len(maps)} feature maps to {args.output}")
    return 0


def run_robustness(args) -> int:
    from functools import partial

    from rtrai.core.errors import InputError
    from rtrai.core.outputs import atomic_file
    from rtrai.core.progress import default
    from rtrai.core.workers import run_cases
    from rtrai.radiomics.cohort import read_batch
    from rtrai.radiomics.extract import make_extractor
    from rtrai.radiomics.robustness import robustness_table

    if not args.output:
        raise InputError("name the output table with -o")
    if args.perturbations < 3:
        raise InputError("--perturbations must be at least 3 (original, erosion, dilation)")
    params, preset, _ = _params(args)
    make_extractor(params, preset)  # bad settings are said before any case runs
    if args.cohort:
        rows = read_batch(args.cohort)
        cases = [(r["Image"], r.get("Mask") or None, int(r["Label"]) if r.get("Label") else None,
                  r.get("Structure") or None) for r in rows]
        names = [r["ID"] for r in rows]
    elif args.image:
        cases, names = [(args.image, args.mask, args.label, args.structure)], [Path(args.image).name]
    else:
        raise InputError("give --image/--mask (coefficient of variation) or --cohort (ICC across cases)")
    task = partial(_robustness_case, params, preset, args.dose, args.resample_mask, args.perturbations, args.seed)
    per_case, failed = [None] * len(cases), []
    for index, features, error in run_cases(task, cases, args.jobs, args.scheduler, args.worker_memory,
                                            progress=default("Robustness"), names=names):
        per_case[index] = features
        if error:
            if len(cases) == 1:
                raise InputError(error)
            failed.append(f"{names[index]}: {error}")
    for line in failed:  # the others still give the table; the command then exits 2
        print(f"rtrai: error: {line}", file=sys.stderr)
    per_case = [f for f in per_case if f is not None]
    if len(cases) > 1 and len(per_case) < 2:
        raise InputError(f"robustness: {len(per_case)} of {len(cases)} cases could be extracted; ICC needs 2")
    table = robustness_table(per_case)
    output = Path(args.output)
    with atomic_file(output, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    _provenance(output, "radiomics robustness", args, [args.image, args.mask, args.cohort, args.params])
    if len(cases) < 2:
        print("one case: ICC(3,1) needs several cases (--cohort); the table gives the coefficient of variation",
              file=sys.stderr)
    print(f"wrote robustness of {len(table)} features over {args.perturbations} perturbations to {output}")
    return 2 if failed else 0


def _robustness_case(params, preset, dose, resample_mask, perturbations, seed, case):
    """One case's features under the contour perturbations (a task of :func:`rtrai.core.workers.run_cases`)."""
    from rtrai.radiomics.extract import load_inputs, make_extractor
    from rtrai.radiomics.robustness import perturbation_features

    image, mask, label, structure = case
    extractor = make_extractor(params, preset)
    inputs = load_inputs(image, mask, label, structure, dose, resample_mask, extractor.settings.get("label", 1))
    return perturbation_features(extractor, inputs.image, inputs.mask, inputs.label, perturbations, seed)


def run_ibsi(args) -> int:
    from rtrai.core.outputs import atomic_file
    from rtrai.radiomics import ibsi

    reference = ibsi.reference_table(args.reference) if args.reference else None  # refused before anything is written
    values = ibsi.compute(args.image, args.mask, args.config)
    output = Path(args.output)
    with atomic_file(output, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["tag", "value"])
            writer.writerows([tag, repr(value)] for tag, value in values.items())
    if reference is not None:
        comparison = ibsi.compare(values, reference)
        report = ibsi.family_report(comparison)
        with atomic_file(output.with_suffix(".report.csv"), suffix=".csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=["family", "referenced", "computed", "within"])
                writer.writeheader()
                writer.writerows(report)
        within, total = sum(r["within"] for r in comparison), len(comparison)
        print(f"IBSI configuration {args.config}: {within}/{total} referenced features within tolerance "
              f"({100 * within / max(total, 1):.1f}%)")
    _provenance(output, "ibsi", args, [args.image, args.mask])
    print(f"wrote {len(values)} IBSI features to {output}")
    return 0


def _arguments(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _provenance(output: Path, command: str, args, inputs) -> None:
    """A single-file result gets ``<file>.provenance.json`` beside it, so a folder's own provenance.json survives."""
    from rtrai.core import provenance

    provenance.write(output.parent, provenance.record(command, _arguments(args), inputs=[p for p in inputs if p]),
                     name=f"{output.name}.provenance.json")
