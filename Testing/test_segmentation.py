"""AutoSegment library: masked loss, lateral flip, model zoo checksums, metrics, post-processing, tiny training runs,
``rtrai segment`` / ``rtrai evaluate segmentation`` on OpenKBP pt_201, bad inputs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError, ModelError, RTRAIError
from rtrai.core.image import from_array
from rtrai.models import ZOO, list_models, load_state_dict, read_manifest, write_model

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

OARS = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"]
TINY_NET = {"arch": "residual", "channels": [4, 8], "strides": [2], "num_res_units": 1}


def rtrai(*args) -> int:
    """Run an ``rtrai`` command in-process, as ``rtrai.cli.main`` does (RTRAIError -> exit status 2)."""
    from rtrai import cli
    from rtrai.segmentation import commands

    if commands.__name__ in cli.COMMAND_MODULES:
        return cli.main([str(a) for a in args])
    parser = argparse.ArgumentParser(prog="rtrai")  # until cli.py lists rtrai.segmentation.commands
    commands.register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args([str(a) for a in args])
    try:
        return int(parsed.func(parsed) or 0)
    except RTRAIError:
        return 2


def sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    zz, yy, xx = np.indices(shape).astype(float)
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip((zz, yy, xx), centre, spacing))
    return (d2 <= radius ** 2).astype(np.uint8)


def synthetic_case(seed: int, shape=(40, 48, 48), with_left=True) -> Case:
    """A 'patient': water cylinder in air, a dense 'Brainstem' ball at the centre, parotid blobs either side
    (Parotid_L at +x: the patient's left in LPS). ``with_left=False``: Parotid_L not contoured (absent)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[(yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (shape[2] * 0.42) ** 2] = 0.0
    c = [n // 2 + int(rng.integers(-2, 3)) for n in shape]
    brainstem = sphere(shape, c, 5)
    left = sphere(shape, (c[0], c[1], c[2] + 12), 4)
    right = sphere(shape, (c[0], c[1], c[2] - 12), 4)
    ct[brainstem > 0] = 300.0
    ct[(left + right) > 0] = -100.0
    ct += rng.normal(0, 10, shape).astype(np.float32)
    image = from_array(ct.astype(np.int16), spacing=(2.0, 2.0, 2.5), origin=(0, 0, 0))
    case = Case(ct=image, metadata={"patient_id": f"syn{seed}"})
    case.add_structure("Brainstem", brainstem)
    case.add_structure("Parotid_R", right)
    if with_left:
        case.add_structure("Parotid_L", left)
    return case


@pytest.fixture(scope="module")
def synthetic_cohort(tmp_path_factory) -> Path:
    from rtrai.io.case_io import write_case

    root = tmp_path_factory.mktemp("cohort")
    for i in range(3):
        write_case(synthetic_case(i, with_left=i != 1), root / f"pt_{i}")
    return root


def tiny_config(**changes) -> dict:
    from rtrai.io.settings import merge
    from rtrai.segmentation.config import DEFAULTS

    config = merge(DEFAULTS, {"name": "tiny", "labels": ["Brainstem", "Parotid_L", "Parotid_R"],
                              "network": TINY_NET, "patch": [16, 16, 16], "steps": 40, "warmup": 5, "lr": 5e-3,
                              "log_every": 2, "validation": {"data": None}})
    return merge(config, changes)


# ---- loss and augmentation -------------------------------------------------------------------------------------

def test_masked_loss_ignores_absent_structures():
    from rtrai.segmentation.losses import masked_bce_dice

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, generator=gen, requires_grad=True)
    target = (torch.rand(2, 3, 8, 8, 8, generator=gen) > 0.7).float()
    present = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])  # patient 0 has no contour for label 1
    loss = masked_bce_dice(logits, target, present)
    loss.backward()
    assert logits.grad[0, 1].abs().max() == 0  # nothing is learnt from the missing structure
    assert logits.grad[1, 1].abs().max() > 0  # the same label of a patient who has it is learnt
    other = target.clone()
    other[0, 1] = 1 - other[0, 1]  # whatever 'missing' would contain, the loss is the same
    assert float(masked_bce_dice(logits, other, present)) == pytest.approx(float(loss), abs=1e-6)
    changed = target.clone()
    changed[1, 1] = 1 - changed[1, 1]
    assert float(masked_bce_dice(logits, changed, present)) != pytest.approx(float(loss), abs=1e-4)


