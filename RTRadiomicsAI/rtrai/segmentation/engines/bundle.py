"""A MONAI bundle folder: ``configs/inference.json`` (or .yaml), ``configs/metadata.json``, ``models/model.pt``.

MONAI's :class:`monai.bundle.ConfigParser` reads the config and builds from it the network (``network_def``), the
preprocessing transforms and the inferer; rtrai then runs that network inside its own sliding window and
post-processing, with the settings the bundle's objects carry:

- intensity: the ``ScaleIntensityRange(d)`` transform (a_min, a_max -> b_min, b_max, clipped);
- grid: ``Spacing(d)`` pixdim (images far from it are resampled to it, as for zoo models) and ``Orientation(d)``
  axcodes (default "RAS": MONAI's (C, x, y, z) arrays; rtrai turns its LPS patches to the network's layout);
- window size and overlap: the inferer's ``roi_size`` and ``overlap``;
- labels: metadata ``network_data_format.outputs.pred.channel_def`` ({"0": "background", "1": "spleen"}); with a
  background channel 0 the outputs are a softmax, else independent sigmoids (or as an ``Activations(d)`` in the
  postprocessing says).

A bundle whose preprocessing has another intensity transform (``NormalizeIntensity``...) is refused with the
transform's name. Weights: ``models/model.pt`` read with ``torch.load(weights_only=True)`` (a state dict, or one
under "model"/"state_dict"/"network"). A bundle config is code (``$`` expressions are Python evaluated by MONAI):
run only bundles you trust.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtrai.core.errors import ModelError
from rtrai.segmentation.engines import BUNDLE_CONFIGS, model_files, tg263_labels
from rtrai.segmentation.engines.layout import foreign_network, spacing_bounds
from rtrai.segmentation.inference import Segmenter

INTENSITY = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRangePercentiles", "HistogramNormalize",
             "ClipIntensityPercentiles", "ThresholdIntensity")


def _parsed(parser, key: str, folder: Path):
    try:
        return parser.get_parsed_content(key) if key in parser else None
    except Exception as exc:  # noqa: BLE001 - a bundle's config is its author's code: any failure is a model error
        raise ModelError(f"{folder}: the bundle's '{key}' cannot be built ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _transforms(compose) -> list:
    out = []
    for t in getattr(compose, "transforms", [compose] if compose is not None else []):
        out.extend(_transforms(t) if hasattr(t, "transforms") else [t])
    return out


def _activation(parser, channel_def: dict) -> str:
    raw = json.dumps(parser.get("postprocessing", {}), default=str)
    if '"sigmoid": true' in raw.lower() or '"sigmoid": "$true"' in raw.lower():
        return "sigmoid"
    return "softmax" if str(channel_def.get("0", "")).lower() == "background" else "sigmoid"


class BundleSegmenter(Segmenter):
    kind = "bundle"

    def __init__(self, folder: Path, device: str = "auto", mirror: bool | None = None):
        import torch
        from monai.bundle import ConfigParser
        from monai.transforms import Orientation, ScaleIntensityRange, Spacing

        configs = [folder / "configs" / name for name in BUNDLE_CONFIGS if (folder / "configs" / name).is_file()]
        meta_path = folder / "configs" / "metadata.json"
        weights = folder / "models" / "model.pt"
        if not weights.is_file():
            raise ModelError(f"{folder}: a MONAI bundle without models/model.pt (its weights)")
        parser = ConfigParser()
        try:
            parser.read_config(str(configs[0]))
            if meta_path.is_file():
                parser.read_meta(str(meta_path))
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{configs[0]}: unreadable bundle config ({exc})") from None
        parser["bundle_root"] = str(folder)
        meta = parser.get("_meta_", {}) or {}
        channel_def = (meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def"))
        if not channel_def:
            raise ModelError(f"{folder}: configs/metadata.json lacks network_data_format.outputs.pred.channel_def "
                             "(the names of the output channels)")
        inputs_meta = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
        if int(inputs_meta.get("num_channels", 1)) != 1:
            raise ModelError(f"{folder}: a bundle with {inputs_meta['num_channels']} input channels; rtrai runs "
                             "single-image bundles")
        activation = _activation(parser, channel_def)
        order = sorted(channel_def, key=int)[1 if activation == "softmax" else 0:]
        labels, notes = tg263_labels([channel_def[k] for k in order], str(meta_path))

        window = axcodes = pixdim = None
        for t in _transforms(_parsed(parser, "preprocessing", folder)):
            inner = getattr(t, "scaler", None) or getattr(t, "spacing_transform", None) or \
                getattr(t, "ornt_transform", None) or t
            if isinstance(inner, ScaleIntensityRange):
                window = inner
            elif isinstance(inner, Spacing):
                pixdim = [float(p) for p in inner.pixdim]
            elif isinstance(inner, Orientation):
                axcodes = inner.axcodes
            elif type(t).__name__.rstrip("d") in INTENSITY:
                raise ModelError(f"{folder}: the bundle's preprocessing uses {type(t).__name__}; rtrai runs bundles "
                                 "whose intensity step is ScaleIntensityRange(d)")
        if window is None:
            raise ModelError(f"{folder}: the bundle's preprocessing has no ScaleIntensityRange(d) (its intensity "
                             "window)")
        inferer = _parsed(parser, "inferer", folder)
        roi = getattr(inferer, "roi_size", None)
        if roi is None or len(roi) != 3:
            raise ModelError(f"{folder}: the bundle's inferer has no 3D roi_size (a SlidingWindowInferer)")

        key = "network_def" if "network_def" in parser else "network"
        net = _parsed(parser, key, folder)
        if not isinstance(net, torch.nn.Module):
            raise ModelError(f"{folder}: the bundle defines no network (network_def)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any decoding failure of a model file is a model error for the user
            raise ModelError(f"{weights}: not a weights file torch.load(weights_only=True) reads "
                             f"({str(exc).splitlines()[0]})") from None
        for wrapper in ("model", "state_dict", "network"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ModelError(f"{weights}: weights do not fit the bundle's network ({str(exc).splitlines()[0]})") \
                from None
        modality = str(inputs_meta.get("modality", "CT")).upper()
        clip = (float(window.b_min), float(window.b_max)) if window.b_min is not None else (-1.0, 1.0)
        network = foreign_network(net, [clip], axcodes or "RAS")
        overlap = float(getattr(inferer, "overlap", 0.25))
        overlap = overlap[0] if isinstance(overlap, (list, tuple)) else overlap
        name = meta.get("name") or folder.name
        files = [*configs, *([meta_path] if meta_path.is_file() else []), weights]
        manifest = {"name": str(name), "version": str(meta.get("version", "?")), "labels": labels,
                    "inputs": [{"name": "CT", "modality": modality, "window": [float(window.a_min),
                                                                               float(window.a_max)]}],
                    "patch": network.patch_zyx(roi), "activation": activation,
                    "inference": {"overlap": overlap, "mode": str(getattr(inferer, "mode", "gaussian"))},
                    "folder": str(folder), **model_files(folder, files)}
        if pixdim:
            manifest["spacing_mm"] = spacing_bounds(network.physical_xyz(pixdim))
        self.notes = {**notes, "axcodes": axcodes or "RAS"}
        self.setup(manifest, network, device, mirror)

    @property
    def info(self) -> dict:
        return {**super().info, "files": self.manifest["files"], **self.notes}
