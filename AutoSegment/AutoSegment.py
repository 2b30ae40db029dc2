"""AutoSegment: deep-learning contouring of organs at risk and targets, and its comparison with a reference.

"Segment" runs ``rtrai segment`` on the input volume in a background process (:mod:`rtrai.core.jobs`), polled from a
QTimer on the main thread, with progress and Cancel; the result becomes a segmentation node. "Compare" runs
``rtrai evaluate segmentation`` (DSC, HD95, mean surface distance, surface DSC) and shows the metrics table.
MRML is touched on the main thread only; the file exchange with the jobs is in :mod:`rtrai.mrml.exchange`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cpu", "cuda")
# Settings of the RTRadiomicsAI hub, published in this process's environment; passed on to the background jobs.
SETTINGS_VARIABLES = ("RTRAI_DEVICE", "RTRAI_MODEL_CACHE")


class AutoSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSegment"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["RTRadiomicsAI contributors"]
        self.parent.helpText = (
            "Deep-learning contouring of organs at risk (and targets) on CT with a model of the RTRadiomicsAI model "
            "zoo. 'Segment' runs in a background process (progress, Cancel) and gives a segmentation node; "
            "'Compare' scores a segmentation against a reference (DSC, HD95, mean surface distance, surface DSC). "
            "The same steps are `rtrai segment` and `rtrai evaluate segmentation` on the command line.")
        self.parent.acknowledgementText = "Networks and metrics from MONAI; models trained on OpenKBP (Babier et al.)."


@parameterNodeWrapper
class AutoSegmentParameterNode:
    """inputVolume: the CT; device: where the model runs ("auto": the hub's setting); mirror: also segment the mirrored
    image and average (unchecked: the model's manifest decides); outputSegmentation: where the
    result goes (a new node when none); predicted/referenceSegmentation, tolerance (surface DSC, mm) and
    metricsTable: the comparison. The model is chosen in a combo box filled from the model zoo at run time."""

    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    mirror: bool
    outputSegmentation: vtkMRMLSegmentationNode
    predictedSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    tolerance: Annotated[float, WithinRange(0.0, 20.0), Default(2.0)]
    metricsTable: vtkMRMLTableNode


class AutoSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._onFinished = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegmentLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.fillModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.remove_temporary()  # stops it and removes its patient data
        self.removeObservers()

    def enter(self) -> None:
        self.fillModels()  # a model added to the zoo since (e.g. one that finished training) shows up
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def fillModels(self) -> None:
        """The combo box is filled by hand: parameter binding of a combo box needs its choices when the class is
        defined, and the zoo may change while Slicer runs."""
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        for name in self.logic.segmentationModels():
            self.ui.modelComboBox.addItem(name)
        index = self.ui.modelComboBox.findText(current)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self._updateButtons()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def _updateButtons(self, caller=None, event=None) -> None:
        p, idle = self._parameterNode, self._job is None
        hasModel = self.ui.modelComboBox.count > 0
        self.ui.segmentButton.enabled = bool(idle and p and p.inputVolume and hasModel)
        self.ui.segmentButton.toolTip = ("Segment the input volume in a background process." if hasModel else
                                         "No segmentation model is installed in the RTRadiomicsAI model zoo.")
        self.ui.compareButton.enabled = bool(idle and p and p.inputVolume and p.predictedSegmentation
                                             and p.referenceSegmentation)

    # -- background jobs ---------------------------------------------------------------------------------------
    def _start(self, job, onFinished) -> None:
        self._job, self._onFinished = job, onFinished
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = True
        self._updateButtons()
        self._timer.start()

    def _poll(self) -> None:
        update = self._job.poll()
        self.ui.progressBar.value = int(round(100 * update.fraction))
        if update.message:
            self.ui.statusLabel.text = update.message
        if not update.finished:
            return
        self._timer.stop()
        job, onFinished = self._job, self._onFinished
        self._job = self._onFinished = None
        self.ui.cancelButton.enabled = False
        self._updateButtons()
        try:
            if update.state == "succeeded":
                with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                    onFinished()
            elif update.state == "cancelled":
                self.ui.statusLabel.text = "Cancelled."
            else:
                self.ui.statusLabel.text = job.last_error or "The background process failed."
                slicer.util.errorDisplay(self.ui.statusLabel.text, detailedText="\n".join(job.log[-50:]))
        finally:
            job.remove_temporary()  # the exported patient data and the loaded results

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    # -- panels ------------------------------------------------------------------------------------------------
    def onSegment(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            job, finish = self.logic.startSegmentation(p.inputVolume, self.ui.modelComboBox.currentText, p.device,
                                                       p.outputSegmentation, mirror=p.mirror)

            def done():
                node = finish()
                p.outputSegmentation = p.predictedSegmentation = node
                slicer.util.setSliceViewerLayers(background=p.inputVolume)
                self.ui.statusLabel.text = (f"{node.GetSegmentation().GetNumberOfSegments()} structure(s) in "
                                            f"'{node.GetName()}'.")

            self._start(job, done)

    def onCompare(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the comparison.", waitCursor=True):
            job, finish = self.logic.startComparison(p.inputVolume, p.predictedSegmentation, p.referenceSegmentation,
                                                     p.tolerance, p.metricsTable)

            def done():
                table = finish()
                p.metricsTable = table
                self.ui.metricsTableView.setMRMLTableNode(table)
                self.ui.statusLabel.text = self.logic.describeMetrics(table)

            self._start(job, done)


class AutoSegmentLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai segment`` / ``rtrai evaluate segmentation`` in a background process, MRML out."""

    def getParameterNode(self):
        return AutoSegmentParameterNode(super().getParameterNode())

    @staticmethod
    def segmentationModels() -> list:
        from rtrai.models import list_models

        return [m["name"] for m in list_models() if m.get("task") == "segmentation"]

    @staticmethod
    def jobEnvironment() -> dict:
        """Slicer's startup environment (without the launcher's settings for the application) plus the hub's
        settings (device, model folder)."""
        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer.util, "startupEnvironment") else dict(os.environ)
        env.update({name: os.environ[name] for name in SETTINGS_VARIABLES if name in os.environ})
        return env

    def startSegmentation(self, volumeNode, model: str, device: str = "auto", segmentationNode=None,
                          mirror: bool = False):
        """Start ``rtrai segment`` (with ``--mirror`` when asked; else as the model's manifest says); returns the job
        and a function that loads its result into a segmentation node (``segmentationNode``, or a new one named after
        the volume and the model)."""
        from rtrai.core.jobs import Job, job_folder
        from rtrai.io.case_io import write_case
        from rtrai.mrml import load_segmentation_file, nodes_to_case

        if volumeNode is None:
            raise ValueError("Select an input volume.")
        if not model:
            raise ValueError("No segmentation model is installed in the RTRadiomicsAI model zoo.")
        with job_folder("AutoSegment-") as folder:
            write_case(nodes_to_case(volumeNode), folder / "input")
            output = folder / "output"
            job = Job.rtrai("segment", str(folder / "input"), "-o", str(output), "--model", model, "--device", device,
                            *(["--mirror"] if mirror else []), env=self.jobEnvironment(), temporary=[folder]).start()
            return job, lambda: load_segmentation_file(output / "Structures.seg.nrrd", slicer.mrmlScene,
                                                       f"{volumeNode.GetName()} {model}", reference_volume=volumeNode,
                                                       node=segmentationNode)

    def startComparison(self, volumeNode, predictedNode, referenceNode, tolerance: float = 2.0, tableNode=None):
        """Start ``rtrai evaluate segmentation`` of two segmentations, both put on the volume's grid; returns the job
        and a function that loads the metrics (one row per structure in both) into a table node."""
        from rtrai.core.jobs import Job, job_folder
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
            job = Job.rtrai("evaluate", "segmentation", "--pred", str(folder / "predicted.seg.nrrd"), "--ref",
                            str(folder / "reference.seg.nrrd"), "--tolerance", f"{float(tolerance):g}", "-o",
                            str(output), env=self.jobEnvironment(), temporary=[folder]).start()
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


class AutoSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_lists_the_zoo_models_and_binds_the_device()
        self.setUp()
        self.test_segment_and_compare_the_phantom()

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
        self.delayDisplay("Test passed")

    def _wait(self, job, seconds=900):
        import time

        deadline = time.time() + seconds
        while not job.poll().finished and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(job.state, "succeeded", job.last_error)

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
        self._wait(job)
        predicted = finish()
        labels = read_manifest("hn-oar-ct")["labels"]
        segmentation = predicted.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(names and set(names) <= set(labels), names)

        self.delayDisplay("Comparing with the phantom's structures")
        job, finish = logic.startComparison(nodes["ct"], predicted, nodes["structures"], 2.0)
        self._wait(job)
        metrics = node_to_table(finish())
        self.assertEqual(sorted(metrics["structure"]), sorted(set(names) & set(labels)))
        self.assertTrue(((metrics["dsc"] >= 0) & (metrics["dsc"] <= 1)).all())
        self.delayDisplay("Test passed")
