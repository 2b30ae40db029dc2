"""Dose prediction: input encoding, a tiny training run with resume, export by checksum, and ``rtrai dose predict``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from rtrai import cli
from rtrai.core.errors import InputError, ModelError
from rtrai.dose import augmentation, encoding, export, inference, losses, networks
from rtrai.dose import train as training
from rtrai.io.case_io import write_case
from rtrai.phantom import make_phantom

TINY = {"network": {"type": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch": [32, 32, 32], "batch": 1, "steps": 12, "validate_every": 6, "validation_cases": 1, "seed": 3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dose")
    for seed in (0, 1):
        case = make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
        write_case(case, folder / "patients" / f"p{seed}")
    return folder


def test_inputs_encode_targets_by_prescription_and_flip_swaps_parotids():
    case = make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    x = encoding.encode_inputs(case)
    assert x.shape == (len(encoding.CHANNELS), 48, 64, 64)
    targets = x[encoding.CHANNELS.index("Targets")]
    ptv70 = sitk.GetArrayViewFromImage(case.structures["PTV70"]) > 0
    ptv56 = sitk.GetArrayViewFromImage(case.structures["PTV56"]) > 0
    assert np.all(targets[ptv70] == 1.0) and np.allclose(targets[ptv56], 56 / 70)
    left, right = encoding.OARS.index("Parotid_L") + 1, encoding.OARS.index("Parotid_R") + 1
    assert encoding.FLIP_PAIRS == ((left, right),)
    rng = np.random.default_rng(0)
    noise = rng.random(x.shape).astype(np.float16)  # asymmetric content, so a flip is always visible
    noise[encoding.BODY] = 1
    item = {"x": noise, "y": np.zeros(x.shape[1:], np.float16)}
    flips = 0
    for _ in range(20):  # whole-volume patches: each draw is the volume itself, flipped or not
        xp, _ = training.sample_batch([item], rng, (48, 64, 64), 1)
        if np.array_equal(xp[0, 0], noise[0][..., ::-1].astype(np.float32)):
            flips += 1
            np.testing.assert_array_equal(xp[0, left], noise[right][..., ::-1].astype(np.float32))
            np.testing.assert_array_equal(xp[0, right], noise[left][..., ::-1].astype(np.float32))
        else:
            np.testing.assert_array_equal(xp[0, left], noise[left].astype(np.float32))
    assert 0 < flips < 20


def test_augmentation_moves_inputs_and_dose_together_and_keeps_masks_binary():
    case = make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    x = encoding.encode_inputs(case)
    y = x[encoding.PRIOR] * 0.9  # any dose that lives on the anatomy
    rng = np.random.default_rng(0)
    same_x, same_y = augmentation.augment(x, y, rng, {})  # no rotation, scaling or shift: the identity
    np.testing.assert_allclose(same_x, x, atol=1e-5)
    np.testing.assert_allclose(same_y, y, atol=1e-5)
    # A pure shift of whole voxels moves every channel and the dose by exactly that many voxels.
    shifted_x, shifted_y = augmentation.augment(x, y, np.random.default_rng(1), {"shift_vox": 3})
    draws = np.random.default_rng(1)
    draws.uniform(-1, 1, 2)  # angle and scale come first
    shift = draws.integers(-3, 4, 3)  # x, y, z voxels
    assert np.any(shift != 0)
    inner = tuple(slice(4, n - 4) for n in y.shape)
    moved = np.roll(y, tuple(-int(s) for s in shift[::-1]), axis=(0, 1, 2))
    np.testing.assert_allclose(shifted_y[inner], moved[inner], atol=1e-5)
    # Rotation and scaling: masks stay binary, target levels stay levels, the dose moves with the anatomy.
    ax, ay = augmentation.augment(x, y, rng, {"rotate_deg": 10, "scale": 0.1, "shift_vox": 4, "ct_jitter": 0.05})
    for c in encoding.MASK_CHANNELS:
        assert set(np.unique(ax[c])) <= {0.0, 1.0}
    levels = np.unique(ax[encoding.TARGETS])[:, None]
    assert np.abs(levels - [0.0, 56 / 70, 1.0]).min(axis=1).max() < 1e-6
    body = ax[encoding.BODY] > 0
    assert 0.7 < body.sum() / (x[encoding.BODY] > 0).sum() < 1.4
    np.testing.assert_allclose(ay, 0.9 * ax[encoding.PRIOR], atol=1e-5)  # the dose moved with the inputs
    assert not np.allclose(ay, y, atol=0.05)


def test_monai_affine_warp_is_the_normalised_affine_grid_warp_of_the_same_draws():
    """The augmentation warps with MONAI's Affine; it is torch's affine_grid + grid_sample of the matrix drawn in
    normalised coordinates (how the shipped models' training warped), on a volume whose axes all differ in size."""
    import math

    import torch
    import torch.nn.functional as F

    case = make_phantom(seed=0, size=(64, 56, 40), spacing=(7.0, 7.0, 5.0))
    x = encoding.encode_inputs(case)[:, :, 3:50]
    spec = {"rotate_deg": 10, "scale": 0.1, "shift_vox": 4}
    draws = np.random.default_rng(5)
    angle = math.radians(draws.uniform(-1, 1) * 10)
    scale = 1.0 + draws.uniform(-1, 1) * 0.1
    shift = draws.integers(-4, 5, 3)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    size = x.shape[:0:-1]
    theta = torch.tensor([[cos, -sin, 0.0, 2.0 * shift[0] / size[0]], [sin, cos, 0.0, 2.0 * shift[1] / size[1]],
                          [0.0, 0.0, 1.0 / scale, 2.0 * shift[2] / size[2]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *x.shape[1:]], align_corners=False)
    expected = F.grid_sample(torch.from_numpy(x[encoding.PRIOR])[None, None], grid, mode="bilinear",
                             padding_mode="zeros", align_corners=False)[0, 0].numpy()
    y = x[encoding.PRIOR] * 0.5
    rng = np.random.default_rng(5)
    moved_x, moved_y = augmentation.augment(x, y, rng, spec)
    assert np.abs(expected).max() > 0.5 and not np.allclose(expected, x[encoding.PRIOR], atol=0.05)
    np.testing.assert_allclose(moved_x[encoding.PRIOR], expected, atol=1e-4)
    np.testing.assert_allclose(moved_y, 0.5 * expected, atol=1e-4)


def test_case_without_target_or_prescription_is_refused():
    case = make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    mask = case.structures.pop("PTV70")
    case.structures.pop("PTV56")
    with pytest.raises(InputError, match="no target"):
        encoding.encode_inputs(case)
    case.add_structure("PTV_boost", mask, keep_name=True)
    with pytest.raises(InputError, match="no prescription"):
        encoding.encode_inputs(case)


def test_tiny_training_resumes_exports_and_predicts(cohort, tmp_path, capsys):
    work = tmp_path / "work"
    first = training.train(cohort / "patients", work, {**TINY, "steps": 12}, cohort / "patients",
                             max_minutes=None)
    assert first["step"] == 12 and [h["step"] for h in first["history"]] == [6, 12]
    assert "resumed" not in (work / "train.log").read_text()
    # Resume the same run for more steps: the step counter and history continue.
    again = training.train(cohort / "patients", work, {**TINY, "steps": 18}, cohort / "patients", resume=True)
    assert again["step"] == 18 and len(again["history"]) == 3
    assert "resumed at step 12" in (work / "train.log").read_text()
    # CPU time adds up over the chunks of a resumed run (the checkpoint carries it).
    assert 0 < first["cpu_hours"] <= again["cpu_hours"] and "CPU hours" in (work / "train.log").read_text()
    manifest_path = export.export_model(work, {**TINY, "name": "tiny-dose"}, again, command="test")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["task"] == "dose" and len(manifest["sha256"]) == 64
    assert manifest["training"]["cpu_hours"] == again["cpu_hours"]

    out = tmp_path / "pred"
    assert cli.main(["dose", "predict", str(cohort / "patients" / "p1"), "--model", str(manifest_path.parent),
                     "-o", str(out)]) == 0
    dose = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "Dose.nrrd")))
    body = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "patients" / "p1" / "PossibleDoseMask.nrrd"))) > 0
    assert dose.shape == body.shape and np.all(dose[~body] == 0) and np.all(dose >= 0)
    assert json.loads((out / "provenance.json").read_text())["models"][0]["sha256"] == manifest["sha256"]

    # A changed weights file is refused by checksum.
    shutil.copytree(manifest_path.parent, tmp_path / "tampered")
    weights = tmp_path / "tampered" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="checksum"):
        inference.DosePredictor(str(tmp_path / "tampered"))
    capsys.readouterr()
    assert cli.main(["dose", "predict", str(cohort / "patients" / "p1"), "--model", str(tmp_path / "tampered"),
                     "-o", str(tmp_path / "nope")]) == 2
    assert "checksum" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_cropped_cases_train_and_predict_on_the_possible_dose_box_only(cohort, tmp_path):
    import torch

    case_dir = cohort / "patients" / "p0"
    full = training.load_cohort(cohort / "patients", print, 1)[0]
    cropped = training.load_cohort(cohort / "patients", print, 1, crop_margin=2)[0]
    body = full["x"][encoding.BODY] > 0
    lo = [int(np.nonzero(body.any(axis=other))[0][0]) for other in ((1, 2), (0, 2), (0, 1))]
    hi = [int(np.nonzero(body.any(axis=other))[0][-1]) + 1 for other in ((1, 2), (0, 2), (0, 1))]
    box = tuple(slice(max(a - 2, 0), min(b + 2, n)) for a, b, n in zip(lo, hi, body.shape))
    assert encoding.body_box(full["x"], 2) == box
    np.testing.assert_array_equal(cropped["x"], full["x"][(slice(None),) + box])
    np.testing.assert_array_equal(cropped["y"], full["y"][box])
    assert cropped["x"][0].size < full["x"][0].size  # the phantom's body does not fill its volume
    # Padding shows air in the CT channel, zeros elsewhere.
    padded, crop = encoding.pad_to(cropped["x"].astype(np.float32), 8)
    assert padded.shape[1] % 8 == 0 and np.array_equal(padded[(slice(None),) + crop], cropped["x"])
    if padded.shape[1] > cropped["x"].shape[1]:
        assert np.all(padded[0, -1] == -1) and np.all(padded[1:, -1] == 0)

    # Inference on the box equals the network on the cropped inputs, pasted back; zero elsewhere.
    spec = {"type": "prior-unet", "channels": [4, 8], "strides": [2], "num_res_units": 1, "downsample": 2}
    torch.manual_seed(0)
    network = networks.build_network(spec)
    inputs = encoding.encode_inputs(inference.DosePredictor.read(case_dir))
    dose = inference.predict_array(network, inputs, crop_margin=2)
    assert dose.shape == inputs.shape[1:] and np.all(dose[inputs[encoding.BODY] == 0] == 0)
    np.testing.assert_allclose(dose[box], inference.predict_array(network, inputs[(slice(None),) + box]), atol=1e-6)
    assert np.abs(dose - inference.predict_array(network, inputs)).max() > 0  # the field of view matters

    # A cropping run trains, and its model predicts through the manifest's inference settings.
    work = tmp_path / "work"
    config = {**TINY, "network": spec, "patch": None, "steps": 4, "validate_every": 2, "crop_margin_vox": 2,
              "augment": {"rotate_deg": 10, "scale": 0.1, "shift_vox": 2, "probability": 1.0}}
    result = training.train(cohort / "patients", work, config, cohort / "patients")
    manifest = json.loads(export.export_model(work, config, result, command="test").read_text())
    assert manifest["inference"] == {"flip": True, "crop_margin_vox": 2}
    predictor = inference.DosePredictor(str(work / "model"), "cpu")
    predicted = sitk.GetArrayFromImage(predictor.predict(predictor.read(case_dir)))
    expected = inference.predict_array(predictor.network, inputs, flip=True, crop_margin=2)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


