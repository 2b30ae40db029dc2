"""Dose training configs: the defaults every setting falls back to; shipped configs are in ``configs/``."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"

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
    # A cascade's second stage: a full-resolution head (rtrai.dose.networks.refine_head) trained on crops of `patch`
    # voxels on top of a trained prior-unet model `base` (zoo name or folder), which stays frozen; the network,
    # channels and cropping are the base's. None: train a model from scratch.
    # E.g. {"base": "training/hn-dose-openkbp-v5/version4", "channels": 16, "layers": 4, "patch": [32, 48, 48]}
    "refine": None,
}


def load_config(name_or_path: str) -> dict:
    """A dose training config (YAML/JSON file or shipped name), checked by :func:`rtrai.io.settings.load_settings`:
    a mapping of known settings, each of its default's type; mistakes are one line naming the file (and for YAML or
    JSON syntax, the line and column). Returned as written: training lays it over :data:`DEFAULT_CONFIG` key by key
    (a ``network`` given is the whole network spec)."""
    from rtrai.io.settings import load_settings

    known = {**DEFAULT_CONFIG, "name": "dose-model", "validation_cases": 8}
    return load_settings(name_or_path, known, CONFIGS, "dose config")[0]
