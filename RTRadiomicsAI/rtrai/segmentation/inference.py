"""Segment a case with a zoo model: sliding window with Gaussian blending, thresholds, post-processing.

The model runs on the LPS-oriented image at the input's own spacing when that lies near the training spacings
(OpenKBP cases: no resampling at all); otherwise (a 512x512 CT at 1 mm) the image is resampled to the middle of the
training range first and the probabilities are resampled back, so memory and time follow the model's grid, not the
scanner's. A two-stage model (``localiser`` in its manifest) first runs a low-resolution model on the whole image and
then the full-resolution model only on a box around what it found.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError, ModelError
from rtrai.models.device import pick_device
from rtrai.segmentation.data import channel_images, check_intensities, downsample, lateral_order, orient, window

MIN_VOXELS = 16  # per axis, on the model's grid: less cannot hold an organ at the model's resolution


def predict_probabilities(model, image: np.ndarray, config: dict, device=None) -> np.ndarray:
    """(L, z, y, x) float32 probabilities for a preprocessed (C, z, y, x) image."""
    import torch
    from monai.inferers import sliding_window_inference

    factor = int(config.get("downsample", 1))
    shape = image.shape[1:]
    work = downsample(image, factor) if factor > 1 else image
    settings = config.get("inference", {})
    tensor = torch.as_tensor(np.ascontiguousarray(work), dtype=torch.float32)[None]
    if device is not None:
        tensor = tensor.to(device)

    def window_probabilities(volume):
        logits = sliding_window_inference(volume, roi_size=tuple(config["patch"]), sw_batch_size=2, predictor=model,
                                          overlap=float(settings.get("overlap", 0.25)),
                                          mode=settings.get("mode", "gaussian"), padding_mode="constant", cval=-1.0)
        if config.get("activation", "sigmoid") == "softmax":  # a bring-your-own model: channel 0 is background
            return torch.softmax(logits, 1)[:, 1:]
        return torch.sigmoid(logits)

    with torch.no_grad():
        prob = window_probabilities(tensor)
        if settings.get("mirror"):  # test-time lateral mirror: the mirrored image's left organs are its right ones
            order = lateral_order(config["labels"])
            prob = (prob + window_probabilities(tensor.flip(-1)).flip(-1)[:, order]) / 2
        if factor > 1:
            prob = torch.nn.functional.interpolate(prob, size=shape, mode="trilinear", align_corners=False)
    return prob[0].float().cpu().numpy()


def predict_array(model, image: np.ndarray, config: dict, device=None) -> np.ndarray:
    """(L, z, y, x) uint8 masks: probabilities, threshold, lateral consistency and largest components."""
    from rtrai.segmentation.postprocess import midline_x, postprocess

    settings = config.get("inference", {})
    masks = predict_probabilities(model, image, config, device) >= float(settings.get("threshold", 0.5))
    return postprocess(masks, config["labels"], midline=midline_x(image[0]),
                       largest=bool(settings.get("largest_component", True)))


def found_structures(masks: dict[str, sitk.Image]) -> tuple[dict[str, sitk.Image], list[str]]:
    """Split :meth:`Segmenter.segment`'s masks into the found ones (at least one voxel) and the names not found."""
    found = {name: mask for name, mask in masks.items() if sitk.GetArrayViewFromImage(mask).any()}
    return found, [name for name in masks if name not in found]


