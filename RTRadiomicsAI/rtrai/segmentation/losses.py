"""BCE + soft Dice on sigmoid outputs, masked per patient and structure: missing is not background."""

from __future__ import annotations


def masked_bce_dice(logits, target, present, dice_weight: float = 1.0, smooth: float = 1.0):
    """Loss over (B, L, z, y, x) logits; ``present`` (B, L) is 1 where that patient's structure was contoured.

    An absent structure contributes nothing: neither its BCE nor its Dice terms, so the network is never taught that
    an organ nobody drew is empty. Dice is a batch Dice per label over the patches where the structure is contoured
    *and* visible: a contoured organ outside the patch is left to BCE, because Dice on an empty patch pushes all
    predictions to zero and, for organs drawn in few patients (OpenKBP's Esophagus: 21 of 68), it won over the
    patches that show the organ (validation DSC stayed 0 for 8000 steps).
    """
    import torch
    import torch.nn.functional as F

    spatial = tuple(range(2, logits.ndim))
    weight = present.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=spatial)
    bce = (bce * weight).sum() / weight.sum().clamp(min=1.0)
    prob = torch.sigmoid(logits)
    visible = weight * (target.sum(dim=spatial) > 0).to(logits.dtype)
    intersection = ((prob * target).sum(dim=spatial) * visible).sum(dim=0)
    denominator = (((prob + target).sum(dim=spatial)) * visible).sum(dim=0)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    labelled = visible.sum(dim=0) > 0
    dice = dice[labelled].mean() if bool(labelled.any()) else logits.sum() * 0.0
    return bce + dice_weight * dice
