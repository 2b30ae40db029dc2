"""Bring your own model: ``rtrai segment --model PATH`` with a MONAI bundle, a TorchScript file or an nnU-Net v2
folder writes what a zoo model writes. Every model here is built by the test itself, small and fast on CPU: a tiny
rtrai network trained for a few steps on synthetic phantoms (the zoo model), its TorchScript export, the same network
as a MONAI bundle written with MONAI's bundle tools, and an nnU-Net v2 model made with nnunetv2's own classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtrai.core.errors import ModelError

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from test_segmentation import rtrai, synthetic_case, tiny_config  # noqa: E402 - after the skips: needs torch

LABELS = ["Brainstem", "Parotid_L", "Parotid_R"]
SPACING_BOUNDS = [[1.5, 1.5, 2.0], [3.0, 3.0, 3.0]]  # the phantoms' 2 x 2 x 2.5 mm lie inside: no resampling


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def patient(work) -> Path:
    """A phantom 'patient' folder (CT.nrrd and its reference contours) the models have not been trained on."""
    from rtrai.io.case_io import write_case

    write_case(synthetic_case(7), work / "patient")
    return work / "patient"


@pytest.fixture(scope="module")
def zoo_model(work) -> Path:
    """A tiny rtrai zoo model (MONAI residual UNet), trained for 40 steps on three phantoms."""
    from rtrai.io.case_io import write_case
    from rtrai.segmentation.train import train

    for i in range(3):
        write_case(synthetic_case(i), work / "cohort" / f"pt_{i}")
    torch.manual_seed(0)
    config = tiny_config(steps=40, log_every=20, foreground_fraction=1.0, spacing_mm=SPACING_BOUNDS)
    return train(work / "cohort", config, work / "train")


def zoo_network(model: Path):
    from rtrai.models import load_state_dict, read_manifest
    from rtrai.segmentation.networks import build_network

    manifest = read_manifest(model)
    net = build_network(manifest["network"], len(manifest["inputs"]), len(manifest["labels"]))
    net.load_state_dict(load_state_dict(manifest))
    return net.eval(), manifest


def segment(model, patient: Path, out: Path, *options) -> tuple[dict, dict]:
    """``rtrai segment`` through the real CLI: the masks written and the provenance record."""
    from rtrai.io.segfile import read_segmentation

    assert rtrai("segment", patient, "-o", out, "--model", model, "--device", "cpu", *options) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Structures.seg.nrrd", "provenance.json"]
    masks, _ = read_segmentation(out / "Structures.seg.nrrd")
    return ({name: sitk.GetArrayFromImage(mask) for name, mask in masks.items()},
            json.loads((out / "provenance.json").read_text()))


@pytest.fixture(scope="module")
def zoo_result(zoo_model, patient, work):
    return segment(zoo_model, patient, work / "out-zoo")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1.0, float(a.astype(bool).sum() + b.astype(bool).sum()))


# ---- TorchScript ----------------------------------------------------------------------------------------------

def test_torchscript_export_segments_as_the_zoo_model(zoo_model, zoo_result, patient, work):
    from rtrai.core.provenance import sha256_file

    net, manifest = zoo_network(zoo_model)
    folder = work / "ts"
    folder.mkdir()
    scripted = torch.jit.trace(net, torch.zeros(1, 1, *manifest["patch"]))
    scripted.save(str(folder / "oars.pt"))
    spec = {"name": "oars-ts", "version": "1", "labels": ["Brainstem", "Lt Parotid", "Rt Parotid"],
            "inputs": [{"window": manifest["inputs"][0]["window"]}], "patch": manifest["patch"],
            "spacing_mm": SPACING_BOUNDS, "inference": manifest["inference"],
            "sha256": sha256_file(folder / "oars.pt")}
    (folder / "oars.json").write_text(json.dumps(spec))

    masks, prov = segment(folder / "oars.pt", patient, work / "out-ts")
    zoo_masks, _ = zoo_result
    assert sorted(masks) == sorted(zoo_masks) == LABELS  # clinical spellings mapped to TG-263 names
    for name in LABELS:
        np.testing.assert_array_equal(masks[name], zoo_masks[name])  # same network, same windows: same voxels
    model = prov["models"][0]
    assert model["engine"] == "torchscript" and model["name"] == "oars-ts"
    assert model["files"]["oars.pt"] == sha256_file(folder / "oars.pt")
    assert model["label_names"]["Lt Parotid"] == "Parotid_L" and "labels_without_tg263_name" not in model

    spec["sha256"] = "0" * 64  # a file that is not the one its manifest names is refused
    (folder / "oars.json").write_text(json.dumps(spec))
    assert rtrai("segment", patient, "-o", work / "out-ts-bad", "--model", folder / "oars.pt") == 2
    assert not (work / "out-ts-bad").exists()


# ---- MONAI bundle ---------------------------------------------------------------------------------------------

def write_bundle(folder: Path, zoo_model: Path) -> None:
    """The zoo network as a MONAI bundle (monai.bundle.init_bundle + an inference.json): a MONAI UNet trained on
    MONAI's (C, x, y, z) arrays in LPS orientation, i.e. the zoo's weights with their kernels turned from (z, y, x)
    to (x, y, z) — the same function on the other layout, so the bundle must reproduce the zoo's probabilities."""
    from monai.bundle import ConfigParser, init_bundle

    net, manifest = zoo_network(zoo_model)
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.dim() == 5:
                p.copy_(p.permute(0, 1, 4, 3, 2).contiguous())
    network = manifest["network"]
    metadata = {"name": "Phantom OARs", "version": "0.1.0",
                "network_data_format": {
                    "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                         "num_channels": 1, "spatial_shape": [16, 16, 16]}},
                    "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                         "channel_def": {"0": "brainstem", "1": "Left Parotid",
                                                         "2": "Parotid Right"}}}}}
    patch = list(reversed(manifest["patch"]))  # the zoo's (z, y, x) patch in MONAI's (x, y, z)
    inference = {
        "image_key": "image",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                        "channels": network["channels"], "strides": network["strides"],
                        "num_res_units": network["num_res_units"], "norm": "instance", "dropout": 0.0},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "LPS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [2.0, 2.0, 2.5], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": manifest["inputs"][0]["window"][0],
             "a_max": manifest["inputs"][0]["window"][1], "b_min": -1.0, "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": patch, "sw_batch_size": 2,
                    "overlap": manifest["inference"]["overlap"], "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]},
    }
    init_bundle(folder, network=net, metadata_str=metadata)
    ConfigParser.export_config_file(inference, str(folder / "configs" / "inference.json"))


