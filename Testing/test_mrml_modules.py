"""What the AutoSegment and DosePredict modules do around their background jobs, on a real vtkMRMLScene (slicer-core):
inputs from nodes to a case folder the commands read, and the commands' result files back into nodes (segmentation,
SlicerRT dose volume, gamma map, DVH plot chart and metrics tables). The module widgets themselves need the Slicer
application and are tested by each module's Testing/Python.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai import cli
from rtrai.core.errors import InputError
from rtrai.core.image import Grid, from_array
from rtrai.io.case_io import write_case
from rtrai.io.images import write_image
from rtrai.io.segfile import read_segmentation, write_segmentation
from rtrai.phantom import make_phantom

mrml = pytest.importorskip("rtrai.mrml", reason="MRML (slicer-core) is not installed", exc_type=ImportError)
from rtrai.mrml import exchange, plots, slicerrt  # noqa: E402
from rtrai.mrml._slicer import slicer  # noqa: E402
from rtrai.mrml.geometry import oriented_image  # noqa: E402

OARS = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"]


def _small_phantom():
    return make_phantom(seed=0, size=(48, 48, 40), spacing=(7.0, 7.0, 5.0))


def _array(image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _count(scene, class_name: str) -> int:
    return scene.GetNumberOfNodesByClass(class_name)


# -- prescription text --------------------------------------------------------------------------------------------
def test_targets_text_parses_guesses_and_reaches_the_dose_command_unchanged():
    from rtrai.dose.commands import parse_prescription

    assert exchange.parse_targets(" PTV70=70, Boost = 66.5 ,") == {"PTV70": 70.0, "Boost": 66.5}
    assert exchange.parse_targets("") == {}
    for bad, message in (("PTV70", "SEGMENT=GY"), ("PTV70=seventy", "SEGMENT=GY"), ("=70", "SEGMENT=GY"),
                         ("PTV70=nan", "SEGMENT=GY"), ("PTV70=70,PTV70=66", "twice")):
        with pytest.raises(InputError, match=message):
            exchange.parse_targets(bad)
    names = ["Parotid_L", "PTV70", "PTV_56", "CTV 63 Gy", "PTV_Boost", "GTV", "Brainstem"]
    assert exchange.guess_targets(names) == {"PTV70": 70.0, "PTV_56": 56.0, "CTV 63 Gy": 63.0}
    prescription = {"PTV70": 70.0, "PTV_Boost": 59.4, "PTV56": 56.0}
    text = exchange.prescription_text(prescription)
    assert text == "PTV70=70,PTV_Boost=59.4,PTV56=56"
    assert parse_prescription(text) == prescription  # what `rtrai dose predict --prescription` reads
    assert exchange.parse_targets(text) == prescription
    with pytest.raises(InputError, match="without ','"):
        exchange.prescription_text({"PTV=70": 70.0})


def test_dose_prediction_inputs_have_exactly_the_chosen_targets_at_their_prescriptions(tmp_path):
    from rtrai.dose.commands import parse_prescription
    from rtrai.dose.encoding import prescription_levels
    from rtrai.dose.inference import DosePredictor

    case = _small_phantom()
    nodes = mrml.case_to_scene(case)
    segmentation = nodes["structures"].GetSegmentation()
    segmentation.GetSegment("PTV56").SetName("Boost")  # a target the command would not recognise by its name

    chosen = exchange.nodes_to_case(nodes["ct"], nodes["structures"], targets={"PTV70": 70, "Boost": 60})
    assert chosen.prescription == {"PTV70": 70.0, "PTV_Boost": 60.0}
    write_case(chosen, tmp_path / "both")
    # The steps of `rtrai dose predict CASE --prescription TEXT` before the network runs:
    read = DosePredictor.read(tmp_path / "both", parse_prescription(exchange.prescription_text(chosen.prescription)))
    assert prescription_levels(read) == {"PTV70": 70.0, "PTV_Boost": 60.0}
    np.testing.assert_array_equal(_array(read.structures["PTV_Boost"]), _array(case.structures["PTV56"]))
    np.testing.assert_array_equal(_array(read.ct), _array(case.ct))
    assert Grid.of(read.ct) == Grid.of(case.ct)
    for name in OARS + ["External"]:
        np.testing.assert_array_equal(_array(read.structures[name]), _array(case.structures[name]))

    # A target-named segment that is not chosen is left out, so the command does not take it as a target.
    only = exchange.nodes_to_case(nodes["ct"], nodes["structures"], targets={"Boost": 56})
    write_case(only, tmp_path / "one")
    read = DosePredictor.read(tmp_path / "one", parse_prescription(exchange.prescription_text(only.prescription)))
    assert prescription_levels(read) == {"PTV_Boost": 56.0} and "PTV70" not in read.structures

    with pytest.raises(InputError, match="'Tumour'.*segments: Brainstem"):
        exchange.nodes_to_case(nodes["ct"], nodes["structures"], targets={"Tumour": 70})
    with pytest.raises(InputError, match=r"\(0, 150\]"):
        exchange.nodes_to_case(nodes["ct"], nodes["structures"], targets={"PTV70": 7000})
    empty = slicer.vtkSegment()
    empty.SetName("PTV60")
    zeros = np.zeros(_array(case.ct).shape, np.uint8)
    empty.AddRepresentation("Binary labelmap", oriented_image(zeros, Grid.of(case.ct)))
    assert segmentation.AddSegment(empty, "PTV60")
    with pytest.raises(InputError, match="'PTV60' is empty"):
        exchange.nodes_to_case(nodes["ct"], nodes["structures"], targets={"PTV60": 60})
    # Without targets (AutoSegment, DVH) the empty segment is absent, not an empty structure.
    assert "PTV60" not in exchange.nodes_to_case(nodes["ct"], nodes["structures"]).structures


def test_two_segments_with_one_tg263_name_are_refused():
    case = _small_phantom()
    scene = slicer.vtkMRMLScene()
    ct = mrml.image_to_volume_node(case.ct, scene, "CT")
    masks = {"Lt Parotid": case.structures["Parotid_L"], "Left Parotid": case.structures["Parotid_R"]}
    segmentation = mrml.masks_to_segmentation(masks, {n: (1.0, 0.0, 0.0) for n in masks}, scene, "seg", ct)
    with pytest.raises(InputError, match="'Lt Parotid' and 'Left Parotid' would both be 'Parotid_L'"):
        exchange.nodes_to_case(ct, segmentation)
    only = exchange.nodes_to_case(ct, segmentation, segments=["Left Parotid"])
    assert list(only.structures) == ["Parotid_L"]


# -- result files -> nodes ----------------------------------------------------------------------------------------
def test_segmentation_result_file_loads_on_the_ct_grid_and_replaces_on_rerun(tmp_path):
    case = _small_phantom()
    scene = slicer.vtkMRMLScene()
    ct = mrml.image_to_volume_node(case.ct, scene, "CT")
    path = write_segmentation(case.structures, tmp_path / "Structures.seg.nrrd", case.colors, case.ct)

    node = exchange.load_segmentation_file(path, scene, "CT auto", reference_volume=ct)
    assert exchange.segment_names(node) == list(case.structures)
    assert node.GetStorageNode() is None and _count(scene, "vtkMRMLSegmentationStorageNode") == 0
    masks = mrml.segmentation_to_masks(node, mrml.node_grid(ct))
    for name, mask in case.structures.items():  # External overlaps every organ: several layers, all exact
        np.testing.assert_array_equal(_array(masks[name][0]), _array(mask))
        np.testing.assert_allclose(masks[name][1], case.colors[name], atol=1e-6)
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == ct.GetID()

    two = {n: case.structures[n] for n in ("SpinalCord", "Larynx")}
    write_segmentation(two, tmp_path / "two.seg.nrrd", case.colors, case.ct)
    again = exchange.load_segmentation_file(tmp_path / "two.seg.nrrd", scene, "ignored", reference_volume=ct,
                                            node=node)
    assert again is node and exchange.segment_names(node) == ["SpinalCord", "Larynx"]
    assert _count(scene, "vtkMRMLSegmentationNode") == 1
    with pytest.raises(InputError, match="not found"):
        exchange.load_segmentation_file(tmp_path / "missing.seg.nrrd", scene, "x")


def test_dose_file_becomes_a_slicerrt_dose_volume_in_the_study_of_the_ct(tmp_path):
    case = _small_phantom()
    nodes = mrml.case_to_scene(case)
    scene = nodes["scene"]
    path = write_image(case.dose, tmp_path / "Dose.nrrd")

    dose = exchange.load_dose_file(path, scene, "predicted dose", reference_node=nodes["ct"])
    assert slicerrt.is_dose_volume(dose) and dose.GetStorageNode() is None
    assert slicerrt.study_attribute(dose, slicerrt.DOSE_UNIT_NAME_ATTRIBUTE) == "GY"
    assert slicerrt.study_attribute(dose, slicerrt.DOSE_UNIT_VALUE_ATTRIBUTE) == "1.0"
    sh = slicerrt.subject_hierarchy(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(dose)) == nodes["study_item"]
    display = dose.GetDisplayNode()
    assert display.GetColorNode().GetName() == slicerrt.DOSE_COLOR_TABLE_NAME
    top = float(_array(case.dose).max())
    assert display.GetWindowLevelMax() == pytest.approx(top)
    assert display.GetLowerThreshold() == pytest.approx(0.05 * top)
    loaded = mrml.volume_node_to_image(dose)
    np.testing.assert_array_equal(_array(loaded), _array(case.dose))
    assert not Grid.of(loaded).differences(Grid.of(case.dose))
    # Read back as SlicerRT's DVH would see it: Gy through the study's unit.
    back = mrml.scene_to_case(scene, ct=nodes["ct"], structures=nodes["structures"], dose=dose)
    np.testing.assert_array_equal(_array(back.dose), _array(case.dose))

    # A CT outside any study: the dose gets a patient and study named after it, with the Gy unit.
    other = slicer.vtkMRMLScene()
    ct = mrml.image_to_volume_node(case.ct, other, "LooseCT")
    dose = exchange.load_dose_file(path, other, "dose", reference_node=ct)
    sh = slicerrt.subject_hierarchy(other)
    study = sh.GetItemParent(sh.GetItemByDataNode(dose))
    assert sh.GetItemName(sh.GetItemParent(study)) == "LooseCT"
    assert slicerrt.study_attribute(dose, slicerrt.DOSE_UNIT_NAME_ATTRIBUTE) == "GY"

    write_image(from_array(-_array(case.dose), case.dose), tmp_path / "negative.nrrd")
    with pytest.raises(InputError, match="not a dose"):
        exchange.load_dose_file(tmp_path / "negative.nrrd", other, "bad")


def _box_case(tmp_path):
    """Dose 10 Gy in x < 10 and 20 Gy from x = 10; box A lies in the 10 Gy half, box B straddles both halves."""
    dose = np.full((12, 14, 20), 10.0, np.float32)
    dose[:, :, 10:] = 20.0
    dose_image = from_array(dose, spacing=(2.0, 2.0, 3.0), origin=(-20.0, 5.0, -12.0))
    a = np.zeros(dose.shape, np.uint8)
    a[2:6, 3:9, 1:7] = 1
    b = np.zeros(dose.shape, np.uint8)
    b[4:10, 5:11, 6:14] = 1  # x 6..9 at 10 Gy, x 10..13 at 20 Gy: half and half
    masks = {"BoxA": from_array(a, dose_image), "BoxB": from_array(b, dose_image)}
    colors = {"BoxA": (0.1, 0.2, 0.9), "BoxB": (0.9, 0.5, 0.0)}
    write_image(dose_image, tmp_path / "Dose.nrrd")
    write_segmentation(masks, tmp_path / "Structures.seg.nrrd", colors, dose_image)
    return dose_image, masks, colors


def test_dvh_of_rtrai_dvh_becomes_a_plot_chart_and_a_metrics_table(tmp_path):
    _, _, colors = _box_case(tmp_path)
    out = tmp_path / "dvh"
    assert cli.main(["dvh", "--dose", str(tmp_path / "Dose.nrrd"), "--structures",
                     str(tmp_path / "Structures.seg.nrrd"), "--metrics", "Dmean,D50%,Volume", "-o", str(out)]) == 0
    frame = pd.read_csv(out / "dvh.csv")
    scene = slicer.vtkMRMLScene()
    chart = plots.dvh_chart(frame, scene, "Dose DVH", colors={"BoxA": colors["BoxA"]})
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series] == ["BoxA", "BoxB"]
    assert chart.GetXAxisTitle() == "Dose (Gy)" and chart.GetYAxisTitle() == "Volume (%)"
    np.testing.assert_allclose(series[0].GetColor(), colors["BoxA"])
    from rtrai.core.structures import color_of

    np.testing.assert_allclose(series[1].GetColor(), color_of("BoxB"))  # no colour given: the standard one
    table = mrml.node_to_table(series[0].GetTableNode())
    assert series[1].GetTableNode() is series[0].GetTableNode()
    assert series[0].GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    dose_gy = table["Dose (Gy)"].to_numpy()
    assert np.all(np.diff(dose_gy) > 0)

    def volume_at(name, gy):
        return float(table[name].to_numpy()[np.argmin(np.abs(dose_gy - gy))])

    # Cumulative DVH: all of A gets 10 Gy and none of it 20; half of B gets 20 Gy.
    assert volume_at("BoxA", 5) == pytest.approx(100) and volume_at("BoxA", 15) == pytest.approx(0)
    assert volume_at("BoxB", 15) == pytest.approx(50) and volume_at("BoxB", 5) == pytest.approx(100)
    assert dose_gy.max() == pytest.approx(20.0, abs=0.1)  # the bins end at the maximum dose
    np.testing.assert_allclose(table["BoxB"], frame[frame.structure == "BoxB"]["volume_pct"])

    metrics = mrml.node_to_table(plots.dvh_metrics_table(pd.read_csv(out / "metrics.csv"), scene, "Dose metrics"))
    assert list(metrics.columns) == ["Structure", "Dmean", "D50%", "Volume"]
    assert list(metrics["Structure"]) == ["BoxA", "BoxB"]
    assert metrics["Dmean"].tolist() == pytest.approx([10.0, 15.0], abs=1e-3)
    # Volume in cc: 4 x 6 x 6 and 6 x 6 x 8 voxels of 2 x 2 x 3 mm.
    assert metrics["Volume"].tolist() == pytest.approx([144 * 0.012, 288 * 0.012], rel=1e-4)

    # A rerun into the same chart replaces its lines and table instead of piling them up.
    tables_before = _count(scene, "vtkMRMLTableNode")
    again = plots.dvh_chart(frame[frame.structure == "BoxB"], scene, "Dose DVH", chart=chart)
    assert again is chart and chart.GetNumberOfPlotSeriesNodes() == 1
    assert _count(scene, "vtkMRMLPlotSeriesNode") == 1 and _count(scene, "vtkMRMLTableNode") == tables_before
    with pytest.raises(InputError, match="volume_pct"):
        plots.dvh_chart(frame.drop(columns="volume_pct"), scene, "bad")


def test_gamma_map_loads_with_not_evaluated_voxels_marked_and_the_pass_rate_of_the_file(tmp_path):
    z, y, x = np.mgrid[:16, :18, :20]
    reference = (60 * np.exp(-((x - 10) ** 2 + (y - 9) ** 2 + (z - 8) ** 2) / 400.0)).astype(np.float32)
    reference[:, :, :3] = 0  # below the 10 % cut-off: not evaluated
    evaluated = reference.copy()
    evaluated[:, :, 10:] *= 1.08  # 8 % too high on one side: fails near the maximum, passes in the low dose
    write_image(from_array(reference, spacing=(2.0, 2.0, 2.5)), tmp_path / "ref.nrrd")
    write_image(from_array(evaluated, spacing=(2.0, 2.0, 2.5)), tmp_path / "eval.nrrd")
    out = tmp_path / "gamma"
    assert cli.main(["gamma", "--reference", str(tmp_path / "ref.nrrd"), "--evaluated", str(tmp_path / "eval.nrrd"),
                     "--dd", "3", "--dta", "2", "-o", str(out)]) == 0
    summary = json.loads((out / "gamma.json").read_text())
    on_disk = _array(sitk.ReadImage(str(out / "gamma.nrrd")))
    assert np.isnan(on_disk).any() and 0 < summary["pass_rate_pct"] < 100  # a test that can tell pass from fail

    scene = slicer.vtkMRMLScene()
    node = exchange.load_gamma_map(out / "gamma.nrrd", scene, "gamma 3%/2mm")
    gamma = slicer.util.arrayFromVolume(node)
    not_evaluated = gamma == exchange.GAMMA_NOT_EVALUATED
    np.testing.assert_array_equal(not_evaluated, np.isnan(on_disk))
    np.testing.assert_array_equal(gamma[~not_evaluated], on_disk[~np.isnan(on_disk)])
    assert int((~not_evaluated).sum()) == summary["evaluated_points"]
    assert int(((gamma >= 0) & (gamma <= 1)).sum()) == summary["passed_points"]
    assert node.GetAttribute(exchange.GAMMA_NOT_EVALUATED_ATTRIBUTE) == "-1"
    display = node.GetDisplayNode()
    assert display.GetColorNode().GetName() == exchange.GAMMA_COLOR_TABLE_NAME
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == 0.0  # -1 is not drawn
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 2.0)
    colors = display.GetColorNode()
    rgba = [0.0] * 4
    colors.GetColor(0, rgba)
    assert rgba[:3] == pytest.approx([0.0, 0.6, 0.0])  # gamma 0: green
    colors.GetColor(255, rgba)
    assert rgba[:3] == pytest.approx([1.0, 0.0, 0.0])  # gamma 2: red


# -- AutoSegment end to end, with the shipped model in a background job ------------------------------------------
@pytest.mark.slow
def test_autosegment_job_result_and_comparison_metrics(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from rtrai.core.jobs import Job
    from rtrai.models import list_models

    labels = next(m["labels"] for m in list_models() if m["name"] == "hn-oar-ct")
    case = make_phantom(seed=0, size=(80, 80, 64), spacing=(3.5, 3.5, 2.5))
    nodes = mrml.case_to_scene(case)
    scene, ct = nodes["scene"], nodes["ct"]

    # What the module does: CT node -> case folder -> `rtrai segment` in a background process -> segmentation node.
    write_case(exchange.nodes_to_case(ct), tmp_path / "input")
    job = Job.rtrai("segment", tmp_path / "input", "-o", tmp_path / "out", "--model", "hn-oar-ct",
                    "--device", "cpu").start()
    update = job.wait(timeout=900)
    assert update.state == "succeeded", "\n".join(job.log[-20:])
    predicted = exchange.load_segmentation_file(tmp_path / "out" / "Structures.seg.nrrd", scene, "CT auto",
                                                reference_volume=ct)
    written, _ = read_segmentation(tmp_path / "out" / "Structures.seg.nrrd")
    assert exchange.segment_names(predicted) == list(written) and set(written) <= set(labels)

    # The comparison panel: both segmentations on the CT grid -> `rtrai evaluate segmentation` -> table node.
    pred_case = exchange.nodes_to_case(ct, predicted)
    ref_case = exchange.nodes_to_case(ct, nodes["structures"], segments=OARS)
    write_segmentation(pred_case.structures, tmp_path / "predicted.seg.nrrd", pred_case.colors, pred_case.ct)
    write_segmentation(ref_case.structures, tmp_path / "reference.seg.nrrd", ref_case.colors, ref_case.ct)
    assert cli.main(["evaluate", "segmentation", "--pred", str(tmp_path / "predicted.seg.nrrd"), "--ref",
                     str(tmp_path / "reference.seg.nrrd"), "-o", str(tmp_path / "eval")]) == 0
    table = mrml.node_to_table(mrml.table_to_node(pd.read_csv(tmp_path / "eval" / "metrics.csv"), scene, "metrics"))
    scored = sorted(set(pred_case.structures) & set(OARS))
    assert sorted(table["structure"]) == scored and scored
    for row in table.itertuples():  # DSC recomputed here from the masks the two nodes hold
        p = _array(pred_case.structures[row.structure]) > 0
        r = _array(case.structures[row.structure]) > 0
        assert row.dsc == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()), abs=1e-6)
        assert row.volume_ref_voxels == r.sum() and row.volume_pred_voxels == p.sum()


# -- RTRadiomicsAILib: what the modules share, the parts that run without the Slicer application -------------------
def _lib(name: str):
    """A module of RTRadiomicsAILib, the Slicer-side package beside the hub module (its Qt parts need Slicer)."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "RTRadiomicsAI")
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(f"RTRadiomicsAILib.{name}")