def test_lateral_flip_swaps_left_and_right_labels():
    from rtrai.segmentation.config import load_config
    from rtrai.segmentation.data import augmentation, label_array, preprocess

    case = synthetic_case(0, with_left=False)
    config = load_config("hn-oar-ct")
    config["augment"] = {"flip": 1.0, "affine": 0.0, "rotate_deg": 0, "scale": 0.0, "intensity": 0.0, "noise": 0.0}
    labels, present = label_array(case, config["labels"])
    image = preprocess(case, config["inputs"])
    out = augmentation(config)({"image": image, "label": labels.astype(np.float32), "present": present})
    left, right = OARS.index("Parotid_L"), OARS.index("Parotid_R")
    np.testing.assert_array_equal(np.asarray(out["image"]), image[..., ::-1])
    np.testing.assert_array_equal(np.asarray(out["label"])[left], labels[right][..., ::-1])  # right became left
    assert not np.asarray(out["label"])[right].any()
    assert out["present"][left] and not out["present"][right]  # the contoured side travelled with its mask
    brain = OARS.index("Brainstem")
    np.testing.assert_array_equal(np.asarray(out["label"])[brain], labels[brain][..., ::-1])


def test_patch_sampler_centres_on_structures_and_packs_labels(synthetic_cohort):
    from rtrai.segmentation.data import PatchSampler, case_paths, load_samples, pack, unpack

    masks = (np.random.default_rng(0).random((7, 5, 6, 7)) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(unpack(pack(masks), 7), masks)
    config = tiny_config(foreground_fraction=1.0)
    samples = load_samples(case_paths(synthetic_cohort), config)
    assert [bool(s.present[1]) for s in samples] == [True, False, True]  # pt_1 has no Parotid_L contour
    sampler = PatchSampler(samples, config)
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(30)]
    assert all(d["image"].shape == (1, 16, 16, 16) and d["label"].shape == (3, 16, 16, 16) for d in draws)
    assert sum(bool(d["label"].any()) for d in draws) >= 27  # centred on a structure (jitter may miss rarely)


def test_config_rejects_unknown_settings(tmp_path):
    from rtrai.segmentation.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\npatchsize: [8, 8, 8]\n")
    with pytest.raises(InputError, match="patchsize"):
        load_config(path)
    assert load_config("ptv70")["labels"] == ["PTV70"]


@pytest.mark.parametrize("arch", ["unet", "residual", "dilated"])
def test_network_variants_keep_the_patch_shape(arch):
    from rtrai.segmentation.networks import build_network, init_output_bias

    net = build_network({**TINY_NET, "arch": arch}, 2, 3)
    init_output_bias(net, 3, 0.01)
    with torch.no_grad():
        out = torch.sigmoid(net(torch.zeros(1, 2, 16, 16, 16)))
    assert out.shape == (1, 3, 16, 16, 16)
    assert float(out.mean()) < 0.2  # starts near the foreground prior, not at 0.5


# ---- model zoo -----------------------------------------------------------------------------------------------

def tiny_model(folder: Path, labels=OARS, patch=(32, 32, 32), seed=0) -> Path:
    from rtrai.segmentation.networks import build_network
    from rtrai.segmentation.train import manifest_for

    torch.manual_seed(seed)
    config = tiny_config(labels=list(labels), patch=list(patch))
    config["spacing_mm"] = [[3.5, 3.5, 2.0], [5.5, 5.5, 3.5]]
    net = build_network(config["network"], 1, len(labels))
    write_model(folder, net.state_dict(), manifest_for(config, "synthetic", 0))
    return folder


def test_model_checksum_mismatch_refuses_to_load(tmp_path):
    folder = tiny_model(tmp_path / "m")
    manifest = read_manifest(folder)
    state = load_state_dict(manifest)
    assert state and all(v.dtype == torch.float32 for v in state.values())
    weights = folder / manifest["weights"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_state_dict(read_manifest(folder))


def test_unreadable_model_and_mismatched_manifest_are_model_errors(tmp_path):
    from rtrai.core.provenance import sha256_file
    from rtrai.segmentation.inference import Segmenter

    folder = tiny_model(tmp_path / "m")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["weights"]).write_bytes(b"not a safetensors file")
    manifest["sha256"] = sha256_file(folder / manifest["weights"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="unreadable"):
        Segmenter(str(folder), "cpu")
    other = tiny_model(tmp_path / "n")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["network"]["channels"] = [8, 16]  # the manifest no longer describes the weights
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="do not fit"):
        Segmenter(str(other), "cpu")
    with pytest.raises(ModelError, match="unknown model"):
        read_manifest("no-such-model")


