"""One settings loader (rtrai.io.settings) for the segmentation and the dose training configs: the same checks and
the same one-line errors for both, deep merge where segmentation wants it, the dose config kept as written."""

from __future__ import annotations

import json

import pytest

from rtrai.core.errors import InputError
from rtrai.dose.config import DEFAULT_CONFIG
from rtrai.dose.config import load_config as load_dose_config
from rtrai.io.settings import merge
from rtrai.segmentation.config import DEFAULTS
from rtrai.segmentation.config import load_config as load_segmentation_config

LOADERS = {"segmentation": load_segmentation_config, "dose": load_dose_config}


@pytest.mark.parametrize("kind", LOADERS)
def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, kind):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nnetwork: {channels: [16, 32\nsteps: 10\n")
    with pytest.raises(InputError) as info:
        LOADERS[kind](str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not valid YAML: ")
    assert message.endswith("(while parsing a flow sequence) at line 3, column 6")  # where PyYAML stops


@pytest.mark.parametrize("kind", LOADERS)
def test_json_configs_and_their_errors(tmp_path, kind):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"name": "j", "steps": 7}))
    config = LOADERS[kind](str(path))
    assert config["steps"] == 7 and config["name"] == "j"
    path.write_text('{"name": "j",\n "steps": }')
    with pytest.raises(InputError, match=r"not valid JSON: Expecting value at line 2, column 11"):
        LOADERS[kind](str(path))


@pytest.mark.parametrize("kind", LOADERS)
def test_unknown_settings_and_wrong_types_are_named(tmp_path, kind):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nstepz: 3\nbatchsize: 2\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown settings 'batchsize', 'stepz' \(known: .*'?steps"):
        LOADERS[kind](str(path))
    path.write_text("steps: many\n")
    with pytest.raises(InputError, match=r"c.yaml: 'steps' is 'many', but must be a finite number"):
        LOADERS[kind](str(path))
    path.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must be a mapping of settings, not list"):
        LOADERS[kind](str(path))
    with pytest.raises(InputError, match=r"config not found: no-such-config \(shipped .*configs: "):
        LOADERS[kind]("no-such-config")


def test_segmentation_deep_merges_over_its_defaults_and_dose_keeps_what_is_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\naugment: {flip: 0.0}\nnetwork: {type: unet, channels: [4, 8], strides: [2]}\n")
    seg = load_segmentation_config(str(path))
    assert seg["augment"] == {**DEFAULTS["augment"], "flip": 0.0}  # a mapping merges key by key
    assert seg["network"]["arch"] == DEFAULTS["network"]["arch"] and seg["network"]["channels"] == [4, 8]
    dose = load_dose_config(str(path))
    # The dose network spec given is the whole spec (training lays the config over the defaults key by key).
    assert dose["network"] == {"type": "unet", "channels": [4, 8], "strides": [2]}
    assert "num_res_units" in DEFAULT_CONFIG["network"] and "augment" in dose
    assert merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {"a": {"b": 3, "c": 2}, "d": [2]}


def test_the_shipped_configs_load(tmp_path):
    assert load_segmentation_config("hn-oar-ct")["name"] == "hn-oar-ct"
    assert load_dose_config("hn-dose-openkbp")["network"]["type"] == "prior-unet"