def test_the_hub_step_table_follows_the_step_events_of_a_real_run(tmp_path, monkeypatch):
    from rtrai.pipeline import STEP_TITLES, STEPS, Options, run_case

    workflow = _lib("workflow")
    monkeypatch.delenv("RTRAI_PROGRESS", raising=False)
    case = _small_phantom()
    for name in ("PTV70", "PTV56"):  # no target: DosePredict and the DVH are skipped, so the run takes seconds
        del case.structures[name]
    case.dose, case.prescription = None, {}
    events = []
    run_case(case, tmp_path / "out", Options(keep_structures=True, scene=False), on_step=events.append)

    table = workflow.emptySteps(STEPS, STEP_TITLES)
    assert [(r["name"], r["title"], r["status"]) for r in table] == [(n, STEP_TITLES[n], "pending") for n in STEPS]
    for event in events:  # one poll per event: the table after each is what the hub shows
        before, table = table, workflow.applyStepEvents(table, [event])
        row = next(r for r in table if r["name"] == event["name"])
        assert (row["status"], row["seconds"], row["reason"]) == (event["status"], event["seconds"], event["reason"])
        assert [r for r in table if r["name"] != event["name"]] == [r for r in before if r["name"] != event["name"]]
        running = [r["name"] for r in table if r["status"] == "running"]
        assert running == ([event["name"]] if event["status"] == "running" else [])
    final = {s["name"]: s for s in json.loads((tmp_path / "out" / "provenance.json").read_text())["steps"]}
    assert [r["name"] for r in table] == list(STEPS)
    for row in table:
        assert row["status"] == final[row["name"]]["status"]
        assert row["seconds"] == pytest.approx(final[row["name"]]["seconds"], abs=2e-3)
    # What the table's cells say: a skipped step gives its reason, a done step its summary.
    segment = workflow.stepCells(next(r for r in table if r["name"] == "segment"))
    assert segment[:2] == ("AutoSegment", "skipped") and "--keep-structures" in segment[3]
    radiomics = workflow.stepCells(next(r for r in table if r["name"] == "radiomics"))
    assert radiomics[1] == "done" and radiomics[3] == final["radiomics"]["summary"]
    assert float(radiomics[2]) == pytest.approx(final["radiomics"]["seconds"], abs=0.051)


