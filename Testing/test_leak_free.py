"""OpenKBP's contour leak, one definition (rtrai.io.openkbp): slices with image data, leak-free CTs,
``rtrai evaluate segmentation --imaged-slices`` against a hand-computed case, and training on imaged slices only."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.image import from_array
from rtrai.io.case_io import write_case
from rtrai.io.openkbp import imaged_slices, leak_free, read_openkbp

AIR_OUTSIDE_SCAN = -1024  # what OpenKBP's unlisted CT voxels read as


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def hand_case() -> tuple[Case, Case]:
    """5 slices of 10 x 10: slices 0-1 scanned, 2-4 outside the scan except the contoured voxels (the leak), slice 3
    with one stray stored voxel (1 %: not imaged), slice 4 with two (2 %: imaged)."""
    ct = np.full((5, 10, 10), AIR_OUTSIDE_SCAN, np.int16)
    ct[:2] = 0
    square = np.zeros((5, 10, 10), np.uint8)
    square[:, 2:6, 2:6] = 1  # 16 voxels per slice
    ct[square > 0] = 40
    ct[3, 9, 9] = 0
    ct[4, 9, 8:10] = 0
    pred = square.copy()
    pred[1, 2:4, 2:6] = 0  # 8 of 16 on slice 1
    pred[4] = 0  # nothing on slice 4
    reference = Case(ct=_image(ct), metadata={"patient_id": "hand"})
    reference.add_structure("Brainstem", from_array(square, reference.ct))
    predicted = Case(ct=reference.ct, metadata={"patient_id": "hand"})
    predicted.add_structure("Brainstem", from_array(pred, reference.ct))
    return reference, predicted


def test_imaged_slices_and_leak_free_by_hand():
    reference, _ = hand_case()
    assert imaged_slices(reference).tolist() == [True, True, False, False, True]
    clean = sitk.GetArrayFromImage(leak_free(reference).ct)
    original = sitk.GetArrayFromImage(reference.ct)
    assert (clean[2:4, 2:6, 2:6] == AIR_OUTSIDE_SCAN).all()  # the leaked organ is gone where there is no image
    assert clean[3, 9, 9] == 0  # what is not contoured stays
    np.testing.assert_array_equal(clean[[0, 1, 4]], original[[0, 1, 4]])  # imaged slices untouched
    assert (original[2, 2:6, 2:6] == 40).all()  # and the input case is not modified


def test_evaluate_imaged_slices_matches_the_hand_computed_dsc(tmp_path):
    reference, predicted = hand_case()
    write_case(reference, tmp_path / "ref")
    write_case(predicted, tmp_path / "pred")

    def evaluate(*extra) -> pd.DataFrame:
        out = tmp_path / ("imaged" if extra else "all")
        result = subprocess.run([sys.executable, "-m", "rtrai", "evaluate", "segmentation", "--pred", tmp_path / "pred",
                                 "--ref", tmp_path / "ref", "-o", out, *extra], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "metrics.json").read_text())["imaged_slices_only"] is bool(extra)
        return pd.read_csv(out / "metrics.csv").set_index("structure")

    everywhere = evaluate().loc["Brainstem"]
    assert everywhere["dsc"] == pytest.approx(2 * 56 / (56 + 80))
    assert everywhere["scored_slices"] == 5
    imaged = evaluate("--imaged-slices").loc["Brainstem"]
    # slices 0, 1, 4: reference 48 voxels, prediction 24, all inside the reference
    assert imaged["dsc"] == pytest.approx(2 * 24 / (24 + 48))
    assert imaged["volume_ref_voxels"] == 48 and imaged["volume_pred_voxels"] == 24 and imaged["scored_slices"] == 3


def test_imaged_slices_needs_the_reference_ct(tmp_path):
    from rtrai.io.segfile import write_segmentation

    reference, predicted = hand_case()
    write_segmentation(reference.structures, tmp_path / "ref.seg.nrrd", None, reference.ct)
    write_segmentation(predicted.structures, tmp_path / "pred.seg.nrrd", None, reference.ct)
    result = subprocess.run([sys.executable, "-m", "rtrai", "evaluate", "segmentation", "--pred",
                             tmp_path / "pred.seg.nrrd", "--ref", tmp_path / "ref.seg.nrrd", "-o", tmp_path / "out",
                             "--imaged-slices"], capture_output=True, text=True)
    assert result.returncode == 2 and "needs the reference's CT" in result.stderr


def test_openkbp_patients_with_and_without_the_leak(openkbp_pt201):
    """pt_201's CT has image data on 124 of its 128 slices; the leak-free copy changes only contoured voxels there."""
    case = read_openkbp(openkbp_pt201)
    imaged = imaged_slices(case)
    assert imaged.sum() == 124
    clean = leak_free(case)
    changed = sitk.GetArrayViewFromImage(clean.ct) != sitk.GetArrayViewFromImage(case.ct)
    assert not changed[imaged].any()
    assert clean.metadata["leak_free"] and sorted(clean.structures) == sorted(case.structures)