def test_monai_bundle_segments_as_the_zoo_model(zoo_model, zoo_result, patient, work):
    from rtrai.io.case_io import read_case
    from rtrai.segmentation.engines import engine_kind, load_segmenter

    write_bundle(work / "bundle", zoo_model)
    assert engine_kind(str(work / "bundle")) == "bundle"
    bundle, zoo = load_segmenter(str(work / "bundle"), "cpu"), load_segmenter(str(zoo_model), "cpu")
    assert bundle.manifest["patch"] == zoo.manifest["patch"]
    image = zoo.preprocess(read_case(patient))[0]
    np.testing.assert_allclose(bundle.probabilities(image), zoo.probabilities(image), atol=1e-4)

    masks, prov = segment(work / "bundle", patient, work / "out-bundle")
    zoo_masks, _ = zoo_result
    assert sorted(masks) == LABELS
    for name in LABELS:
        assert dice(masks[name], zoo_masks[name]) > 0.99
    model = prov["models"][0]
    assert model["engine"] == "bundle" and model["name"] == "Phantom OARs" and model["axcodes"] == "LPS"
    assert set(model["files"]) == {"configs/inference.json", "configs/metadata.json", "models/model.pt"}


def test_bundle_with_an_unsupported_intensity_step_is_refused(zoo_model, work):
    from rtrai.segmentation.engines import load_segmenter

    folder = work / "bundle-norm"
    write_bundle(folder, zoo_model)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"][-1] = {"_target_": "NormalizeIntensityd", "keys": "@image_key"}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="NormalizeIntensityd"):
        load_segmenter(str(folder), "cpu")


# ---- nnU-Net v2 -----------------------------------------------------------------------------------------------
# nnU-Net's own entry points (fingerprint, plan, preprocess, nnUNetTrainer) take minutes even on 48^3 phantoms here:
# fingerprinting and preprocessing start worker processes that each import torch, and the trainer's shortest epoch
# is 250 iterations + validation of a 32-320 channel network. So the trained-model folder is made with nnunetv2's
# own pieces instead: plans in nnU-Net v2's format (what its ExperimentPlanner writes for these phantoms, with the
# network narrowed to 8-32 channels and a smaller patch), its DefaultPreprocessor, its dynamic_network_architectures
# PlainConvUNet built from the plans, its Dice + cross-entropy loss, a short training, and a checkpoint with every key
# nnUNetTrainer saves (numpy scalars in the log included), which nnU-Net's predictor then runs. (nnunetv2 2.5's
# trainer cannot run on torch >= 2.7 anyway: its PolyLRScheduler passes the `verbose` argument torch removed.)

