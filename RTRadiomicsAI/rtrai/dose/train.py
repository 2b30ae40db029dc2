"""Dose model training: encoded cases loaded once (float16, optionally cropped to the possible-dose box), batches of
whole volumes (zero-padded to a common shape) or crops, with left-right flips and the optional affine augmentation
(:mod:`rtrai.dose.augmentation`), L1 (:mod:`rtrai.dose.losses`), a one-cycle schedule over the step count,
validation by the OpenKBP dose score, checkpoints and ``--resume``; :mod:`rtrai.dose.export` writes the model.
A ``refine`` config trains a full-resolution head on crops over a frozen base model instead (:func:`refine_setup`)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import InputError
from rtrai.dose.augmentation import augment as augment_volume
from rtrai.dose.augmentation import flip_left_right
from rtrai.dose.config import DEFAULT_CONFIG
from rtrai.dose.encoding import BODY, DOSE_SCALE_GY, body_box, encode_inputs, input_channels, pad_end, pad_to
from rtrai.dose.inference import predict_array
from rtrai.dose.losses import adversarial_step, weighted_l1
from rtrai.dose.networks import build_discriminator, build_network
from rtrai.models.training import CpuClock, Every, Logger, load_checkpoint, save_checkpoint


def load_cohort(folder: Path, log, limit: int | None = None, crop_margin: int | None = None,
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


def sample_batch(cases: list[dict], rng: np.random.Generator, patch, batch: int, multiple: int = 1,
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
                xp, yp = augment_volume(xp, yp, rng, augment)
        else:
            body = x[BODY] > 0
            zs, ys_, xs_ = np.nonzero(body[::4, ::4, ::4])  # centre crops on the body (coarse index for speed)
            pick = int(rng.integers(len(zs)))
            centre = np.array([zs[pick], ys_[pick], xs_[pick]]) * 4
            start = [int(np.clip(c - p // 2 + rng.integers(-8, 9), 0, max(s - p, 0)))
                     for c, p, s in zip(centre, patch, y.shape)]
            sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
            xp, yp = x[(slice(None),) + sl].astype(np.float32), y[sl].astype(np.float32)
            if yp.shape != tuple(patch):  # a case narrower than the crop (cropped cases can be): padded, no loss there
                xp, yp = pad_end(xp, patch), pad_end(yp, patch)
        if rng.random() < 0.5:  # left-right flip: x is the last axis; paired organs swap channels
            xp, yp = flip_left_right(xp, yp)
        xs.append(np.ascontiguousarray(xp))
        ys.append(np.ascontiguousarray(yp))
    if patch is None:
        shape = [int(math.ceil(max(v.shape[i] for v in ys) / multiple) * multiple) for i in range(3)]
        xs, ys = [pad_end(v, shape) for v in xs], [pad_end(v, shape) for v in ys]
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


def refine_setup(cfg: dict) -> tuple[dict, dict]:
    """The effective config of a ``refine`` run (network, channels and cropping of the base model, the head added)
    and the base model's manifest."""
    from rtrai.models import read_manifest

    refine = cfg["refine"]
    if cfg.get("adversarial"):
        raise InputError("'refine' heads train on L1 alone: drop 'adversarial' from the config")
    if "base" not in refine:
        raise InputError("'refine' needs 'base': the trained prior-unet dose model to refine (zoo name or folder)")
    base = read_manifest(refine["base"])
    if base.get("task") != "dose" or base["network"].get("type") != "prior-unet" or base["network"].get("refine"):
        raise InputError(f"'refine' base '{refine['base']}' is not a prior-unet dose model without a head")
    patch = refine.get("patch", [32, 48, 48])
    if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(v, int) and v > 0 for v in patch)):
        raise InputError(f"'refine' patch {patch!r}: give three positive voxel counts (z, y, x)")
    head = {"channels": int(refine.get("channels", 16)), "layers": int(refine.get("layers", 4))}
    effective = {**cfg, "network": {**base["network"], "refine": head}, "patch": None, "augment": None,
                 "channels": base["inputs"].get("channels"),
                 "crop_margin_vox": base.get("inference", {}).get("crop_margin_vox"),
                 "refine": {**refine, "patch": patch}}
    return effective, base


def add_coarse_dose(network, cases: list[dict], multiple: int) -> None:
    """Append the frozen coarse model's dose to each case's inputs as a last channel (float16): a refine head trains
    on crops, while the coarse U-Net needs the whole case for its field of view."""
    import torch

    network.eval()
    with torch.inference_mode():
        for item in cases:
            padded, crop = pad_to(item["x"].astype(np.float32), multiple)
            coarse = network.coarse(torch.from_numpy(padded[None]))[0, 0].numpy()[crop]
            item["x"] = np.concatenate([item["x"], coarse[None].astype(np.float16)])
    network.train()


def one_cycle(optimiser, cfg: dict):
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.05)


def retarget_schedule(schedule, cfg: dict) -> None:
    """Give a restored one-cycle schedule a new total step count: its phase ends are fixed at construction, so
    setting ``total_steps`` alone would leave the learning rate high at the new end."""
    import torch

    fresh = one_cycle(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg["lr"]), cfg)
    schedule.total_steps = fresh.total_steps
    for phase, target in zip(schedule._schedule_phases, fresh._schedule_phases):  # noqa: SLF001 - no public API
        phase["end_step"] = target["end_step"]


