"""An nnU-Net v2 trained-model folder (``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/``), run by
the ``nnunetv2`` package's own predictor (:class:`nnUNetPredictor`: its preprocessing, sliding window, mirroring and
fold ensemble), on CPU or GPU.

The folder holds ``dataset.json`` (channel names, labels), ``plans.json`` and one ``fold_*/checkpoint_final.pth`` per
fold; every fold found is used (nnU-Net's own default). nnU-Net's loader (``initialize_from_trained_model_folder``)
unpickles checkpoints with ``torch.load(weights_only=False)``, which runs whatever code a checkpoint file carries:
rtrai reads them itself with ``weights_only=True`` (tensors, plain containers, numpy scalars and ``torch.device`` are
all a trained checkpoint holds) and hands the weights to the predictor's ``manual_initialization``.
``postprocessing.pkl`` (a pickle) is never read: rtrai's own post-processing (largest component, left/right
consistency) runs instead, as for zoo models.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import DependencyError, InputError, ModelError
from rtrai.models.device import pick_device
from rtrai.segmentation.engines import model_files, nnunet_checkpoints, tg263_labels

READERS = ("SimpleITKIO", "NibabelIO")  # arrays as SimpleITK gives them, (z, y, x): the LPS-oriented array is right
WINDOW_CT = (-1000.0, 1500.0)  # for the body midline of the left/right check only


def _quiet():
    """nnunetv2 prints path warnings and notes on stdout, which is the CLI's (and Slicer's progress) channel."""
    return contextlib.redirect_stdout(sys.stderr)


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint read as data only: ``weights_only=True``, allowing the numpy scalar types its training
    log holds (reconstructing a numpy scalar runs no code)."""
    import torch

    allowed = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64)),
               type(np.dtype(np.bool_))]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    try:
        with torch.serialization.safe_globals([scalar, *allowed]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure of a model file is a model error for the user
        raise ModelError(f"{path}: not an nnU-Net checkpoint that loads as data (torch.load weights_only=True: "
                         f"{str(exc).splitlines()[0]})") from None
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in checkpoint]
    if missing:
        raise ModelError(f"{path}: not an nnU-Net v2 checkpoint (no {', '.join(missing)})")
    return checkpoint