def test_step_events_replace_rows_append_new_steps_and_refuse_other_statuses():
    workflow = _lib("workflow")
    table = workflow.emptySteps(["load", "dose"], {"load": "Load case", "dose": "DosePredict"})
    event = {"case": "pt_1", "name": "load", "title": "Load case", "status": "running", "seconds": None,
             "summary": None, "reason": None}
    after = workflow.applyStepEvents(table, [event, {**event, "status": "done", "seconds": 1.25, "summary": "CT"},
                                            {**event, "name": "plan", "title": "Plan", "status": "failed",
                                             "seconds": 0.5, "reason": "no target"}])
    assert [r["status"] for r in table] == ["pending", "pending"]  # the table given is left as it was
    assert [(r["name"], r["status"], r["case"]) for r in after] == [("load", "done", "pt_1"), ("dose", "pending", None),
                                                                    ("plan", "failed", "pt_1")]
    assert workflow.stepCells(after[0]) == ("Load case", "done", "1.2", "CT")  # 1.25 s to one decimal
    assert workflow.stepCells(after[2]) == ("Plan", "failed", "0.5", "no target")
    assert workflow.stepCells(after[1]) == ("DosePredict", "pending", "", "")
    assert [r["status"] for r in workflow.cancelledSteps(after)] == ["done", "cancelled", "failed"]
    with pytest.raises(ValueError, match="'pending'"):
        workflow.applyStepEvents(table, [{**event, "status": "pending"}])
    with pytest.raises(KeyError):  # an event without the contract's keys is a bug of the sender
        workflow.applyStepEvents(table, [{"name": "load", "status": "done"}])


