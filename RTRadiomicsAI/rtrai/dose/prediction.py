"""3D dose prediction from CT + structures (knowledge-based planning, as in OpenKBP).

Inputs, one channel each on the CT grid: CT (HU clipped to [-1000, 2000], / 1000), the seven OpenKBP OARs, the
targets encoded by prescription level (``mask * Rx / 70 Gy``: PTV70 -> 1.0, PTV56 -> 0.8), the possible-dose mask
(the body when there is none) and a geometric prior: per prescription level ``Rx * exp(-d / 25 mm)`` of the distance
``d`` to that level's targets, the maximum over levels (a no-learning model that scores about 7.9 Gy on OpenKBP).
Output: dose / 70 Gy, set to zero outside the possible-dose region.

Network (``type: prior-unet``, the default): the prior at full resolution plus a correction that a MONAI U-Net computes
at half resolution from the average-pooled inputs and that is upsampled trilinearly. The prior carries the sharp PTV
dose edges, so the coarse network only learns what is smooth (the tail, OAR sparing, the dose between levels): a
half-resolution network alone blurs the edges, a full-resolution one costs 8x more on a CPU. Training is on whole
volumes (so instance normalisation sees at inference what it saw in training), left-right flips swap the paired organs,
L1 on the dose inside the possible-dose mask, with checkpoints and ``--resume``. ``type: unet`` keeps a plain
full-resolution U-Net trained on crops.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError, ModelError
from rtrai.core.image import from_array, mask_array

OARS = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible")
DOSE_SCALE_GY = 70.0
CHANNELS = ("CT",) + OARS + ("Targets", "PossibleDose", "Prior")
BEAM_PRIOR = "BeamPrior"  # optional last channel: the ray-traced beam prior (rtrai.dose.beams), config channels
PRIOR_FALLOFF_MM = 25.0
FLIP_PAIRS = ((OARS.index("Parotid_L") + 1, OARS.index("Parotid_R") + 1),)  # channel indices to swap on L-R flip

DEFAULT_CONFIG = {
    "network": {"type": "prior-unet", "channels": [16, 32, 64, 128, 128], "strides": [2, 2, 2, 2],
                "num_res_units": 1, "downsample": 2},
    "patch": None,  # None: whole volumes (prior-unet); a crop size (z, y, x) for a plain full-resolution U-Net
    "batch": 2,
    "steps": 20000,
    "lr": 2e-3,
    "weight_decay": 1e-5,
    "checkpoint_every_s": 300,
    "validate_every": 1000,
    "seed": 0,
    "validation_cases": 8,
    # Optional adversarial training (as in Babier et al. 2020): a conditional 3D PatchGAN discriminator judges
    # (inputs, dose) pairs at half resolution, least-squares GAN loss, added to L1 with this weight. None: L1 only.
    "adversarial": None,  # e.g. {"weight": 0.05, "channels": 16, "layers": 3, "lr": 2e-4}
    # Augmentation of whole volumes besides the left-right flip (against overfitting a few dozen patients): an axial
    # rotation (degrees), an isotropic scaling (fraction), a shift (voxels) and a CT intensity jitter (fraction).
    # None: flips only. E.g. {"rotate_deg": 10, "scale": 0.1, "shift_vox": 8, "ct_jitter": 0.05, "probability": 0.5}
    "augment": None,
    # Crop each case to its possible-dose box grown by this many voxels (None: whole 128^3 volumes). The network then
    # spends its time on the patient, not on air: about 2x fewer voxels on OpenKBP. Inference crops the same way.
    "crop_margin_vox": None,
    # Extra L1 weight of voxels inside an OAR or a target (0: every possible-dose voxel counts the same). The DVH score
    # is read off those structures only, while they are a minority of the possible-dose voxels.
    "structure_weight": 0.0,
    # Input channels: None for CHANNELS; CHANNELS + ["BeamPrior"] adds the ray-traced beam prior (rtrai.dose.beams).
    "channels": None,
}


def input_channels(channels=None) -> tuple[str, ...]:
    """The input channels of a model (config ``channels`` / manifest ``inputs.channels``): :data:`CHANNELS`, optionally
    followed by :data:`BEAM_PRIOR`."""
    channels = tuple(channels or CHANNELS)
    if channels not in (CHANNELS, CHANNELS + (BEAM_PRIOR,)):
        raise InputError(f"unknown dose input channels {list(channels)}: use {list(CHANNELS)}, optionally followed "
                         f"by '{BEAM_PRIOR}'")
    return channels


def build_network(spec: dict, channels=None):
    """The torch module for a network spec: ``prior-unet`` (default), ``unet`` or ``resunet`` (full resolution), for
    the given input channels (default :data:`CHANNELS`)."""
    import torch
    from monai.networks.nets import UNet

    kind = spec.get("type", "unet")
    if kind not in ("prior-unet", "unet", "resunet"):
        raise InputError(f"unknown dose network type '{kind}' (use prior-unet, unet or resunet)")
    members = int(spec.get("members", 1))
    if members < 1 or (members > 1 and kind != "prior-unet"):
        raise InputError(f"'members: {members}': ensembles are made of prior-unet models (1 or more)")

    def make_unet():
        return UNet(spatial_dims=3, in_channels=len(input_channels(channels)), out_channels=1,
                    channels=tuple(spec["channels"]),
                    strides=tuple(spec["strides"]),
                    num_res_units=spec.get("num_res_units", 3 if kind == "resunet" else 1), norm="instance",
                    act="PRELU")

    if kind != "prior-unet":
        return make_unet()

    class PriorResidualNet(torch.nn.Module):
        """Full-resolution prior + upsampled half-resolution correction (see the module docstring); an ensemble
        (``members`` > 1, made by :func:`join_models`) averages the corrections of separately trained U-Nets."""

        def __init__(self):
            super().__init__()
            self.unet = make_unet()
            self.ensemble = torch.nn.ModuleList(make_unet() for _ in range(members - 1))  # no weights when empty
            self.factor = int(spec.get("downsample", 2))
            self.strides = [self.factor] + list(spec["strides"])  # for input padding: the product must divide

        def forward(self, x):
            low = torch.nn.functional.avg_pool3d(x, self.factor)
            correction = self.unet(low)
            for unet in self.ensemble:
                correction = correction + unet(low)
            correction = torch.nn.functional.interpolate(correction / (1 + len(self.ensemble)),
                                                         scale_factor=self.factor, mode="trilinear",
                                                         align_corners=False)
            return x[:, PRIOR:PRIOR + 1] + correction

    return PriorResidualNet()


PRIOR, BODY, TARGETS = CHANNELS.index("Prior"), CHANNELS.index("PossibleDose"), CHANNELS.index("Targets")


def prescription_levels(case: Case) -> dict[str, float]:
    """Target -> prescription (Gy): explicit prescription first, else the level in the name (PTV63 -> 63)."""
    levels = {}
    for name in case.targets():
        level = case.prescription_for(name)
        if level is None:
            raise InputError(f"target '{name}' has no prescription: give one (e.g. --prescription {name}=70)")
        levels[name] = float(level)
    if not levels:
        raise InputError("the case has no target (PTV): dose prediction needs at least one, with its prescription")
    return levels


def encode_inputs(case: Case, channels=None) -> np.ndarray:
    """The (channels, z, y, x) float32 input of a case (the module docstring; ``channels``: :func:`input_channels`)."""
    channels = input_channels(channels)
    if case.ct is None:
        raise InputError("dose prediction needs a CT")
    ct = sitk.GetArrayViewFromImage(case.ct).astype(np.float32)
    out = np.zeros((len(channels),) + ct.shape, np.float32)
    out[0] = np.clip(ct, -1000, 2000) / 1000.0
    for i, name in enumerate(OARS):
        if name in case.structures:
            out[1 + i] = mask_array(case.structures[name])
    levels = prescription_levels(case)
    for name, level in levels.items():
        region = mask_array(case.structures[name])
        out[TARGETS][region] = np.maximum(out[TARGETS][region], level / DOSE_SCALE_GY)
    if case.possible_dose_mask is not None:
        out[BODY] = mask_array(case.possible_dose_mask)
    elif "External" in case.structures:
        out[BODY] = mask_array(case.structures["External"])
    else:
        out[BODY] = ct > -500  # the body by threshold when no mask is given
    out[PRIOR] = geometric_prior(case, levels) * out[BODY]
    if BEAM_PRIOR in channels:
        from rtrai.dose.beams import beam_prior

        targets = [(level, mask_array(case.structures[name])) for name, level in levels.items()]
        out[channels.index(BEAM_PRIOR)] = beam_prior(ct, targets, out[BODY] > 0, case.ct.GetSpacing()[::-1],
                                                      scale_gy=DOSE_SCALE_GY)
    return out


def geometric_prior(case: Case, levels: dict[str, float]) -> np.ndarray:
    """``max over levels of Rx/70 * exp(-d / 25 mm)``, d the distance (mm) to the targets of that level."""
    from scipy.ndimage import distance_transform_edt

    spacing = case.ct.GetSpacing()[::-1]  # (z, y, x) order, as the arrays
    prior = np.zeros(case.grid.shape, np.float32)
    for level in sorted(set(levels.values())):
        region = np.zeros(prior.shape, bool)
        for name, value in levels.items():
            if value == level:
                region |= mask_array(case.structures[name])
        if region.any():
            distance = distance_transform_edt(~region, sampling=spacing).astype(np.float32)
            np.maximum(prior, level / DOSE_SCALE_GY * np.exp(-distance / PRIOR_FALLOFF_MM), out=prior)
    return prior


def _pad_end(array: np.ndarray, shape) -> np.ndarray:
    """Zero-pad the last three axes at their end to ``shape``; for encoded inputs (4-D) the CT channel is padded with
    air (-1), what it shows around a patient, not with water."""
    pads = [(0, 0)] * (array.ndim - 3) + [(0, t - s) for s, t in zip(array.shape[-3:], shape)]
    padded = np.pad(array, pads)
    if array.ndim == 4:  # only the added voxels of the CT channel
        z, y, x = array.shape[-3:]
        padded[0, z:] = padded[0, :, y:] = padded[0, :, :, x:] = -1.0
    return padded


def _pad_to(array: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    shape = array.shape[-3:]
    target = [int(math.ceil(s / multiple) * multiple) for s in shape]
    return _pad_end(array, target), tuple(slice(0, s) for s in shape)


def body_box(inputs: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the possible-dose channel grown by ``margin`` voxels (the whole volume when it is empty)."""
    body = inputs[BODY] > 0
    ends = [np.nonzero(body.any(axis=other))[0] for other in ((1, 2), (0, 2), (0, 1))]
    if any(len(e) == 0 for e in ends):
        return tuple(slice(0, s) for s in body.shape)
    return tuple(slice(max(int(e[0]) - margin, 0), min(int(e[-1]) + 1 + margin, s)) for e, s in zip(ends, body.shape))


