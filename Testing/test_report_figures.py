"""Slice figures: written atomically, readable, not blank, and refused without a CT."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.phantom import make_phantom
from rtrai.report.figures import orthogonal_slices


def test_orthogonal_slices_show_ct_outlines_and_dose(tmp_path, artifacts):
    case = make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    path = orthogonal_slices(case, tmp_path / "slices.png", title="phantom")
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    rgb = image[..., :3]
    colourful = np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max(axis=-1) > 0.2  # dose wash and outlines
    assert colourful.mean() > 0.02
    assert [p.name for p in tmp_path.iterdir()] == ["slices.png"]  # no temporary file left
    (artifacts / "phantom-slices.png").write_bytes(path.read_bytes())


def test_slices_need_a_ct(tmp_path):
    with pytest.raises(InputError, match="needs a CT"):
        orthogonal_slices(Case(), tmp_path / "x.png")
