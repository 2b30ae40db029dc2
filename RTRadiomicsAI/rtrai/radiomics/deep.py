"""Deep features: the encoder of a shipped segmentation network, its activations pooled inside the ROI.

The image is prepared as the network saw it in training (LPS orientation, the manifest's intensity windows, resampled
only when its spacing lies outside the training range), cropped to a box round the ROI with a margin of context and
run through the encoder of the MONAI U-Net. At each level (after each down-sampling stage, and the bottleneck) the
ROI is reduced to that level's grid (the share of each cell inside the ROI, cells at least half inside; the single
most-inside cell for an ROI smaller than a cell) and every channel's activation is pooled there: mean and max. Column
``deep_<model>_l<level>_c<channel>_<mean|max>``; hn-oar-ct gives (16+32+64+128+256) x 2 = 992 features.

Deterministic: eval mode, no dropout, deterministic torch algorithms, one thread, the same crop for the same input,
so the same image and mask give the same numbers bit for bit on one machine.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import InputError, ModelError

DEFAULT_MODEL = "hn-oar-ct"
MARGIN_MM = 32.0  # context round the ROI: the deepest features' receptive field reaches this far


def _network(manifest: dict):
    """The U-Net of a zoo manifest (arch unet or residual: their encoders are plain MONAI UNet down-sampling stages)."""
    from monai.networks.nets import UNet

    from rtrai.models import load_state_dict

    network = manifest["network"]
    arch = network.get("arch", "unet")
    if arch not in ("unet", "residual"):
        raise ModelError(f"model '{manifest['name']}': deep features need a unet or residual encoder, not '{arch}'")
    channels = tuple(int(c) for c in network.get("channels", (16, 32, 64, 128)))
    net = UNet(spatial_dims=3, in_channels=len(manifest["inputs"]), out_channels=len(manifest["labels"]),
               channels=channels, strides=tuple(int(s) for s in network.get("strides", (2,) * (len(channels) - 1))),
               num_res_units=0 if arch == "unet" else int(network.get("num_res_units", 2)),
               norm=network.get("norm", "instance"), dropout=float(network.get("dropout", 0.0)))
    try:
        net.load_state_dict(load_state_dict(manifest))
    except RuntimeError as exc:
        raise ModelError(f"model '{manifest['name']}': weights do not fit the network in its manifest "
                         f"({str(exc).splitlines()[0]})") from None
    return net.eval()


def encoder_stages(net) -> list:
    """The U-Net's down-sampling stages from the input to the bottleneck (MONAI nests them in SkipConnections)."""
    import torch.nn as nn
    from monai.networks.layers import SkipConnection

    stages, layer = [], net.model
    while True:
        stages.append(layer[0])
        inner = layer[1]
        if not isinstance(inner, SkipConnection):
            raise ModelError("unexpected U-Net layout: no skip connection below a down-sampling stage")
        below = inner.submodule
        if not (isinstance(below, nn.Sequential) and len(below) == 3 and isinstance(below[1], SkipConnection)):
            stages.append(below)  # the bottleneck
            return stages
        layer = below


