"""Command line of dose evaluation: ``rtrai dvh``, ``rtrai gamma`` and ``rtrai dose evaluate``.

``rtrai dose`` is shared with the prediction commands: :func:`register` adds ``evaluate`` to an existing ``dose``
parser (or creates it), so the two registrations work in either order.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtrai.core.commands import nested

DEFAULT_DVH_METRICS = "Dmean,Dmax,Dmin,D98%,D95%,D50%,D2%,D2cc,D0.1cc,V20Gy,Volume"


def register(sub) -> None:
    p = sub.add_parser("dvh", help="cumulative DVHs and DVH metrics of structures in a dose",
                       description="DVHs on the dose grid. RTSTRUCT contours are sampled with sub-voxel accuracy "
                                   "(partial voxels by covered fraction, dose interpolated inside each voxel).")
    p.add_argument("--dose", required=True, help="dose: NRRD/NIfTI (Gy), RTDOSE .dcm, or a case folder")
    p.add_argument("--structures", required=True, help="RTSTRUCT .dcm, .seg.nrrd, or a case folder")
    p.add_argument("--metrics", default=DEFAULT_DVH_METRICS,
                   help=f"comma-separated: Dmean, Dmax, Dmin, Volume, D<x>%%, D<x>cc, V<x>Gy, V<x>Gy_cc "
                        f"(default {DEFAULT_DVH_METRICS.replace('%', '%%')})")  # argparse %-formats help
    p.add_argument("--names", help="comma-separated structure names to include (default: all)")
    p.add_argument("--bin", type=float, default=0.1, help="dose bin of dvh.csv in Gy (default 0.1)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=run_dvh)

    p = sub.add_parser("gamma", help="3D gamma index between two doses (pass rate and gamma map)")
    p.add_argument("--reference", required=True, help="reference dose (NRRD/NIfTI in Gy, RTDOSE, case folder)")
    p.add_argument("--evaluated", required=True, help="evaluated dose (same kinds)")
    p.add_argument("--dd", type=float, default=3.0, help="dose-difference criterion in %% (default 3)")
    p.add_argument("--dta", type=float, default=3.0, help="distance-to-agreement in mm (default 3)")
    p.add_argument("--local", action="store_true", help="local gamma (%% of the local reference dose)")
    p.add_argument("--cutoff", type=float, default=10.0,
                   help="ignore reference voxels below this %% of the normalisation (default 10)")
    p.add_argument("--max-gamma", type=float, default=2.0, help="search limit; larger values are capped (default 2)")
    p.add_argument("--norm", type=float, help="global normalisation dose in Gy (default: reference maximum)")
    p.add_argument("--interp-fraction", type=int, default=10,
                   help="search step = DTA / this (default 10, as pymedphys)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=run_gamma)

    dose_sub = nested(sub, "dose", "dose prediction and evaluation")
    p = dose_sub.add_parser("evaluate", help="OpenKBP dose/DVH scores, isodose Dice and DVH metric errors",
                            description="Compare predicted with reference doses. P and R: Dose.nrrd files (with "
                                        "--structures), case folders, OpenKBP patient folders, or folders of "
                                        "them (matched by folder name).")
    p.add_argument("--pred", required=True, help="predicted dose(s)")
    p.add_argument("--ref", required=True, help="reference dose(s)")
    p.add_argument("--structures", help="structures for dose files: .seg.nrrd or a case folder")
    p.add_argument("--prescription", type=float, help="prescription in Gy (default: highest PTV level, PTV70 -> 70)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=run_evaluate)

    from rtrai.dose.qa import register as register_qa

    register_qa(dose_sub)  # rtrai dose qa: a plan's dose against the predicted achievable dose


# ----------------------------------------------------------------------------------------------------------- inputs

def read_dose(path: str | Path):
    """A dose image in Gy from an image file, an RTDOSE file or a case/OpenKBP/DICOM folder."""
    from rtrai.core.errors import InputError

    path = Path(path)
    if path.is_file() and (path.suffix.lower() == ".dcm" or _is_dicom(path)):
        from rtrai.io.dicomrt import read_rtdose

        return read_rtdose(path)[0]
    if path.is_file():
        from rtrai.io.images import read_image

        return read_image(path)
    from rtrai.io.case_io import read_case

    case = read_case(path)
    if case.dose is None:
        raise InputError(f"{path} holds no dose")
    return case.dose


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _structure_samples(dose, source: str, names: list[str] | None, progress):
    """Name -> DoseSamples for an RTSTRUCT (contours on the dose grid), a .seg.nrrd or a case folder (masks)."""
    from rtrai.core.errors import InputError
    from rtrai.core.progress import track
    from rtrai.core.structures import to_tg263
    from rtrai.dose.dvh import samples_from_contours, samples_from_mask

    path = Path(source)
    wanted = None if names is None else {to_tg263(n) for n in names} | set(names)
    samples = {}
    if path.is_file() and (path.suffix.lower() == ".dcm" or _is_dicom(path)):
        from rtrai.io.dicomrt import read_rtstruct

        rois, _ = read_rtstruct(path)
        rois = [r for r in rois if r.contours and (wanted is None or r.tg263 in wanted or r.name in wanted)]
        for roi in track(rois, progress, message="DVH"):
            samples[roi.tg263] = samples_from_contours(dose, roi.contours)
    else:
        if path.is_file() and path.name.lower().endswith(".seg.nrrd"):
            from rtrai.io.segfile import read_segmentation

            masks = read_segmentation(path)[0]
        elif path.is_dir():
            from rtrai.io.case_io import read_case

            masks = read_case(path).structures
        else:
            raise InputError(f"{path}: structures must be an RTSTRUCT file, a .seg.nrrd or a case folder")
        masks = {n: m for n, m in masks.items() if wanted is None or n in wanted or to_tg263(n) in wanted}
        for name in track(list(masks), progress, message="DVH"):
            samples[name] = samples_from_mask(dose, masks[name])
    if wanted is not None and not samples:
        raise InputError(f"none of the structures {sorted(names)} is in {path}")
    if not samples:
        raise InputError(f"{path} holds no structures")
    for name, s in samples.items():
        if s.total_cc <= 0 and s.outside_cc > 0:
            raise InputError(f"structure '{name}' lies entirely outside the dose grid (unrelated grids?)")
    return samples


# ------------------------------------------------------------------------------------------------------------- dvh

def run_dvh(args) -> int:
    from rtrai.core import progress as prog
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.dose.dvh import dvh_csv, dvh_table, metric, parse_metrics
    from rtrai.core.image import check_dose

    metrics = parse_metrics(args.metrics)
    dose = read_dose(args.dose)
    check_dose(dose, "dose")
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    samples = _structure_samples(dose, args.structures, names, prog.default("DVH"))
    table = dvh_table(samples, args.bin)
    with output_folder(args.output) as out:
        (out / "dvh.csv").write_text(dvh_csv(table, samples), encoding="utf-8")
        lines = ["structure,metric,value"]
        for name, s in samples.items():
            for m in metrics:
                lines.append(f"{name},{m},{metric(s, m):.5f}")
            if s.outside_cc > 0:
                lines.append(f"{name},VolumeOutsideDoseGrid_cc,{s.outside_cc:.5f}")
        (out / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _plot_dvh(table, samples, out / "dvh.png")
        provenance.write(out, provenance.record("dvh", {"metrics": metrics, "bin_gy": args.bin, "names": names},
                                                inputs=[args.dose, args.structures]))
    for name, s in samples.items():
        print(f"{name}: {s.total_cc:.2f} cc, Dmean {metric(s, 'Dmean'):.2f} Gy, D95% {metric(s, 'D95%'):.2f} Gy"
              + (f" ({s.outside_cc:.2f} cc outside the dose grid)" if s.outside_cc > 0 else ""))
    return 0


def _plot_dvh(table, samples, path: Path) -> None:
    import matplotlib.pyplot as plt

    from rtrai.dose.dvh import dvh_figure

    fig = dvh_figure(table, samples)
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------- gamma

def run_gamma(args) -> int:
    from rtrai.core import progress as prog
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.dose.gamma import gamma_index
    from rtrai.io.images import write_image

    reference, evaluated = read_dose(args.reference), read_dose(args.evaluated)
    result = gamma_index(reference, evaluated, args.dd, args.dta, local=args.local, cutoff_percent=args.cutoff,
                         max_gamma=args.max_gamma, normalisation_gy=args.norm, interp_fraction=args.interp_fraction,
                         progress=prog.default("gamma"))
    with output_folder(args.output) as out:
        (out / "gamma.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        write_image(result.gamma, out / "gamma.nrrd")
        provenance.write(out, provenance.record("gamma", result.parameters, inputs=[args.reference, args.evaluated]))
    print(f"gamma {args.dd:g}%/{args.dta:g} mm ({'local' if args.local else 'global'}): pass rate "
          f"{result.pass_rate_pct:.2f}% of {result.evaluated_points} voxels")
    return 0


# -------------------------------------------------------------------------------------------------------- evaluate

def _patient_pairs(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """(name, pred, ref) pairs: one pair, or patients matched by folder name in two folders of patients."""
    from rtrai.core.errors import InputError
    from rtrai.io.case_io import input_kind
    from rtrai.io.openkbp import prediction_dose_file

    def single(path: Path) -> bool:
        if path.is_file() or prediction_dose_file(path):
            return True
        try:
            input_kind(path)
            return True
        except InputError:
            return False

    if single(pred) and single(ref):
        return [(ref.name if ref.is_dir() else pred.parent.name or pred.stem, pred, ref)]
    if not (pred.is_dir() and ref.is_dir()):
        raise InputError(f"--pred {pred} and --ref {ref} must both be single cases or both folders of patients")
    ref_cases = {p.name: p for p in sorted(ref.iterdir()) if p.is_dir() and single(p)}
    pred_cases = {p.name: p for p in sorted(pred.iterdir()) if p.is_dir() and single(p)}
    common = sorted(set(ref_cases) & set(pred_cases), key=lambda n: (len(n), n))
    if not common:
        raise InputError(f"no patient folder names in common between {pred} and {ref}")
    return [(n, pred_cases[n], ref_cases[n]) for n in common]


def _load_case_dose(path: Path):
    from rtrai.core.case import Case

    if path.is_file():
        return Case(dose=read_dose(path))
    from rtrai.io.case_io import read_case

    return read_case(path)


def _evaluate_pair(name: str, pred_path: Path, ref_path: Path, structures: str | None, prescription: float | None):
    import SimpleITK as sitk

    from rtrai.core.errors import GeometryError, InputError
    from rtrai.core.image import Grid
    from rtrai.core.image import check_dose
    from rtrai.dose.scores import score_patient

    from rtrai.core.case import Case
    from rtrai.io.openkbp import prediction_dose_file, read_prediction_dose

    ref_case = _load_case_dose(ref_path)
    if prediction_dose_file(pred_path) and ref_case.dose is not None:  # OpenKBP's submission layout: dose.csv only
        pred_case = Case(dose=read_prediction_dose(pred_path, Grid.of(ref_case.dose)))
    else:
        pred_case = _load_case_dose(pred_path)
    for case, what, path in ((ref_case, "reference", ref_path), (pred_case, "predicted", pred_path)):
        if case.dose is None:
            raise InputError(f"{name}: the {what} input {path} holds no dose")
    # Each message names the input at fault: ``name`` is the reference's folder name, not the predicted input.
    diffs = Grid.of(ref_case.dose).differences(Grid.of(pred_case.dose))
    if diffs:
        raise GeometryError(f"{name}: the predicted dose {pred_path} is not on the grid of the reference dose "
                            f"{ref_path}: " + "; ".join(diffs))
    ref = check_dose(ref_case.dose, f"{name}: the reference dose {ref_path}")
    pred = check_dose(pred_case.dose, f"{name}: the predicted dose {pred_path}")
    holder, holder_path = (ref_case, ref_path) if ref_case.structures else (pred_case, pred_path)
    if structures:
        holder_path = Path(structures)
        holder = _load_case_dose(Path(structures)) if Path(structures).is_dir() else None
        if holder is None:
            from rtrai.io.segfile import read_segmentation

            holder = Case()
            for n, m in read_segmentation(structures)[0].items():
                holder.add_structure(n, m)
    masks = {}
    for sname, mask in holder.structures.items():
        d = Grid.of(mask).differences(Grid.of(ref_case.dose))
        if d:
            raise GeometryError(f"{name}: structure '{sname}' of {holder_path} is not on the grid of the reference "
                                f"dose {ref_path}: " + "; ".join(d))
        masks[sname] = sitk.GetArrayViewFromImage(mask) != 0
    targets = holder.targets()
    if prescription is None:
        if not targets:
            raise InputError(f"{name}: no PTV among the structures ({', '.join(sorted(masks)) or 'none'}), so the "
                             "prescription is unknown; name targets like PTV70 or pass --prescription")
        levels = [holder.prescription_for(t) for t in targets]
        if all(level is None for level in levels):
            raise InputError(f"{name}: the prescription of {', '.join(targets)} is unknown (no dose level in the "
                             "name and none recorded); pass --prescription")
        prescription = max(level for level in levels if level is not None)
    pdm_case = ref_case if ref_case.possible_dose_mask is not None else pred_case
    pdm = None
    if pdm_case.possible_dose_mask is not None:
        pdm = sitk.GetArrayViewFromImage(pdm_case.possible_dose_mask) != 0
        if pdm.shape != ref.shape:
            where = ref_path if pdm_case is ref_case else pred_path
            raise GeometryError(f"{name}: the possible-dose mask of {where} and the reference dose {ref_path} are "
                                "on different grids")
    voxel_mm3 = Grid.of(ref_case.dose).voxel_volume_cc * 1000.0
    return score_patient(name, ref, pred, masks, voxel_mm3, pdm, float(prescription))


def run_evaluate(args) -> int:
    import numpy as np

    from rtrai.core import progress as prog
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.dose.scores import summarise

    if args.prescription is not None:
        from rtrai.core.errors import InputError
        from rtrai.core.image import MAX_PLAUSIBLE_GY

        if not 0 < args.prescription <= MAX_PLAUSIBLE_GY:  # also NaN
            raise InputError(f"--prescription {args.prescription:g}: a prescription must be a dose in Gy in (0, "
                             f"{MAX_PLAUSIBLE_GY:g}] (70, not 7000 cGy)")
    pairs = _patient_pairs(Path(args.pred), Path(args.ref))
    results = [_evaluate_pair(n, p, r, args.structures, args.prescription)
               for n, p, r in prog.track(pairs, prog.default("evaluate"), message="scoring")]
    summary = summarise(results)
    summary["per_patient"] = [{"patient": r.patient, "dose_score_gy": r.dose_score,
                               "dvh_score_gy": float(np.mean(r.dvh_abs_errors)) if r.dvh_abs_errors else None,
                               "prescription_gy": r.prescription_gy,
                               "isodose_dice": {str(k): v for k, v in r.isodose.items()}, "notes": r.notes}
                              for r in results]
    with output_folder(args.output) as out:
        (out / "scores.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
        lines = ["patient,structure,metric,reference_gy,predicted_gy,error_gy"]
        lines += [f"{r.patient},{row['structure']},{row['metric']},{row['reference']:.5f},{row['predicted']:.5f},"
                  f"{row['error']:.5f}" for r in results for row in r.dvh_rows]
        (out / "dvh_metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        levels = sorted({lvl for r in results for lvl in r.isodose})
        lines = ["patient,dose_score_gy,dvh_score_gy," + ",".join(f"dice_{lvl}pct" for lvl in levels)]
        for r, row in zip(results, summary["per_patient"]):
            dvh = row["dvh_score_gy"]
            lines.append(f"{r.patient},{r.dose_score:.5f},{'' if dvh is None else f'{dvh:.5f}'},"
                         + ",".join(f"{r.isodose.get(lvl, float('nan')):.5f}" for lvl in levels))
        (out / "scores.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        provenance.write(out, provenance.record("dose evaluate", {"prescription_gy": args.prescription,
                                                                  "structures": args.structures},
                                                inputs=[args.pred, args.ref]))
    print(f"{summary['patients']} patient(s): dose score {summary['dose_score_gy']:.3f} Gy, "
          f"DVH score {summary['dvh_score_gy']:.3f} Gy")
    return 0