def test_unknown_model_exits_2(cohort, tmp_path, capsys):
    code = cli.main(["dose", "predict", str(cohort / "patients" / "p0"), "--model", "no-such-model",
                     "-o", str(tmp_path / "o")])
    assert code == 2 and "unknown model" in capsys.readouterr().err


def test_geometric_prior_is_the_prescription_inside_targets_and_falls_off_outside():
    case = make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    x = encoding.encode_inputs(case)
    prior = x[encoding.PRIOR] * encoding.DOSE_SCALE_GY
    ptv70 = sitk.GetArrayViewFromImage(case.structures["PTV70"]) > 0
    ptv56 = sitk.GetArrayViewFromImage(case.structures["PTV56"]) > 0
    assert np.allclose(prior[ptv70], 70) and np.all(prior[ptv56 & ~ptv70] >= 56 - 1e-4)
    body = x[encoding.BODY] > 0
    assert np.all(prior[~body] == 0)
    # One voxel (7 mm) outside PTV70 along x, away from PTV56, the prior is 70 * exp(-7 / 25).
    z, y, xs = np.nonzero(ptv70)
    i = int(np.argmax(xs))
    neighbour = (z[i], y[i], xs[i] + 1)
    if body[neighbour] and not ptv56[neighbour]:
        assert prior[neighbour] >= 70 * np.exp(-7 / 25) - 1e-3


