"""The files of a training run keep their formats across the move of the loops' bookkeeping into
``rtrai.models.training``: a checkpoint written the old way (``torch.save`` of the same keys, no atomic temporary)
resumes with ``rtrai segment train ... --resume`` / ``rtrai.dose.train.train(resume=True)`` exactly where an
uninterrupted run would be, and checkpoint.pt keys, config.json, train.log lines and the model folder stay as they were.
The real runs in ``training/`` (the segmentation run in progress, the finished dose runs) are read, never written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from test_segmentation import synthetic_case, tiny_config  # noqa: E402 - the tiny cases and config

from rtrai import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEGMENTATION_KEYS = {"model", "optimiser", "step", "best", "torch_rng", "cpu_seconds"}
DOSE_KEYS = {"network", "optimiser", "schedule", "step", "history", "config", "rng", "cpu_s"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from rtrai.io.case_io import write_case

    root = tmp_path_factory.mktemp("cohort")
    for i in range(3):
        write_case(synthetic_case(i, with_left=i != 1), root / f"pt_{i}")
    return root


def _rewrite_the_old_way(path: Path) -> dict:
    """Write a checkpoint as the loops did before: torch.save straight to the file, the same keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    path.unlink()
    torch.save(state, path)
    return state


def test_segmentation_checkpoint_written_the_old_way_resumes_from_the_command_line(cohort, tmp_path):
    from rtrai.segmentation.train import train

    straight = tmp_path / "straight"
    train(cohort, tiny_config(steps=6), straight)
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(tiny_config(steps=6)))
    chunked = tmp_path / "chunked"
    assert cli.main(["segment", "train", "--data", str(cohort), "--config", str(config_file), "-o",
                     str(chunked), "--max-steps", "3"]) == 0
    state = _rewrite_the_old_way(chunked / "checkpoint.pt")
    assert set(state) == SEGMENTATION_KEYS and state["step"] == 3 and isinstance(state["cpu_seconds"], float)
    config_before = (chunked / "config.json").read_text()
    assert cli.main(["segment", "train", "--data", str(cohort), "-o", str(chunked), "--resume"]) == 0

    resumed = torch.load(chunked / "checkpoint.pt", map_location="cpu", weights_only=True)
    reference = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(resumed) == SEGMENTATION_KEYS and resumed["step"] == 6
    assert resumed["cpu_seconds"] > state["cpu_seconds"]  # the CPU hours of both chunks
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert (chunked / "config.json").read_text() == config_before
    log = (chunked / "train.log").read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in log)
    assert any(line.endswith("resumed at step 3 (best validation mean DSC so far -1.000)") for line in log)
    assert re.search(r" step 6/6 loss \d+\.\d{4} lr \S+ \d+\.\d\d s/step cpu \d+\.\d\d h$", log[-2])
    assert sorted(p.name for p in (chunked / "model").iterdir()) == ["manifest.json", "weights.safetensors"]
    assert not [p.name for p in chunked.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_dose_checkpoint_written_the_old_way_resumes_where_it_was(tmp_path):
    from rtrai.dose.train import train
    from rtrai.io.case_io import write_case
    from rtrai.phantom import make_phantom

    for seed in (0, 1):
        write_case(make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0)), tmp_path / "p" / f"p{seed}")
    config = {"network": {"type": "prior-unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
              "batch": 1, "steps": 6, "validate_every": 3, "validation_cases": 1, "seed": 2,
              "augment": {"rotate_deg": 10, "scale": 0.1, "shift_vox": 2, "ct_jitter": 0.05, "probability": 1.0}}
    straight = train(tmp_path / "p", tmp_path / "straight", dict(config), tmp_path / "p")
    first = train(tmp_path / "p", tmp_path / "chunked", {**config, "steps": 3}, tmp_path / "p")
    state = _rewrite_the_old_way(tmp_path / "chunked" / "checkpoint.pt")
    assert set(state) == DOSE_KEYS and state["step"] == first["step"] == 3
    again = train(tmp_path / "p", tmp_path / "chunked", dict(config), tmp_path / "p", resume=True)
    assert again["step"] == straight["step"] == 6 and again["cpu_hours"] > first["cpu_hours"]
    resumed = torch.load(tmp_path / "chunked" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(resumed) == DOSE_KEYS
    log = (tmp_path / "chunked" / "train.log").read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in log) and any(line.endswith(" resumed at step 3") for line in log)
    assert torch.load(tmp_path / "chunked" / "best.pt", map_location="cpu", weights_only=True).keys() == \
        resumed["network"].keys()


def test_the_segmentation_run_in_progress_can_resume_with_this_code():
    """training/hn-oar-ct-v7/run: its checkpoint holds what train(resume=True) reads, and its weights load into the
    network its config.json builds (read only: the run goes on beside this test)."""
    from rtrai.models.training import load_checkpoint
    from rtrai.segmentation.networks import build_network

    run = REPO / "training" / "hn-oar-ct-v7" / "run"
    if not (run / "checkpoint.pt").is_file():
        pytest.skip(f"no training run in progress at {run}")
    config = json.loads((run / "config.json").read_text())
    state = load_checkpoint(run / "checkpoint.pt")
    assert set(state) == SEGMENTATION_KEYS
    network = build_network(config["network"], len(config["inputs"]), len(config["labels"]))
    network.load_state_dict(state["model"])
    assert int(state["step"]) >= 0 and isinstance(state["best"], float)
    assert all(LOG_LINE.match(line) for line in (run / "train.log").read_text().splitlines() if line.strip())


@pytest.mark.parametrize("name", ["hn-dose-openkbp-v4", "hn-dose-openkbp-beam"])
def test_finished_dose_runs_load_with_this_code(name):
    """The committed models of finished dose runs (future ensemble members) load, by checksum, into the networks this
    code builds; where the run's own checkpoint is still on this machine, it holds what a resumed run reads."""
    from rtrai.dose.inference import DosePredictor
    from rtrai.models.training import load_checkpoint

    folder = REPO / "training" / name
    predictor = DosePredictor(str(folder / "model"), "cpu")
    assert predictor.manifest["task"] == "dose" and predictor.manifest["training"]["steps"] > 0
    checkpoint = folder / "run" / "checkpoint.pt"
    if checkpoint.is_file():  # not committed (the runs finished): only where they were trained
        state = load_checkpoint(checkpoint)
        assert set(state) == DOSE_KEYS and state["step"] == predictor.manifest["training"]["steps"]
        predictor.network.load_state_dict(state["network"])