def test_list_models_reports_shipped_manifests():
    models = list_models()
    for model in models:
        assert model["name"] and len(model["sha256"]) == 64
    shipped = (ZOO / "hn-oar-ct" / "manifest.json").is_file()
    assert ("hn-oar-ct" in [m["name"] for m in models]) == shipped


# ---- metrics and post-processing ------------------------------------------------------------------------------

def test_metrics_on_concentric_spheres_match_geometry():
    from rtrai.segmentation.metrics import dice, evaluate

    shape, centre = (48, 48, 48), (24, 24, 24)
    small, big = sphere(shape, centre, 10), sphere(shape, centre, 12)
    rows = evaluate({"A": small}, {"A": big, "B": big}, (1.0, 1.0, 1.0), tolerance_mm=2.5, names=["A", "C"])
    assert [r["structure"] for r in rows] == ["A"]  # C is absent from the reference: not scored
    row = rows[0]
    expected_dsc = 2 * small.sum() / (small.sum() + big.sum())
    assert row["dsc"] == pytest.approx(expected_dsc, abs=1e-6)
    assert dice(small, big) == pytest.approx(expected_dsc, abs=1e-9)
    assert expected_dsc == pytest.approx(2 * 10 ** 3 / (10 ** 3 + 12 ** 3), abs=0.02)  # continuous spheres
    assert row["hd95_mm"] == pytest.approx(2.0, abs=0.5)  # radii differ by 2 mm everywhere
    assert row["msd_mm"] == pytest.approx(2.0, abs=0.5)
    assert row["surface_dsc"] > 0.9
    same = evaluate({"A": big}, {"A": big}, (1.0, 1.0, 1.0))[0]
    assert same["dsc"] == 1.0 and same["hd95_mm"] == 0.0 and same["surface_dsc"] == 1.0
    missing = evaluate({}, {"A": big}, (1.0, 1.0, 1.0))[0]
    assert missing["dsc"] == 0.0 and missing["surface_dsc"] == 0.0


def test_postprocess_keeps_largest_component_and_puts_sides_right():
    from rtrai.segmentation.postprocess import midline_x, postprocess

    shape = (20, 20, 40)
    image = np.full((1,) + shape, -1.0, dtype=np.float32)
    image[:, :, :, 5:35] = 0.0  # body centred at x = 19.5
    left, right, stem = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    left[8:12, 8:12, 8:12] = 1  # predicted 'left' on the patient's right (low x): swapped labels
    right[8:12, 8:12, 28:32] = 1
    stem[5:10, 5:10, 18:22] = 1
    stem[15:17, 15:17, 18:20] = 1  # a stray island
    assert midline_x(image[0]) == pytest.approx(19.5)
    out = postprocess(np.stack([left, right, stem]), ["Parotid_L", "Parotid_R", "Brainstem"], midline_x(image[0]))
    np.testing.assert_array_equal(out[0], right)
    np.testing.assert_array_equal(out[1], left)
    assert out[2].sum() == 5 * 5 * 4 and out[2][15:17, 15:17].sum() == 0


# ---- training ------------------------------------------------------------------------------------------------