def test_prior_network_adds_a_half_resolution_correction_to_the_prior():
    import torch

    net = networks.build_network({"type": "prior-unet", "channels": [4, 8], "strides": [2], "downsample": 2})
    assert int(np.prod(net.strides)) == 4
    for parameter in net.unet.parameters():
        torch.nn.init.zeros_(parameter)  # no correction: the output is the prior itself
    x = torch.rand(1, len(encoding.CHANNELS), 8, 8, 8)
    assert torch.allclose(net(x)[0, 0], x[0, encoding.PRIOR])
    # Flip averaging mirrors back what it mirrored: with no correction it returns the (asymmetric) prior itself,
    # also on a grid that needs padding.
    inputs = np.random.default_rng(1).random((len(encoding.CHANNELS), 6, 7, 9)).astype(np.float32)
    inputs[encoding.BODY] = 1
    expected = inputs[encoding.PRIOR] * encoding.DOSE_SCALE_GY
    for flip in (False, True):
        np.testing.assert_allclose(inference.predict_array(net, inputs, flip=flip), expected, rtol=1e-5)


def test_resumed_schedule_is_retimed_to_the_new_step_count():
    import torch

    cfg = {"lr": 1e-3, "steps": 400}
    weights = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.AdamW([weights], lr=1e-3)
    schedule = training.one_cycle(optimiser, cfg)
    for _ in range(50):
        optimiser.step()
        schedule.step()
    training.retarget_schedule(schedule, {**cfg, "steps": 100})
    for _ in range(50):
        optimiser.step()
        schedule.step()
    assert schedule.get_last_lr()[0] < 1e-6  # annealed at the new end, not half-way through the old cycle


