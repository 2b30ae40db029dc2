"""The ray-traced beam prior (rtrai.dose.beams) against a closed form, and as a dose-model input channel."""

from __future__ import annotations

import numpy as np
import pytest

from rtrai.dose.beams import MU_PER_MM, beam_prior, density_from_hu


def water_box(n: int = 40, slices: int = 3):
    ct = np.zeros((slices, n, n), np.int16)  # water, 0 HU
    body = np.ones(ct.shape, bool)
    target = np.zeros(ct.shape, bool)
    target[:, 18:22, 18:22] = True
    return ct, body, target


def test_one_beam_is_the_attenuated_projection_of_the_target():
    ct, body, target = water_box()
    prior = beam_prior(ct, [(70.0, target)], body, (3.0, 2.0, 2.0), angles_deg=(0,))
    rows = np.arange(40)
    expected = np.exp(-MU_PER_MM * (rows + 0.5) * 2.0)  # enters at row 0 (anterior), travels along +y
    for x in range(19, 21):  # inner columns of the aperture (its edge columns are half-sampled by the rotation)
        np.testing.assert_allclose(prior[1, :, x], expected, rtol=0.02)
    assert prior[:, :, :17].max() == 0 and prior[:, :, 23:].max() == 0  # no dose beside the aperture


def test_density_attenuates_and_levels_scale():
    ct, body, target = water_box()
    ct[:, 5:10, :] = 1000  # a bone slab in the beam's way
    water = beam_prior(np.zeros_like(ct), [(70.0, target)], body, (3.0, 2.0, 2.0), angles_deg=(0,))
    bone = beam_prior(ct, [(70.0, target)], body, (3.0, 2.0, 2.0), angles_deg=(0,))
    extra_mm = 5 * 2.0 * (density_from_hu(np.array([1000]))[0] - 1.0)
    np.testing.assert_allclose(bone[1, 20:, 20], water[1, 20:, 20] * np.exp(-MU_PER_MM * extra_mm), rtol=0.02)
    half = beam_prior(np.zeros_like(ct), [(35.0, target)], body, (3.0, 2.0, 2.0), angles_deg=(0,))
    np.testing.assert_allclose(half, water / 2, rtol=1e-5, atol=1e-7)


def test_nine_beams_are_symmetric_and_zero_outside_the_body():
    ct, body, target = water_box()
    body[:, :, :2] = False
    prior = beam_prior(ct, [(70.0, target)], body, (3.0, 2.0, 2.0))
    assert prior[:, :, :2].max() == 0
    centre = prior[1, 18:22, 18:22].mean()
    assert centre == pytest.approx(prior[1].max(), rel=0.15)  # the isocentre gets every beam
    mirrored = beam_prior(ct[..., ::-1].copy(), [(70.0, target[..., ::-1].copy())], body[..., ::-1].copy(),
                          (3.0, 2.0, 2.0))
    np.testing.assert_allclose(mirrored[..., ::-1], prior, atol=0.02)  # 0, 40, ..., 320 is its own mirror image
    assert beam_prior(ct, [(70.0, np.zeros_like(target))], body, (3.0, 2.0, 2.0)).max() == 0


def test_a_dose_model_with_the_beam_prior_channel_trains_and_predicts(tmp_path):
    from rtrai.dose import encoding, export, inference
    from rtrai.dose import train as training
    from rtrai.io.case_io import write_case
    from rtrai.phantom import make_phantom

    for seed in (0, 1):
        write_case(make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0)), tmp_path / "p" / f"p{seed}")
    config = {"network": {"type": "prior-unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
              "batch": 1, "steps": 4, "validate_every": 2, "validation_cases": 1, "seed": 0,
              "augment": {"rotate_deg": 10, "scale": 0.1, "shift_vox": 2, "ct_jitter": 0.05, "probability": 1.0},
              "channels": list(encoding.CHANNELS) + [encoding.BEAM_PRIOR]}
    result = training.train(tmp_path / "p", tmp_path / "work", config, validation=tmp_path / "p")
    model = export.export_model(tmp_path / "work", {**config, "name": "beam-test"}, result, command="test")
    predictor = inference.DosePredictor(str(model.parent), "cpu")
    assert predictor.manifest["inputs"]["channels"][-1] == "BeamPrior"
    case = predictor.read(tmp_path / "p" / "p0")
    inputs = encoding.encode_inputs(case, predictor.channels)
    assert inputs.shape[0] == len(encoding.CHANNELS) + 1 and inputs[-1].max() > 0.5
    dose = predictor.predict(case)
    assert dose.GetSize() == case.ct.GetSize()
