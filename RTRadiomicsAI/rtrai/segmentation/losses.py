"""BCE + soft Dice on sigmoid outputs, masked per patient and structure: missing is not background."""

from __future__ import annotations


def masked_bce_dice(logits, target, present, dice_weight: float = 1.0, smooth: float = 1.0, weight=None):
    """Loss over (B, L, z, y, x) logits; ``present`` (B, L) is 1 where that patient's structure was contoured;
    ``weight`` (B, 1, z, y, x), if given, is 1 where voxels count and 0 where they do not (slices without image data).

    An absent structure contributes nothing: neither its BCE nor its Dice terms, so the network is never taught that
    an organ nobody drew is empty. Dice is a batch Dice per label over the patches where the structure is contoured
    *and* visible: a contoured organ outside the patch is left to BCE, because Dice on an empty patch pushes all
    predictions to zero and, for organs drawn in few patients (OpenKBP's Esophagus: 21 of 68), it won over the
    patches that show the organ (validation DSC stayed 0 for 8000 steps).
    """
    import torch
    import torch.nn.functional as F

    spatial = tuple(range(2, logits.ndim))
    contoured = present.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    if weight is None:
        bce = bce.mean(dim=spatial)
    else:
        weight = weight.to(logits.dtype)
        bce = (bce * weight).sum(dim=spatial) / weight.sum(dim=spatial).clamp(min=1.0)
        prob, target = prob * weight, target * weight
    bce = (bce * contoured).sum() / contoured.sum().clamp(min=1.0)
    visible = contoured * (target.sum(dim=spatial) > 0).to(logits.dtype)
    intersection = ((prob * target).sum(dim=spatial) * visible).sum(dim=0)
    denominator = (((prob + target).sum(dim=spatial)) * visible).sum(dim=0)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    labelled = visible.sum(dim=0) > 0
    dice = dice[labelled].mean() if bool(labelled.any()) else logits.sum() * 0.0
    return bce + dice_weight * dice
