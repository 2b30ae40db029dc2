"""OutcomeModel: radiomics features of segments (pyradiomics, presets CT/MR/dose) into a table, and outcome models
fitted and evaluated on a feature table joined with a clinical table.

Long work runs ``rtrai radiomics`` / ``rtrai outcome`` in a background process through
:class:`RTRadiomicsAILib.jobs.BackgroundJobPanel` (progress, Cancel); MRML is touched on the main thread only. The
Grad-CAM maps of a CNN outcome model's evaluation (``rtrai outcome cnn evaluate --gradcam``: ``gradcam/<ID>.nrrd``)
are loaded as volumes.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from RTRadiomicsAILib import results
from RTRadiomicsAILib.jobs import startJob
from RTRadiomicsAILib.template import ModuleTest, ModuleWidget, describeModule
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

PRESETS = ("CT", "MR", "dose", "parameter file")
MODELS = ("default", "lasso-cox", "cox", "lasso-logistic", "svm", "rf", "mlp")


def _chosen(path) -> str:
    """A path parameter as text, or "" when none was chosen (an unset pathlib.Path parameter reads as ".")."""
    text = str(path or "")
    return "" if text in ("", ".") else text


class OutcomeModel(ScriptedLoadableModule):
    def __init__(self, parent):
        describeModule(self, parent, "OutcomeModel", ["Radiotherapy"], HELP, ACKNOWLEDGEMENT)


# The module's entry in Slicer's help panel.
HELP = """
Radiomics features (pyradiomics, identical values) of segments into a table, and outcome models (LASSO-Cox, Cox,
classifiers) fitted and validated on feature + clinical tables. The Grad-CAM maps of a CNN outcome model's evaluation
(where on the dose or CT the network looked) load as volumes.
Work runs in a background process; the same steps are <code>rtrai radiomics</code> and <code>rtrai outcome</code>."""
ACKNOWLEDGEMENT = """Features computed with pyradiomics (van Griethuysen et al., 2017)."""


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
    gradcamFolder: pathlib.Path  # an evaluation folder holding gradcam/<ID>.nrrd


class OutcomeModelWidget(ModuleWidget, ScriptedLoadableModuleWidget):
    UI_FILE = "UI/OutcomeModel.ui"
    DEFAULT_INPUTS = {"inputVolume": "vtkMRMLScalarVolumeNode", "inputSegmentation": "vtkMRMLSegmentationNode"}

    def createLogic(self):
        return OutcomeModelLogic()

    def connectWidgets(self) -> None:
        self.ui.plotList.connect("itemDoubleClicked(QListWidgetItem*)",
                                 lambda item: qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(item.text())))

    def updateButtons(self) -> None:
        self.ui.extractButton.enabled = self.ui.fitButton.enabled = self.idle

    # -- panels ------------------------------------------------------------------------------------------------
    def onExtract(self) -> None:
        p = self.parameterNode

        def show(table):
            p.featureTable = p.modelTable = table
            self.ui.statusLabel.text = f"Features of {table.GetNumberOfRows()} segment(s) in '{table.GetName()}'."

        self.jobs.run("the feature extraction", lambda: self.logic.startRadiomics(
            p.inputVolume, p.inputSegmentation, [s.strip() for s in p.segmentNames.split(",") if s.strip()], p.preset,
            _chosen(p.paramsFile), p.jobs, p.featureTable), show)

    def onFit(self) -> None:
        p = self.parameterNode
        folder = Path(_chosen(p.modelFolder) or tempfile.mkdtemp(prefix="OutcomeModel-"))

        def show(evaluation):
            self.ui.metricsText.plainText = json.dumps(evaluation["metrics"], indent=2)
            self.ui.plotList.clear()
            for png in evaluation["plots"]:
                self.ui.plotList.addItem(str(png))
            maps = evaluation["gradcam"]
            self.ui.statusLabel.text = f"Model and evaluation in {folder}" + (
                f"; {len(maps)} Grad-CAM map(s) loaded" if maps else "")

        def evaluate(model):
            self.jobs.run("the model evaluation", lambda: self.logic.startEvaluate(model), show)

        self.jobs.run("the model fit", lambda: self.logic.startFit(
            p.modelTable, _chosen(p.clinicalFile), p.idColumn, p.timeColumn, p.eventColumn, p.labelColumn,
            p.modelKind, folder), evaluate)

    def onLoadGradcam(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the Grad-CAM maps.", waitCursor=True):
            folder = _chosen(self.parameterNode.gradcamFolder)
            maps = self.logic.loadGradcamMaps(folder) if folder else []
            if not maps:
                raise ValueError(f"No Grad-CAM map (gradcam/<ID>.nrrd) in '{folder}': choose the output folder of "
                                 "rtrai outcome cnn evaluate --gradcam.")
            slicer.util.setSliceViewerLayers(foreground=maps[0], foregroundOpacity=0.5)
            self.ui.statusLabel.text = f"{len(maps)} Grad-CAM map(s) loaded: {', '.join(m.GetName() for m in maps)}."


class OutcomeModelLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai`` command in a background process, MRML out."""

    def getParameterNode(self):
        return OutcomeModelParameterNode(super().getParameterNode())

    @staticmethod
    def loadGradcamMaps(folder) -> list:
        """The Grad-CAM maps of an evaluation folder (``gradcam/<ID>.nrrd``, on each case's grid) as volumes named
        "Grad-CAM <ID>" (none for a feature model's evaluation)."""
        return results.loadHeatMaps(results.gradcamMaps(folder), slicer.mrmlScene, "Grad-CAM")

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
        from rtrai.core.jobs import job_folder

        if preset == "parameter file" and not paramsFile:
            raise ValueError("Choose a pyradiomics parameter file.")
        with job_folder("OutcomeModel-radiomics-") as folder:
            batch = self.exportInputs(volumeNode, segmentationNode, segmentNames, folder)
            output = folder / "features.csv"
            args = ["radiomics", "--cohort", str(batch), "--jobs", str(max(1, int(jobs))), "-o", str(output)]
            args += ["--params", paramsFile] if preset == "parameter file" else ["--preset", preset]
            job = startJob(*args, temporary=[folder])
            return job, lambda: self.loadTable(output, tableNode, f"{volumeNode.GetName()} features")

    @staticmethod
    def loadTable(path: Path, tableNode=None, name: str = "features"):
        import pandas as pd

        from rtrai.mrml.tables import table_to_node

        frame = pd.read_csv(path, dtype={"ID": str})
        return table_to_node(frame, slicer.mrmlScene, name, node=tableNode)

    def startFit(self, tableNode, clinicalFile, idColumn, timeColumn, eventColumn, labelColumn, modelKind,
                 folder: Path):
        """Start ``rtrai outcome fit`` on the table node (written to CSV) joined with the clinical CSV into
        ``folder``/model; returns the job and a function that returns the model folder."""
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
        return startJob(*args), lambda: folder / "model"  # the model folder is a result: not temporary

    def startEvaluate(self, model: Path):
        """Start ``rtrai outcome evaluate`` of the fitted model on the same table (apparent performance; give an
        external table on the command line for external validation) into ``evaluation`` beside the model; returns
        the job and a function that loads the evaluation (see :meth:`loadEvaluation`)."""
        output = model.parent / "evaluation"
        job = startJob("outcome", "evaluate", "--model", str(model), "--table", str(self._evaluationTable), "-o",
                       str(output))
        return job, lambda: self.loadEvaluation(output)

    def loadEvaluation(self, folder: Path) -> dict:
        """An evaluation folder: ``metrics`` (metrics.json), ``plots`` (its PNG files) and ``gradcam`` (a CNN
        model's Grad-CAM maps as volumes)."""
        return {"metrics": json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
                "plots": sorted(folder.glob("*.png")), "gradcam": self.loadGradcamMaps(folder)}


class OutcomeModelTest(ModuleTest, ScriptedLoadableModuleTest):
    def test_radiomics_of_a_sphere(self):
        """Features of a synthetic sphere segment through the background job land in a table node."""
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
        self.waitForJob(job, 300)
        table = finish()
        self.assertEqual(table.GetNumberOfRows(), 1)
        column = table.GetTable().GetColumnByName("original_shape_VoxelVolume")
        self.assertAlmostEqual(float(column.GetValue(0)), float(sphere.sum()), delta=0.05 * sphere.sum())
        self.delayDisplay("Test passed")