def train(data: Path, outdir: Path, config: dict | None = None, validation: Path | None = None,
          resume: bool = False, max_minutes: float | None = None) -> dict:
    """Train (or resume) a dose model; checkpoints and ``train.log`` go to ``outdir``."""
    import torch

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    base = None
    if cfg.get("refine"):
        cfg, base = refine_setup(cfg)
    outdir.mkdir(parents=True, exist_ok=True)
    log = Logger(outdir / "train.log")

    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(int(os.environ.get("RTRAI_THREADS", os.cpu_count() or 2)))
    channels = input_channels(cfg["channels"])
    network = build_network(cfg["network"], channels)
    multiple = int(np.prod(network.strides))
    if base is not None:  # the base's weights (checked by sha256), frozen; only the head learns
        from rtrai.models import load_state_dict

        missing, unexpected = network.load_state_dict(load_state_dict(base), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise InputError(f"'refine' base '{cfg['refine']['base']}' does not fit its own network spec")
        for name, parameter in network.named_parameters():
            parameter.requires_grad = name.startswith("head.")
    trained = [p for p in network.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # Step-count schedule (not wall-clock): a loaded machine must not decay the rate before the steps happen.
    schedule = one_cycle(optimiser, cfg)
    adversarial = cfg.get("adversarial")
    if adversarial:
        discriminator = build_discriminator(adversarial, len(channels))
        d_optimiser = torch.optim.Adam(discriminator.parameters(), lr=float(adversarial.get("lr", 2e-4)),
                                       betas=(0.5, 0.999))
    rng = np.random.default_rng(cfg["seed"])
    step, history, clock = 0, [], CpuClock()  # this process's CPU time (with cohort loading) plus earlier chunks'

    def cpu_hours() -> float:
        return clock.hours
    checkpoint = outdir / "checkpoint.pt"
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        retarget_schedule(schedule, cfg)  # a run resumed with another step count re-times the rest of its schedule
        step, history, clock.before = state["step"], state["history"], float(state.get("cpu_s", 0.0))
        rng.bit_generator.state = state["rng"]
        if adversarial and "discriminator" in state:
            discriminator.load_state_dict(state["discriminator"])
            d_optimiser.load_state_dict(state["d_optimiser"])
        log(f"resumed at step {step}")
    log(f"config {json.dumps(cfg)}")
    cases = load_cohort(data, log, crop_margin=cfg["crop_margin_vox"], channels=channels)
    val_cases = load_cohort(validation, log, cfg.get("validation_cases", 8), channels=channels) if validation else []
    log(f"{len(cases)} training cases, {len(val_cases)} validation cases")
    patch = cfg["refine"]["patch"] if base is not None else cfg["patch"]
    if base is not None:
        started_coarse = time.time()
        add_coarse_dose(network, cases, multiple)
        log(f"coarse doses of {len(cases)} training cases by '{cfg['refine']['base']}': "
            f"{time.time() - started_coarse:.0f} s")
        if val_cases and not history:
            scores = validation_scores(network, val_cases, None, cfg["crop_margin_vox"])
            log(f"validation of the base (step 0): {scores}")
            network.train()

    def save() -> None:
        state = {"network": network.state_dict(), "optimiser": optimiser.state_dict(),
                 "schedule": schedule.state_dict(), "step": step, "history": history, "config": cfg,
                 "rng": rng.bit_generator.state, "cpu_s": cpu_hours() * 3600}
        if adversarial:
            state.update(discriminator=discriminator.state_dict(), d_optimiser=d_optimiser.state_dict())
        save_checkpoint(state, checkpoint)

    started, checkpoint_due, running, running_d = time.time(), Every(cfg["checkpoint_every_s"]), [], []
    network.train()
    while step < cfg["steps"]:
        x, y = sample_batch(cases, rng, patch, cfg["batch"], multiple, cfg.get("augment"))
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if base is not None:  # the last channel is the frozen coarse dose
            x, coarse = x[:, :-1], x[:, -1:]
            pred = network.refine(x, coarse)
        else:
            pred = network(x)
        loss, l1 = weighted_l1(pred, y, x, cfg["structure_weight"])
        if adversarial:
            mask = (x[:, BODY:BODY + 1] > 0).float()
            g_loss, d_loss = adversarial_step(discriminator, d_optimiser, x, y, pred, mask,
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
                save_checkpoint(network.state_dict(), outdir / "best.pt")
            network.train()
        if checkpoint_due.due():
            save()
            checkpoint_due.reset()
        if max_minutes is not None and time.time() - started > 60 * max_minutes:
            log("time budget reached; stopping (resume with --resume)")
            break
    save()
    spacing = np.median([c["spacing"] for c in cases], axis=0)
    log(f"stopped at step {step} after {cpu_hours():.3f} CPU hours")
    result = {"step": step, "history": history, "spacing_mm": [round(float(v), 3) for v in spacing],
              "training_cases": len(cases), "data": str(data), "config": cfg,
              "cpu_hours": round(cpu_hours(), 6)}  # not 3: a tiny run (tests) is < 3.6 CPU s
    if base is not None:
        from rtrai.models import model_origin

        result["base"] = {**model_origin(base), "cpu_hours": base.get("training", {}).get("cpu_hours")}
    return result