def test_tiny_training_learns_and_resumes_bit_identically(synthetic_cohort, tmp_path):
    from rtrai.segmentation.train import CHECKPOINT, LOG, train

    straight = train(synthetic_cohort, tiny_config(steps=6), tmp_path / "a")
    log = (tmp_path / "a" / LOG).read_text()
    assert "step 6/6" in log and (tmp_path / "a" / CHECKPOINT).is_file()
    manifest = read_manifest(straight)
    assert manifest["labels"] == ["Brainstem", "Parotid_L", "Parotid_R"] and manifest["training"]["steps"] == 6

    train(synthetic_cohort, tiny_config(steps=6), tmp_path / "b", max_steps=3)
    assert "step 3/6" in (tmp_path / "b" / LOG).read_text()
    with pytest.raises(InputError, match="--resume"):
        train(synthetic_cohort, tiny_config(steps=6), tmp_path / "b")
    train(synthetic_cohort, None, tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_warm_start_begins_from_the_given_model_and_refuses_other_labels(synthetic_cohort, tmp_path):
    from rtrai.segmentation.train import LOG, train

    first = read_manifest(train(synthetic_cohort, tiny_config(steps=3), tmp_path / "first"))
    # zero steps from the first model: the exported weights are the first model's, byte for byte
    warm = read_manifest(train(synthetic_cohort, tiny_config(steps=3, init=str(tmp_path / "first" / "model")),
                               tmp_path / "warm", max_steps=0))
    assert warm["sha256"] == first["sha256"]
    log = (tmp_path / "warm" / LOG).read_text()
    assert f"weights initialised from tiny version 1 (sha256 {first['sha256'][:12]})" in log
    cold = read_manifest(train(synthetic_cohort, tiny_config(steps=3), tmp_path / "cold", max_steps=0))
    assert cold["sha256"] != first["sha256"]
    with pytest.raises(InputError, match="labels"):
        train(synthetic_cohort, tiny_config(steps=3, labels=["Brainstem"], init=str(tmp_path / "first" / "model")),
              tmp_path / "other")


def test_tiny_training_reduces_the_loss(synthetic_cohort, tmp_path):
    from rtrai.segmentation.train import LOG, train

    train(synthetic_cohort, tiny_config(steps=40, log_every=10, foreground_fraction=1.0), tmp_path / "w")
    losses = [float(line.split(" loss ")[1].split()[0])
              for line in (tmp_path / "w" / LOG).read_text().splitlines() if " loss " in line]
    assert len(losses) == 4 and losses[-1] < losses[0]


# ---- command line on real OpenKBP data -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_for_cli(tmp_path_factory) -> str:
    """The shipped model when there is one, else a tiny untrained one written through the same manifest code."""
    if (ZOO / "hn-oar-ct" / "manifest.json").is_file():
        return "hn-oar-ct"
    return str(tiny_model(tmp_path_factory.mktemp("model") / "tiny"))


def test_segment_openkbp_patient_to_seg_nrrd_and_openkbp(openkbp_pt201, model_for_cli, tmp_path):
    from rtrai.io.case_io import read_case
    from rtrai.io.segfile import read_segmentation
    from rtrai.segmentation.metrics import dice

    assert rtrai("segment", openkbp_pt201, "-o", tmp_path / "nrrd", "--model", model_for_cli, "--device", "cpu") == 0
    masks, colors = read_segmentation(tmp_path / "nrrd" / "Structures.seg.nrrd")
    assert sorted(masks) == sorted(OARS)
    assert colors["Parotid_L"] == pytest.approx((0.20, 0.80, 0.20), abs=0.01)
    reference = read_case(openkbp_pt201)
    assert masks["Brainstem"].GetSize() == reference.ct.GetSize()
    prov = json.loads((tmp_path / "nrrd" / "provenance.json").read_text())
    assert prov["models"][0]["sha256"] == read_manifest(model_for_cli)["sha256"]
    if model_for_cli == "hn-oar-ct":  # a trained model must find the mandible of a validation patient
        mandible = dice(sitk.GetArrayFromImage(masks["Bone_Mandible"]),
                        sitk.GetArrayFromImage(reference.structures["Bone_Mandible"]))
        assert mandible > 0.6

    assert prov["models"][0]["mirror"] == bool(read_manifest(model_for_cli)["inference"].get("mirror", False))

    assert rtrai("segment", openkbp_pt201, "-o", tmp_path / "kbp", "--model", model_for_cli, "--format",
                 "openkbp", "--no-mirror") == 0
    assert json.loads((tmp_path / "kbp" / "provenance.json").read_text())["models"][0]["mirror"] is False
    written = {p.name for p in (tmp_path / "kbp").iterdir()}
    assert "provenance.json" in written
    assert written - {"provenance.json"} <= {"Brainstem.csv", "SpinalCord.csv", "LeftParotid.csv",
                                              "RightParotid.csv", "Esophagus.csv", "Larynx.csv", "Mandible.csv"}


def test_evaluate_segmentation_cli(openkbp_pt201, tmp_path):
    import pandas as pd

    assert rtrai("evaluate", "segmentation", "--pred", openkbp_pt201, "--ref", openkbp_pt201, "-o",
                 tmp_path / "ev") == 0
    table = pd.read_csv(tmp_path / "ev" / "metrics.csv")
    assert set(table["structure"]) >= {"Brainstem", "Parotid_L", "PTV70"}
    assert (table["dsc"] == 1.0).all() and (table["hd95_mm"] == 0.0).all()
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert summary["per_structure_mean"]["Brainstem"]["surface_dsc"] == 1.0
    assert rtrai("evaluate", "segmentation", "--pred", openkbp_pt201, "--ref", openkbp_pt201, "-o", tmp_path / "two",
                 "--structures", "Larynx", "Eye_L") == 0
    assert list(pd.read_csv(tmp_path / "two" / "metrics.csv")["structure"]) == ["Larynx"]  # Eye_L: not contoured
    assert (tmp_path / "ev" / "provenance.json").is_file()


def test_bad_inputs_are_clear_errors(tmp_path, model_for_cli):
    from rtrai.io.images import write_image
    from rtrai.segmentation.inference import Segmenter

    segmenter = Segmenter(model_for_cli, "cpu")
    not_ct = from_array(np.random.default_rng(0).uniform(0, 100, (40, 64, 64)).astype(np.float32),
                        spacing=(4.0, 4.0, 2.5))
    with pytest.raises(InputError, match="do not look like a CT"):
        segmenter.segment(Case(ct=not_ct))
    tiny = from_array(np.full((4, 64, 64), -1000, np.int16), spacing=(4.0, 4.0, 2.5))
    tiny_array = sitk.GetArrayFromImage(tiny)
    tiny_array[:, 20:40, 20:40] = 40
    tiny = from_array(tiny_array, tiny)
    with pytest.raises(InputError, match="too small"):
        segmenter.segment(Case(ct=tiny))
    write_image(not_ct, tmp_path / "mr.nrrd")
    assert rtrai("segment", tmp_path / "mr.nrrd", "-o", tmp_path / "out", "--model", model_for_cli) == 2
    assert not (tmp_path / "out").exists()  # no partial output


def test_two_channel_input_trains_and_segments(synthetic_cohort, tmp_path):
    """A second input channel (here a 'PET' image beside each case) is read, trained on and required at inference."""
    import shutil

    from rtrai.io.case_io import read_case
    from rtrai.io.images import write_image
    from rtrai.segmentation.inference import Segmenter
    from rtrai.segmentation.train import train

    cohort = tmp_path / "cohort"
    shutil.copytree(synthetic_cohort, cohort)
    for patient in cohort.iterdir():
        case = read_case(patient)
        uptake = sitk.GetArrayFromImage(case.structures["Brainstem"]).astype(np.float32) * 8.0 + 1.0
        write_image(from_array(uptake, case.ct), patient / "PET.nrrd")
    config = tiny_config(steps=3, inputs=[{"name": "CT", "modality": "CT", "window": [-1000, 1500]},
                                          {"name": "PET", "modality": "PT", "window": [0, 10]}])
    model = train(cohort, config, tmp_path / "w")
    segmenter = Segmenter(str(model), "cpu")
    masks = segmenter.segment(read_case(cohort / "pt_0"), cohort / "pt_0")
    assert sorted(masks) == ["Brainstem", "Parotid_L", "Parotid_R"]
    (cohort / "pt_2" / "PET.nrrd").unlink()
    with pytest.raises(InputError, match="PET"):
        segmenter.segment(read_case(cohort / "pt_2"), cohort / "pt_2")


def test_two_stage_model_segments_only_where_the_localiser_looks(tmp_path):
    """A manifest naming a localiser runs it first; the second stage sees only the box around what it found."""
    from rtrai.segmentation.inference import Segmenter
    from rtrai.segmentation.networks import build_network, init_output_bias
    from rtrai.segmentation.train import manifest_for

    labels = ["Brainstem", "Parotid_L", "Parotid_R"]
    main = tiny_model(tmp_path / "main", labels, patch=(16, 16, 16))
    case = synthetic_case(0)
    single = Segmenter(str(main), "cpu")
    image = single.preprocess(case)[0]
    alone = single.probabilities(image)

    def localiser(logit: float) -> None:
        config = tiny_config(labels=labels, downsample=2, network={"arch": "unet", "channels": [4, 8]})
        net = build_network(config["network"], 1, 3)
        init_output_bias(net, 3, 0.5)
        last = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d) and m.out_channels == 3][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(logit)  # finds everything (+) or nothing (-)
        write_model(tmp_path / "loc", net.state_dict(), manifest_for(config, "synthetic", 0))
        manifest = json.loads((main / "manifest.json").read_text())
        manifest["localiser"] = "../loc"
        (main / "manifest.json").write_text(json.dumps(manifest))

    localiser(20.0)
    np.testing.assert_allclose(Segmenter(str(main), "cpu").probabilities(image), alone, atol=1e-5)
    localiser(-20.0)
    assert not Segmenter(str(main), "cpu").probabilities(image).any()


def test_mirror_averages_with_the_mirrored_image_and_swaps_sides(tmp_path):
    """Test-time mirroring makes the prediction lateral-equivariant: segmenting the mirrored patient gives the
    mirrored segmentation with Parotid_L and Parotid_R exchanged (an unswapped average would not)."""
    from rtrai.segmentation.inference import Segmenter

    labels = ["Brainstem", "Parotid_L", "Parotid_R"]
    model = str(tiny_model(tmp_path / "m", labels, patch=(16, 16, 16)))
    plain, mirrored = Segmenter(model, "cpu"), Segmenter(model, "cpu", mirror=True)
    assert not plain.info["mirror"] and mirrored.info["mirror"]
    image = plain.preprocess(synthetic_case(0))[0]
    flipped = np.ascontiguousarray(image[..., ::-1])
    swap = [0, 2, 1]
    direct, other = plain.probabilities(image), plain.probabilities(flipped)[swap, ..., ::-1]
    assert np.abs(direct - other).max() > 1e-3  # the untrained net is not symmetric by itself
    both = mirrored.probabilities(image)
    np.testing.assert_allclose(both, (direct + other) / 2, atol=1e-5)
    np.testing.assert_allclose(mirrored.probabilities(flipped), both[swap, ..., ::-1], atol=1e-5)


def test_segment_image_file_and_folder_of_patients(openkbp_pt201, model_for_cli, tmp_path):
    from rtrai.io.case_io import read_case
    from rtrai.io.images import write_image

    write_image(read_case(openkbp_pt201).ct, tmp_path / "ct.nrrd")
    assert rtrai("segment", tmp_path / "ct.nrrd", "-o", tmp_path / "img", "--model", model_for_cli) == 0
    assert (tmp_path / "img" / "Structures.seg.nrrd").is_file()
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "pt_201").symlink_to(openkbp_pt201, target_is_directory=True)
    (cohort / "pt_x").mkdir()
    (cohort / "pt_x" / "CT.nrrd").write_bytes(b"broken")  # one unreadable patient: reported, the others done
    assert rtrai("segment", cohort, "-o", tmp_path / "many", "--model", model_for_cli) == 2
    assert (tmp_path / "many" / "pt_201" / "Structures.seg.nrrd").is_file()
    assert not (tmp_path / "many" / "pt_x").exists()