def test_heat_maps_load_as_volumes_on_their_own_grid(tmp_path):
    results = _lib("results")
    grid = Grid((40, 32, 24), (1.5, 2.0, 3.0), (-20.0, 10.0, 5.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    maps = {f"pt_{i}": rng.random((24, 32, 40)).astype(np.float32) for i in (2, 1)}
    for patient, values in maps.items():
        write_image(from_array(values, grid), tmp_path / "evaluation" / "gradcam" / f"{patient}.nrrd")
    write_image(from_array(maps["pt_1"], grid), tmp_path / "qa" / "uncertainty" / "Parotid_L.nrrd")  # segment --qa
    write_image(from_array(maps["pt_2"], grid), tmp_path / "qa" / "uncertainty" / "Parotid_R.nrrd")
    write_image(from_array(maps["pt_2"], grid), tmp_path / "qa" / "Dose.nrrd")  # not a map: not loaded
    write_image(from_array(maps["pt_1"], grid), tmp_path / "seg" / "gradcam_Parotid_L.nrrd")  # rtrai segment's

    found = results.gradcamMaps(tmp_path / "evaluation")
    assert [p.name for p in found] == ["pt_1.nrrd", "pt_2.nrrd"]
    assert [p.name for p in results.uncertaintyMaps(tmp_path / "qa")] == ["Parotid_L.nrrd", "Parotid_R.nrrd"]
    assert results.gradcamMaps(tmp_path / "qa") == [] and results.uncertaintyMaps(tmp_path / "evaluation") == []
    segment = results.loadHeatMaps(results.gradcamMaps(tmp_path / "seg"), slicer.vtkMRMLScene(), "CT Grad-CAM")
    assert [n.GetName() for n in segment] == ["CT Grad-CAM Parotid_L"]
    scene = slicer.vtkMRMLScene()
    nodes = results.loadHeatMaps(found, scene, "Grad-CAM")
    assert [n.GetName() for n in nodes] == ["Grad-CAM pt_1", "Grad-CAM pt_2"]
    assert _count(scene, "vtkMRMLScalarVolumeNode") == 2
    for node, patient in zip(nodes, ("pt_1", "pt_2")):
        assert grid.differences(mrml.node_grid(node)) == []  # LPS file -> RAS node -> the same grid back
        np.testing.assert_array_equal(_array(mrml.volume_node_to_image(node)), maps[patient])
        assert node.GetDisplayNode() is not None
    with pytest.raises(InputError, match="not found"):
        results.loadHeatMap(tmp_path / "evaluation" / "gradcam" / "pt_9.nrrd", scene, "x")


def test_contour_and_plan_qa_tables_load_and_say_what_is_flagged(tmp_path):
    results = _lib("results")
    contour = pd.DataFrame({"structure": ["Parotid_L", "Parotid_R", "SpinalCord"], "volume": [False, False, True],
                            "components": [False, True, True], "flagged": [False, True, True],
                            "reason": ["", "2 components", "volume 3.1 cc outside 8.0-40.0 cc; 3 components"]})
    contour.to_csv(tmp_path / results.CONTOUR_QA_FILE, index=False)
    scene = slicer.vtkMRMLScene()
    node = results.loadCsvTable(tmp_path / results.CONTOUR_QA_FILE, scene, "CT contour QA")
    back = mrml.node_to_table(node)
    assert list(back.columns) == list(contour.columns) and back["flagged"].tolist() == [False, True, True]
    summary = results.describeContourQa(pd.read_csv(tmp_path / results.CONTOUR_QA_FILE))
    assert summary.startswith("Contour QA: 2 of 3 structure(s) flagged") and "Parotid_R: 2 components" in summary
    assert "Parotid_L" not in summary
    again = results.loadCsvTable(tmp_path / results.CONTOUR_QA_FILE, scene, "ignored", node=node)
    assert again is node and _count(scene, "vtkMRMLTableNode") == 1  # a rerun replaces the table's content
    clean = contour.assign(flagged=False)
    assert results.describeContourQa(clean) == "Contour QA: none of 3 structure(s) flagged."

    qa = pd.DataFrame({"structure": ["Parotid_L", "Parotid_L", "PTV70", "SpinalCord"],
                       "metric": ["Dmean", "D0.1cc", "D95", "D0.1cc"], "plan": [31.0, 60.0, 64.0, 40.0],
                       "predicted": [25.0, 58.0, 69.0, 41.0], "excess": [6.0, 2.0, 5.0, -1.0],
                       "flag": [True, False, True, False]})
    qa.to_csv(tmp_path / "qa.csv", index=False)
    read = pd.read_csv(tmp_path / "qa.csv")
    assert results.describePlanQa(read) == ("Plan QA: 2 of 4 check(s) flagged: Parotid_L Dmean +6.0 Gy, "
                                            "PTV70 D95 +5.0 Gy.")
    assert results.describePlanQa(read.assign(flag=False)) == "Plan QA: no flag in 4 check(s)."
    with pytest.raises(InputError, match="not found"):
        results.loadCsvTable(tmp_path / "missing.csv", scene, "x")