def test_structure_weight_counts_oar_and_target_voxels_more_and_ignores_voxels_outside_the_possible_dose():
    import torch

    x = torch.zeros(1, len(encoding.CHANNELS), 1, 1, 4)
    x[0, encoding.BODY, 0, 0, :3] = 1  # voxels 0-2 may receive dose, voxel 3 may not
    x[0, 1 + encoding.OARS.index("Larynx"), 0, 0, 0] = 1
    x[0, encoding.TARGETS, 0, 0, 1] = 60 / encoding.DOSE_SCALE_GY
    y = torch.zeros(1, 1, 1, 1, 4)
    pred = torch.tensor([1.0, 2.0, 4.0, 100.0]).reshape(y.shape)
    loss, plain = losses.weighted_l1(pred, y, x, 0.0)
    assert float(loss) == pytest.approx(7 / 3) and plain == pytest.approx(7 / 3)
    loss, plain = losses.weighted_l1(pred, y, x, 1.0)
    assert float(loss) == pytest.approx((2 * 1 + 2 * 2 + 4) / 5) and plain == pytest.approx(7 / 3)
    x[0, encoding.TARGETS, 0, 0, 1] = 30 / encoding.DOSE_SCALE_GY  # a low-prescription target counts too
    assert float(losses.weighted_l1(pred, y, x, 1.0)[0]) == pytest.approx((2 * 1 + 2 * 2 + 4) / 5)


