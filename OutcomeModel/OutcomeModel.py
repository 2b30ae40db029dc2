"""OutcomeModel: radiomics features of segments (pyradiomics, presets CT/MR/dose) into a table, and outcome models
fitted and evaluated on a feature table joined with a clinical table.

Long work runs ``rtrai radiomics`` / ``rtrai outcome`` in a background process (:mod:`rtrai.core.jobs`), polled from
a QTimer on the main thread, with progress and Cancel; MRML is touched on the main thread only.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Settings of the RTRadiomicsAI hub, published in this process's environment; passed on to the background jobs.
SETTINGS_VARIABLES = ("RTRAI_DEVICE", "RTRAI_MODEL_CACHE")
PRESETS = ("CT", "MR", "dose", "parameter file")
MODELS = ("default", "lasso-cox", "cox", "lasso-logistic", "svm", "rf", "mlp")


def _chosen(path) -> str:
    """A path parameter as text, or "" when none was chosen (an unset pathlib.Path parameter reads as ".")."""
    text = str(path or "")
    return "" if text in ("", ".") else text


class OutcomeModel(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "OutcomeModel"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["RTRadiomicsAI contributors"]
        self.parent.helpText = (
            "Radiomics features (pyradiomics, identical values) of segments into a table, and outcome models "
            "(LASSO-Cox, Cox, classifiers) fitted and validated on feature + clinical tables. "
            "Work runs in a background process; the same steps are available as `rtrai radiomics` and "
            "`rtrai outcome`.")
        self.parent.acknowledgementText = "Features computed with pyradiomics (van Griethuysen et al., 2017)."


@parameterNodeWrapper
class OutcomeModelParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segmentNames: str = ""
    preset: Annotated[str, Choice(PRESETS), Default("CT")]  # a bound QComboBox needs its choices
    paramsFile: pathlib.Path  # ctkPathLineEdit binds to pathlib.Path only
    jobs: int = 2
    featureTable: vtkMRMLTableNode
    modelTable: vtkMRMLTableNode
    clinicalFile: pathlib.Path
    idColumn: str = "ID"
    timeColumn: str = ""
    eventColumn: str = ""
    labelColumn: str = ""
    modelKind: Annotated[str, Choice(MODELS), Default("default")]
    modelFolder: pathlib.Path


class OutcomeModelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OutcomeModel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OutcomeModelLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.extractButton.connect("clicked(bool)", self.onExtract)
        self.ui.fitButton.connect("clicked(bool)", self.onFit)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.plotList.connect("itemDoubleClicked(QListWidgetItem*)",
                                 lambda item: qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(item.text())))
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.remove_temporary()  # stops it and removes its patient data
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.inputSegmentation:
            self._parameterNode.inputSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- background jobs ---------------------------------------------------------------------------------------
    def _start(self, job, onFinished) -> None:
        self._job, self._onFinished = job, onFinished
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = True
        self.ui.extractButton.enabled = self.ui.fitButton.enabled = False
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
        self.ui.extractButton.enabled = self.ui.fitButton.enabled = True
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
            job.remove_temporary()  # exported images and masks (the fit's model folder is a result: it stays)

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    # -- panels ------------------------------------------------------------------------------------------------
    def onExtract(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the feature extraction.", waitCursor=True):
            job, finish = self.logic.startRadiomics(
                p.inputVolume, p.inputSegmentation, [s.strip() for s in p.segmentNames.split(",") if s.strip()],
                p.preset, _chosen(p.paramsFile), p.jobs, p.featureTable)

            def done():
                p.featureTable = finish()
                p.modelTable = p.featureTable
                self.ui.statusLabel.text = f"Features of {p.featureTable.GetNumberOfRows()} segment(s) in " \
                                           f"'{p.featureTable.GetName()}'."

            self._start(job, done)

    def onFit(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the model fit.", waitCursor=True):
            folder = Path(_chosen(p.modelFolder) or tempfile.mkdtemp(prefix="OutcomeModel-"))
            fitJob = self.logic.startFit(p.modelTable, _chosen(p.clinicalFile), p.idColumn, p.timeColumn, p.eventColumn,
                                         p.labelColumn, p.modelKind, folder)

            def evaluate():
                self._start(self.logic.startEvaluate(folder), show)

            def show():
                metrics = json.loads((folder / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
                self.ui.metricsText.plainText = json.dumps(metrics, indent=2)
                self.ui.plotList.clear()
                for png in sorted((folder / "evaluation").glob("*.png")):
                    self.ui.plotList.addItem(str(png))
                self.ui.statusLabel.text = f"Model and evaluation in {folder}"

            self._start(fitJob, evaluate)


class OutcomeModelLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai`` command in a background process, MRML out."""

    def getParameterNode(self):
        return OutcomeModelParameterNode(super().getParameterNode())

    @staticmethod
    def _environment() -> dict:
        """Slicer's startup environment (without the launcher's settings for the application) plus the hub's
        settings (device, model folder), as AutoSegment and DosePredict pass them."""
        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer.util, "startupEnvironment") else dict(os.environ)
        env.update({name: os.environ[name] for name in SETTINGS_VARIABLES if name in os.environ})
        return env

    def exportInputs(self, volumeNode, segmentationNode, segmentNames, folder: Path) -> Path:
        """Write the volume and one labelmap per segment, and a pyradiomics batch file listing them."""
        if volumeNode is None or segmentationNode is None:
            raise ValueError("Select a volume and a segmentation.")
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        names = {segmentation.GetSegment(i).GetName(): i for i in ids}
        chosen = segmentNames or list(names)
        missing = [n for n in chosen if n not in names]
        if missing:
            raise ValueError(f"Segment(s) not found: {', '.join(missing)} (available: {', '.join(names)})")
        image = folder / "image.nrrd"
        slicer.util.saveNode(volumeNode, str(image))
        rows = ["ID,Image,Mask"]
        for index, name in enumerate(chosen):
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            try:
                ids_array = vtk.vtkStringArray()
                ids_array.InsertNextValue(names[name])
                slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                    segmentationNode, ids_array, labelmap, volumeNode)
                mask = folder / f"mask_{index}.nrrd"
                slicer.util.saveNode(labelmap, str(mask))
            finally:
                slicer.mrmlScene.RemoveNode(labelmap)
            rows.append(f"\"{name.replace(chr(34), '')}\",{image.name},{mask.name}")
        batch = folder / "cohort.csv"
        batch.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return batch

    def startRadiomics(self, volumeNode, segmentationNode, segmentNames, preset, paramsFile, jobs, tableNode=None):
        """Start ``rtrai radiomics --cohort``; returns the job and a function that loads the result table."""
        from rtrai.core.jobs import Job, job_folder

        if preset == "parameter file" and not paramsFile:
            raise ValueError("Choose a pyradiomics parameter file.")
        with job_folder("OutcomeModel-radiomics-") as folder:
            batch = self.exportInputs(volumeNode, segmentationNode, segmentNames, folder)
            output = folder / "features.csv"
            args = ["radiomics", "--cohort", str(batch), "--jobs", str(max(1, int(jobs))), "-o", str(output)]
            args += ["--params", paramsFile] if preset == "parameter file" else ["--preset", preset]
            job = Job.rtrai(*args, env=self._environment(), temporary=[folder]).start()
            return job, lambda: self.loadTable(output, tableNode, f"{volumeNode.GetName()} features")

    @staticmethod
    def loadTable(path: Path, tableNode=None, name: str = "features"):
        import pandas as pd

        from rtrai.mrml.tables import table_to_node

        frame = pd.read_csv(path, dtype={"ID": str})
        return table_to_node(frame, slicer.mrmlScene, name, node=tableNode)

    def startFit(self, tableNode, clinicalFile, idColumn, timeColumn, eventColumn, labelColumn, modelKind,
                 folder: Path):
        """Start ``rtrai outcome fit`` on the table node (written to CSV) joined with the clinical CSV."""
        from rtrai.core.jobs import Job
        from rtrai.mrml.tables import node_to_table

        if tableNode is None:
            raise ValueError("Select a feature table.")
        folder.mkdir(parents=True, exist_ok=True)
        table = folder / "features.csv"
        node_to_table(tableNode).to_csv(table, index=False)
        args = ["outcome", "fit", "--table", str(table), "-o", str(folder / "model")]
        if labelColumn:
            args += ["--label", labelColumn]
        elif timeColumn and eventColumn:
            args += ["--time", timeColumn, "--event", eventColumn]
        else:
            raise ValueError("Give a time and an event column (survival) or a label column (binary endpoint).")
        if idColumn:
            args += ["--id", idColumn]
        if clinicalFile:
            args += ["--clinical", clinicalFile]
        if modelKind and modelKind != "default":
            args += ["--model", modelKind]
        self._evaluationTable = table
        return Job.rtrai(*args, env=self._environment()).start()

    def startEvaluate(self, folder: Path):
        """Start ``rtrai outcome evaluate`` of the fitted model on the same table (apparent performance; give an
        external table on the command line for external validation)."""
        from rtrai.core.jobs import Job

        return Job.rtrai("outcome", "evaluate", "--model", str(folder / "model"), "--table",
                         str(self._evaluationTable), "-o", str(folder / "evaluation"), env=self._environment()).start()


class OutcomeModelTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_radiomics_of_a_sphere()

    def test_radiomics_of_a_sphere(self):
        """Features of a synthetic sphere segment through the background job land in a table node."""
        import time

        import numpy as np

        self.delayDisplay("Radiomics of a synthetic sphere")
        z, y, x = np.mgrid[:24, :32, :32]
        sphere = ((z - 12) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) <= 64
        volume = slicer.util.addVolumeFromArray((100 * sphere + np.random.default_rng(0).normal(0, 5, sphere.shape))
                                                .astype(np.float32), name="phantom")
        labelmap = slicer.util.addVolumeFromArray(sphere.astype(np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(0).SetName("Sphere")
        logic = OutcomeModelLogic()
        job, finish = logic.startRadiomics(volume, segmentation, ["Sphere"], "CT", "", 1)
        deadline = time.time() + 300
        while not job.poll().finished and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(job.state, "succeeded", job.last_error)
        table = finish()
        self.assertEqual(table.GetNumberOfRows(), 1)
        column = table.GetTable().GetColumnByName("original_shape_VoxelVolume")
        self.assertAlmostEqual(float(column.GetValue(0)), float(sphere.sum()), delta=0.05 * sphere.sum())
        self.delayDisplay("Test passed")
