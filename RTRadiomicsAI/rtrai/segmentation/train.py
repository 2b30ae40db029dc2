"""The training loop: preloaded patches, masked BCE + Dice, step-count LR schedule, checkpoints, resume, validation.

A work folder holds everything of a run:

    config.json        the merged config (a resumed run uses it, not the file given again)
    checkpoint.pt      model + optimiser + step + torch RNG, rewritten atomically every few minutes
    train.log          one line per ``log_every`` steps and per validation
    model/             the best model so far on the validation cases (manifest.json + weights.safetensors, fp16)

A recipe (:func:`train_recipe`: a config with ``base`` or ``average_seeds``) holds such runs in sub-folders and their
average in ``model/``.

Data randomness is drawn from generators seeded by (seed, step), so a resumed run sees the same patches as an
uninterrupted one. Made for 2 CPU cores in the background: one process, no data-loader workers.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from rtrai.core import provenance
from rtrai.core.errors import InputError
from rtrai.core.outputs import write_text
from rtrai.models import MANIFEST
from rtrai.models.training import CpuClock, Every, Logger, load_checkpoint, save_checkpoint

CHECKPOINT, LOG, CONFIG, MODEL, RECIPE = "checkpoint.pt", "train.log", "config.json", "model", "recipe.json"


def learning_rate(config: dict, step: int) -> float:
    """Linear warm-up, then polynomial decay to zero at ``steps`` (by step count, never wall-clock time)."""
    warm = min(1.0, (step + 1) / max(1, int(config["warmup"])))
    return float(config["lr"]) * warm * max(0.0, 1.0 - step / float(config["steps"])) ** 0.9


def manifest_for(config: dict, data: str, step: int, metrics: dict | None = None, command: str | None = None,
                 cpu_seconds: float | None = None) -> dict:
    return {
        "name": config["name"], "version": str(config["version"]), "task": "segmentation",
        "weights": "weights.safetensors", "sha256": "",
        "network": config["network"], "inputs": config["inputs"], "labels": config["labels"],
        "patch": config["patch"], "downsample": int(config.get("downsample", 1)),
        "spacing_mm": config.get("spacing_mm"), "inference": config["inference"],
        "training": {"data": data, "steps": step, "command": command, "cpu_seconds": cpu_seconds,
                     "seed": config["seed"], "config": {k: v for k, v in config.items() if k != "validation"}},
        "metrics": metrics or {},
    }


def train(data: str | os.PathLike, config: dict | None, workdir: str | os.PathLike, resume: bool = False,
          max_steps: int | None = None, command: str | None = None, progress=None, steps: int | None = None,
          log_prefix: str = "") -> Path:
    """Train (or resume) in ``workdir``; returns the folder of the best model. ``max_steps`` stops a run early
    (tests, chunks of a long training) without changing the schedule, which follows ``config['steps']``;
    ``steps`` on a resumed run lengthens (or shortens) that schedule from where it is."""
    import torch

    import rtrai.models  # noqa: F401 - everything a long run needs later is imported now, so that code edited while
    import rtrai.segmentation.inference  # noqa: F401 - it trains cannot break its validations and exports
    import rtrai.segmentation.metrics  # noqa: F401
    import rtrai.segmentation.postprocess  # noqa: F401
    from rtrai.segmentation.data import augmentation, case_paths, load_samples, PatchSampler
    from rtrai.segmentation.losses import masked_bce_dice
    from rtrai.segmentation.networks import build_network, init_output_bias

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if resume:
        if not (workdir / CHECKPOINT).is_file():
            raise InputError(f"nothing to resume: {workdir / CHECKPOINT} does not exist")
        config = json.loads((workdir / CONFIG).read_text(encoding="utf-8"))
        if steps:
            config["steps"] = int(steps)
            write_text(workdir / CONFIG, json.dumps(config, indent=2) + "\n")
    elif (workdir / CHECKPOINT).is_file() or (workdir / RECIPE).is_file():
        raise InputError(f"{workdir} already holds a training run; use --resume to continue it or pick another folder")
    log = Logger(workdir / LOG, log_prefix)
    torch.set_num_threads(int(config["threads"]))
    seed = int(config["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    paths = case_paths(data)
    started = time.time()
    skipped: list[str] = []
    samples = load_samples(paths, config, progress, seed=seed, skipped=skipped)
    if not samples:
        raise InputError(f"no training case in {data} holds image data")
    spacings = np.array([sample.spacing for sample in samples])
    config["spacing_mm"] = [spacings.min(axis=0).round(3).tolist(), spacings.max(axis=0).round(3).tolist()]
    log(f"loaded {len(samples)} training cases in {time.time() - started:.0f} s "
        f"({sum(s.image.nbytes + s.bits.nbytes for s in samples) / 2**20:.0f} MiB)"
        + (f"; left out, their leak-free CT refused as CT: {'; '.join(skipped)}" if skipped else ""))
    validation = _validation_samples(config, log)
    if not resume:
        write_text(workdir / CONFIG, json.dumps(config, indent=2) + "\n")
    provenance.write(workdir, provenance.record("segment train", {"data": str(data), "resume": resume,
                                                                  "max_steps": max_steps, "config": config},
                                                seed=seed, extra={"command_line": command}))

    n_in, n_out = len(config["inputs"]), len(config["labels"])
    model = build_network(config["network"], n_in, n_out)
    init_output_bias(model, n_out, float(config["output_prior"]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]),
                                  weight_decay=float(config["weight_decay"]))
    step, best, cpu_before = 0, -1.0, 0.0
    if resume:
        state = load_checkpoint(workdir / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        step, best, cpu_before = int(state["step"]), float(state["best"]), float(state.get("cpu_seconds", 0.0))
        log(f"resumed at step {step} (best validation mean DSC so far {best:.3f})")
    elif config.get("init"):
        log(f"weights initialised from {_warm_start(model, config)}")
    if not resume:
        log(f"config: {json.dumps(config)}")
        log(f"network: {config['network']['arch']}, {sum(p.numel() for p in model.parameters())} parameters")

    sampler = PatchSampler(samples, config)
    augment = augmentation(config)
    total = int(config["steps"]) if max_steps is None else min(int(config["steps"]), step + int(max_steps))
    clock, checkpoint_due = CpuClock(cpu_before), Every(60 * float(config["checkpoint_minutes"]))
    window_start, losses = time.time(), []

    def cpu_seconds() -> float:
        return clock.seconds

    def save() -> None:
        save_checkpoint({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step, "best": best,
                         "torch_rng": torch.get_rng_state(), "cpu_seconds": cpu_seconds()}, workdir / CHECKPOINT)
        checkpoint_due.reset()

    model.train()
    while step < total:
        rng = np.random.default_rng([seed, step])
        augment.set_random_state(seed=int(rng.integers(2**31)))
        batch = [augment(sampler.draw(rng)) for _ in range(int(config["batch"]))]
        image = torch.stack([torch.as_tensor(np.asarray(b["image"]), dtype=torch.float32) for b in batch])
        label = torch.stack([torch.as_tensor(np.asarray(b["label"]), dtype=torch.float32) for b in batch])
        present = torch.stack([torch.as_tensor(np.asarray(b["present"]), dtype=torch.float32) for b in batch])
        weight = (torch.stack([torch.as_tensor(np.asarray(b["weight"]), dtype=torch.float32) for b in batch])
                  if "weight" in batch[0] else None)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = masked_bce_dice(model(image), label, present, float(config["dice_weight"]), weight=weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % int(config["log_every"]) == 0 or step == total:
            elapsed = time.time() - window_start
            log(f"step {step}/{config['steps']} loss {np.mean(losses):.4f} lr {learning_rate(config, step):.2e} "
                f"{elapsed / len(losses):.2f} s/step cpu {cpu_seconds() / 3600:.2f} h")
            losses, window_start = [], time.time()
        every = int(config["validation"].get("every") or 0)
        if validation and ((every and step % every == 0) or step == total):
            scores = validate(model, validation, config)
            mean = float(np.mean(list(scores.values()))) if scores else 0.0
            log(f"validation step {step}: mean DSC {mean:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            if mean > best:
                best = mean
                _export(model, workdir / MODEL, config, str(data), step, scores, command, cpu_seconds())
                log(f"new best model at step {step} -> {workdir / MODEL}")
            model.train()
            save()
        if checkpoint_due.due() or step == total:
            save()
    if not validation:
        _export(model, workdir / MODEL, config, str(data), step, {}, command, cpu_seconds())
    log(f"stopped at step {step}; cpu {cpu_seconds() / 3600:.2f} h")
    return workdir / MODEL


def is_recipe(config: dict) -> bool:
    return bool(config.get("base") or config.get("average_seeds"))


def train_recipe(data: str | os.PathLike, config: dict | None, workdir: str | os.PathLike, resume: bool = False,
                 command: str | None = None, progress=None) -> Path:
    """Train a recipe (a config with ``base`` and/or ``average_seeds``) in ``workdir``; returns its model folder::

        recipe.json   the recipe's config (a resumed recipe uses it)
        base/         the run (or recipe) of the base config, unless the recipe has an ``init``
        seed-N/       one run per seed, warm-started from base/model (or ``init``)
        model/        the weight average of the runs' best models, validated on the validation cases

    Stopped at any time, ``resume=True`` leaves the finished stages and resumes the interrupted ones."""
    from rtrai.models import average_weights, model_origin, read_manifest, write_model
    from rtrai.segmentation.config import load_config
    from rtrai.segmentation.networks import build_network

    workdir = Path(workdir)
    if resume:
        if not (workdir / RECIPE).is_file():
            raise InputError(f"nothing to resume: {workdir / RECIPE} does not exist")
        config = json.loads((workdir / RECIPE).read_text(encoding="utf-8"))
    elif (workdir / RECIPE).is_file() or (workdir / CHECKPOINT).is_file():
        raise InputError(f"{workdir} already holds a training run; use --resume to continue it or pick another folder")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text(workdir / RECIPE, json.dumps(config, indent=2) + "\n")
    log = Logger(workdir / LOG)
    run = {**config, "base": None, "average_seeds": None, "parallel": 1}
    stages = []
    if config.get("base") and not config.get("init"):
        base = load_config(config["base"])
        base["validation"] = {**base["validation"], "data": config["validation"].get("data")}  # one selection set
        stages.append(workdir / "base")
        _run_stages(data, {stages[-1]: base}, 1, log, command, progress)
        run["init"] = str(workdir / "base" / MODEL)
    seeds = [int(seed) for seed in config.get("average_seeds") or [config["seed"]]]
    runs = {workdir / f"seed-{seed}": {**run, "seed": seed} for seed in seeds}
    stages += list(runs)
    _run_stages(data, runs, int(config.get("parallel") or 1), log, command, progress)

    state, averaged = average_weights([str(folder / MODEL) for folder in runs])
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}  # as shipped: fp16
    scores = {}
    validation = _validation_samples(config, log)
    if validation:
        network = build_network(config["network"], len(config["inputs"]), len(config["labels"]))
        network.load_state_dict(state)
        scores = validate(network, validation, config)
        log(f"validation of the average of {len(runs)}: mean DSC {np.mean(list(scores.values())):.3f} "
            + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    cpu = sum(_cpu_seconds(folder) for folder in stages)
    manifest = manifest_for(config, str(data), int(config["steps"]), _metrics(scores, config), command, round(cpu))
    manifest["training"]["seed"] = seeds
    if len(runs) > 1:
        manifest["training"]["averaged_from"] = averaged["training"]["averaged_from"]
    if workdir / "base" in stages:
        base_model = read_manifest(workdir / "base" / MODEL)
        manifest["training"]["base"] = {**model_origin(base_model), "config": config["base"]}
    write_model(workdir / MODEL, state, manifest)  # written last: a recipe with a model has finished
    log(f"recipe finished: {workdir / MODEL}; cpu {cpu / 3600:.2f} h in all")
    return workdir / MODEL


def _run_stages(data, stages: dict, parallel: int, log, command, progress=None) -> None:
    """Run stages (folder -> config) to their ends, ``parallel`` at a time in processes of their own; a finished
    stage (of a resumed recipe) is left as it is."""
    pending = {folder: config for folder, config in stages.items() if not _finished(folder, config)}
    for folder in stages:
        log(f"stage {folder.name}: {'to run' if folder in pending else 'finished'}, log {folder / LOG}")
    if parallel > 1 and len(pending) > 1:
        from rtrai.core.workers import process_pool

        # Workers that exit with this process: an orphaned run would go on training unseen, writing into folders
        # that a new run may be using (its last checkpoint is kept for --resume).
        with process_pool(min(parallel, len(pending)), "spawn") as pool:
            futures = [pool.submit(_run_stage, data, config, folder, command, None, f"[{folder.name}] ")
                       for folder, config in pending.items()]
            for future in futures:
                future.result()
    else:
        for folder, config in pending.items():
            _run_stage(data, config, folder, command, progress)


def _finished(folder: Path, config: dict) -> bool:
    if is_recipe(config):
        return (folder / MODEL / MANIFEST).is_file()  # a recipe writes its model last
    return (folder / CHECKPOINT).is_file() and (
        _checkpoint(folder)["step"] >= json.loads((folder / CONFIG).read_text(encoding="utf-8"))["steps"])


def _run_stage(data, config: dict, folder: Path, command, progress=None, prefix: str = "") -> Path:
    """Start a stage, or resume it where it stopped."""
    if is_recipe(config):
        return train_recipe(data, config, folder, resume=(folder / RECIPE).is_file(), command=command,
                            progress=progress)
    resume = (folder / CHECKPOINT).is_file()
    return train(data, None if resume else config, folder, resume=resume, command=command, progress=progress,
                 log_prefix=prefix)


def _checkpoint(folder: Path) -> dict:
    return load_checkpoint(folder / CHECKPOINT)


def _cpu_seconds(stage: Path) -> float:
    from rtrai.models import read_manifest

    if (stage / RECIPE).is_file():
        return float(read_manifest(stage / MODEL)["training"]["cpu_seconds"])
    return float(_checkpoint(stage).get("cpu_seconds", 0.0))


def _warm_start(model, config: dict) -> str:
    """Load the weights of ``config['init']`` into ``model``; returns what was loaded (name, version, sha256)."""
    from rtrai.models import load_state_dict, read_manifest

    manifest = read_manifest(config["init"])
    for key in ("network", "labels"):
        if manifest.get(key) != config[key]:
            raise InputError(f"init model {config['init']} has {key} {manifest.get(key)}, the config {config[key]}")
    if [i["name"] for i in manifest["inputs"]] != [i["name"] for i in config["inputs"]]:
        raise InputError(f"init model {config['init']} has other input channels than the config")
    model.load_state_dict(load_state_dict(manifest))
    return f"{manifest['name']} version {manifest['version']} (sha256 {manifest['sha256'][:12]})"


def _validation_samples(config: dict, log) -> list:
    from rtrai.segmentation.data import case_paths, load_samples

    folder = config["validation"].get("data")
    if not folder:
        return []
    if not Path(folder).is_dir():
        log(f"validation data {folder} not found: training without model selection")
        return []
    paths = case_paths(folder)
    count = int(config["validation"].get("cases") or len(paths))
    paths = paths[:: max(1, len(paths) // count)][:count]  # spread over the folder, the same every run
    return load_samples(paths, {**config, "downsample": 1})


def validate(model, samples, config: dict) -> dict[str, float]:
    """Mean DSC per label over validation cases that have it (sliding window, threshold, largest component); on a
    leak-free OpenKBP case only its slices with image data count, and a label with none there is not scored."""
    import torch

    from rtrai.segmentation.data import unpack
    from rtrai.segmentation.inference import predict_array
    from rtrai.segmentation.metrics import dice

    model.eval()
    scores: dict[str, list[float]] = {name: [] for name in config["labels"]}
    for sample in samples:
        with torch.no_grad():
            masks = predict_array(model, sample.image.astype(np.float32), config)
        labels = unpack(sample.bits, len(config["labels"]))
        if sample.scored is not None:
            masks[:, ~sample.scored] = 0
            labels[:, ~sample.scored] = 0
        for i, name in enumerate(config["labels"]):
            if sample.present[i] and labels[i].any():
                scores[name].append(dice(masks[i], labels[i]))
    return {name: float(np.mean(v)) for name, v in scores.items() if v}


def _metrics(scores: dict, config: dict) -> dict:
    if not scores:
        return {}
    return {"validation_dsc": {k: round(v, 4) for k, v in scores.items()},
            "validation_mean_dsc": round(float(np.mean(list(scores.values()))), 4),
            "validation_cases": int(config["validation"].get("cases") or 0)}


def _export(model, folder: Path, config: dict, data: str, step: int, scores: dict, command, cpu: float) -> None:
    from rtrai.models import write_model

    write_model(folder, model.state_dict(), manifest_for(config, data, step, _metrics(scores, config), command,
                                                         round(cpu)))


def main_command() -> str:
    return " ".join(["rtrai"] + sys.argv[1:])


def export(model_folder: str | os.PathLike, destination: str | os.PathLike, metrics: dict | None = None) -> Path:
    """Copy a trained model into a zoo folder (checksum re-computed), replacing its metrics when given
    (e.g. the evaluation on the whole validation set rather than the cases used for selection)."""
    from rtrai.models import load_state_dict, read_manifest, write_model

    manifest = read_manifest(model_folder)
    if metrics is not None:
        manifest["metrics"] = metrics
    return write_model(destination, load_state_dict(manifest), manifest)