def test_adversarial_mode_trains_checkpoints_the_discriminator_and_resumes(cohort, tmp_path):
    import torch

    config = {**TINY, "network": {"type": "prior-unet", "channels": [4, 8, 16], "strides": [2, 2]},
              "patch": None, "steps": 4, "validate_every": 4,
              "adversarial": {"weight": 0.1, "channels": 4, "layers": 2}}
    work = tmp_path / "gan"
    first = training.train(cohort / "patients", work, config, cohort / "patients")
    state = torch.load(work / "checkpoint.pt", weights_only=True)
    assert first["step"] == 4 and "discriminator" in state and "d_optimiser" in state
    again = training.train(cohort / "patients", work, {**config, "steps": 6}, resume=True)
    resumed = torch.load(work / "checkpoint.pt", weights_only=True)["discriminator"]
    assert again["step"] == 6 and "resumed at step 4" in (work / "train.log").read_text()
    assert any(not torch.equal(resumed[k], state["discriminator"][k]) for k in resumed)  # it kept learning


def test_ensemble_averages_its_members_and_is_one_checksummed_model(tmp_path, capsys):
    import torch

    from rtrai.models import write_model

    spec = {"type": "prior-unet", "channels": [4, 8], "strides": [2], "num_res_units": 1, "downsample": 2}
    x = torch.rand(1, len(encoding.CHANNELS), 16, 16, 16)
    folders, outputs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        network = networks.build_network(spec).eval()
        with torch.no_grad():
            outputs.append(network(x))
        manifest = {"name": f"m{seed}", "version": "1", "task": "dose", "network": spec, "labels": ["Dose"],
                    "inputs": {"channels": list(encoding.CHANNELS)}, "weights": "weights.safetensors",
                    "training": {"cpu_hours": 1.0 + 0.5 * seed}}
        folders.append(str(write_model(tmp_path / f"m{seed}", network.state_dict(), manifest, half=False).parent))
    assert cli.main(["dose", "ensemble", *folders, "-o", str(tmp_path / "joined")]) == 0
    joined = json.loads((tmp_path / "joined" / "manifest.json").read_text())
    assert joined["network"]["members"] == 2 and len(joined["sha256"]) == 64
    assert [m["name"] for m in joined["training"]["members"]] == ["m0", "m1"]
    assert joined["training"]["cpu_hours"] == 2.5  # the members' hours summed
    predictor = inference.DosePredictor(str(tmp_path / "joined"), "cpu")
    with torch.no_grad():
        averaged = predictor.network.eval()(x)
    # The prior is shared, so averaging the corrections averages the predictions (up to the fp16 of shipped weights).
    torch.testing.assert_close(averaged, 0.5 * (outputs[0] + outputs[1]), atol=3e-3, rtol=0)
    assert not torch.allclose(outputs[0], outputs[1], atol=3e-2)
    # An ensemble joins further models; a different network does not join.
    other = {**spec, "channels": [4, 16]}
    write_model(tmp_path / "other", networks.build_network(other).state_dict(),
                {"name": "other", "version": "1", "task": "dose", "network": other, "labels": ["Dose"],
                 "inputs": {"channels": list(encoding.CHANNELS)}, "weights": "weights.safetensors"})
    assert cli.main(["dose", "ensemble", str(tmp_path / "joined"), folders[0], "-o", str(tmp_path / "three")]) == 0
    three = json.loads((tmp_path / "three" / "manifest.json").read_text())
    assert three["network"]["members"] == 3 and three["training"]["cpu_hours"] == 3.5
    capsys.readouterr()
    assert cli.main(["dose", "ensemble", folders[0], str(tmp_path / "other"), "-o", str(tmp_path / "bad")]) == 2
    assert "cannot join" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # A manifest that spells out a default joins; one that sees its inputs differently (cropped to the body) does not.
    spelled = {**json.loads((tmp_path / "m1" / "manifest.json").read_text()), "inference": {"crop_margin_vox": None}}
    write_model(tmp_path / "spelled", networks.build_network(spec).state_dict(),
                {k: v for k, v in spelled.items() if k not in ("sha256", "folder")})
    assert cli.main(["dose", "ensemble", folders[0], str(tmp_path / "spelled"), "-o", str(tmp_path / "ok")]) == 0
    cropping = {**json.loads((tmp_path / "m1" / "manifest.json").read_text()), "inference": {"crop_margin_vox": 8}}
    write_model(tmp_path / "cropping", networks.build_network(spec).state_dict(),
                {k: v for k, v in cropping.items() if k not in ("sha256", "folder")})
    assert cli.main(["dose", "ensemble", folders[0], str(tmp_path / "cropping"), "-o", str(tmp_path / "bad")]) == 2
    assert "cannot join" in capsys.readouterr().err


