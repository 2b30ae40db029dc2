"""Training configs: a YAML or JSON file merged over :data:`DEFAULTS` (see ``configs/*.yaml`` for shipped ones)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from rtrai.core.errors import InputError

CONFIGS = Path(__file__).resolve().parent / "configs"

DEFAULTS: dict = {
    "name": "model",
    "version": "1",
    "labels": ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"],
    # Input channels; "CT" is the case's CT, any other name an image file <name>.nrrd in a case folder.
    # window: intensities clipped to it and scaled to [-1, 1].
    "inputs": [{"name": "CT", "modality": "CT", "window": [-1000, 1500]}],
    "network": {"arch": "residual", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "patch": [64, 64, 64],  # z, y, x voxels
    "batch": 2,
    "steps": 20000,
    "lr": 2e-3,
    "weight_decay": 1e-5,
    "warmup": 200,
    "foreground_fraction": 0.85,  # share of patches centred on a voxel of a (randomly chosen) present structure
    "dice_weight": 1.0,
    "output_prior": 0.01,
    "seed": 0,
    # 1 thread: on 2 shared cores, a 2-thread step measured 2.6 s against 0.74 s for 1 thread (OpenMP threads wait
    # for each other when other processes hold a core); set 2 on a machine of your own.
    "threads": 1,
    "checkpoint_minutes": 5,
    "log_every": 50,
    "augment": {"flip": 0.5, "affine": 0.15, "rotate_deg": 10, "scale": 0.1, "intensity": 0.5, "noise": 0.1},
    "validation": {"data": None, "every": 2000, "cases": 12},
    "inference": {"overlap": 0.25, "mode": "gaussian", "threshold": 0.5, "largest_component": True},
    # Two-stage (localise at low resolution, segment a crop at full resolution): a factor > 1 trains the
    # localiser on the whole volume down-sampled by it; inference then crops around what the localiser finds.
    "downsample": 1,
    # Warm start: a zoo model name or model folder whose weights (same network, inputs and labels) the run starts
    # from instead of a random initialisation; the schedule, optimiser and step count start afresh.
    "init": None,
    # A recipe, for a model that takes several runs, in one command (rtrai segment train ... -o WORKDIR):
    # "base": a config (shipped name or file) trained first, in WORKDIR/base; this config warm-starts from its best
    # model (unless "init" is given). "average_seeds": this config runs once per seed, in WORKDIR/seed-N, and the runs'
    # weights are averaged into WORKDIR/model (a "model soup"), "parallel" runs at a time (one process each).
    "base": None,
    "average_seeds": None,
    "parallel": 1,
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike | None) -> dict:
    """Read a config file (YAML or JSON), or a shipped config by name (``hn-oar-ct``), merged over the defaults."""
    if path is None:
        return copy.deepcopy(DEFAULTS)
    source = Path(path)
    if not source.is_file():
        shipped = [CONFIGS / f"{path}.yaml", CONFIGS / f"{path}.json"]
        source = next((p for p in shipped if p.is_file()), None)
        if source is None:
            names = sorted(p.stem for p in CONFIGS.glob("*.*"))
            raise InputError(f"config not found: {path} (shipped configs: {', '.join(names)})")
    text = source.read_text(encoding="utf-8")
    try:
        if source.suffix.lower() in (".yaml", ".yml"):
            import yaml

            override = yaml.safe_load(text) or {}
        else:
            override = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different classes for the same user mistake
        raise InputError(f"{source}: not a valid config ({exc})") from None
    if not isinstance(override, dict):
        raise InputError(f"{source}: a config must be a mapping of settings")
    unknown = sorted(set(override) - set(DEFAULTS))
    if unknown:
        raise InputError(f"{source}: unknown settings {', '.join(unknown)}")
    config = _merge(DEFAULTS, override)
    if not config["labels"] or not config["inputs"]:
        raise InputError(f"{source}: a config needs at least one label and one input")
    return config
