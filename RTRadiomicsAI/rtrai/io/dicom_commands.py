"""``rtrai export-dicom CASE OUTDIR [--anonymize]``: a case as CT series + RTSTRUCT + RTPLAN + RTDOSE."""

from __future__ import annotations


def register(sub) -> None:
    export = sub.add_parser(
        "export-dicom", help="write a case as DICOM: CT series, RTSTRUCT, RTPLAN (prescription) and RTDOSE",
        description="CASE is anything 'rtrai convert' reads (OpenKBP patient, DICOM folder, case folder, image). "
                    "A case read from DICOM keeps its study, frame-of-reference and CT UIDs; otherwise new UIDs are "
                    "made. --anonymize applies the profile in the README (names, IDs, dates removed, UIDs replaced).")
    export.add_argument("case", metavar="CASE")
    export.add_argument("outdir", metavar="OUTDIR")
    export.add_argument("--anonymize", action="store_true", help="remove patient identity (see README)")
    export.add_argument("--patient-id", default=None,
                        help="with --anonymize: the pseudonymous PatientID to write (default ANON-<random>)")
    export.add_argument("--seg", action="store_true",
                        help="also write the structures as a DICOM Segmentation, SEG.dcm (binary, one segment per "
                             "structure, SNOMED CT anatomy codes, referencing the CT series; highdicom)")
    export.set_defaults(func=run_export)


def run_export(args) -> int:
    from pathlib import Path

    from rtrai.core.errors import InputError
    from rtrai.core.progress import default
    from rtrai.core.image import check_dose  # the rule every dose command applies (cGy is refused, not guessed)
    from rtrai.io.case_io import read_case
    from rtrai.io.dicomrt_export import write_dicom_case

    if args.patient_id and not args.anonymize:
        raise InputError("--patient-id only applies with --anonymize")
    source = Path(args.case)
    case = read_case(source)
    if case.dose is not None:  # RTDOSE says Gy: a dose in cGy would be written as 100 times the real one
        check_dose(case.dose, f"{source}: dose")
    if getattr(args, "seg", False):
        from rtrai.io.dicom_seg import write_dicom_seg_case as write_dicom_case  # the same objects + SEG.dcm
    written = write_dicom_case(case, args.outdir, anonymize=args.anonymize, anonymous_id=args.patient_id,
                               inputs=[source], progress=default("Exporting DICOM"))
    print(f"wrote {', '.join(f'{len(v)} {k}' for k, v in written.items())} into {args.outdir}")
    return 0
