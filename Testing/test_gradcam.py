"""Grad-CAM (rtrai.models.gradcam, MONAI's GradCAM): a known answer on a small network, and the segmentation networks
(rtrai segment --gradcam STRUCTURE) on a real OpenKBP patient."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from rtrai.core.errors import InputError
from rtrai.models.gradcam import grad_cam


def _blob_network():
    """conv (a copy of the input) -> global average -> one logit: the evidence is wherever the input is high."""
    import torch
    import torch.nn as nn

    net = nn.Sequential(nn.Conv3d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[4].weight.fill_(2.0)
    return net


def test_grad_cam_points_at_the_evidence():
    x = np.zeros((1, 1, 16, 16, 16), np.float32)
    x[0, 0, 3:6, 9:12, 10:13] = 1.0  # the only voxels that raise the logit
    cam = grad_cam(_blob_network(), x, "0")
    assert cam.shape == (16, 16, 16)
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0
    inside = cam[3:6, 9:12, 10:13]
    outside = cam.copy()
    outside[3:6, 9:12, 10:13] = 0
    assert inside.min() > 0.99 and outside.max() < 1e-6


def test_grad_cam_names_a_missing_layer():
    with pytest.raises(InputError, match="not in the network"):
        grad_cam(_blob_network(), np.zeros((1, 1, 8, 8, 8), np.float32), "features.9")


def test_segmentation_gradcam_explains_a_contour(tmp_path):
    """hn-oar-ct's Parotid_L: the map lies on the CT's grid and its attribution is concentrated round the organ."""
    from rtrai.cli import main
    from rtrai.io.case_io import read_case

    patient = shared_path("openkbp", "validation-pats", "pt_201")
    out = tmp_path / "seg"
    assert main(["segment", str(patient), "--gradcam", "Parotid_L", "-o", str(out)]) == 0
    cam_image = sitk.ReadImage(str(out / "gradcam_Parotid_L.nrrd"))
    case = read_case(patient)
    assert cam_image.GetSize() == case.ct.GetSize() and np.allclose(cam_image.GetSpacing(), case.ct.GetSpacing())
    cam = sitk.GetArrayFromImage(cam_image)
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6 and cam.max() > 0.5
    # attribution near the reference left parotid (within 2 cm) against near the right one
    distance_l = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(case.structures["Parotid_L"],
                                                                     useImageSpacing=True, insideIsPositive=False))
    distance_r = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(case.structures["Parotid_R"],
                                                                     useImageSpacing=True, insideIsPositive=False))
    near_l, near_r = distance_l < 20, distance_r < 20
    share_l, share_r = cam[near_l].sum() / cam.sum(), cam[near_r].sum() / cam.sum()
    assert share_l > 3 * near_l.mean() and share_l > 2 * share_r, (share_l, share_r, near_l.mean())


def test_segmentation_gradcam_refuses_a_structure_the_model_does_not_contour():
    from rtrai.core.case import Case
    from rtrai.models.gradcam import segmentation_gradcam
    from rtrai.segmentation.inference import Segmenter

    with pytest.raises(InputError, match="does not contour 'Cochlea_L'"):
        segmentation_gradcam(Segmenter("hn-oar-ct", "cpu"), Case(), "Cochlea_L")