class Segmenter:
    """A loaded zoo model (by name, folder or manifest path) that segments cases."""

    kind = "zoo"  # the engine (rtrai.segmentation.engines): other kinds subclass this one or share its outputs

    def __init__(self, model: str = "hn-oar-ct", device: str = "auto", mirror: bool | None = None):
        """``mirror``: average with the lateral mirror image (twice the time); None: as the model's manifest says."""
        from rtrai.models import load_state_dict, read_manifest
        from rtrai.segmentation.networks import build_network

        manifest = read_manifest(model)
        network = build_network(manifest["network"], len(manifest["inputs"]), len(manifest["labels"]))
        try:
            network.load_state_dict(load_state_dict(manifest))
        except RuntimeError as exc:
            raise ModelError(f"model '{manifest['name']}': weights do not fit the network in its manifest "
                             f"({str(exc).splitlines()[0]})") from None
        self.setup(manifest, network, device, mirror)
        if self.manifest.get("localiser"):
            from pathlib import Path

            self.localiser = Segmenter(str(Path(self.manifest["folder"]) / self.manifest["localiser"]), device)

    def setup(self, manifest: dict, network, device: str = "auto", mirror: bool | None = None) -> None:
        """Run ``network`` (a torch module: (N, C, z, y, x) LPS in, one channel per label out) as ``manifest`` says:
        labels, inputs (windows), patch, spacing_mm, inference settings, activation (default sigmoid)."""
        self.manifest = manifest
        if mirror is not None:
            self.manifest["inference"] = {**self.manifest.get("inference", {}), "mirror": bool(mirror)}
        self.device = pick_device(device)
        self.labels = list(self.manifest["labels"])
        self.inputs = list(self.manifest["inputs"])
        self.network = network.eval().to(self.device)
        self.localiser = None

    @property
    def info(self) -> dict:
        return {"engine": self.kind, "name": self.manifest["name"], "version": self.manifest["version"],
                "sha256": self.manifest["sha256"],
                "mirror": bool(self.manifest.get("inference", {}).get("mirror", False))}

    def working_grid(self, image: sitk.Image) -> sitk.Image | None:
        """A reference grid to resample to, or None when the image's spacing is close to the training spacings."""
        from rtrai.models import working_grid

        return working_grid(self.manifest, image)

    def preprocess(self, case: Case, folder=None) -> tuple[np.ndarray, sitk.Image, sitk.Image | None]:
        """Model input (C, z, y, x), the oriented CT grid, and the working grid (None: the oriented grid itself).
        ``folder``: where extra input channels (``PET.nrrd`` ...) are, when not the folder the case came from."""
        images = [orient(i) for i in channel_images(case, self.inputs, folder)]
        grid = self.working_grid(images[0])
        channels = []
        for spec, image in zip(self.inputs, images):
            check_intensities(image, spec, case.patient_id)
            if grid is not None:
                image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, float(spec["window"][0]),
                                      sitk.sitkFloat32)
            channels.append(window(sitk.GetArrayFromImage(image), spec["window"]))
        array = np.stack(channels)
        if min(array.shape[1:]) < MIN_VOXELS:
            raise InputError(f"{case.patient_id}: image of {array.shape[1:]} voxels (z, y, x) on the model's grid is "
                             f"too small for '{self.manifest['name']}' (at least {MIN_VOXELS} per axis)")
        return array, images[0], grid

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Probabilities on the working grid; two-stage models look only inside the localiser's box."""
        if self.localiser is None:
            return predict_probabilities(self.network, image, self.manifest, self.device)
        found = predict_array(self.localiser.network, image, self.localiser.manifest, self.localiser.device).any(0)
        out = np.zeros((len(self.labels),) + image.shape[1:], dtype=np.float32)
        if not found.any():
            return out
        margin = [p // 4 for p in self.manifest["patch"]]
        nz = np.nonzero(found)
        box = tuple(slice(max(0, int(i.min()) - m), min(n, int(i.max()) + 1 + m))
                    for i, m, n in zip(nz, margin, image.shape[1:]))
        out[(slice(None), *box)] = predict_probabilities(self.network, image[(slice(None), *box)], self.manifest,
                                                         self.device)
        return out

    def segment(self, case: Case, folder=None) -> dict[str, sitk.Image]:
        """TG-263 name -> uint8 mask on the case's CT grid, for every label of the model (empty when not found: the
        caller decides what to say about it; :func:`found_structures` splits found from not found, and only found
        ones may be written or added to a case, since missing is not empty)."""
        from rtrai.segmentation.postprocess import midline_x, postprocess

        image, oriented, grid = self.preprocess(case, folder)
        prob = self.probabilities(image)
        threshold = float(self.manifest.get("inference", {}).get("threshold", 0.5))
        midline = midline_x(image[0])
        if grid is None:
            masks = prob >= threshold
        else:  # back to the input grid channel by channel as probabilities (smoother than resampling masks);
            # thresholding each at once keeps a 512x512 CT at one byte per voxel and label
            masks = np.zeros((len(self.labels),) + sitk.GetArrayViewFromImage(oriented).shape, dtype=np.uint8)
            for i, channel in enumerate(prob):
                p = sitk.GetImageFromArray(channel)
                p.CopyInformation(grid)
                back = sitk.Resample(p, oriented, sitk.Transform(), sitk.sitkLinear, 0.0)
                masks[i] = sitk.GetArrayViewFromImage(back) >= threshold
            midline = midline * grid.GetSpacing()[0] / oriented.GetSpacing()[0]  # same origin, LPS axes
        masks = postprocess(masks, self.labels, midline=midline,
                            largest=bool(self.manifest.get("inference", {}).get("largest_component", True)))
        return on_case_grid(masks, self.labels, oriented, case.ct)


def on_case_grid(masks: np.ndarray, labels: list[str], oriented: sitk.Image, ct: sitk.Image) -> dict[str, sitk.Image]:
    """(L, z, y, x) masks on the LPS-oriented grid -> name -> uint8 mask on the case's own CT grid."""
    out = {}
    for name, mask in zip(labels, masks):
        result = sitk.GetImageFromArray(mask.astype(np.uint8))
        result.CopyInformation(oriented)
        if oriented is not ct:  # oriented differently from the input: back onto the input's own grid
            result = sitk.Resample(result, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[name] = result
    return out
