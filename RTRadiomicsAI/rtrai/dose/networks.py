"""Dose networks (MONAI), built from a config's ``network`` spec.

``prior-unet`` (the default): the geometric prior (:mod:`rtrai.dose.encoding`) at full resolution plus a correction
that a MONAI U-Net computes at half resolution from the average-pooled inputs and that is upsampled trilinearly. The
prior carries the sharp PTV dose edges, so the coarse network only learns what is smooth (the tail, OAR sparing, the
dose between levels): a half-resolution network alone blurs the edges, a full-resolution one costs 8x more on a CPU.
``members`` > 1 is an ensemble (:func:`rtrai.dose.export.join_models`). ``refine`` ({channels, layers}) adds a
small full-resolution head that corrects the coarse result from the inputs and the coarse dose (a cascade's second
stage, trained on crops with the coarse part frozen: ``refine`` in a training config), for what the 2x coarser grid
smooths. ``unet`` / ``resunet``: a plain full-resolution U-Net (trained on crops). The discriminator is the optional
adversarial mode's conditional PatchGAN.
"""

from __future__ import annotations

from rtrai.core.errors import InputError
from rtrai.dose.encoding import CHANNELS, PRIOR, input_channels


def build_network(spec: dict, channels=None):
    """The torch module for a network spec: ``prior-unet`` (default), ``unet`` or ``resunet`` (full resolution), for
    the given input channels (default :data:`CHANNELS`)."""
    import torch
    from monai.networks.nets import UNet

    kind = spec.get("type", "unet")
    if kind not in ("prior-unet", "unet", "resunet"):
        raise InputError(f"unknown dose network type '{kind}' (use prior-unet, unet or resunet)")
    members = int(spec.get("members", 1))
    if spec.get("refine") and kind != "prior-unet":
        raise InputError("'refine' heads are for prior-unet models")
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
            self.head = refine_head(spec["refine"], len(input_channels(channels))) if spec.get("refine") else None

        def forward(self, x):
            coarse = self.coarse(x)
            return coarse if self.head is None else self.refine(x, coarse)

        def refine(self, x, coarse):
            """The coarse dose corrected by the full-resolution head. Channels-last: oneDNN's 3-D convolutions run
            1.6-1.7x faster on it on CPU (forward and backward), with the same values."""
            features = torch.cat([x, coarse], 1).contiguous(memory_format=torch.channels_last_3d)
            return coarse + self.head(features)

        def coarse(self, x):
            low = torch.nn.functional.avg_pool3d(x, self.factor)
            correction = self.unet(low)
            for unet in self.ensemble:
                correction = correction + unet(low)
            return x[:, PRIOR:PRIOR + 1] + upsample(correction / (1 + len(self.ensemble)), self.factor)

    return PriorResidualNet()


def upsample(correction, factor: int):
    """A prior-unet's correction from its coarse grid back to full resolution (trilinear)."""
    import torch

    return torch.nn.functional.interpolate(correction, scale_factor=factor, mode="trilinear", align_corners=False)


def refine_head(spec: dict, in_channels: int):
    """``layers`` 3x3x3 convolutions of ``channels`` features on the inputs and the coarse dose, ending in one dose
    channel whose weights start at zero: an untrained head leaves the coarse model's output unchanged."""
    import torch

    width, layers = int(spec.get("channels", 16)), int(spec.get("layers", 4))
    if width < 1 or layers < 2:
        raise InputError(f"refine head {spec}: needs channels >= 1 and layers >= 2")
    modules, features = [], in_channels + 1
    for _ in range(layers - 1):
        modules += [torch.nn.Conv3d(features, width, 3, padding=1), torch.nn.PReLU()]
        features = width
    last = torch.nn.Conv3d(features, 1, 3, padding=1)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return torch.nn.Sequential(*modules, last)


def build_discriminator(spec: dict, in_channels: int = len(CHANNELS)):
    """The conditional PatchGAN of the adversarial mode: input channels + the dose, at half resolution."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=3, channels=int(spec.get("channels", 16)), in_channels=in_channels + 1,
                              num_layers_d=int(spec.get("layers", 3)), norm="INSTANCE")
