"""``rtrai dose train``, ``predict``, ``ensemble`` and ``average`` (evaluation commands: ``evaluation_commands``)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from rtrai.core.commands import nested

FORMATS = ("nrrd", "openkbp", "dicom")


def register(sub) -> None:
    dose = nested(sub, "dose", "dose prediction and evaluation")
    p = dose.add_parser("predict", help="predict the 3D dose of a case (or a folder of patients)",
                        description="Writes OUT/Dose.nrrd (Gy, CT geometry, zero outside the possible-dose region), "
                                    "OpenKBP OUT/<patient>/dose.csv, or an RTDOSE, plus provenance.json.")
    p.add_argument("input", metavar="INPUT", help="case folder, OpenKBP patient, DICOM folder or folder of patients")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--model", default="hn-dose-openkbp", help="zoo model name or model folder")
    p.add_argument("--format", default="nrrd", choices=FORMATS, dest="fmt")
    p.add_argument("--prescription", help="target prescriptions, e.g. PTV70=70,PTV56=56 (default: from the case)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    from rtrai.core.workers import add_cluster_arguments

    add_cluster_arguments(p)  # a folder of patients: --jobs N processes, or each patient a task on Dask
    p.set_defaults(func=run_predict)

    t = dose.add_parser("train", help="train a dose-prediction model (background-friendly, resumable)")
    t.add_argument("--data", required=True, help="folder of training patients with doses")
    t.add_argument("--config", required=True, help="YAML config file or shipped name (hn-dose-openkbp)")
    t.add_argument("-o", "--output", required=True, metavar="WORKDIR",
                   help="checkpoint.pt, train.log and the exported model in WORKDIR/model/")
    t.add_argument("--validation", help="validation patients for model selection")
    t.add_argument("--resume", action="store_true", help="continue from WORKDIR/checkpoint.pt")
    t.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    t.set_defaults(func=run_train)

    e = dose.add_parser("ensemble", help="join prior-unet dose models into one model that averages their corrections")
    e.add_argument("models", nargs="+", metavar="MODEL", help="model folders or zoo names (same network and inputs)")
    e.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="the joined model (manifest + weights)")
    e.set_defaults(func=run_ensemble)

    a = dose.add_parser("average", help="average the weights of snapshots of one training run (as SWA)")
    a.add_argument("snapshots", nargs="+", metavar="SNAPSHOT",
                   help="a model folder first, then model folders or the run's checkpoint.pt")
    a.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="the averaged model")
    a.set_defaults(func=run_average)


def parse_prescription(text: str | None) -> dict[str, float]:
    """``"PTV70=70,PTV56=56"`` -> TG-263 name -> Gy; a value must be a dose in Gy: positive and at most
    :data:`rtrai.core.image.MAX_PLAUSIBLE_GY` (the limit under which the dose commands take a dose for Gy, so a
    prescription of 7000 is refused as cGy just as a dose of 7000 is)."""
    import math

    from rtrai.core.errors import InputError
    from rtrai.core.structures import to_tg263
    from rtrai.core.image import MAX_PLAUSIBLE_GY

    out = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        try:
            gy = float(value)
        except ValueError:
            raise InputError(f"--prescription: '{item}' is not NAME=GY") from None
        if not name.strip():
            raise InputError(f"--prescription: '{item}' has no target name (NAME=GY)")
        if not math.isfinite(gy) or gy <= 0:
            raise InputError(f"--prescription: '{item}': a prescription must be a positive dose in Gy")
        if gy > MAX_PLAUSIBLE_GY:
            raise InputError(f"--prescription: '{item}': {gy:g} Gy is implausible (more than {MAX_PLAUSIBLE_GY:g} Gy); "
                             f"it looks like cGy: give {name.strip()}={gy / 100:g} for {gy:g} cGy")
        out[to_tg263(name.strip())] = gy
    return out


def run_train(args) -> int:
    from rtrai.dose.config import load_config
    from rtrai.dose.export import export_model
    from rtrai.dose.train import train

    config = load_config(args.config)
    workdir = Path(args.output)
    result = train(Path(args.data), workdir, config, Path(args.validation) if args.validation else None,
                   resume=args.resume, max_minutes=args.max_minutes)
    manifest = export_model(workdir, config, result, command=" ".join(["rtrai", *sys.argv[1:]]))
    print(f"trained to step {result['step']}; model written to {manifest.parent}")
    return 0


def run_ensemble(args) -> int:
    from rtrai.dose.export import join_models

    manifest = join_models(args.models, args.output)
    print(f"joined {len(args.models)} models into {manifest.parent} (evaluate it before shipping: its metrics are "
          f"empty)")
    return 0


def run_average(args) -> int:
    from rtrai.models import average_models

    manifest = average_models(args.snapshots, args.output)
    print(f"averaged {len(args.snapshots)} snapshots into {manifest.parent} (evaluate it before shipping)")
    return 0


def run_predict(args) -> int:
    from functools import partial

    from rtrai.core.progress import default
    from rtrai.core.workers import finished_result, run_cases
    from rtrai.io.case_io import patients_or_case

    prescription = parse_prescription(args.prescription)  # bad input is said before the model loads
    source, out = Path(args.input), Path(args.output)
    patients = patients_or_case(source)
    predictor = _dose_predictor(args.model, args.device)  # a model that cannot load is said before any case
    if patients is None:
        _predict_case(args.model, args.device, prescription, args.fmt, (source, out), skip_finished=False)
        print(f"predicted 1 of 1 into {out}")
        return 0
    jobs = [(p, out / p.name) for p in patients]
    todo = [job for job in jobs if not finished_result(job[1], "dose predict", [job[0]], [predictor.model_info],
                                                       {"format": args.fmt})]
    task = partial(_predict_case, args.model, args.device, prescription, args.fmt)
    failures = []  # one bad patient must not stop a cohort; finished patients are skipped
    for index, _, error in run_cases(task, todo, args.jobs, args.scheduler, args.worker_memory,
                                     start_method="spawn", progress=default("Predicting dose"),  # torch: never fork
                                     names=[path.name for path, _ in todo]):
        if error:
            failures.append(f"{todo[index][0].name}: {error}")
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} patients finished before (same input, model and format): kept")
    for line in failures:
        print(f"rtrai: error: {line}", file=sys.stderr)
    print(f"predicted {len(jobs) - len(failures)} of {len(jobs)} into {out}")
    return 2 if failures else 0


@lru_cache(maxsize=1)
def _dose_predictor(model: str, device: str):
    """The model, loaded once per process (each Dask or pool worker loads its own)."""
    from rtrai.dose.inference import DosePredictor

    return DosePredictor(model, device)


def _predict_case(model, device, prescription, fmt, job, skip_finished: bool = True) -> str:
    """One case's dose into its folder, atomically (a task of :func:`rtrai.core.workers.run_cases`)."""
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.core.workers import finished_result

    path, target = job
    predictor = _dose_predictor(model, device)
    if skip_finished and finished_result(target, "dose predict", [path], [predictor.model_info], {"format": fmt}):
        return "finished before"
    case = predictor.read(path, prescription)
    case.dose = predictor.predict(case)
    with output_folder(target) as tmp:
        written = _write(case, tmp, fmt)
        provenance.write(tmp, provenance.record("dose predict", {"format": fmt, "prescription": case.prescription},
                                                inputs=[path], models=[predictor.model_info],
                                                extra={"written": written}))
    return "done"


def _write(case, folder: Path, fmt: str) -> list[str]:
    if fmt == "nrrd":
        from rtrai.io.images import write_image

        write_image(case.dose, folder / "Dose.nrrd")
        return ["Dose.nrrd"]
    if fmt == "openkbp":
        from rtrai.io.openkbp import write_openkbp

        return [p.name for p in write_openkbp(case, folder, what=("dose",))]
    from rtrai.io.dicomrt_export import write_dicom_case

    write_dicom_case(case, folder)
    return sorted(p.name for p in folder.iterdir())
