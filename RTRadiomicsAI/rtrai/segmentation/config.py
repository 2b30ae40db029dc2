"""Training configs: a YAML or JSON file (read and checked by :func:`rtrai.io.settings.load_settings`) deep-merged
over :data:`DEFAULTS` (see ``configs/*.yaml`` for shipped ones)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from rtrai.core.errors import InputError
from rtrai.io.settings import load_settings, merge

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
    # OpenKBP's cut CTs keep the voxels inside every contour beyond the cut: with leak_free, OpenKBP cases are trained
    # on leak-free CTs and validated on leak-free CTs scored on the slices with image data (rtrai.io.openkbp), so the
    # model learns anatomy rather than that artefact, and selection measures what a clinical CT would give.
    "leak_free": False,
    # With leak_free: the loss counts only the slices with image data, and patches are centred on organ voxels there
    # (OpenKBP's contours go on beyond the CT's cut, 19-23 % of the brainstems' and spinal cords' voxels in the train
    # patients, where no network can see them).
    "imaged_slices_only": False,
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


def load_config(path: str | os.PathLike | None) -> dict:
    """Read a config file (YAML or JSON), or a shipped config by name (``hn-oar-ct``), merged over the defaults."""
    if path is None:
        return copy.deepcopy(DEFAULTS)
    override, source = load_settings(path, DEFAULTS, CONFIGS)
    for key in ("init", "base"):
        if not isinstance(override.get(key), (str, type(None))):
            raise InputError(f"{source}: '{key}' must name a model or config, not {override[key]!r:.60}")
    seeds = override.get("average_seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or
                              not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
        raise InputError(f"{source}: 'average_seeds' must be a list of whole numbers, not {seeds!r:.60}")
    config = merge(DEFAULTS, override)
    labels, inputs = config["labels"], config["inputs"]
    if not labels or not inputs:
        raise InputError(f"{source}: a config needs at least one label and one input")
    if not all(isinstance(label, str) and label.strip() for label in labels):
        raise InputError(f"{source}: 'labels' must be structure names, not {labels!r:.80}")
    if not all(isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] for item in inputs):
        raise InputError(f"{source}: every entry of 'inputs' needs a name, e.g. {{name: CT, modality: CT}}")
    return config
