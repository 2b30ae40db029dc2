"""The compute device for inference and training: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``.

``auto`` follows ``RTRAI_DEVICE`` when it is set (the hub module's setting, passed to background jobs).
"""

from __future__ import annotations

import os

from rtrai.core.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        device = os.environ.get("RTRAI_DEVICE", "auto")
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}'; use auto, cpu or cuda")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)
