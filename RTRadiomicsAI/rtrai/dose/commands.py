"""``rtrai dose train``, ``predict``, ``ensemble`` and ``average`` (evaluation commands: ``evaluation_commands``)."""

from __future__ import annotations

import sys
from pathlib import Path

from rtrai.core.commands import nested

FORMATS = ("nrrd", "openkbp", "dicom")
CONFIGS = Path(__file__).resolve().parent / "configs"


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


def load_config(name_or_path: str) -> dict:
    """A dose training config (YAML file or shipped name), checked: a mapping of known settings, each of its
    default's type; YAML mistakes are one line naming the file, line and column."""
    from rtrai.core.errors import InputError
    from rtrai.dose.prediction import DEFAULT_CONFIG
    from rtrai.segmentation.config import check_types, read_settings_file

    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIGS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(f"dose config not found: {name_or_path} (shipped: "
                         f"{', '.join(p.stem for p in sorted(CONFIGS.glob('*.yaml')))})")
    config = read_settings_file(path)
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InputError(f"{path}: a dose config must be a mapping of settings, not {type(config).__name__}")
    known = {**DEFAULT_CONFIG, "name": "dose-model", "validation_cases": 8}
    unknown = sorted((k for k in config if k not in known), key=str)
    if unknown:
        raise InputError(f"{path}: unknown config keys {', '.join(map(repr, unknown))}")
    check_types(known, config, f"{path}:")
    return config


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
    from rtrai.dose.prediction import export_model, train

    config = load_config(args.config)
    workdir = Path(args.output)
    result = train(Path(args.data), workdir, config, Path(args.validation) if args.validation else None,
                   resume=args.resume, max_minutes=args.max_minutes)
    manifest = export_model(workdir, config, result, command=" ".join(["rtrai", *sys.argv[1:]]))
    print(f"trained to step {result['step']}; model written to {manifest.parent}")
    return 0


def run_ensemble(args) -> int:
    from rtrai.dose.prediction import join_models

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
    from rtrai.core import provenance
    from rtrai.core.errors import RTRAIError
    from rtrai.core.outputs import output_folder
    from rtrai.core.progress import default, track
    from rtrai.dose.prediction import DosePredictor
    from rtrai.io.case_io import patients_or_case

    prescription = parse_prescription(args.prescription)  # bad input is said before the model loads
    source, out = Path(args.input), Path(args.output)
    patients = patients_or_case(source)
    predictor = DosePredictor(args.model, args.device)
    jobs = [(source, out)] if patients is None else [(p, out / p.name) for p in patients]
    failures = []
    for path, target in track(jobs, default("Predicting dose") if len(jobs) > 1 else None, message=""):
        try:
            case = predictor.read(path, prescription)
            case.dose = predictor.predict(case)
            with output_folder(target) as tmp:
                written = _write(case, tmp, args.fmt)
                provenance.write(tmp, provenance.record("dose predict", {"format": args.fmt,
                                                                         "prescription": case.prescription},
                                                        inputs=[path], models=[predictor.model_info],
                                                        extra={"written": written}))
        except RTRAIError as exc:
            if len(jobs) == 1:
                raise
            failures.append(f"{path.name}: {exc}")
    for line in failures:
        print(f"rtrai: error: {line}", file=sys.stderr)
    print(f"predicted {len(jobs) - len(failures)} of {len(jobs)} into {out}")
    return 2 if failures else 0


def _write(case, folder: Path, fmt: str) -> list[str]:
    if fmt == "nrrd":
        from rtrai.io.images import write_image

        write_image(case.dose, folder / "Dose.nrrd")
        return ["Dose.nrrd"]
    if fmt == "openkbp":
        from rtrai.io.openkbp import write_openkbp

        return [p.name for p in write_openkbp(case, folder, what=("dose",))]
    from rtrai.io.dicomrt import write_dicom_case

    write_dicom_case(case, folder)
    return sorted(p.name for p in folder.iterdir())
