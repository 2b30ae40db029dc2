"""Networks built from a config dict: ``{"arch": "unet"|"residual"|"dilated", "channels": [...], "strides": [...]}``.

All are MONAI's :class:`monai.networks.nets.UNet`; the dilated variant replaces its bottleneck by residual units with
dilations 1, 2, 4 (atrous context without more down-sampling, as in dilated residual networks), which widens the
receptive field for organs larger than the patch's deepest features see.
"""

from __future__ import annotations

from rtrai.core.errors import ModelError

ARCHS = ("unet", "residual", "dilated")


def build_network(network: dict, in_channels: int, out_channels: int):
    import torch.nn as nn
    from monai.networks.blocks import ResidualUnit
    from monai.networks.nets import UNet

    arch = network.get("arch", "unet")
    if arch not in ARCHS:
        raise ModelError(f"unknown network arch '{arch}'; use one of {', '.join(ARCHS)}")
    channels = tuple(int(c) for c in network.get("channels", (16, 32, 64, 128)))
    strides = tuple(int(s) for s in network.get("strides", (2,) * (len(channels) - 1)))
    res_units = 0 if arch == "unet" else int(network.get("num_res_units", 2))
    dilations = tuple(int(d) for d in network.get("dilations", (1, 2, 4)))

    class DilatedUNet(UNet):
        def _get_bottom_layer(self, in_ch: int, out_ch: int) -> nn.Module:
            units = [ResidualUnit(3, in_ch if i == 0 else out_ch, out_ch, strides=1, kernel_size=3, subunits=2,
                                  act=self.act, norm=self.norm, dropout=self.dropout, dilation=d)
                     for i, d in enumerate(dilations)]
            return nn.Sequential(*units)

    cls = DilatedUNet if arch == "dilated" else UNet
    return cls(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=channels,
               strides=strides, num_res_units=res_units, norm=network.get("norm", "instance"),
               dropout=float(network.get("dropout", 0.0)))


def init_output_bias(model, out_channels: int, prior: float = 0.01) -> None:
    """Start every sigmoid output at the foreground prior, so early steps are not spent learning 'all empty'."""
    import math

    import torch
    import torch.nn as nn

    last = [m for m in model.modules()
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.out_channels == out_channels and m.bias is not None]
    if not last:
        return
    with torch.no_grad():
        last[-1].bias.fill_(math.log(prior / (1.0 - prior)))