NNUNET_LABELS = {"background": 0, "brainstem": 1, "Parotid Left": 2, "Glnd Parotid Rt": 3}


def nnunet_plans(cases) -> dict:
    ct = np.concatenate([sitk.GetArrayFromImage(c.ct)[sitk.GetArrayFromImage(c.structures["Brainstem"]) > 0]
                         for c in cases]).astype(float)
    shape = list(sitk.GetArrayViewFromImage(cases[0].ct).shape)
    spacing = list(cases[0].ct.GetSpacing())[::-1]
    conv = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    return {
        "dataset_name": "Dataset001_Phantom", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": shape,
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [24, 32, 32], "median_image_size_in_voxels": shape, "spacing": spacing,
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], **resampling,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": conv,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": float(ct.max()), "mean": float(ct.mean()), "median": float(np.median(ct)),
            "min": float(ct.min()), "percentile_00_5": float(np.percentile(ct, 0.5)),
            "percentile_99_5": float(np.percentile(ct, 99.5)), "std": float(ct.std())}},
    }


def nnunet_label_map(case) -> np.ndarray:
    out = np.zeros(sitk.GetArrayViewFromImage(case.ct).shape, np.int16)
    for name, value in (("Brainstem", 1), ("Parotid_L", 2), ("Parotid_R", 3)):
        out[sitk.GetArrayViewFromImage(case.structures[name]) > 0] = value
    return out