class DeepFeatureExtractor:
    """A loaded encoder; :meth:`features` gives one row per (image, mask)."""

    def __init__(self, model: str = DEFAULT_MODEL):
        from rtrai.models import read_manifest

        self.manifest = read_manifest(model)
        if any(spec.get("modality") != "CT" for spec in self.manifest["inputs"]):
            raise ModelError(f"model '{self.manifest['name']}': deep features read a CT; its inputs are "
                             f"{[s.get('name') for s in self.manifest['inputs']]}")
        self.network = _network(self.manifest)
        self.stages = encoder_stages(self.network)
        self.factor = int(np.prod([int(s) for s in self.manifest["network"].get("strides", [2, 2, 2, 2])]))
        self.name = self.manifest["name"]

    @property
    def info(self) -> dict:
        return {"name": self.manifest["name"], "version": self.manifest["version"], "sha256": self.manifest["sha256"]}

    def _grid(self, image: sitk.Image) -> sitk.Image:
        """The image in LPS, resampled to the middle of the training spacings when far outside them."""
        if not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3)):
            image = sitk.DICOMOrient(image, "LPS")
        from rtrai.models import working_grid

        reference = working_grid(self.manifest, image)
        return image if reference is None else reference

    def inputs(self, image: sitk.Image, mask: sitk.Image, label: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The network's input (C, z, y, x) and the ROI (z, y, x) share on the cropped box."""
        reference = self._grid(image)
        ct = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, -1024.0)
        roi = sitk.Resample(sitk.Cast(sitk.Equal(mask, int(label)), sitk.sitkFloat32), reference, sitk.Transform(),
                            sitk.sitkLinear, 0.0)
        ct, roi = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(roi)
        inside = np.argwhere(roi >= 0.5)
        if not inside.size:
            inside = np.argwhere(roi == roi.max()) if roi.max() > 0 else inside
        if not inside.size:
            raise InputError("the ROI is empty on the network's grid")
        margin = np.ceil(MARGIN_MM / np.array(reference.GetSpacing()[::-1])).astype(int)
        low = np.maximum(inside.min(0) - margin, 0)
        high = np.minimum(inside.max(0) + 1 + margin, roi.shape)
        # pad each side up to a multiple of the encoder's total stride, with air, so every level's cells align
        size = high - low
        padded = (np.ceil(size / self.factor) * self.factor).astype(int)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        ct, roi = ct[box], roi[box]
        pad = [(0, int(p - s)) for p, s in zip(padded, size)]
        ct = np.pad(ct, pad, constant_values=-1024.0)
        roi = np.pad(roi, pad, constant_values=0.0)
        channels = []
        for spec in self.manifest["inputs"]:
            lo, hi = float(spec["window"][0]), float(spec["window"][1])
            channels.append((np.clip(ct, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0)
        return np.stack(channels).astype(np.float32), roi.astype(np.float32)

    def features(self, image: sitk.Image, mask: sitk.Image, label: int = 1) -> OrderedDict:
        """Mean and max of every encoder channel inside the ROI at every level."""
        import torch
        import torch.nn.functional as F

        x, roi = self.inputs(image, mask, label)
        previous = torch.are_deterministic_algorithms_enabled()
        threads = torch.get_num_threads()
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)  # a fixed reduction order: the same numbers on every run
        try:
            with torch.no_grad():
                h = torch.as_tensor(x)[None]
                share = torch.as_tensor(roi)[None, None]
                row = OrderedDict()
                for level, stage in enumerate(self.stages, start=1):
                    h = stage(h)
                    cells = F.adaptive_avg_pool3d(share, h.shape[2:])[0, 0]
                    keep = cells >= 0.5
                    if not bool(keep.any()):
                        keep = cells == cells.max()
                    values = h[0][:, keep]  # (channels, cells)
                    for c, (mean, high) in enumerate(zip(values.mean(1).tolist(), values.max(1).values.tolist())):
                        row[f"deep_{self.name}_l{level}_c{c}_mean"] = mean
                        row[f"deep_{self.name}_l{level}_c{c}_max"] = high
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.set_num_threads(threads)
        return row


def extract_cohort(rows: list[dict], model: str = DEFAULT_MODEL, resample_mask: bool = False, progress=None):
    """A pandas table (ID, then the features) for batch rows (ID, Image, Mask, optional Label, Structure)."""
    import pandas as pd

    from rtrai.core.progress import track
    from rtrai.radiomics.extract import load_inputs

    extractor = DeepFeatureExtractor(model)
    out = []
    for row in track(rows, progress, message="deep features"):
        try:
            inputs = load_inputs(row["Image"], row.get("Mask") or None, int(row["Label"]) if row.get("Label") else None,
                                 row.get("Structure") or None, False, resample_mask)
            features = extractor.features(inputs.image, inputs.mask, inputs.label)
        except InputError as exc:
            raise InputError(f"cohort row {row['ID']}: {exc}") from None
        out.append({"ID": row["ID"], **features})
    return pd.DataFrame(out), extractor


def run_deep(args) -> int:
    """``rtrai radiomics deep --image IMG --mask MASK [--model hn-oar-ct] -o deep.csv`` (or ``--cohort batch.csv``)."""

    from rtrai.core import provenance
    from rtrai.core.outputs import atomic_file
    from rtrai.core.progress import default
    from rtrai.radiomics.cohort import read_batch

    if not args.output:
        raise InputError("name the output table with -o deep.csv")
    model = getattr(args, "model", None) or DEFAULT_MODEL
    if args.cohort:
        rows = read_batch(args.cohort)
    elif args.image:
        rows = [{"ID": None, "Image": args.image, "Mask": args.mask, "Label": args.label,
                 "Structure": args.structure}]
    else:
        raise InputError("give --image and --mask (or a case folder and --structure), or --cohort batch.csv")
    if rows[0]["ID"] is None:
        from pathlib import Path

        rows[0]["ID"] = Path(args.image).name.split(".")[0]
    table, extractor = extract_cohort(rows, model, args.resample_mask, default("Deep features"))
    with atomic_file(args.output, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    inputs = [p for p in (args.image, args.mask, args.cohort) if p and os.path.exists(p)]
    provenance.write(os.path.dirname(os.path.abspath(args.output)), provenance.record(
        "radiomics deep", {k: v for k, v in vars(args).items() if k != "func"}, inputs=inputs,
        models=[extractor.info]), name=f"{os.path.basename(args.output)}.provenance.json")
    print(f"wrote {table.shape[1] - 1} deep features of {len(table)} case(s) from '{extractor.name}' to {args.output}")
    return 0
