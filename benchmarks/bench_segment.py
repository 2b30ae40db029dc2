"""`rtrai segment` speed and memory against plain MONAI `sliding_window_inference` with the same network.

Goals (AutoSegment issue): one OpenKBP case segmented in <= 5 s on 2 cores, I/O included; a 512x512x150 CT segmented
with peak memory <= 4 GiB. The reference is MONAI's `sliding_window_inference` (same network, ROI, overlap 0.25,
gaussian blending; on the mirrored image too when the model mirrors) on the same preprocessed array, timed in the same
run: it has no I/O, no thresholding, no post-processing, so the ratio shows what our reading, post-processing and
writing add.

    python benchmarks/bench_segment.py [MODEL] [N_PATIENTS] [--mirror]   (MODEL: zoo name or folder; default hn-oar-ct)
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats"


def big_ct(reference: sitk.Image) -> sitk.Image:
    """A 512x512x150 CT covering the same anatomy as an OpenKBP case (linear up-sampling of its CT)."""
    size = (512, 512, 150)
    spacing = [n * s / m for n, s, m in zip(reference.GetSize(), reference.GetSpacing(), size)]
    grid = sitk.Image(size, sitk.sitkInt16)
    grid.SetSpacing(spacing)
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    return sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)


def run_big(model: str, mirror: bool | None) -> None:
    """Child process: segment a 512x512x150 CT and print wall time and peak resident memory."""
    from rtrai.core.case import Case
    from rtrai.io.case_io import read_case
    from rtrai.segmentation.inference import Segmenter

    ct = big_ct(read_case(DATA / "pt_201").ct)
    segmenter = Segmenter(model, "cpu", mirror=mirror)
    start = time.perf_counter()
    masks = segmenter.segment(Case(ct=ct, metadata={"patient_id": "big"}))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
    found = sum(bool(sitk.GetArrayViewFromImage(m).any()) for m in masks.values())
    print(f"512x512x150 CT: {seconds:.1f} s, peak memory {peak:.2f} GiB (goal <= 4), {found} structures found")


def main() -> int:
    if not DATA.is_dir():
        print(f"skipped: OpenKBP data not found at {DATA}")
        return 0
    args = [a for a in sys.argv[1:] if a != "--mirror"]
    mirror = True if "--mirror" in sys.argv else None  # None: as the model's manifest says
    if len(args) > 1 and args[0] == "--big":
        run_big(args[1], mirror)
        return 0
    model = args[0] if args else "hn-oar-ct"
    count = int(args[1]) if len(args) > 1 else 5
    import torch
    from monai.inferers import sliding_window_inference

    from rtrai.io.case_io import list_cases, read_case
    from rtrai.segmentation.commands import segment_one
    from rtrai.segmentation.inference import Segmenter

    torch.set_num_threads(2)
    segmenter = Segmenter(model, "cpu", mirror=mirror)
    settings = segmenter.manifest["inference"]
    # a mirroring model runs the network on the image and on its mirror: the reference does both passes too
    views = [lambda a: a, lambda a: a.flip(-1)] if settings.get("mirror") else [lambda a: a]
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for patient in list_cases(DATA)[:count]:
            start = time.perf_counter()
            segment_one(segmenter, patient, Path(tmp) / patient.name)
            ours.append(time.perf_counter() - start)
            image = torch.as_tensor(segmenter.preprocess(read_case(patient))[0])[None]
            start = time.perf_counter()
            with torch.no_grad():
                for view in views:
                    sliding_window_inference(view(image), tuple(segmenter.manifest["patch"]), 2, segmenter.network,
                                             overlap=settings["overlap"], mode=settings["mode"])
            plain.append(time.perf_counter() - start)
    print(f"model {segmenter.manifest['name']} ({segmenter.manifest['sha256'][:12]}), {count} OpenKBP cases, "
          f"{torch.get_num_threads()} threads, {'with' if len(views) > 1 else 'without'} test-time mirror")
    print(f"rtrai segment (read + infer + post-process + write): median {np.median(ours):.2f} s per case "
          f"(goal <= 5 s)")
    print(f"plain MONAI sliding_window_inference, same network and passes: median {np.median(plain):.2f} s per case; "
          f"ratio {np.median(ours) / np.median(plain):.2f}")
    subprocess.run([sys.executable, __file__, "--big", model] + (["--mirror"] if mirror else []), check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