def test_segment_train_command_with_yaml_config_and_resume(synthetic_cohort, tmp_path):
    import yaml

    config = tiny_config(steps=4)
    config.pop("version")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    assert rtrai("segment", "train", "--data", synthetic_cohort, "--config", tmp_path / "tiny.yaml", "-o", work,
                 "--max-steps", "2") == 0
    assert json.loads((work / "provenance.json").read_text())["command"] == "segment train"
    assert rtrai("segment", "train", "--data", synthetic_cohort, "--config", tmp_path / "tiny.yaml", "-o", work,
                 "--resume") == 2  # the saved config is the run's config
    assert rtrai("segment", "train", "--data", synthetic_cohort, "-o", work, "--resume", "--steps", "5") == 0
    log = (work / "train.log").read_text()
    assert "resumed at step 2" in log and "step 5/5" in log
    assert read_manifest(work / "model")["training"]["steps"] == 5
    # --init warm-starts a new run from a model (here the run above), the way hn-oar-ct version 2 was trained
    assert rtrai("segment", "train", "--data", synthetic_cohort, "-o", work, "--resume", "--init", work / "model") == 2
    assert rtrai("segment", "train", "--data", synthetic_cohort, "--config", tmp_path / "tiny.yaml", "-o",
                 tmp_path / "warm", "--init", work / "model", "--max-steps", "0") == 0
    assert read_manifest(tmp_path / "warm" / "model")["sha256"] == read_manifest(work / "model")["sha256"]
    # --seed sets a new run's seed (the config keeps the rest); a resumed run keeps its own
    assert rtrai("segment", "train", "--data", synthetic_cohort, "--config", tmp_path / "tiny.yaml", "-o",
                 tmp_path / "seeded", "--seed", "7", "--max-steps", "0") == 0
    assert json.loads((tmp_path / "seeded" / "config.json").read_text())["seed"] == 7
    assert rtrai("segment", "train", "--data", synthetic_cohort, "-o", work, "--resume", "--seed", "7") == 2