def test_average_of_snapshots_averages_weights(tmp_path, capsys):
    import torch

    from rtrai.models import load_state_dict, read_manifest, write_model

    spec = {"type": "prior-unet", "channels": [4, 8], "strides": [2], "num_res_units": 1, "downsample": 2}
    manifest = {"name": "m", "version": "1", "task": "dose", "network": spec, "labels": ["Dose"],
                "inputs": {"channels": list(encoding.CHANNELS)}, "weights": "weights.safetensors"}
    torch.manual_seed(0)
    first = networks.build_network(spec).state_dict()
    write_model(tmp_path / "best", first, manifest, half=False)
    torch.manual_seed(1)
    last = networks.build_network(spec).state_dict()
    torch.save({"network": last, "step": 9}, tmp_path / "checkpoint.pt")  # a training run's checkpoint
    assert cli.main(["dose", "average", str(tmp_path / "best"), str(tmp_path / "checkpoint.pt"),
                     "-o", str(tmp_path / "avg")]) == 0
    averaged = load_state_dict(read_manifest(tmp_path / "avg"))
    key = next(k for k in first if first[k].is_floating_point() and first[k].numel() > 1)
    torch.testing.assert_close(averaged[key].float(), (first[key] + last[key]) / 2, atol=1e-3, rtol=0)
    other = {**spec, "channels": [4, 16]}
    torch.save({"network": networks.build_network(other).state_dict()}, tmp_path / "other.pt")
    capsys.readouterr()
    assert cli.main(["dose", "average", str(tmp_path / "best"), str(tmp_path / "other.pt"), "-o",
                     str(tmp_path / "bad")]) == 2
    assert "same network" in capsys.readouterr().err


