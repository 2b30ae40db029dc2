"""A TorchScript file (``torch.jit.save``) with a manifest beside it, ``<file stem>.json``::

    {"name": "my-oars", "version": "1",
     "labels": ["Brainstem", "Parotid_L"],      output channels in order (after background with softmax)
     "activation": "sigmoid",                   or "softmax": channel 0 is background, argmax-like probabilities
     "inputs": [{"name": "CT", "modality": "CT", "window": [-1000, 1500], "range": [-1, 1]}],
     "spacing_mm": [2.7, 2.7, 3.0],             x, y, z: images far from it are resampled to it (or [[low], [high]])
     "patch": [64, 64, 64],                     sliding-window size, in the network's own axis order
     "axcodes": "RAS",                          optional: the network takes MONAI's (C, x, y, z) arrays in this
                                                orientation; without it rtrai's (C, z, y, x) LPS arrays
     "sha256": "...",                           optional: refuse to load a file with another checksum
     "inference": {"overlap": 0.25, "threshold": 0.5, "largest_component": true, "mirror": false}}

Each input is clipped to its ``window`` (HU for CT) and scaled linearly to ``range`` (default [-1, 1], as rtrai's
own models), as MONAI's ``ScaleIntensityRange(clip=True)`` does. A TorchScript file is a program: torch.jit.load runs
no Python pickle, but run only files you trust.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtrai.core.errors import ModelError
from rtrai.segmentation.engines import model_files, tg263_labels, torchscript_manifest
from rtrai.segmentation.engines.layout import foreign_network, spacing_bounds
from rtrai.segmentation.inference import Segmenter

REQUIRED = ("labels", "inputs", "patch")


class TorchScriptSegmenter(Segmenter):
    kind = "torchscript"

    def __init__(self, path: Path, device: str = "auto", mirror: bool | None = None):
        import torch

        manifest_path = torchscript_manifest(path)
        try:
            spec = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ModelError(f"{manifest_path}: unreadable TorchScript manifest ({exc})") from None
        missing = [k for k in REQUIRED if k not in spec]
        if missing:
            raise ModelError(f"{manifest_path}: the TorchScript manifest lacks {', '.join(missing)} (labels, inputs "
                             "with window, patch; see rtrai.segmentation.engines.torchscript)")
        files = model_files(path.parent, [path, manifest_path])
        own = files["files"][path.name]
        if spec.get("sha256") and spec["sha256"] != own:
            raise ModelError(f"{path}: checksum {own[:12]}... does not match its manifest ({spec['sha256'][:12]}...); "
                             "refusing to load it")
        if spec.get("activation", "sigmoid") not in ("sigmoid", "softmax"):
            raise ModelError(f"{manifest_path}: activation '{spec['activation']}' is not sigmoid or softmax")
        labels, notes = tg263_labels(list(spec["labels"]), str(manifest_path))
        inputs = [{"name": "CT", "modality": "CT", **i} for i in spec["inputs"]]
        if any("window" not in i for i in inputs):
            raise ModelError(f"{manifest_path}: every input needs a window [low, high]")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{path}: not a TorchScript file torch can load ({str(exc).splitlines()[0]})") from None
        network = foreign_network(scripted, [i.get("range", (-1.0, 1.0)) for i in inputs], spec.get("axcodes"))
        manifest = {"name": spec.get("name", path.stem), "version": str(spec.get("version", "?")), "labels": labels,
                    "inputs": inputs, "patch": network.patch_zyx(spec["patch"]),
                    "activation": spec.get("activation", "sigmoid"), "inference": dict(spec.get("inference", {})),
                    "folder": str(path.parent), **files}
        if spec.get("spacing_mm"):
            manifest["spacing_mm"] = spacing_bounds(spec["spacing_mm"])
        self.notes = notes
        self.setup(manifest, network, device, mirror)

    @property
    def info(self) -> dict:
        return {**super().info, "files": self.manifest["files"], **self.notes}
