"""``rtrai convert``: any supported input -> a case folder (CT.nrrd, Structures.seg.nrrd, Dose.nrrd, provenance)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    convert = sub.add_parser(
        "convert", help="convert an OpenKBP patient, a DICOM folder or an image into a case folder",
        description="Write CT.nrrd, Structures.seg.nrrd, Dose.nrrd (when the input has a dose) and provenance.json. "
                    "INPUT is an OpenKBP patient folder, a DICOM folder, a case folder or an image file; a folder "
                    "of patients converts each into OUTDIR/<patient>/.")
    convert.add_argument("input", metavar="INPUT")
    convert.add_argument("outdir", metavar="OUTDIR")
    convert.set_defaults(func=run_convert)


def convert_one(source: Path, outdir: Path) -> Path:
    """Convert one case; the output folder appears only when everything was written."""
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.io.case_io import read_case, write_case

    case = read_case(source)
    case.validate()
    with output_folder(outdir) as tmp:
        write_case(case, tmp)
        provenance.write(tmp, provenance.record("convert", {"input": str(source)}, inputs=[source],
                                                extra={"case": case.summary()}))
    return outdir


def run_convert(args) -> int:
    from rtrai.core.errors import RTRAIError
    from rtrai.core.progress import default, track
    from rtrai.io.case_io import patients_or_case

    source, outdir = Path(args.input), Path(args.outdir)
    patients = patients_or_case(source)
    if patients is not None:
        failures = []
        for patient in track(patients, default("Converting"), message=""):
            try:
                convert_one(patient, outdir / patient.name)
            except RTRAIError as exc:  # one bad patient must not stop a cohort
                failures.append(f"{patient.name}: {exc}")
        for line in failures:
            print(f"rtrai: error: {line}", file=sys.stderr)
        print(f"converted {len(patients) - len(failures)} of {len(patients)} patients into {outdir}")
        return 2 if failures else 0
    convert_one(source, outdir)
    print(f"wrote {outdir}")
    return 0
