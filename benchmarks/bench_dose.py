"""`rtrai dose predict` speed on one OpenKBP case against the bare network forward pass of the same model.

Goals: dose inference <= 3 s per OpenKBP case on 2 cores, I/O included, peak memory <= 3 GiB (DosePredict II; the
first DosePredict issue asked <= 5 s). The whole step (read the OpenKBP CSVs,
encode the inputs and geometric prior, predict with flip averaging, write Dose.nrrd) is timed against the network's
forward pass alone on the same encoded array, in the same run: the ratio shows what reading, encoding, the mirrored
pass and writing add.

    python benchmarks/bench_dose.py [MODEL] [N_PATIENTS]      (MODEL: zoo name or model folder; default hn-dose-openkbp)
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats"


def main() -> int:
    if not DATA.is_dir():
        print(f"skipped: OpenKBP data not found at {DATA}")
        return 0
    import torch

    from rtrai.dose.encoding import body_box, encode_inputs, pad_to
    from rtrai.dose.inference import DosePredictor, inference_settings
    from rtrai.io.images import write_image

    model = sys.argv[1] if len(sys.argv) > 1 else "hn-dose-openkbp"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    predictor = DosePredictor(model, "cpu")
    margin = inference_settings(predictor.manifest)["crop_margin_vox"]
    print(f"model {predictor.manifest['name']} ({predictor.manifest['sha256'][:12]}), "
          f"{torch.get_num_threads()} threads")
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for patient in sorted(DATA.iterdir())[:count]:
            start = time.perf_counter()
            case = predictor.read(patient)
            case.dose = predictor.predict(case)
            write_image(case.dose, Path(tmp) / f"{patient.name}.nrrd")
            ours.append(time.perf_counter() - start)
            inputs = encode_inputs(case)
            if margin is not None:  # the forward pass sees what the model's inference sees: the possible-dose box
                inputs = inputs[(slice(None),) + body_box(inputs, int(margin))]
            padded, _ = pad_to(inputs, int(np.prod(predictor.network.strides)))
            start = time.perf_counter()
            with torch.inference_mode():
                predictor.network(torch.from_numpy(padded[None]))
            bare.append(time.perf_counter() - start)
            print(f"{patient.name}: rtrai {ours[-1]:.2f} s, bare forward {bare[-1]:.2f} s")
    print(f"median over {len(ours)} cases: rtrai dose predict step {np.median(ours):.2f} s (read, encode, predict "
          f"with flip averaging, write; goal <= 3 s: {'met' if np.median(ours) <= 3 else 'NOT met'}); bare network "
          f"forward {np.median(bare):.2f} s; ratio {np.median(ours) / np.median(bare):.1f}x")
    slowest = int(np.argmax(ours))
    print(f"slowest case {sorted(DATA.iterdir())[slowest].name} {ours[slowest]:.2f} s; {sum(t > 3 for t in ours)} of "
          f"{len(ours)} cases over 3 s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB; this process, model included
    print(f"peak memory of the process {peak:.2f} GiB (goal <= 3 GiB: {'met' if peak <= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