def predict_array(network, inputs: np.ndarray, device: str = "cpu", patch=None, flip: bool = False,
                  crop_margin: int | None = None) -> np.ndarray:
    """Dose in Gy (z, y, x) for encoded inputs; zero outside the possible-dose channel.

    With ``patch`` (the training crop size of a crop-trained model), a Gaussian-weighted sliding window (overlap 0.5)
    is used: instance normalisation then sees the same field of view as in training (on OpenKBP validation patients
    this lowered a crop-trained U-Net's dose score from 5.9 to 4.0 Gy against one whole-volume pass). Models trained
    on whole volumes (``patch`` None) run in one pass. ``flip`` averages with the prediction of the left-right
    mirrored case (paired organs swapped), the augmentation the model was trained with. ``crop_margin`` (for a model
    trained on cropped cases) runs the network on the possible-dose box grown by that many voxels only.
    """
    import torch

    if crop_margin is not None:
        box = body_box(inputs, int(crop_margin))
        dose = np.zeros(inputs.shape[1:], np.float32)
        dose[box] = predict_array(network, inputs[(slice(None),) + box], device, patch, flip)
        return dose

    multiple = int(np.prod(network.strides)) if hasattr(network, "strides") else 16
    padded, crop = _pad_to(inputs, multiple)
    network.eval()

    def run(array: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(array[None])).to(device)
        if patch is not None and any(s > p for s, p in zip(array.shape[1:], patch)):
            from monai.inferers import sliding_window_inference

            window = tuple(min(p, s) for p, s in zip(patch, array.shape[1:]))
            output = sliding_window_inference(tensor, window, 1, network, overlap=0.5, mode="gaussian")
        else:
            output = network(tensor)
        return output[0, 0].float().cpu().numpy()

    with torch.inference_mode():
        dose = run(padded)
        if flip:
            mirrored = padded[..., ::-1].copy()
            for a, b in FLIP_PAIRS:
                mirrored[[a, b]] = mirrored[[b, a]]
            dose = 0.5 * (dose + run(mirrored)[..., ::-1])
    dose = np.clip(dose[crop], 0, None) * DOSE_SCALE_GY
    dose[inputs[BODY] == 0] = 0
    return dose.astype(np.float32)