def test_training_samples_are_leak_free_and_scored_on_imaged_slices():
    """With ``leak_free`` a training config reads OpenKBP cases without the leak and validates on imaged slices."""
    from conftest import shared_path
    from rtrai.segmentation.config import load_config
    from rtrai.segmentation.data import load_samples

    folder = shared_path("openkbp", "validation-pats", "pt_235")  # 23 slices without image data, 261 leaked voxels
    case = read_openkbp(folder)
    imaged = imaged_slices(case)
    assert 0 < (~imaged).sum() < 128
    config = load_config("hn-oar-ct-v4")
    plain, = load_samples([folder], config)
    clean, = load_samples([folder], {**config, "leak_free": True})
    assert plain.scored is None and clean.scored.tolist() == imaged.tolist()
    off = ~imaged
    leaked = sitk.GetArrayViewFromImage(case.ct)[off] != AIR_OUTSIDE_SCAN
    assert leaked.any()  # the leak: stored CT on slices without image data
    from rtrai.io.openkbp import contoured_voxels

    leak = contoured_voxels(case) & off[:, None, None] & (sitk.GetArrayViewFromImage(case.ct) != AIR_OUTSIDE_SCAN)
    assert leak.any() and (clean.image[0][leak] == -1).all() and not (plain.image[0][leak] == -1).any()
    np.testing.assert_array_equal(clean.image[:, imaged], plain.image[:, imaged])


def test_imaged_slices_only_loss_sees_only_the_slices_with_image_data():
    """``imaged_slices_only``: the loss of voxels on slices without image data is zero (weight 0), whatever the
    labels or predictions there; where the weight is 1 it is the plain loss."""
    import torch

    from rtrai.segmentation.losses import masked_bce_dice

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, generator=gen, requires_grad=True)
    target = (torch.rand(2, 3, 8, 8, 8, generator=gen) > 0.7).float()
    present = torch.ones(2, 3)
    assert masked_bce_dice(logits, target, present, weight=torch.ones(2, 1, 8, 8, 8)).item() == pytest.approx(
        masked_bce_dice(logits, target, present).item(), abs=1e-6)
    weight = torch.ones(2, 1, 8, 8, 8)
    weight[:, :, 5:] = 0  # slices 5-7 without image data
    loss = masked_bce_dice(logits, target, present, weight=weight)
    loss.backward()
    assert logits.grad[:, :, 5:].abs().max() == 0 and logits.grad[:, :, :5].abs().max() > 0
    other = target.clone()
    other[:, :, 5:] = 1 - other[:, :, 5:]  # a contour drawn on blank slices teaches nothing
    assert masked_bce_dice(logits, other, present, weight=weight).item() == pytest.approx(loss.item(), abs=1e-6)
    cropped = masked_bce_dice(logits[:, :, :5], target[:, :, :5], present)  # = the loss of the imaged part alone
    assert loss.item() == pytest.approx(cropped.item(), abs=1e-5)


def test_imaged_slices_only_patches_are_centred_and_weighted_on_imaged_slices():
    from conftest import shared_path
    from rtrai.segmentation.config import load_config
    from rtrai.segmentation.data import PatchSampler, augmentation, load_samples

    folder = shared_path("openkbp", "validation-pats", "pt_235")
    config = load_config("hn-oar-ct-v7-imaged")
    assert config["imaged_slices_only"] and config["leak_free"]
    sample, = load_samples([folder], config)
    plain, = load_samples([folder], {**config, "imaged_slices_only": False})
    off = np.flatnonzero(~sample.scored)
    assert all(len(p) for p in plain.centres if len(p)) and any(np.isin(p[:, 0], off).any() for p in plain.centres)
    assert not any(np.isin(c[:, 0], off).any() for c in sample.centres)  # organ voxels beyond the cut not drawn
    sampler = PatchSampler([sample], {**config, "foreground_fraction": 0.0})
    rng = np.random.default_rng(1)
    for _ in range(20):
        centre = sample.body[rng.integers(len(sample.body))].astype(int)
        weight = sampler.slice_weight(sample, centre)
        start = centre[0] - config["patch"][0] // 2
        for k in range(config["patch"][0]):
            z = start + k
            expected = 0.0 if 0 <= z < len(sample.scored) and not sample.scored[z] else 1.0
            assert (weight[0, k] == expected).all()
    draw = augmentation(config)(PatchSampler([sample], config).draw(np.random.default_rng(2)))
    assert np.asarray(draw["weight"]).shape == (1, *config["patch"])
    assert set(np.unique(np.asarray(draw["weight"]))) <= {0.0, 1.0}  # nearest: still a mask after the affine
