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
    """Convert one case; the output folder appears only when everything was written. A dose that is not in Gy is
    refused; structures the input declares but that give no mask are named on stderr (see :func:`lost_structures`)."""
    from rtrai.core import provenance
    from rtrai.core.outputs import output_folder
    from rtrai.core.image import check_dose  # the rule every dose command applies (cGy is refused, not guessed)
    from rtrai.io.case_io import input_kind, read_case, write_case

    case = read_case(source)
    case.validate()
    if case.dose is not None:
        check_dose(case.dose, f"{source}: dose")
    lost = lost_structures(case) if input_kind(source) == "dicom" else None  # a case folder said it when converted
    if lost:
        print(f"rtrai: warning: {source}: {lost}", file=sys.stderr)
    with output_folder(outdir) as tmp:
        write_case(case, tmp)
        provenance.write(tmp, provenance.record("convert", {"input": str(source)}, inputs=[source],
                                                extra={"case": case.summary()}))
    return outdir


def lost_structures(case) -> str | None:
    """What the case's RTSTRUCT declared but did not give as masks (None when nothing was lost).

    An RTSTRUCT whose ROIs have no contours on the image converts to a case without structures: that is said, not
    refused, since the CT (and dose) are still worth converting (a structure set exported before contouring, or a
    CT to be auto-contoured next); the input is never without a CT or dose here, as the DICOM reader refuses that.
    """
    info = case.metadata.get("dicom", {}).get("rtstruct") if isinstance(case.metadata.get("dicom"), dict) else None
    if not info:
        return None
    empty, outside = list(info.get("without_contours", [])), list(info.get("outside_grid", []))
    reasons = "; ".join(filter(None, (
        f"without contours: {', '.join(empty)}" if empty else "",
        f"entirely outside the image: {', '.join(outside)}" if outside else "")))
    if not case.structures:
        return f"the RTSTRUCT gives no structure ({f'ROIs {reasons}' if reasons else 'it declares no ROI'}): " \
               "the case has none"
    return f"ROIs of the RTSTRUCT left out ({reasons})" if reasons else None


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
