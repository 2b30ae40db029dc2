"""Grad-CAM (Selvaraju et al. 2017) for every network of the project, through MONAI's :class:`monai.visualize.GradCAM`.

- :func:`grad_cam`: the map of one input for one output of a classifier (the outcome CNN's risk logit).
- :func:`segmentation_gradcam`: the map of what a segmentation network's contour of one structure came from. A
  segmentation network has no single output to explain, so :class:`StructureScore` turns its logits into one score per
  label: the mean logit over the voxels it predicts as that structure. Grad-CAM runs on one patch of the model's size
  centred on the predicted structure (the network was trained on such patches; the whole image would not fit its
  receptive field any better) and the map is placed back on the case's grid, zero outside the patch.

Maps are ReLU'd and upsampled to the input (MONAI), then divided by their maximum (0: no evidence, 1: the strongest):
they show where evidence *for* the output lies, at the resolution of the target layer. A map with no positive evidence
anywhere is all zero.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import InputError

# The MONAI UNet's decoder stage one level above the output (half the input's resolution): late enough to be about
# the structure, fine enough to say where.
UNET_GRADCAM_LAYER = "model.1.submodule.2"


def _scale(maps):
    """Each map divided by its maximum: 0 stays "no evidence" and the strongest evidence is 1. (MONAI's default
    normaliser maps (min, max) to (1, 0), flipping the map, which suits its overlays but not shares of attribution.)"""
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)
    return maps / peak.view(-1, *([1] * (maps.ndim - 1)))


def grad_cam(network, x: np.ndarray, target_layer: str, class_idx: int = 0) -> np.ndarray:
    """Grad-CAM of output ``class_idx`` for one input ``x`` of shape (1, C, *spatial); returns the spatial map."""
    import torch
    from monai.visualize import GradCAM

    names = dict(network.named_modules())
    if target_layer not in names:
        raise InputError(f"Grad-CAM layer '{target_layer}' is not in the network (layers like "
                         f"{', '.join(list(names)[1:4])} ...)")
    was_training = network.training
    network.eval()
    try:
        cam = GradCAM(nn_module=network, target_layers=target_layer, postprocessing=_scale)
        with torch.enable_grad():
            result = cam(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), class_idx=class_idx)
    finally:
        network.train(was_training)
    out = result[0, 0].detach().cpu().numpy().astype(np.float32)
    return np.nan_to_num(out, nan=0.0)


def structure_score(network):
    """Wrap a segmentation network: (B, C, *spatial) -> (B, labels), each the mean logit over the voxels predicted as
    that label (over all voxels where none is)."""
    import torch.nn as nn

    class StructureScore(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, x):
            logits = self.net(x)
            inside = (logits > 0).float().detach()
            dims = tuple(range(2, logits.ndim))
            count = inside.sum(dims)
            weights = inside.where(count.view(*count.shape, *([1] * len(dims))) > 0, 1.0)
            return (logits * weights).sum(dims) / weights.sum(dims)

    return StructureScore()


def segmentation_gradcam(segmenter, case, structure: str, target_layer: str = UNET_GRADCAM_LAYER) -> sitk.Image:
    """Grad-CAM of ``structure`` for a loaded segmenter (:class:`rtrai.segmentation.inference.Segmenter`) on a case:
    a float32 map in [0, 1] on the case's CT grid."""
    labels = list(segmenter.labels)
    if structure not in labels:
        raise InputError(f"the model '{segmenter.manifest['name']}' does not contour '{structure}' "
                         f"(it contours: {', '.join(labels)})")
    k = labels.index(structure)
    image, oriented, grid = segmenter.preprocess(case)
    found = segmenter.probabilities(image)[k] >= float(segmenter.manifest.get("inference", {}).get("threshold", 0.5))
    if not found.any():
        raise InputError(f"{case.patient_id}: the model found no '{structure}', so there is no contour to explain")
    centre = np.argwhere(found).mean(0).round().astype(int)
    patch = [min(int(p), int(n)) for p, n in zip(segmenter.manifest["patch"], image.shape[1:])]
    start = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, image.shape[1:])]
    box = tuple(slice(s, s + p) for s, p in zip(start, patch))
    x = image[(slice(None), *box)][None]
    network = structure_score(segmenter.network.cpu())
    try:
        cam = grad_cam(network, x, f"net.{target_layer}", class_idx=k)
    finally:
        segmenter.network.to(segmenter.device)
    full = np.zeros(image.shape[1:], np.float32)
    full[box] = cam
    result = sitk.GetImageFromArray(full)
    result.CopyInformation(grid if grid is not None else oriented)
    if grid is not None:
        result = sitk.Resample(result, oriented, sitk.Transform(), sitk.sitkLinear, 0.0)
    if oriented is not case.ct:
        result = sitk.Resample(result, case.ct, sitk.Transform(), sitk.sitkLinear, 0.0)
    return result
