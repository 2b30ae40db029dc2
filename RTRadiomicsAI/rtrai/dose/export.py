"""Dose models as zoo files (:mod:`rtrai.models`: safetensors + manifest with sha256): a training run's export and
an ensemble joined from several models."""

from __future__ import annotations

import os
from pathlib import Path

from rtrai.core.errors import InputError, ModelError
from rtrai.dose.config import DEFAULT_CONFIG
from rtrai.dose.encoding import DOSE_SCALE_GY, input_channels
from rtrai.dose.inference import inference_settings


def export_model(workdir: Path, config: dict, result: dict, command: str) -> Path:
    """Write the best (else the last) weights of a training run as a zoo model in ``workdir/model``."""
    from rtrai.models import run_weights, write_model

    best = workdir / "best.pt"
    state = run_weights(best if best.is_file() else workdir / "checkpoint.pt")
    history = result.get("history", [])
    best_entry = min(history, key=lambda h: h["dose_score_gy"]) if history else None
    cfg = result.get("config") or {**DEFAULT_CONFIG, **config}  # the run's effective config (a refine run's base)
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
    if result.get("base"):  # a refine run: its head on a frozen base; the CPU hours count both
        manifest["training"].update(refine=cfg["refine"], base=result["base"], run_cpu_hours=result.get("cpu_hours"),
                                    cpu_hours=(result.get("cpu_hours") or 0) + (result["base"]["cpu_hours"] or 0))
    return write_model(workdir / "model", state, manifest)


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
        if network.get("refine"):
            raise ModelError(f"model '{manifest['name']}' ({manifest['folder']}) has a refine head: ensembles join "
                             "coarse models (train one head on top of the joined ensemble instead)")
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
    hours = [(m.get("training") or {}).get("cpu_hours") for m in manifests]
    manifest.update(version="ensemble", network={**base, "members": len(unets)}, metrics={},
                    training={"members": [{"name": m["name"], "version": m["version"], "sha256": m["sha256"],
                                           "training": m.get("training")} for m in manifests],
                              # what the members cost together (None when a member's is unknown)
                              "cpu_hours": None if None in hours else round(sum(hours), 2)})
    return write_model(destination, joined, manifest)