class NnUNetSegmenter:
    kind = "nnunet"

    def __init__(self, folder: Path, device: str = "auto", mirror: bool | None = None):
        import torch

        try:
            with _quiet():
                import nnunetv2
                from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
                from nnunetv2.utilities.find_class_by_name import (
                    recursive_find_python_class,
                )
                from nnunetv2.utilities.label_handling.label_handling import (
                    determine_num_input_channels,
                )
                from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        except ImportError:
            raise DependencyError("running an nnU-Net model needs the nnunetv2 package: pip install "
                                  "'rtradiomicsai[nnunet]'") from None
        self.folder = folder
        try:
            dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
            plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ModelError(f"{folder}: unreadable dataset.json or plans.json ({exc})") from None
        checkpoints = nnunet_checkpoints(folder)
        loaded = [load_checkpoint(path) for path in checkpoints]
        first = loaded[0]
        plans_manager = PlansManager(plans)
        configuration_name = first["init_args"].get("configuration")
        if configuration_name not in plans.get("configurations", {}):
            raise ModelError(f"{checkpoints[0]}: trained as configuration '{configuration_name}', which plans.json "
                             "does not define")
        if plans.get("image_reader_writer", "SimpleITKIO") not in READERS:
            raise ModelError(f"{folder}: trained on images read with {plans['image_reader_writer']}; rtrai feeds "
                             f"arrays as {' or '.join(READERS)} read them")
        configuration = plans_manager.get_configuration(configuration_name)
        label_manager = plans_manager.get_label_manager(dataset)
        if label_manager.has_regions:
            raise ModelError(f"{folder}: a region-based nnU-Net (overlapping labels); rtrai runs label-based ones")
        trainer_name = first["trainer_name"]
        trainer = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"),
                                              trainer_name, "nnunetv2.training.nnUNetTrainer")
        if trainer is None:
            raise ModelError(f"{folder}: trained with {trainer_name}, which the installed nnunetv2 lacks (nnU-Net "
                             "builds the network through its trainer class)")
        channels = determine_num_input_channels(plans_manager, configuration, dataset)
        try:
            network = trainer.build_network_architecture(
                configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                configuration.network_arch_init_kwargs_req_import, channels, label_manager.num_segmentation_heads,
                enable_deep_supervision=False)
            network.load_state_dict(first["network_weights"])
        except (RuntimeError, TypeError, KeyError, ValueError) as exc:
            raise ModelError(f"{checkpoints[0]}: weights do not fit the network plans.json describes "
                             f"({str(exc).splitlines()[0]})") from None

        self.device = pick_device(device)
        self.mirror = True if mirror is None else bool(mirror)  # nnU-Net's default: mirror along the trained axes
        with _quiet():
            self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.mirror,
                                             perform_everything_on_device=self.device.type == "cuda",
                                             device=torch.device(self.device), allow_tqdm=False)
        self.predictor.manual_initialization(network, plans_manager, configuration,
                                             [c["network_weights"] for c in loaded], dataset, trainer_name,
                                             first.get("inference_allowed_mirroring_axes"))
        names = {int(v): k for k, v in dataset["labels"].items() if int(v) != 0 and k != "ignore"}
        self.values = sorted(names)
        self.labels, self.notes = tg263_labels([names[v] for v in self.values], str(folder / "dataset.json"))
        self.channels = [dataset["channel_names"][k] for k in sorted(dataset["channel_names"], key=int)]
        files = [folder / "dataset.json", folder / "plans.json", *checkpoints]
        self.summary = {"engine": self.kind, "name": folder.parent.name or folder.name,
                        "version": f"{configuration_name}, {trainer_name}, folds "
                                   f"{', '.join(p.parent.name[len('fold_'):] for p in checkpoints)}",
                        **model_files(folder, files), "mirror": self.mirror, **self.notes,
                        "security": "checkpoints read with torch.load(weights_only=True), not nnU-Net's own loader"}

    @property
    def info(self) -> dict:
        return self.summary

    def segment(self, case, folder=None) -> dict[str, sitk.Image]:
        """TG-263 name -> uint8 mask on the case's grid (as :meth:`rtrai.segmentation.inference.Segmenter.segment`)."""
        from rtrai.segmentation.data import (
            channel_images,
            check_intensities,
            orient,
            window,
        )
        from rtrai.segmentation.inference import on_case_grid
        from rtrai.segmentation.postprocess import midline_x, postprocess

        specs = [{"name": "CT" if i == 0 else name, "modality": "CT" if name.upper() == "CT" else name,
                  "window": [0.0, 1.0]} for i, name in enumerate(self.channels)]
        images = [orient(image) for image in channel_images(case, specs, folder)]
        for spec, image in zip(specs, images):
            check_intensities(image, spec, case.patient_id)
        oriented = images[0]
        array = np.stack([sitk.GetArrayFromImage(image).astype(np.float32) for image in images])
        if min(array.shape[1:]) < 2:
            raise InputError(f"{case.patient_id}: image of {array.shape[1:]} voxels is not a 3D image")
        properties = {"spacing": list(oriented.GetSpacing())[::-1]}
        with _quiet():
            labelled = np.asarray(self.predictor.predict_single_npy_array(array, properties, None, None, False))
        masks = np.stack([(labelled == value).astype(np.uint8) for value in self.values])
        first = array[0]
        bounds = WINDOW_CT if specs[0]["modality"] == "CT" else np.percentile(first[::4, ::4, ::4], [1, 99])
        masks = postprocess(masks, self.labels, midline=midline_x(window(first, bounds)), largest=True)
        return on_case_grid(masks, self.labels, oriented, case.ct)
