"""``rtrai plan``: a photon IMRT fluence plan whose dose mimics the predicted (or a given) dose."""

from __future__ import annotations

from rtrai.plan.engine import DEFAULT_BEAMS

FORMATS = ("nrrd", "dicom")


def register(sub) -> None:
    p = sub.add_parser("plan", help="a photon IMRT plan that mimics the predicted (or a given) dose (pyRadPlan)",
                       description="Builds the dose-influence matrix of coplanar 6 MV beams (pyRadPlan pencil beams) "
                                   "and optimises the fluence so that the plan dose mimics the dose: the model's "
                                   "prediction (--predict, the default) or --dose, with priority on target coverage "
                                   "and on OAR means not above that dose's. Writes OUT/PlanDose.nrrd (Gy, CT grid), "
                                   "plan.json, fluence.png, dvh.png, dvh_comparison.csv, provenance.json, and with "
                                   "--format dicom OUT/dicom/ (CT, RTSTRUCT, RTPLAN, RTDOSE of the plan dose).")
    p.add_argument("input", metavar="INPUT", help="case folder, OpenKBP patient or DICOM folder (as for rtrai run)")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dose", metavar="D", help="mimic this dose (NRRD/NIfTI in Gy or RTDOSE, on the CT grid)")
    source.add_argument("--predict", action="store_true", help="mimic the dose model's prediction (the default)")
    p.add_argument("--model", default="hn-dose-openkbp", help="dose model for --predict (default hn-dose-openkbp)")
    p.add_argument("--beams", type=int, default=DEFAULT_BEAMS,
                   help=f"equispaced coplanar beams (default {DEFAULT_BEAMS}, every {360 / DEFAULT_BEAMS:g} degrees)")
    p.add_argument("--bixel", type=float, default=7.0, metavar="MM", help="bixel width at the isocentre (default 7)")
    p.add_argument("--grid", type=float, default=6.0, metavar="MM", help="dose-grid spacing (default 6)")
    p.add_argument("--iterations", type=int, default=500,
                   help="optimiser iterations at most (default 500), then 30 %% as many on the full matrix")
    p.add_argument("--prescription", help="target prescriptions, e.g. PTV70=70,PTV56=56 (default: from the case)")
    p.add_argument("--format", default="nrrd", choices=FORMATS, dest="fmt")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device of the dose model")
    p.set_defaults(func=run_plan)


def run_plan(args) -> int:
    from rtrai.core import provenance
    from rtrai.core.errors import require
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import default
    from rtrai.dose.qa import read_case_with_prescription, read_dose_file
    from rtrai.plan.engine import body_mask, gantry_angles
    from rtrai.plan.mimicking import check_dose_to_mimic, plan_case, prescriptions
    from rtrai.plan.outputs import write_plan_outputs

    require("pyRadPlan", "plan")  # before any work: the engine is an optional dependency
    case = read_case_with_prescription(args.input, args.prescription)
    # Bad input is said before any long work: targets, prescriptions, body, beams, the dose's grid.
    prescriptions(case)
    body_mask(case)
    gantry_angles(args.beams)
    models = []
    if args.dose:
        dose = read_dose_file(args.dose, "--dose")
        check_dose_to_mimic(case, dose)
    else:
        from rtrai.dose.inference import DosePredictor

        predictor = DosePredictor(args.model, args.device)
        dose = predictor.predict(case)
        models.append(predictor.model_info)
    result = plan_case(case, dose, args.beams, args.bixel, args.grid, args.iterations, progress=default("Planning"))
    with output_folder(args.output) as tmp:
        written = write_plan_outputs(tmp, case, result, args.fmt)
        parameters = {"beams": args.beams, "bixel_mm": args.bixel, "grid_mm": args.grid,
                      "iterations": args.iterations, "format": args.fmt, "prescription": result.prescription,
                      "mimicked": args.dose or f"prediction of {args.model}"}
        inputs = [args.input] + ([args.dose] if args.dose else [])
        provenance.write(tmp, provenance.record("plan", parameters, inputs=inputs, models=models,
                                                extra={"written": written, "engine": result.influence.versions}))
    print(f"planned {len(result.influence.beams)} beams, {result.influence.bixels} bixels "
          f"(matrix {result.matrix_s:.0f} s, optimisation {result.optimisation_s:.0f} s, {result.iterations} "
          f"iterations) into {args.output}")
    return 0