class DosePredictor:
    """A dose model from the zoo (checked by sha256), loaded once and applied to any number of cases."""

    def __init__(self, model: str = "hn-dose-openkbp", device: str = "auto"):
        import torch

        from rtrai.models import load_state_dict, read_manifest
        from rtrai.models.device import pick_device

        self.manifest = read_manifest(model)
        if self.manifest.get("task") != "dose":
            raise ModelError(f"model '{self.manifest['name']}' is a {self.manifest.get('task')} model, not a dose model")
        self.device = pick_device(device)
        self.channels = input_channels(self.manifest["inputs"].get("channels"))
        self.network = build_network(self.manifest["network"], self.channels)
        self.network.load_state_dict(load_state_dict(self.manifest))
        self.network.to(self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.model_info = {k: self.manifest.get(k) for k in ("name", "version", "sha256")}

    @staticmethod
    def read(path, prescription: dict[str, float] | None = None) -> Case:
        """Read a case and apply prescription overrides (target name -> Gy)."""
        from rtrai.io.case_io import read_case

        case = read_case(path)
        for name, level in (prescription or {}).items():
            if name not in case.structures:
                raise InputError(f"--prescription names '{name}', which the case does not have "
                                 f"(structures: {', '.join(sorted(case.structures))})")
            case.prescription[name] = level
        return case

    def predict(self, case: Case) -> sitk.Image:
        """Predicted dose in Gy on the CT grid."""
        expected = self.manifest["inputs"].get("spacing_mm")
        if expected and not np.allclose(case.ct.GetSpacing(), expected, rtol=0.5):
            raise ModelError(f"model '{self.manifest['name']}' was trained at about {expected} mm; the CT has "
                             f"{tuple(round(s, 2) for s in case.ct.GetSpacing())} mm (resample it first)")
        patch = self.manifest.get("training", {}).get("patch")
        inference = inference_settings(self.manifest)
        dose = predict_array(self.network, encode_inputs(case, self.channels), str(self.device), patch,
                             bool(inference["flip"]), inference["crop_margin_vox"])
        return from_array(dose, case.ct)


def export_model(workdir: Path, config: dict, result: dict, command: str) -> Path:
    """Write the best (else the last) weights of a training run as a zoo model in ``workdir/model``."""
    from rtrai.models import run_weights, write_model

    best = workdir / "best.pt"
    state = run_weights(best if best.is_file() else workdir / "checkpoint.pt")
    history = result.get("history", [])
    best_entry = min(history, key=lambda h: h["dose_score_gy"]) if history else None
    cfg = {**DEFAULT_CONFIG, **config}
    manifest = {
        "name": config.get("name", "dose-model"), "version": f"step{result['step']}", "task": "dose",
        "weights": "weights.safetensors", "sha256": "", "network": cfg["network"],
        "inputs": {"channels": list(input_channels(cfg["channels"])), "ct_window_hu": [-1000, 2000],
                   "dose_scale_gy": DOSE_SCALE_GY,
                   "spacing_mm": result["spacing_mm"]},
        "labels": ["Dose"],
        "inference": {"flip": True, "crop_margin_vox": cfg["crop_margin_vox"]},
        "training": {"command": command, "steps": result["step"], "patch": cfg["patch"], "batch": cfg["batch"],
                     "cpu_hours": result.get("cpu_hours"),
                     "data": f"{result.get('training_cases', '?')} patients of "
                             f"{result.get('data', 'the training folder')}"},
        "metrics": {"validation_dose_score_gy": best_entry["dose_score_gy"] if best_entry else None,
                    "validation_cases": best_entry["n"] if best_entry else 0,
                    "selected_at_step": best_entry["step"] if best_entry else None},
    }
    return write_model(workdir / "model", state, manifest)


def inference_settings(manifest: dict) -> dict:
    """How a dose model is applied: flip averaging, cropping to the possible-dose box (absent keys: off)."""
    return {"flip": False, "crop_margin_vox": None, **manifest.get("inference", {})}


def join_models(models: list[str], destination: str | os.PathLike) -> Path:
    """One zoo model averaging the corrections of several prior-unet dose models (same network and inputs): their
    U-Nets become the members of one network, so the ensemble is one weights file with one checksum."""
    from rtrai.models import load_state_dict, read_manifest, write_model

    if len(models) < 2:
        raise InputError("an ensemble needs at least two models")
    manifests = [read_manifest(m) for m in models]
    first = manifests[0]
    base = {k: v for k, v in first["network"].items() if k != "members"}
    unets = []  # one state dict per U-Net, in order
    for manifest in manifests:
        network = {k: v for k, v in manifest["network"].items() if k != "members"}
        if (manifest.get("task") != "dose" or network != base or manifest["inputs"] != first["inputs"]
                or inference_settings(manifest) != inference_settings(first)):
            raise ModelError(f"model '{manifest['name']}' ({manifest['folder']}) is not a dose model with the same "
                             f"network, inputs and inference as '{first['name']}': it cannot join the ensemble")
        state = load_state_dict(manifest)
        prefixes = ["unet."] + [f"ensemble.{i}." for i in range(int(manifest["network"].get("members", 1)) - 1)]
        unets += [{k[len(p):]: v for k, v in state.items() if k.startswith(p)} for p in prefixes]
    joined = {f"{'unet' if i == 0 else f'ensemble.{i - 1}'}.{k}": v for i, unet in enumerate(unets)
              for k, v in unet.items()}
    manifest = {k: v for k, v in first.items() if k not in ("folder", "sha256")}
    manifest.update(version="ensemble", network={**base, "members": len(unets)}, metrics={},
                    training={"members": [{"name": m["name"], "version": m["version"], "sha256": m["sha256"],
                                           "training": m.get("training")} for m in manifests]})
    return write_model(destination, joined, manifest)


# ---------------------------------------------------------------------------------------------------------- training


def _load_cohort(folder: Path, log, limit: int | None = None, crop_margin: int | None = None,
                 channels=None) -> list[dict]:
    """Encoded cases (float16), each cropped to its possible-dose box grown by ``crop_margin`` voxels if given."""
    from rtrai.io.case_io import list_cases, read_case

    cases = []
    for path in list_cases(folder)[:limit]:
        case = read_case(path)
        if case.dose is None:
            log(f"skipping {path.name}: no dose")
            continue
        x = encode_inputs(case, channels).astype(np.float16)
        y = (sitk.GetArrayViewFromImage(case.dose) / DOSE_SCALE_GY).astype(np.float16)
        box = body_box(x, crop_margin) if crop_margin is not None else (slice(None),) * 3
        cases.append({"id": path.name, "spacing": case.ct.GetSpacing(), "x": x[(slice(None),) + box], "y": y[box]})
    if not cases:
        raise InputError(f"no training cases with a dose found in {folder}")
    return cases


MASK_CHANNELS = tuple(range(1, 1 + len(OARS))) + (BODY,)  # binary: resampled together as the bits of one channel


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """A random axial rotation, isotropic scaling and shift of a whole volume (inputs and dose alike), then a CT
    intensity jitter. Rotation is in the axial plane, where the pixels are square. CT, prior and dose are resampled
    linearly, masks and target levels by nearest voxel (the binary masks packed as bits of one channel: 5x cheaper).
    The possible-dose mask moves with the anatomy, so the loss only sees resampled voxels."""
    import torch
    import torch.nn.functional as F

    angle = math.radians(rng.uniform(-1, 1) * float(spec.get("rotate_deg", 0)))
    scale = 1.0 + rng.uniform(-1, 1) * float(spec.get("scale", 0))
    shift = rng.integers(-int(spec.get("shift_vox", 0)), int(spec.get("shift_vox", 0)) + 1, 3)  # x, y, z voxels
    size = x.shape[:0:-1]  # x, y, z
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0, 2.0 * shift[0] / size[0]],
                          [sin, cos, 0.0, 2.0 * shift[1] / size[1]],
                          [0.0, 0.0, 1.0 / scale, 2.0 * shift[2] / size[2]]], dtype=torch.float32)[None]
    bits = sum(x[c].astype(np.int32) << i for i, c in enumerate(MASK_CHANNELS)).astype(np.float32)
    extra = list(range(len(CHANNELS), x.shape[0]))  # channels after CHANNELS (the beam prior): smooth, like the prior
    smooth = torch.from_numpy(np.stack([x[0] + 1.0, x[PRIOR], y] + [x[c] for c in extra]))[None]  # CT + 1: air -> 0
    nearest = torch.from_numpy(np.stack([bits, x[TARGETS]]))[None]
    grid = F.affine_grid(theta, [1, 1, *x.shape[1:]], align_corners=False)
    smooth = F.grid_sample(smooth, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
    nearest = F.grid_sample(nearest, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0].numpy()
    out = np.empty_like(x)
    jitter = float(spec.get("ct_jitter", 0))
    out[0] = (smooth[0] - 1.0) * (1 + rng.uniform(-jitter, jitter)) + rng.uniform(-jitter, jitter)
    out[PRIOR], out[TARGETS] = smooth[1], nearest[1]
    for i, c in enumerate(extra):
        out[c] = smooth[3 + i]
    packed = nearest[0].astype(np.int32)
    for i, c in enumerate(MASK_CHANNELS):
        out[c] = (packed >> i) & 1
    return out, smooth[2]


def _sample(cases: list[dict], rng: np.random.Generator, patch, batch: int, multiple: int = 1,
            augment: dict | None = None):
    """A batch of crops (``patch``) or of whole volumes (``patch`` None: zero-padded to a common shape, a multiple
    of ``multiple``; the padding is outside the possible-dose mask, so it never enters the loss)."""
    xs, ys = [], []
    for _ in range(batch):
        item = cases[int(rng.integers(len(cases)))]
        x, y = item["x"], item["y"]
        if patch is None:  # whole volumes
            xp, yp = x.astype(np.float32), y.astype(np.float32)
            if augment and rng.random() < float(augment.get("probability", 1.0)):
                xp, yp = _augment(xp, yp, rng, augment)
        else:
            body = x[BODY] > 0
            zs, ys_, xs_ = np.nonzero(body[::4, ::4, ::4])  # centre crops on the body (coarse index for speed)
            pick = int(rng.integers(len(zs)))
            centre = np.array([zs[pick], ys_[pick], xs_[pick]]) * 4
            start = [int(np.clip(c - p // 2 + rng.integers(-8, 9), 0, s - p))
                     for c, p, s in zip(centre, patch, y.shape)]
            sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
            xp, yp = x[(slice(None),) + sl].astype(np.float32), y[sl].astype(np.float32)
        if rng.random() < 0.5:  # left-right flip: x is the last axis; paired organs swap channels
            xp, yp = xp[..., ::-1], yp[..., ::-1]
            for a, b in FLIP_PAIRS:
                xp[[a, b]] = xp[[b, a]]
        xs.append(np.ascontiguousarray(xp))
        ys.append(np.ascontiguousarray(yp))
    if patch is None:
        shape = [int(math.ceil(max(v.shape[i] for v in ys) / multiple) * multiple) for i in range(3)]
        xs, ys = [_pad_end(v, shape) for v in xs], [_pad_end(v, shape) for v in ys]
    return np.stack(xs), np.stack(ys)[:, None]


def validation_scores(network, cases: list[dict], patch=None, crop_margin: int | None = None) -> dict:
    """OpenKBP dose score (mean absolute error in the possible-dose region, Gy) on encoded validation cases."""
    errors = []
    for item in cases:
        pred = predict_array(network, item["x"].astype(np.float32), patch=patch, crop_margin=crop_margin)
        ref = item["y"].astype(np.float32) * DOSE_SCALE_GY
        mask = item["x"][BODY] > 0
        errors.append(float(np.abs(pred - ref).sum() / max(mask.sum(), 1)))
    return {"dose_score_gy": float(np.mean(errors)), "n": len(errors)}


def build_discriminator(spec: dict, in_channels: int = len(CHANNELS)):
    """The conditional PatchGAN of the adversarial mode: input channels + the dose, at half resolution."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=3, channels=int(spec.get("channels", 16)), in_channels=in_channels + 1,
                              num_layers_d=int(spec.get("layers", 3)), norm="INSTANCE")


def _adversarial_step(discriminator, d_optimiser, x, y, pred, mask, weight: float):
    """Least-squares GAN: one discriminator update on (real, fake) pairs; returns the generator's adversarial
    loss (to be added to L1). Pairs are average-pooled 2x: the discriminator judges texture, not the prior's edges."""
    import torch
    import torch.nn.functional as F

    def pair(dose):
        return F.avg_pool3d(torch.cat([x, dose * mask], 1), 2)

    d_optimiser.zero_grad(set_to_none=True)
    real, fake = discriminator(pair(y))[-1], discriminator(pair(pred.detach()))[-1]
    d_loss = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
    d_loss.backward()
    d_optimiser.step()
    judged = discriminator(pair(pred))[-1]
    return weight * F.mse_loss(judged, torch.ones_like(judged)), float(d_loss)


def weighted_l1(pred, y, x, structure_weight: float = 0.0):
    """The training loss: the mean absolute error over the possible-dose voxels, where voxels inside an OAR or a target
    weigh ``1 + structure_weight``; returned with the plain (unweighted) mean, logged comparably between weightings."""
    mask = (x[:, BODY:BODY + 1] > 0).float()
    # The OAR and target channels; > 0, as a target's value is its Rx / 70 Gy (masks stay binary under augmentation).
    inside = (x[:, 1:TARGETS + 1] > 0).any(dim=1, keepdim=True)
    weight = mask * (1 + structure_weight * inside)
    error = (pred - y).abs()
    plain = float((error * mask).sum() / mask.sum().clamp(min=1))
    return (error * weight).sum() / weight.sum().clamp(min=1), plain


def _one_cycle(optimiser, cfg: dict):
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.05)


def _retarget_schedule(schedule, cfg: dict) -> None:
    """Give a restored one-cycle schedule a new total step count: its phase ends are fixed at construction, so
    setting ``total_steps`` alone would leave the learning rate high at the new end."""
    import torch

    fresh = _one_cycle(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg["lr"]), cfg)
    schedule.total_steps = fresh.total_steps
    for phase, target in zip(schedule._schedule_phases, fresh._schedule_phases):  # noqa: SLF001 - no public API
        phase["end_step"] = target["end_step"]


def train(data: Path, outdir: Path, config: dict | None = None, validation: Path | None = None,
          resume: bool = False, max_minutes: float | None = None) -> dict:
    """Train (or resume) a dose model; checkpoints and ``train.log`` go to ``outdir``."""
    import torch

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    outdir.mkdir(parents=True, exist_ok=True)
    log_path = outdir / "train.log"

    def log(message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(int(os.environ.get("RTRAI_THREADS", os.cpu_count() or 2)))
    channels = input_channels(cfg["channels"])
    network = build_network(cfg["network"], channels)
    multiple = int(np.prod(network.strides))
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # Step-count schedule (not wall-clock): a loaded machine must not decay the rate before the steps happen.
    schedule = _one_cycle(optimiser, cfg)
    adversarial = cfg.get("adversarial")
    if adversarial:
        discriminator = build_discriminator(adversarial, len(channels))
        d_optimiser = torch.optim.Adam(discriminator.parameters(), lr=float(adversarial.get("lr", 2e-4)),
                                       betas=(0.5, 0.999))
    rng = np.random.default_rng(cfg["seed"])
    step, history, cpu_before, cpu_start = 0, [], 0.0, time.process_time()

    def cpu_hours() -> float:  # this process's CPU time (all threads; with cohort loading) plus earlier chunks'
        return (cpu_before + time.process_time() - cpu_start) / 3600
    checkpoint = outdir / "checkpoint.pt"
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        _retarget_schedule(schedule, cfg)  # a run resumed with another step count re-times the rest of its schedule
        step, history, cpu_before = state["step"], state["history"], float(state.get("cpu_s", 0.0))
        rng.bit_generator.state = state["rng"]
        if adversarial and "discriminator" in state:
            discriminator.load_state_dict(state["discriminator"])
            d_optimiser.load_state_dict(state["d_optimiser"])
        log(f"resumed at step {step}")
    log(f"config {json.dumps(cfg)}")
    cases = _load_cohort(data, log, crop_margin=cfg["crop_margin_vox"], channels=channels)
    val_cases = _load_cohort(validation, log, cfg.get("validation_cases", 8), channels=channels) if validation else []
    log(f"{len(cases)} training cases, {len(val_cases)} validation cases")

    def save() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        state = {"network": network.state_dict(), "optimiser": optimiser.state_dict(),
                 "schedule": schedule.state_dict(), "step": step, "history": history, "config": cfg,
                 "rng": rng.bit_generator.state, "cpu_s": cpu_hours() * 3600}
        if adversarial:
            state.update(discriminator=discriminator.state_dict(), d_optimiser=d_optimiser.state_dict())
        torch.save(state, tmp)
        os.replace(tmp, checkpoint)

    started, last_save, running, running_d = time.time(), time.time(), [], []
    network.train()
    while step < cfg["steps"]:
        x, y = _sample(cases, rng, cfg["patch"], cfg["batch"], multiple, cfg.get("augment"))
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        pred = network(x)
        loss, l1 = weighted_l1(pred, y, x, cfg["structure_weight"])
        if adversarial:
            mask = (x[:, BODY:BODY + 1] > 0).float()
            g_loss, d_loss = _adversarial_step(discriminator, d_optimiser, x, y, pred, mask,
                                               float(adversarial.get("weight", 0.05)))
            loss = loss + g_loss
            running_d.append(d_loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        running.append(l1 * DOSE_SCALE_GY)
        if step % 50 == 0:
            gan = f" discriminator {np.mean(running_d):.3f}" if running_d else ""
            log(f"step {step} loss(Gy) {np.mean(running):.3f} lr {schedule.get_last_lr()[0]:.2e}{gan} "
                f"cpu {cpu_hours():.3f} h")
            running, running_d = [], []
        if val_cases and step % cfg["validate_every"] == 0:
            scores = validation_scores(network, val_cases, cfg["patch"], cfg["crop_margin_vox"])
            history.append({"step": step, **scores})
            log(f"validation at step {step}: {scores}")
            if scores["dose_score_gy"] <= min(h["dose_score_gy"] for h in history):
                torch.save(network.state_dict(), outdir / "best.pt")
            network.train()
        if time.time() - last_save > cfg["checkpoint_every_s"]:
            save()
            last_save = time.time()
        if max_minutes is not None and time.time() - started > 60 * max_minutes:
            log("time budget reached; stopping (resume with --resume)")
            break
    save()
    spacing = np.median([c["spacing"] for c in cases], axis=0)
    log(f"stopped at step {step} after {cpu_hours():.3f} CPU hours")
    return {"step": step, "history": history, "spacing_mm": [round(float(v), 3) for v in spacing],
            "training_cases": len(cases), "data": str(data),
            "cpu_hours": round(cpu_hours(), 6)}  # not 3: a tiny run (tests) is < 3.6 CPU s