@pytest.fixture(scope="module")
def nnunet_model(work) -> Path:
    pytest.importorskip("nnunetv2", reason="nnU-Net models need the nnunetv2 package (pip install "
                                           "'rtradiomicsai[nnunet]')")
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cases = [synthetic_case(i) for i in range(4)]
    dataset = {"channel_names": {"0": "CT"}, "labels": NNUNET_LABELS, "numTraining": len(cases),
               "file_ending": ".nii.gz"}
    plans = nnunet_plans(cases)
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    preprocessor = DefaultPreprocessor(verbose=False)
    images, targets = [], []
    for case in cases:
        data = sitk.GetArrayFromImage(case.ct).astype(np.float32)[None]
        properties = {"spacing": list(case.ct.GetSpacing())[::-1]}
        image, seg = preprocessor.run_case_npy(data, nnunet_label_map(case)[None], properties, manager,
                                               configuration, dataset)
        images.append(torch.as_tensor(image))
        targets.append(torch.as_tensor(seg.astype(np.int64)).clamp(min=0))
    arch = configuration.network_arch_init_kwargs
    patch = configuration.patch_size
    torch.manual_seed(0)
    net = get_network_from_plans(configuration.network_arch_class_name, arch,
                                 configuration.network_arch_init_kwargs_req_import, 1, len(NNUNET_LABELS),
                                 deep_supervision=False)
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(30):  # patches of the plans' size around the organs, as nnU-Net's foreground oversampling
        corners = [[int(rng.integers(lo, hi + 1)) for lo, hi in ((6, 10), (6, 10), (7, 9))] for _ in range(2)]
        crops = [tuple(slice(c, c + n) for c, n in zip(corner, patch)) for corner in corners]
        pick = [step % 4, (step + 1) % 4]
        optimiser.zero_grad()
        value = loss(net(torch.stack([images[i][(slice(None), *c)] for i, c in zip(pick, crops)])),
                     torch.stack([targets[i][(slice(None), *c)] for i, c in zip(pick, crops)]))
        value.backward()
        optimiser.step()
        losses.append(value.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    folder = work / "nnUNet_results" / "Dataset001_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    dice_log = np.float64(1.0 - losses[-1])
    torch.save({"network_weights": net.state_dict(), "optimizer_state": optimiser.state_dict(),
                "grad_scaler_state": None,
                "logging": {"mean_fg_dice": [dice_log], "ema_fg_dice": [dice_log],
                            "dice_per_class_or_region": [[dice_log] * 3], "train_losses": losses[-1:],
                            "val_losses": losses[-1:], "lrs": [1e-2], "epoch_start_timestamps": [0.0],
                            "epoch_end_timestamps": [1.0]},
                "_best_ema": dice_log, "current_epoch": 1,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                              "unpack_dataset": True, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_nnunet_folder_segments_through_nnunets_predictor(nnunet_model, zoo_result, patient, work):
    from rtrai.io.case_io import read_case

    masks, prov = segment(nnunet_model, patient, work / "out-nnunet", "--no-mirror")
    labels = ["Brainstem", "Glnd Parotid Rt", "Parotid_L"]  # "Glnd Parotid Rt" has no TG-263 name: kept, made safe
    assert prov["structures"] == labels and "Brainstem" in masks and set(masks) <= set(labels)
    truth = sitk.GetArrayFromImage(read_case(patient).structures["Brainstem"])
    assert dice(masks["Brainstem"], truth) > 0.7  # 30 steps find the dense ball (the faint parotids take longer)
    model = prov["models"][0]
    assert model["engine"] == "nnunet" and model["name"] == "Dataset001_Phantom"
    assert model["labels_without_tg263_name"] == ["Glnd Parotid Rt"]
    assert model["label_names"]["Parotid Left"] == "Parotid_L"
    assert set(model["files"]) == {"dataset.json", "plans.json", "fold_0/checkpoint_final.pth"}
    assert model["mirror"] is False and "weights_only=True" in model["security"]

    import pydicom

    from rtrai.segmentation.engines import load_segmenter

    out = work / "out-nnunet-dicom"  # other formats as for zoo models
    assert rtrai("segment", patient, "-o", out, "--model", nnunet_model, "--format", "dicom", "--no-mirror") == 0
    objects = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm")]
    rtstruct = [o for o in objects if o.Modality == "RTSTRUCT"]
    assert len(rtstruct) == 1 and "Brainstem" in [r.ROIName for r in rtstruct[0].StructureSetROISequence]
    default = load_segmenter(str(nnunet_model), "cpu")  # nnU-Net's default: mirroring along the trained axes
    assert default.info["mirror"] is True and default.predictor.use_mirroring
    assert default.predictor.allowed_mirroring_axes == (0, 1, 2)


def test_nnunet_checkpoint_that_carries_code_is_refused_unrun(nnunet_model, work, tmp_path):
    """torch.load(weights_only=True): a checkpoint whose unpickling would run a command is refused, not run."""
    from rtrai.segmentation.engines import load_segmenter

    folder = tmp_path / "evil"
    shutil.copytree(nnunet_model, folder)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)  # the test's own file
    torch.save({**saved, "extra": Payload()}, checkpoint)
    with pytest.raises(ModelError, match="weights_only"):
        load_segmenter(str(folder), "cpu")
    assert not marker.exists()


# ---- what PATH is ---------------------------------------------------------------------------------------------

def test_a_path_that_is_no_model_says_what_was_expected(tmp_path, patient):
    from rtrai.segmentation.engines import engine_kind

    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.pt").write_bytes(b"\0")
    for path in (tmp_path / "empty", tmp_path / "weights.pt", tmp_path / "missing" / "model"):
        with pytest.raises(ModelError, match="MONAI bundle folder .* nnU-Net v2 trained-model folder"):
            engine_kind(str(path))
    assert engine_kind("hn-oar-ct") == "zoo"
    assert rtrai("segment", patient, "-o", tmp_path / "out", "--model", tmp_path / "empty") == 2
    assert not (tmp_path / "out").exists()


def test_monai_layout_runs_the_network_on_ras_xyz_arrays():
    """A network that outputs its own array index along each axis: wrapped for RAS, rtrai's (z, y, x) LPS output
    must run to the patient's right along x, anterior along y and superior along z."""
    from rtrai.segmentation.engines.layout import foreign_network

    class Index(torch.nn.Module):
        def forward(self, x):  # (N, C, i, j, k) -> channel a holds the index along network axis a
            grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in x.shape[2:]), indexing="ij")
            return torch.stack(grids)[None].expand(x.shape[0], 3, *x.shape[2:])

    wrapped = foreign_network(Index(), [(-1, 1)], "RAS")
    assert wrapped.patch_zyx([8, 6, 4]) == [4, 6, 8]  # MONAI's (x, y, z) roi as rtrai's (z, y, x) patch
    out = wrapped(torch.zeros(1, 1, 4, 6, 8))[0]  # rtrai's z=4, y=6, x=8
    assert out.shape == (3, 4, 6, 8)
    assert out[0, 0, 0, 0] == 7 and out[0, 0, 0, 7] == 0  # network axis 0 (R): index falls as rtrai's x goes left
    assert out[1, 0, 0, 0] == 5 and out[1, 0, 5, 0] == 0  # network axis 1 (A): falls as rtrai's y goes posterior
    assert out[2, 0, 0, 0] == 0 and out[2, 3, 0, 0] == 3  # network axis 2 (S): rises with rtrai's z (superior)
