"""The contour-QA reference table shipped with rtrai, from the OpenKBP train patients' own reference contours.

Measures every structure of every train patient (volume, components, centroid, the patient's midline) with
:func:`rtrai.segmentation.qa.measure_case`, keeps the measurements beside this script (``train_measurements.json``)
and fits the table with :func:`rtrai.segmentation.qa.fit_reference`: per-organ volume ranges, which organs have one
component, left/right volume ratios, mean and spread of the offsets between organ centroids, and thresholds chosen by
leave-one-out on these patients only (``--alpha``: the false-flag rate each check may have on them). The validation
patients are never read here; ``benchmarks/bench_contour_qa.py`` measures on them.

    python training/contour-qa/reference_statistics.py [--data DIR] [--alpha 0.01] [-o TABLE.json]
    python training/contour-qa/reference_statistics.py --measurements training/contour-qa/train_measurements.json
        (fit again from the saved measurements, without reading the patients)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from rtrai import __version__
from rtrai.core.outputs import write_text
from rtrai.core.progress import default, track
from rtrai.io.case_io import list_cases
from rtrai.io.openkbp import read_openkbp
from rtrai.segmentation.qa import DEFAULT_REFERENCE, fit_reference, measure_case

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "openkbp" / "train-pats"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--measurements", type=Path, help="fit from these saved measurements instead of --data")
    args = parser.parse_args(argv)
    if args.measurements:
        records = json.loads(args.measurements.read_text(encoding="utf-8"))
    else:
        patients = list_cases(args.data)
        if not patients:
            print(f"no patients in {args.data}", file=sys.stderr)
            return 2
        records = [measure_case(read_openkbp(p)) for p in track(patients, default("Measuring"), message="")]
        write_text(HERE / "train_measurements.json", json.dumps(records, indent=1) + "\n")
    provenance = {
        "data": "OpenKBP train-pats (Babier et al., Med. Phys. 48:5549, 2021; ababier/open-kbp @ ce625e6), "
                "the plans' own reference contours",
        "patients": [r["patient"] for r in records],
        "made_by": "training/contour-qa/reference_statistics.py "
                   + " ".join(a for a in (argv if argv is not None else sys.argv[1:])),
        "rtrai_version": __version__,
        "date": datetime.date.today().isoformat(),
        "tuning": f"thresholds = 1 - {args.alpha} quantiles of leave-one-out scores on these train patients",
    }
    table = fit_reference(records, alpha=args.alpha, name="hn-openkbp-train", provenance=provenance)
    write_text(args.output, json.dumps(table, indent=1) + "\n")
    print(f"{len(records)} patients, thresholds {table['thresholds']} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
