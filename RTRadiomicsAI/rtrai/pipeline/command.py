"""``rtrai run``: one case, a folder of patients or a ``--cohort`` list."""

from __future__ import annotations

import sys
from pathlib import Path

from rtrai.pipeline.case_run import SKIPPED, Options
from rtrai.pipeline.cohort import read_cohort_list, run_cohort
from rtrai.pipeline.runner import run_case
from rtrai.plan.engine import DEFAULT_BEAMS


def register(sub) -> None:
    run = sub.add_parser(
        "run", help="one case end to end: AutoSegment, DosePredict, DVH, radiomics, outcome, HTML report, scene",
        description="Writes OUT/CT.nrrd, Structures.seg.nrrd, Dose.nrrd, features.csv, dvh.csv, report.html, "
                    "scene.mrb and provenance.json (plus dvh_metrics.csv, constraints.csv, contour_qa.csv, case.json, "
                    "run.log; with --plan, OUT/plan/). INPUT is what `rtrai convert` reads (OpenKBP patient, DICOM "
                    "folder, case folder, image); a folder of patients or --cohort LIST runs each into OUT/<case>/ "
                    "(finished cases are skipped; on a Dask cluster with --scheduler) and writes OUT/cohort.csv, "
                    "cohort_features.csv and cohort_report.html.")
    run.add_argument("input", nargs="?", metavar="INPUT")
    run.add_argument("-o", "--output", required=True, metavar="OUT")
    run.add_argument("--cohort", metavar="LIST", help="text file with one case path per line")
    run.add_argument("--keep-structures", action="store_true",
                     help="use the input's structures instead of AutoSegment when it has some")
    run.add_argument("--prescription", help="target prescriptions, e.g. PTV70=70,PTV56=56 (default: the RTPLAN's, "
                                            "or the level in the target's name)")
    run.add_argument("--outcome-model", metavar="M", help="outcome model folder (from `rtrai outcome fit`)")
    run.add_argument("--segmentation-model", default="hn-oar-ct",
                     help="AutoSegment model: a zoo name (default: hn-oar-ct), a MONAI bundle folder, a TorchScript "
                          "file with its NAME.json manifest, or an nnU-Net v2 trained-model folder")
    run.add_argument("--dose-model", default="hn-dose-openkbp", help="DosePredict model (default: hn-dose-openkbp)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--jobs", type=int, help="radiomics worker processes (default: the CPUs, at most 4); with "
                                              "--scheduler local, the cluster's worker processes")
    run.add_argument("--no-scene", action="store_true", help="do not write scene.mrb")
    plan = run.add_argument_group("treatment plan (rtrai plan, rtrai dose qa)")
    plan.add_argument("--plan", action="store_true",
                      help="add a photon IMRT fluence plan mimicking the predicted dose (pyRadPlan) and its QA against "
                           "the input's dose when there is one, else the predicted dose: OUT/plan/")
    plan.add_argument("--beams", type=int, default=DEFAULT_BEAMS,
                      help=f"with --plan: equispaced coplanar beams (default {DEFAULT_BEAMS})")
    plan.add_argument("--bixel", type=float, default=7.0, metavar="MM",
                      help="with --plan: bixel width at the isocentre (default 7)")
    plan.add_argument("--grid", type=float, default=6.0, metavar="MM",
                      help="with --plan: dose-grid spacing (default 6)")
    plan.add_argument("--iterations", type=int, default=500, help="with --plan: optimiser iterations at most "
                                                                  "(default 500)")
    plan.add_argument("--margin-gy", type=float, metavar="GY",
                      help="with --plan: QA flags a metric worse than its reference by more than this (default: "
                           "rtrai dose qa's)")
    cohort = run.add_argument_group("cohort (a folder of patients or --cohort LIST)")
    cohort.add_argument("--clinical", metavar="C.csv", help="clinical table (ID or case column) for the outcome model "
                                                            "of cohort_report.html")
    cohort.add_argument("--endpoint", metavar="TIME,EVENT|LABEL", help="columns of --clinical to model in "
                                                                      "cohort_report.html")
    from rtrai.core.workers import add_cluster_arguments

    add_cluster_arguments(cohort, jobs=False)  # --scheduler, --worker-memory; --jobs N = the LocalCluster's workers
    run.set_defaults(func=run_command)


def options_from_args(args) -> Options:
    from rtrai.dose.commands import parse_prescription

    return Options(keep_structures=args.keep_structures, segmentation_model=args.segmentation_model,
                   dose_model=args.dose_model, prescription=parse_prescription(args.prescription),
                   outcome_model=args.outcome_model, device=args.device, scene=not args.no_scene, jobs=args.jobs,
                   plan=args.plan, plan_beams=args.beams, plan_bixel_mm=args.bixel, plan_grid_mm=args.grid,
                   plan_iterations=args.iterations, qa_margin_gy=args.margin_gy)


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
    if options.plan:  # said before any long work
        from rtrai.plan.engine import gantry_angles

        gantry_angles(options.plan_beams)
        if options.plan_iterations < 1 or min(options.plan_bixel_mm, options.plan_grid_mm) <= 0:
            raise InputError("--iterations must be at least 1, --bixel and --grid above 0 mm")
    if cases is None:
        for flag, value in (("--scheduler", args.scheduler), ("--clinical", args.clinical),
                            ("--endpoint", args.endpoint), ("--worker-memory", args.worker_memory)):
            if value:
                raise InputError(f"{flag} is for a cohort (a folder of patients or --cohort LIST); {source} is one "
                                 "case")
        run = run_case(source, out, options, default("rtrai run"))
        for line in run.log:
            print(line)
        for step in run.steps.values():
            if step.status == SKIPPED:
                print(f"rtrai: note: {step.title} skipped: {step.reason}", file=sys.stderr)
        print(f"wrote {out}: open {out / 'report.html'} in a browser, {out / 'scene.mrb'} in 3D Slicer")
        return 0
    from rtrai.report.cohort import check_endpoint, write_cohort_report

    check_endpoint(args.clinical, args.endpoint)  # a wrong endpoint is said before hours of work
    counts = run_cohort(cases, out, options, default("rtrai run"), scheduler=args.scheduler,
                        workers=args.jobs or 1, worker_memory=args.worker_memory)
    report = write_cohort_report(out, args.clinical, args.endpoint)
    for row in counts["failed"]:
        print(f"rtrai: error: {row['case']}: {row['error']}", file=sys.stderr)
    print(f"{counts['done']} cases run, {counts['finished_before']} finished before, {len(counts['failed'])} failed: "
          f"{out / 'cohort.csv'}, {report}")
    return 2 if counts["failed"] else 0