def test_refine_head_trains_on_a_frozen_base_and_predicts_through_the_manifest(cohort, tmp_path, capsys):
    """A cascade's second stage: the head starts as a no-op, learns on crops while the base's weights stay exactly as
    shipped, and the refined model is one checksummed model whose manifest names its base and sums the CPU hours."""
    import torch

    from rtrai.models import load_state_dict, read_manifest

    patients = cohort / "patients"
    spec = {"type": "prior-unet", "channels": [4, 8], "strides": [2], "num_res_units": 1, "downsample": 2}
    base_cfg = {**TINY, "network": spec, "patch": None, "steps": 2, "validate_every": 2, "crop_margin_vox": 2}
    base_run = training.train(patients, tmp_path / "base", base_cfg, patients)
    base_dir = export.export_model(tmp_path / "base", base_cfg, base_run, command="test").parent
    base = read_manifest(str(base_dir))

    # An untrained head leaves the base's output unchanged.
    head = {"channels": 4, "layers": 2}
    refined = networks.build_network({**spec, "refine": head})
    refined.load_state_dict(load_state_dict(base), strict=False)
    plain = networks.build_network(spec)
    plain.load_state_dict(load_state_dict(base))
    x = torch.rand(1, len(encoding.CHANNELS), 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(refined.eval()(x), plain.eval()(x), atol=0, rtol=0)

    config = {**TINY, "patch": None, "steps": 4, "validate_every": 2, "lr": 0.01,
              "refine": {"base": str(base_dir), **head, "patch": [8, 16, 16]}}
    result = training.train(patients, tmp_path / "head", config, patients)
    log = (tmp_path / "head" / "train.log").read_text()
    assert "coarse doses of 2 training cases" in log and "validation of the base (step 0)" in log
    weights = torch.load(tmp_path / "head" / "checkpoint.pt", map_location="cpu", weights_only=True)["network"]
    for name, value in load_state_dict(base).items():  # frozen: the base's weights as loaded (fp16 shipped)
        torch.testing.assert_close(weights[name], value.float(), atol=0, rtol=0)
    assert weights["head.2.weight"].abs().max() > 0  # the zero-started last layer has learned

    manifest = json.loads(export.export_model(tmp_path / "head", config, result, command="test").read_text())
    assert manifest["network"] == {**spec, "refine": head}
    assert manifest["inference"] == {"flip": True, "crop_margin_vox": 2}
    assert manifest["training"]["base"]["sha256"] == base["sha256"] and manifest["training"]["patch"] is None
    assert manifest["training"]["cpu_hours"] == pytest.approx(result["cpu_hours"] + base["training"]["cpu_hours"])
    predictor = inference.DosePredictor(str(tmp_path / "head" / "model"), "cpu")
    case = predictor.read(patients / "p1")
    inputs = encoding.encode_inputs(case)
    predicted = sitk.GetArrayFromImage(predictor.predict(case))
    np.testing.assert_allclose(predicted, inference.predict_array(predictor.network, inputs, flip=True,
                                                                  crop_margin=2), atol=1e-5)
    coarse = inference.predict_array(inference.DosePredictor(str(base_dir), "cpu").network, inputs, flip=True,
                                     crop_margin=2)
    assert np.abs(predicted - coarse).max() > 1e-4

    # Refused: a refined model in an ensemble, a refine without base.
    capsys.readouterr()
    assert cli.main(["dose", "ensemble", str(base_dir), str(tmp_path / "head" / "model"),
                     "-o", str(tmp_path / "bad")]) == 2
    assert "refine head" in capsys.readouterr().err
    with pytest.raises(InputError, match="needs 'base'"):
        training.train(patients, tmp_path / "x", {**config, "refine": {"channels": 4}})
    # A crop larger than a case is padded outside the possible dose, where the loss does not look.
    cases = training.load_cohort(patients, print, crop_margin=2)
    x, y = training.sample_batch(cases, np.random.default_rng(0), [80, 8, 8], 2)
    assert x.shape == (2, len(encoding.CHANNELS), 80, 8, 8) and y.shape == (2, 1, 80, 8, 8)
    assert np.all(x[:, encoding.BODY, max(c["y"].shape[0] for c in cases):] == 0)