def test_recipe_trains_base_then_seeded_runs_in_parallel_and_averages_them(synthetic_cohort, tmp_path, capfd):
    """One command for a model of several runs: base, then two seeds warm-started from it side by side, averaged."""
    import yaml

    from rtrai.segmentation.train import LOG

    base = tiny_config(steps=3)
    base.pop("version")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    recipe = {**base, "version": "2", "steps": 2, "base": str(tmp_path / "base.yaml"), "average_seeds": [1, 2],
              "parallel": 2, "validation": {"data": str(synthetic_cohort), "every": 0, "cases": 2}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    work = tmp_path / "work"
    train = ("segment", "train", "--data", synthetic_cohort, "-o", work)
    assert rtrai(*train, "--config", tmp_path / "recipe.yaml") == 0
    assert "[seed-2] " in capfd.readouterr().out  # the parallel runs' lines, told apart
    soup, first = read_manifest(work / "model"), read_manifest(work / "base" / "model")
    members = [read_manifest(work / f"seed-{seed}" / "model") for seed in (1, 2)]
    assert soup["version"] == "2" and soup["training"]["seed"] == [1, 2]
    assert soup["training"]["base"]["sha256"] == first["sha256"]
    assert [m["sha256"] for m in soup["training"]["averaged_from"]] == [m["sha256"] for m in members]
    for member in members:  # each run started from the base model, with its own seed and the recipe's schedule
        assert f"weights initialised from tiny version 1 (sha256 {first['sha256'][:12]})" in (
            Path(member["folder"]).parent / LOG).read_text()
        assert member["training"]["steps"] == 2
    assert members[0]["sha256"] != members[1]["sha256"]
    mean, a, b = (load_state_dict(m) for m in (soup, *members))
    for key in mean:
        torch.testing.assert_close(mean[key], (a[key] + b[key]) / 2, atol=2e-3, rtol=1e-3)
    assert set(soup["metrics"]["validation_dsc"]) == {"Brainstem", "Parotid_L", "Parotid_R"}
    assert soup["training"]["cpu_seconds"] >= sum(m["training"]["cpu_seconds"] for m in members)

    # Resumed, a finished recipe leaves its runs alone; lost, its average is made again, the same to the bit.
    shutil.rmtree(work / "model")
    assert rtrai(*train, "--resume") == 0
    assert read_manifest(work / "model")["sha256"] == soup["sha256"]
    assert (work / "seed-1" / LOG).read_text().count("step 2/2") == 1
    # An unfinished run (here: one whose schedule was lengthened) is resumed where it stopped.
    config = json.loads((work / "seed-2" / "config.json").read_text())
    (work / "seed-2" / "config.json").write_text(json.dumps({**config, "steps": 3}))
    shutil.rmtree(work / "model")
    assert rtrai(*train, "--resume") == 0
    assert "resumed at step 2" in (work / "seed-2" / LOG).read_text()
    assert read_manifest(work / "seed-2" / "model")["training"]["steps"] == 3
    assert read_manifest(work / "model")["sha256"] != soup["sha256"]
    # Options that do not fit a recipe are refused; so is a folder that holds one.
    assert rtrai(*train, "--resume", "--max-steps", "1") == 2
    assert rtrai(*train[:-1], tmp_path / "w2", "--config", tmp_path / "recipe.yaml", "--seed", "3") == 2
    assert rtrai(*train, "--config", tmp_path / "recipe.yaml") == 2
    assert "already holds" in capfd.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc (Linux)")
def test_killed_recipe_leaves_no_run_training(synthetic_cohort, tmp_path):
    """`kill` of `rtrai segment train` (not Ctrl-C, which reaches the whole group) stops its parallel runs too: an
    orphaned run would go on training unseen, into folders that the next command may be using."""
    import signal
    import subprocess
    import time

    import yaml
    from conftest import process_alive

    from rtrai.core.jobs import rtrai_argv

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    start = tiny_model(tmp_path / "start", labels=tiny_config()["labels"], patch=(16, 16, 16))
    recipe = {**tiny_config(steps=100000), "init": str(start), "average_seeds": [1, 2], "parallel": 2}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    work = tmp_path / "work"
    parent = subprocess.Popen(rtrai_argv("segment", "train", "--data", synthetic_cohort, "--config",
                                         tmp_path / "recipe.yaml", "-o", work),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while not all("step 2/" in _read(work / f"seed-{s}" / "train.log") for s in (1, 2)):
            assert parent.poll() is None and time.time() < deadline, "the recipe's runs did not start"
            time.sleep(0.5)
        workers = children(parent.pid)
        assert len(workers) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while any(process_alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(process_alive(pid) for pid in workers), "runs went on training after their command was killed"
    finally:
        parent.kill()
        for pid in filter(process_alive, workers):
            os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_segment_average_is_one_model_with_the_mean_weights(tmp_path, capsys):
    from rtrai.segmentation.inference import Segmenter

    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    assert rtrai("segment", "average", a, b, "-o", tmp_path / "soup") == 0
    soup = read_manifest(tmp_path / "soup")
    assert soup["version"] == "average of 2" and soup["labels"] == OARS
    assert [m["sha256"] for m in soup["training"]["averaged_from"]] == [read_manifest(m)["sha256"] for m in (a, b)]
    mean, first, second = (load_state_dict(read_manifest(m)) for m in (tmp_path / "soup", a, b))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    for key in mean:  # fp16 weights: equal to the mean up to half precision
        torch.testing.assert_close(mean[key], (first[key] + second[key]) / 2, atol=2e-3, rtol=1e-3)
    Segmenter(str(tmp_path / "soup"), "cpu")  # loads by checksum as any model
    # A run's checkpoint (weights under "model", beside the optimiser) is a snapshot too.
    torch.save({"model": second, "optimiser": {}, "step": 3}, tmp_path / "checkpoint.pt")
    assert rtrai("segment", "average", a, tmp_path / "checkpoint.pt", "-o", tmp_path / "soup2") == 0
    assert read_manifest(tmp_path / "soup2")["sha256"] == soup["sha256"]
    # Models of other labels are not averaged, and nothing is written; segmenting takes one INPUT.
    capsys.readouterr()
    assert rtrai("segment", "average", a, tiny_model(tmp_path / "c", labels=OARS[:3]), "-o", tmp_path / "bad") == 2
    assert "cannot be averaged" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert rtrai("segment", "average", a, "-o", tmp_path / "bad") == 2
    assert rtrai("segment", a, b, "-o", tmp_path / "bad") == 2 and not (tmp_path / "bad").exists()


def test_segment_dicom_folder_to_rtstruct(openkbp_pt201, model_for_cli, tmp_path):
    from rtrai.core.case import Case
    from rtrai.io.case_io import read_case

    dicom_export = pytest.importorskip("rtrai.io.dicomrt_export")
    if model_for_cli != "hn-oar-ct":
        pytest.skip("needs the shipped hn-oar-ct: an untrained model's speckle makes thousands of RTSTRUCT contours")
    ct = read_case(openkbp_pt201).ct
    dicom_export.write_dicom_case(Case(ct=ct, metadata={"patient_id": "pt_201"}), tmp_path / "dcm")
    assert rtrai("segment", tmp_path / "dcm", "-o", tmp_path / "out", "--model", model_for_cli,
                 "--format", "dicom") == 0
    assert (tmp_path / "out" / "RTSTRUCT.dcm").is_file()
    back = read_case(tmp_path / "out")
    assert back.ct.GetSize() == ct.GetSize()
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["command"] == "segment"
