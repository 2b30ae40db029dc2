"""AutoSegment: deep-learning contouring of organs at risk and targets, contour QA, and the comparison with a
reference.

"Segment" runs ``rtrai segment`` on the input volume with a zoo model or a model the user brings (a MONAI bundle
folder, a TorchScript file, an nnU-Net v2 folder), optionally with contour QA (``--qa``: flags, uncertainty maps) and
a Grad-CAM map of one structure (``--gradcam``); "Check contours" runs ``rtrai segment qa`` on a segmentation from any
source; "Compare" runs ``rtrai evaluate segmentation``. The jobs run in the background through
:class:`RTRadiomicsAILib.jobs.BackgroundJobPanel`; MRML is touched on the main thread only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import qt
import slicer
from RTRadiomicsAILib import results
from RTRadiomicsAILib.jobs import startJob
from RTRadiomicsAILib.settings import DEVICES
from RTRadiomicsAILib.template import ModuleTest, ModuleWidget, describeModule, zooModels
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


class AutoSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        describeModule(self, parent, "AutoSegment", ["Radiotherapy"], HELP, ACKNOWLEDGEMENT)


# The module's entry in Slicer's help panel.
HELP = """
Deep-learning contouring of organs at risk (and targets) on CT with a model of the RTRadiomicsAI model zoo or one
you bring (a MONAI bundle folder, a TorchScript file with its manifest, an nnU-Net v2 folder).
<b>Segment</b> runs in a background process (progress, Cancel) and gives a segmentation node; with <i>Contour QA</i>
it also flags implausible contours and loads the uncertainty maps, with <i>Grad-CAM</i> the map of what a structure's
contour came from. <b>Check contours</b> flags the contours of any segmentation. <b>Compare</b> scores a segmentation
against a reference (DSC, HD95, mean surface distance, surface DSC).
The same steps on the command line: <code>rtrai segment [--qa] [--gradcam S]</code>, <code>rtrai segment qa</code>,
<code>rtrai evaluate segmentation</code>."""
ACKNOWLEDGEMENT = """Networks and metrics from MONAI; models trained on OpenKBP (Babier et al.)."""


@parameterNodeWrapper
class AutoSegmentParameterNode:
    """inputVolume: the CT; device: where the model runs ("auto": the hub's setting); mirror: also segment the mirrored
    image and average (unchecked: the model's manifest decides); contourQa: flags and uncertainty maps;
    gradcamStructure: a structure whose Grad-CAM map is written (empty: none); outputSegmentation: where the result
    goes (a new node when none); qaSegmentation, qaTable: "Check contours"; predicted/referenceSegmentation,
    tolerance (surface DSC, mm) and metricsTable: the comparison. The model is typed or chosen in an editable combo
    box filled from the model zoo at run time."""

    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    mirror: bool
    contourQa: bool
    gradcamStructure: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    qaSegmentation: vtkMRMLSegmentationNode
    qaTable: vtkMRMLTableNode
    tolerance: Annotated[float, WithinRange(0.0, 20.0), Default(2.0)]
    predictedSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    metricsTable: vtkMRMLTableNode


class AutoSegmentWidget(ModuleWidget, ScriptedLoadableModuleWidget):
    UI_FILE = "UI/AutoSegment.ui"
    DEFAULT_INPUTS = {"inputVolume": "vtkMRMLScalarVolumeNode"}
    MODEL_TASK = "segmentation"

    def createLogic(self):
        return AutoSegmentLogic()

    def updateButtons(self) -> None:
        p, idle = self.parameterNode, self.idle
        hasModel = bool(self.ui.modelComboBox.currentText.strip())
        self.ui.segmentButton.enabled = bool(idle and p and p.inputVolume and hasModel)
        self.ui.segmentButton.toolTip = ("Segment the input volume in a background process." if hasModel else
                                         "Choose a zoo model, or a model folder or file.")
        self.ui.checkContoursButton.enabled = bool(idle and p and p.inputVolume and p.qaSegmentation)
        self.ui.compareButton.enabled = bool(idle and p and p.inputVolume and p.predictedSegmentation
                                             and p.referenceSegmentation)

    def onModelFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Choose a MONAI bundle, nnU-Net or "
                                                   "model folder", self.ui.modelComboBox.currentText)
        if path:
            self.ui.modelComboBox.setEditText(path)

    def onModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose a TorchScript model",
                                              self.ui.modelComboBox.currentText,
                                              "TorchScript (*.pt *.ts *.pth);;All files (*)")
        if path:
            self.ui.modelComboBox.setEditText(path)

    def showContourQa(self, loaded: dict) -> str:
        """The flags table (and the uncertainty maps over the CT) of a contour QA run; returns its summary."""
        p = self.parameterNode
        p.qaTable = loaded["table"]
        self.ui.qaTableView.setMRMLTableNode(loaded["table"])
        maps = loaded["uncertainty"]
        if maps:
            slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=maps[0], foregroundOpacity=0.5)
        self.ui.qaResultLabel.text = loaded["summary"] + (f" {len(maps)} uncertainty map(s) loaded." if maps else "")
        return self.ui.qaResultLabel.text

    # -- panels ------------------------------------------------------------------------------------------------
    def onSegment(self) -> None:
        p = self.parameterNode

        def show(loaded):
            node = loaded["segmentation"]
            p.outputSegmentation = p.predictedSegmentation = p.qaSegmentation = node
            slicer.util.setSliceViewerLayers(background=p.inputVolume)
            text = f"{node.GetSegmentation().GetNumberOfSegments()} structure(s) in '{node.GetName()}'."
            if loaded["gradcam"]:
                slicer.util.setSliceViewerLayers(foreground=loaded["gradcam"][0], foregroundOpacity=0.5)
                text += f" Grad-CAM map(s): {', '.join(n.GetName() for n in loaded['gradcam'])}."
            if "contourQa" in loaded:
                text += " " + self.showContourQa(loaded["contourQa"])
            self.ui.statusLabel.text = text

        self.jobs.run("the segmentation", lambda: self.logic.startSegmentation(
            p.inputVolume, self.ui.modelComboBox.currentText, p.device, p.outputSegmentation, mirror=p.mirror,
            qa=p.contourQa, gradcam=p.gradcamStructure.strip(), qaTable=p.qaTable), show)

    def onCheckContours(self) -> None:
        p = self.parameterNode

        def show(loaded):
            self.ui.statusLabel.text = self.showContourQa(loaded)

        self.jobs.run("the contour check", lambda: self.logic.startContourCheck(p.inputVolume, p.qaSegmentation,
                                                                                 p.qaTable), show)

    def onCompare(self) -> None:
        p = self.parameterNode

        def show(table):
            p.metricsTable = table
            self.ui.metricsTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = self.logic.describeMetrics(table)

        self.jobs.run("the comparison", lambda: self.logic.startComparison(
            p.inputVolume, p.predictedSegmentation, p.referenceSegmentation, p.tolerance, p.metricsTable), show)


class AutoSegmentLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai segment`` / ``rtrai segment qa`` / ``rtrai evaluate segmentation`` in a background process,
    MRML out."""

    def getParameterNode(self):
        return AutoSegmentParameterNode(super().getParameterNode())

    @classmethod
    def modelArgument(cls, text: str) -> str:
        """``--model``'s value: a zoo name as it is, a file or folder (bundle, TorchScript, nnU-Net) as its full path.
        The command checks what the file or folder holds."""
        text = text.strip()
        if not text:
            raise ValueError("Choose a zoo model, or a model folder or file.")
        if text in cls.segmentationModels():
            return text
        path = Path(text).expanduser()
        if not path.exists():
            raise ValueError(f"Model '{text}' is neither a segmentation model of the zoo "
                             f"({', '.join(cls.segmentationModels()) or 'none installed'}) nor an existing file or "
                             "folder.")
        return str(path.resolve())

    @staticmethod
    def segmentationModels() -> list:
        return zooModels("segmentation")

    @staticmethod
    def loadContourQa(folder: Path, name: str, tableNode=None) -> dict:
        """OUT/contour_qa.csv as a table node with its one-line summary, and the uncertainty maps in OUT as volumes."""
        import pandas as pd

        table = results.loadCsvTable(folder / results.CONTOUR_QA_FILE, slicer.mrmlScene, f"{name} contour QA",
                                     tableNode)
        frame = pd.read_csv(folder / results.CONTOUR_QA_FILE)
        maps = results.loadHeatMaps(results.uncertaintyMaps(folder), slicer.mrmlScene, name)
        return {"table": table, "summary": results.describeContourQa(frame), "uncertainty": maps}

    def startSegmentation(self, volumeNode, model: str, device: str = "auto", segmentationNode=None,
                          mirror: bool = False, qa: bool = False, gradcam: str = "", qaTable=None):
        """Start ``rtrai segment`` (``--mirror`` when asked, else as the model's manifest says; ``--qa``;
        ``--gradcam STRUCTURE``); returns the job and a function that loads its results: ``segmentation`` (into
        ``segmentationNode``, or a new node named after the volume and the model), ``gradcam`` (volumes) and, with
        ``qa``, ``contourQa`` (see :meth:`loadContourQa`)."""
        from rtrai.core.jobs import job_folder
        from rtrai.io.case_io import write_case
        from rtrai.mrml import load_segmentation_file, nodes_to_case

        if volumeNode is None:
            raise ValueError("Select an input volume.")
        model = self.modelArgument(model)
        options = (["--mirror"] if mirror else []) + (["--qa"] if qa else []) + (["--gradcam", gradcam] if gradcam
                                                                                 else [])
        with job_folder("AutoSegment-") as folder:
            write_case(nodes_to_case(volumeNode), folder / "input")
            output = folder / "output"
            job = startJob("segment", str(folder / "input"), "-o", str(output), "--model", model, "--device", device,
                           *options, temporary=[folder])
            name = f"{volumeNode.GetName()} {Path(model).name}"

            def finish():
                loaded = {"segmentation": load_segmentation_file(output / "Structures.seg.nrrd", slicer.mrmlScene,
                                                                 name, reference_volume=volumeNode,
                                                                 node=segmentationNode),
                          "gradcam": results.loadHeatMaps(results.gradcamMaps(output), slicer.mrmlScene,
                                                          f"{name} Grad-CAM")}
                if qa:
                    loaded["contourQa"] = self.loadContourQa(output, name, qaTable)
                return loaded

            return job, finish

    def startContourCheck(self, volumeNode, segmentationNode, tableNode=None):
        """Start ``rtrai segment qa`` on the segmentation's contours (on the volume's grid); returns the job and a
        function that loads the flags (see :meth:`loadContourQa`)."""
        from rtrai.core.jobs import job_folder
        from rtrai.io.case_io import write_case
        from rtrai.mrml import nodes_to_case

        if volumeNode is None or segmentationNode is None:
            raise ValueError("Select the input volume and the segmentation whose contours are checked.")
        case = nodes_to_case(volumeNode, segmentationNode)
        if not case.structures:
            raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no non-empty segment.")
        with job_folder("AutoSegment-qa-") as folder:
            write_case(case, folder / "case")
            output = folder / "qa"
            job = startJob("segment", "qa", str(folder / "case"), "-o", str(output), temporary=[folder])
            return job, lambda: self.loadContourQa(output, segmentationNode.GetName(), tableNode)

    def startComparison(self, volumeNode, predictedNode, referenceNode, tolerance: float = 2.0, tableNode=None):
        """Start ``rtrai evaluate segmentation`` of two segmentations, both put on the volume's grid; returns the job
        and a function that loads the metrics (one row per structure in both) into a table node."""
        from rtrai.core.jobs import job_folder
        from rtrai.io.segfile import write_segmentation
        from rtrai.mrml import nodes_to_case

        if volumeNode is None:
            raise ValueError("Select the input volume: both segmentations are compared on its grid.")
        if predictedNode is None or referenceNode is None:
            raise ValueError("Select a segmentation and a reference segmentation.")
        predicted, reference = nodes_to_case(volumeNode, predictedNode), nodes_to_case(volumeNode, referenceNode)
        if not set(predicted.structures) & set(reference.structures):
            raise ValueError(f"No structure is in both segmentations (names as TG-263): "
                             f"{', '.join(predicted.structures) or 'none'} vs "
                             f"{', '.join(reference.structures) or 'none'}.")
        with job_folder("AutoSegment-compare-") as folder:
            for case, name in ((predicted, "predicted"), (reference, "reference")):
                write_segmentation(case.structures, folder / f"{name}.seg.nrrd", case.colors, case.ct)
            output = folder / "metrics"
            job = startJob("evaluate", "segmentation", "--pred", str(folder / "predicted.seg.nrrd"), "--ref",
                           str(folder / "reference.seg.nrrd"), "--tolerance", f"{float(tolerance):g}", "-o",
                           str(output), temporary=[folder])
            name = f"{predictedNode.GetName()} vs {referenceNode.GetName()}"
            return job, lambda: self.loadMetrics(output / "metrics.csv", name, tableNode)

    @staticmethod
    def loadMetrics(path: Path, name: str, tableNode=None):
        import pandas as pd

        from rtrai.mrml import table_to_node

        frame = pd.read_csv(path).drop(columns=["patient"], errors="ignore")  # one case: the column says nothing
        return table_to_node(frame, slicer.mrmlScene, name, node=tableNode)

    @staticmethod
    def describeMetrics(tableNode) -> str:
        from rtrai.mrml import node_to_table

        frame = node_to_table(tableNode)
        if frame.empty:
            return "No structure was scored."
        return (f"{len(frame)} structure(s): mean DSC {frame['dsc'].mean():.3f}, mean surface DSC "
                f"{frame['surface_dsc'].mean():.3f} (table '{tableNode.GetName()}').")


class AutoSegmentTest(ModuleTest, ScriptedLoadableModuleTest):
    def test_panel_lists_the_zoo_models_and_binds_the_device(self):
        self.delayDisplay("AutoSegment panel")
        slicer.util.selectModule("AutoSegment")
        widget = slicer.util.getModuleWidget("AutoSegment")
        combo = widget.ui.modelComboBox
        self.assertEqual([combo.itemText(i) for i in range(combo.count)], AutoSegmentLogic.segmentationModels())
        self.assertIn("hn-oar-ct", AutoSegmentLogic.segmentationModels())
        parameterNode = widget.logic.getParameterNode()
        widget.ui.deviceComboBox.setCurrentIndex(DEVICES.index("cpu"))
        self.assertEqual(parameterNode.device, "cpu")
        parameterNode.device = "auto"
        self.assertEqual(widget.ui.deviceComboBox.currentText, "auto")
        self.assertFalse(parameterNode.mirror)  # off unless asked: the manifest decides
        widget.ui.mirrorCheckBox.checked = True
        self.assertTrue(parameterNode.mirror)
        parameterNode.mirror = False
        self.assertFalse(widget.ui.segmentButton.enabled)  # no input volume in an empty scene
        self.assertEqual(AutoSegmentLogic.modelArgument("hn-oar-ct"), "hn-oar-ct")
        folder = Path(slicer.app.temporaryPath)
        self.assertEqual(AutoSegmentLogic.modelArgument(str(folder)), str(folder.resolve()))  # a folder is taken
        with self.assertRaises(ValueError):
            AutoSegmentLogic.modelArgument(str(folder / "no-such-model"))
        self.delayDisplay("Test passed")

    def test_segment_and_compare_the_phantom(self):
        """The shipped model on the built-in phantom through the background job; then its metrics against the
        phantom's own structures."""
        import importlib.util

        from rtrai.models import read_manifest
        from rtrai.mrml import case_to_scene, node_to_table
        from rtrai.phantom import make_phantom

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("monai") is None:
            self.skipTest("PyTorch and MONAI are needed: install them from the RTRadiomicsAI hub module")
        self.delayDisplay("Segmenting the phantom")
        nodes = case_to_scene(make_phantom(seed=0, size=(80, 80, 64), spacing=(3.5, 3.5, 2.5)), slicer.mrmlScene)
        logic = AutoSegmentLogic()
        job, finish = logic.startSegmentation(nodes["ct"], "hn-oar-ct", "cpu")
        self.waitForJob(job)
        predicted = finish()["segmentation"]
        labels = read_manifest("hn-oar-ct")["labels"]
        segmentation = predicted.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(names and set(names) <= set(labels), names)

        self.delayDisplay("Comparing with the phantom's structures")
        job, finish = logic.startComparison(nodes["ct"], predicted, nodes["structures"], 2.0)
        self.waitForJob(job)
        metrics = node_to_table(finish())
        self.assertEqual(sorted(metrics["structure"]), sorted(set(names) & set(labels)))
        self.assertTrue(((metrics["dsc"] >= 0) & (metrics["dsc"] <= 1)).all())
        self.delayDisplay("Test passed")
