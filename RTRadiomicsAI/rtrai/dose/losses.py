"""Dose training losses: L1 inside the possible-dose region (structure voxels optionally weighted more) and the
optional least-squares GAN term of the adversarial mode (as in Babier et al. 2020)."""

from __future__ import annotations

from rtrai.dose.encoding import BODY, TARGETS


def weighted_l1(pred, y, x, structure_weight: float = 0.0):
    """The training loss: the mean absolute error over the possible-dose voxels, where voxels inside an OAR or a target
    weigh ``1 + structure_weight``; returned with the plain (unweighted) mean, logged comparably between weightings."""
    mask = (x[:, BODY:BODY + 1] > 0).float()
    # The OAR and target channels; > 0, as a target's value is its Rx / 70 Gy (masks stay binary under augmentation).
    inside = (x[:, 1:TARGETS + 1] > 0).any(dim=1, keepdim=True)
    weight = mask * (1 + structure_weight * inside)
    error = (pred - y).abs()
    plain = float((error.detach() * mask).sum() / mask.sum().clamp(min=1))  # logged only: no graph
    return (error * weight).sum() / weight.sum().clamp(min=1), plain


def adversarial_step(discriminator, d_optimiser, x, y, pred, mask, weight: float):
    """Least-squares GAN: one discriminator update on (real, fake) pairs; returns the generator's adversarial
    loss (to be added to L1). Pairs are average-pooled 2x: the discriminator judges texture, not the prior's edges."""
    import torch
    import torch.nn.functional as F

    def pair(dose):
        return F.avg_pool3d(torch.cat([x, dose * mask], 1), 2)

    d_optimiser.zero_grad(set_to_none=True)
    real, fake = discriminator(pair(y))[-1], discriminator(pair(pred.detach()))[-1]
    d_loss = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
    d_loss.backward()
    d_optimiser.step()
    judged = discriminator(pair(pred))[-1]
    return weight * F.mse_loss(judged, torch.ones_like(judged)), float(d_loss)
