"""DosePredict: deep-learning prediction of the 3D dose from CT + structures, and dose evaluation (DVH, gamma).

"Predict" runs ``rtrai dose predict`` on the CT and the segmentation, with the segments chosen as targets at their
prescriptions, in a background process (:mod:`rtrai.core.jobs`) polled from a QTimer on the main thread, with
progress and Cancel. The result is a dose volume SlicerRT takes as its own (isodose colours, Gy unit on its study),
followed by its DVH (``rtrai dvh``: plot chart and metrics table). "Gamma" runs ``rtrai gamma`` between a reference
and an evaluated dose and loads the gamma map as a volume. MRML is touched on the main thread only; the file exchange
with the jobs is in :mod:`rtrai.mrml.exchange` and :mod:`rtrai.mrml.plots`.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cpu", "cuda")
# Settings of the RTRadiomicsAI hub, published in this process's environment; passed on to the background jobs.
SETTINGS_VARIABLES = ("RTRAI_DEVICE", "RTRAI_MODEL_CACHE")
NO_MODEL_MESSAGE = ("No dose model is installed in the RTRadiomicsAI model zoo yet (hn-dose-openkbp is being "
                    "trained). Type the path of a model folder in 'Model' to use one.")


class DosePredict(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DosePredict"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["RTRadiomicsAI contributors"]
        self.parent.helpText = (
            "Predicts the 3D dose of a head-and-neck plan from the CT, the structures and the targets with their "
            "prescriptions (a deep-learning model of the RTRadiomicsAI model zoo), as a dose volume SlicerRT's "
            "Isodose and Dose Volume Histogram modules take as their own. Also DVH (plot and metrics) of any dose "
            "and the 3D gamma index between two doses, with the gamma map as a volume. Work runs in a background "
            "process; the same steps are `rtrai dose predict`, `rtrai dvh` and `rtrai gamma`.")
        self.parent.acknowledgementText = "Dose prediction trained on OpenKBP (Babier et al., Med. Phys. 2021)."


@parameterNodeWrapper
class DosePredictParameterNode:
    """ct, structures, targets ("PTV70=70, PTV56=56": segment=Gy), device ("auto": the hub's setting) and
    predictedDose (a new volume when none) for Predict; dvhDose, dvhChart, dvhMetrics for the DVH; referenceDose,
    evaluatedDose, doseDifference (%), distanceToAgreement (mm) and gammaMap for the gamma index. The model is chosen
    in a combo box filled from the model zoo at run time."""

    ct: vtkMRMLScalarVolumeNode
    structures: vtkMRMLSegmentationNode
    targets: str = ""
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    predictedDose: vtkMRMLScalarVolumeNode
    dvhDose: vtkMRMLScalarVolumeNode
    dvhChart: vtkMRMLPlotChartNode
    dvhMetrics: vtkMRMLTableNode
    referenceDose: vtkMRMLScalarVolumeNode
    evaluatedDose: vtkMRMLScalarVolumeNode
    doseDifference: Annotated[float, WithinRange(0.1, 20.0), Default(3.0)]
    distanceToAgreement: Annotated[float, WithinRange(0.1, 20.0), Default(3.0)]
    gammaMap: vtkMRMLScalarVolumeNode


class DosePredictWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._onFinished = None
        self._structuresID = None  # the segmentation the targets text was last filled for
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DosePredict.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DosePredictLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.targetsFromNamesButton.connect("clicked(bool)", self.onTargetsFromNames)
        self.ui.dvhButton.connect("clicked(bool)", self.onDvh)
        self.ui.gammaButton.connect("clicked(bool)", self.onGamma)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.modelComboBox.connect("editTextChanged(QString)", lambda text: self._updateButtons())
        self.fillModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.remove_temporary()  # stops it and removes its patient data
        self.removeObservers()

    def enter(self) -> None:
        self.fillModels()  # the dose model being trained appears here once it is in the zoo
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def fillModels(self) -> None:
        """Filled by hand: parameter binding of a combo box needs its choices when the class is defined, the zoo may
        change while Slicer runs, and the combo box is editable (a model folder may be typed in)."""
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        models = self.logic.doseModels()
        for name in models:
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.setEditText(current if current else (models[0] if models else ""))
        self.ui.modelStatusLabel.text = "" if models else NO_MODEL_MESSAGE
        self._updateButtons()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.ct:
            p.ct = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not p.structures:
            p.structures = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        structuresID = p.structures.GetID() if p and p.structures else None
        if structuresID != self._structuresID:
            # Another segmentation: fill the targets from its names (PTV70 -> 70 Gy; the user may change them), but
            # keep a text the user wrote for this one when the module is entered again.
            refill = structuresID and (self._structuresID is not None or not p.targets.strip())
            self._structuresID = structuresID
            if refill:
                self.onTargetsFromNames()
        self._updateButtons()

    def _updateButtons(self) -> None:
        p, idle = self._parameterNode, self._job is None
        hasModel = bool(self.ui.modelComboBox.currentText.strip())
        self.ui.predictButton.enabled = bool(idle and p and p.ct and p.structures and hasModel)
        self.ui.predictButton.toolTip = ("Predict the dose in a background process." if hasModel
                                         else NO_MODEL_MESSAGE)
        self.ui.dvhButton.enabled = bool(idle and p and p.dvhDose and p.structures)
        self.ui.gammaButton.enabled = bool(idle and p and p.referenceDose and p.evaluatedDose)

    def onTargetsFromNames(self) -> None:
        from rtrai.mrml import guess_targets, prescription_text, segment_names

        p = self._parameterNode
        if p and p.structures:
            text = prescription_text(guess_targets(segment_names(p.structures)))
            if text != p.targets:
                p.targets = text

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
    def onPredict(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the dose prediction.", waitCursor=True):
            job, finish = self.logic.startPrediction(p.ct, p.structures, p.targets, self.ui.modelComboBox.currentText,
                                                     p.device, p.predictedDose)

            def done():
                dose = finish()
                p.predictedDose = p.dvhDose = p.evaluatedDose = dose
                slicer.util.setSliceViewerLayers(background=p.ct, foreground=dose, foregroundOpacity=0.4)
                self.ui.statusLabel.text = f"Predicted dose in '{dose.GetName()}'; computing its DVH..."
                self.onDvh()  # the DVH belongs with every prediction

            self._start(job, done)

    def onDvh(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the DVH.", waitCursor=True):
            job, finish = self.logic.startDvh(p.dvhDose, p.structures, p.ct, p.dvhChart, p.dvhMetrics)

            def done():
                p.dvhChart, p.dvhMetrics = finish()
                slicer.modules.plots.logic().ShowChartInLayout(p.dvhChart)
                self.ui.dvhTableView.setMRMLTableNode(p.dvhMetrics)
                self.ui.statusLabel.text = f"DVH of '{p.dvhDose.GetName()}' in '{p.dvhChart.GetName()}'."

            self._start(job, done)

    def onGamma(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the gamma index.", waitCursor=True):
            job, finish = self.logic.startGamma(p.referenceDose, p.evaluatedDose, p.doseDifference,
                                                p.distanceToAgreement, p.gammaMap)

            def done():
                p.gammaMap, summary = finish()
                slicer.util.setSliceViewerLayers(foreground=p.gammaMap, foregroundOpacity=0.6)
                self.ui.gammaResultLabel.text = self.logic.describeGamma(summary)
                self.ui.statusLabel.text = f"Gamma map in '{p.gammaMap.GetName()}'."

            self._start(job, done)


class DosePredictLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai dose predict`` / ``rtrai dvh`` / ``rtrai gamma`` in a background process, MRML out."""

    def getParameterNode(self):
        return DosePredictParameterNode(super().getParameterNode())

    @staticmethod
    def doseModels() -> list:
        from rtrai.models import list_models

        return [m["name"] for m in list_models() if m.get("task") == "dose"]

    @staticmethod
    def jobEnvironment() -> dict:
        """Slicer's startup environment (without the launcher's settings for the application) plus the hub's
        settings (device, model folder)."""
        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer.util, "startupEnvironment") else dict(os.environ)
        env.update({name: os.environ[name] for name in SETTINGS_VARIABLES if name in os.environ})
        return env

    @staticmethod
    def targetsOf(segmentationNode, text: str) -> dict:
        """Segment name -> prescription (Gy) from the text, or from the segment names when the text is empty."""
        from rtrai.mrml import guess_targets, parse_targets, segment_names

        targets = parse_targets(text) if text.strip() else guess_targets(segment_names(segmentationNode))
        if not targets:
            raise ValueError("Say which segments are targets and their prescriptions, e.g. PTV70=70, PTV56=56 (no "
                             "segment name carries a dose level to take them from).")
        return targets

    def startPrediction(self, ctNode, segmentationNode, targetsText: str, model: str, device: str = "auto",
                        doseNode=None):
        """Start ``rtrai dose predict``; returns the job and a function that loads the dose as a SlicerRT dose volume
        (``doseNode``, or a new one named after the CT)."""
        from rtrai.core.jobs import Job, job_folder
        from rtrai.io.case_io import write_case
        from rtrai.mrml import load_dose_file, nodes_to_case, prescription_text

        if ctNode is None or segmentationNode is None:
            raise ValueError("Select a CT and its segmentation.")
        if not model.strip():
            raise ValueError(NO_MODEL_MESSAGE)
        case = nodes_to_case(ctNode, segmentationNode, targets=self.targetsOf(segmentationNode, targetsText))
        with job_folder("DosePredict-") as folder:
            write_case(case, folder / "case")
            output = folder / "prediction"
            job = Job.rtrai("dose", "predict", str(folder / "case"), "-o", str(output), "--model", model.strip(),
                            "--device", device, "--prescription", prescription_text(case.prescription),
                            env=self.jobEnvironment(), temporary=[folder]).start()
            return job, lambda: load_dose_file(output / "Dose.nrrd", slicer.mrmlScene,
                                               f"{ctNode.GetName()} predicted dose", reference_node=ctNode,
                                               node=doseNode)

    def startDvh(self, doseNode, segmentationNode, ctNode=None, chartNode=None, tableNode=None):
        """Start ``rtrai dvh`` of every segment (on the CT grid when a CT is given) in the dose (in Gy); returns the
        job and a function that loads the plot chart and the metrics table."""
        import pandas as pd

        from rtrai.core.jobs import Job, job_folder
        from rtrai.io.images import write_image
        from rtrai.io.segfile import write_segmentation
        from rtrai.mrml import dose_node_in_gy, dvh_chart, dvh_metrics_table, nodes_to_case

        if doseNode is None or segmentationNode is None:
            raise ValueError("Select a dose volume and a segmentation.")
        with job_folder("DosePredict-dvh-") as folder:
            write_image(dose_node_in_gy(doseNode), folder / "Dose.nrrd")
            case = nodes_to_case(ctNode, segmentationNode)
            if not case.structures:
                raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no non-empty segment.")
            write_segmentation(case.structures, folder / "Structures.seg.nrrd", case.colors, case.ct)
            output = folder / "dvh"
            job = Job.rtrai("dvh", "--dose", str(folder / "Dose.nrrd"), "--structures",
                            str(folder / "Structures.seg.nrrd"), "-o", str(output), env=self.jobEnvironment(),
                            temporary=[folder]).start()
            name = f"{doseNode.GetName()} DVH"

            def finish():
                chart = dvh_chart(pd.read_csv(output / "dvh.csv"), slicer.mrmlScene, name, case.colors, chartNode)
                table = dvh_metrics_table(pd.read_csv(output / "metrics.csv"), slicer.mrmlScene, f"{name} metrics",
                                          tableNode)
                return chart, table

            return job, finish

    def startGamma(self, referenceNode, evaluatedNode, doseDifference: float = 3.0, distanceToAgreement: float = 3.0,
                   gammaNode=None):
        """Start ``rtrai gamma`` (global, 10 % cut-off); returns the job and a function that loads the gamma map (on
        the reference grid) and returns it with the summary of gamma.json (pass rate...)."""
        from rtrai.core.jobs import Job, job_folder
        from rtrai.io.images import write_image
        from rtrai.mrml import dose_node_in_gy, load_gamma_map

        if referenceNode is None or evaluatedNode is None:
            raise ValueError("Select a reference and an evaluated dose.")
        with job_folder("DosePredict-gamma-") as folder:
            write_image(dose_node_in_gy(referenceNode), folder / "reference.nrrd")
            write_image(dose_node_in_gy(evaluatedNode), folder / "evaluated.nrrd")
            output = folder / "gamma"
            job = Job.rtrai("gamma", "--reference", str(folder / "reference.nrrd"), "--evaluated",
                            str(folder / "evaluated.nrrd"), "--dd", f"{float(doseDifference):g}", "--dta",
                            f"{float(distanceToAgreement):g}", "-o", str(output), env=self.jobEnvironment(),
                            temporary=[folder]).start()
            name = f"gamma {doseDifference:g}%-{distanceToAgreement:g}mm {evaluatedNode.GetName()}"

            def finish():
                node = load_gamma_map(output / "gamma.nrrd", slicer.mrmlScene, name, node=gammaNode)
                return node, json.loads((output / "gamma.json").read_text(encoding="utf-8"))

            return job, finish

    @staticmethod
    def describeGamma(summary: dict) -> str:
        parameters = summary.get("parameters", {})
        criteria = f"{parameters.get('dose_percent', '?')} %/{parameters.get('dta_mm', '?')} mm"
        return (f"Gamma {criteria}: pass rate {summary['pass_rate_pct']:.2f} % of {summary['evaluated_points']} "
                f"voxels, mean gamma {summary['mean_gamma']:.3f}.")


class DosePredictTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_lists_dose_models_and_guesses_targets()
        self.setUp()
        self.test_dvh_and_gamma_of_the_phantom_dose()
        self.setUp()
        self.test_prediction_when_a_dose_model_is_installed()

    def _phantom(self):
        from rtrai.mrml import case_to_scene
        from rtrai.phantom import make_phantom

        return case_to_scene(make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0)), slicer.mrmlScene)

    def _wait(self, job, seconds=900):
        import time

        deadline = time.time() + seconds
        while not job.poll().finished and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(job.state, "succeeded", job.last_error)

    def test_panel_lists_dose_models_and_guesses_targets(self):
        self.delayDisplay("DosePredict panel")
        nodes = self._phantom()
        slicer.util.selectModule("DosePredict")
        widget = slicer.util.getModuleWidget("DosePredict")
        combo = widget.ui.modelComboBox
        models = DosePredictLogic.doseModels()
        self.assertEqual([combo.itemText(i) for i in range(combo.count)], models)
        parameterNode = widget.logic.getParameterNode()
        parameterNode.structures = None
        parameterNode.targets = ""
        parameterNode.structures = nodes["structures"]  # a segmentation is chosen: targets from its names
        self.assertEqual(parameterNode.targets, "PTV70=70,PTV56=56")
        self.assertEqual(widget.ui.targetsLineEdit.text, "PTV70=70,PTV56=56")
        widget.ui.targetsLineEdit.text = "PTV70=66"
        self.assertEqual(parameterNode.targets, "PTV70=66")
        widget.ui.targetsFromNamesButton.click()
        self.assertEqual(parameterNode.targets, "PTV70=70,PTV56=56")
        parameterNode.ct = nodes["ct"]
        self.assertEqual(widget.ui.predictButton.enabled, bool(models))
        widget.ui.deviceComboBox.setCurrentIndex(DEVICES.index("cpu"))
        self.assertEqual(parameterNode.device, "cpu")
        parameterNode.device = "auto"
        self.delayDisplay("Test passed")

    def test_dvh_and_gamma_of_the_phantom_dose(self):
        from rtrai.mrml import is_dose_volume, node_to_table

        self.delayDisplay("DVH and gamma of the phantom's dose")
        nodes = self._phantom()
        self.assertTrue(is_dose_volume(nodes["dose"]))
        logic = DosePredictLogic()
        job, finish = logic.startDvh(nodes["dose"], nodes["structures"], nodes["ct"])
        self._wait(job)
        chart, table = finish()
        segments = nodes["structures"].GetSegmentation().GetNumberOfSegments()
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), segments)
        metrics = node_to_table(table).set_index("Structure")
        self.assertGreater(metrics.loc["PTV70", "D95%"], 60.0)  # the phantom's PTV70 D95 is 69 Gy
        self.assertLess(metrics.loc["SpinalCord", "Dmax"], 30.0)

        job, finish = logic.startGamma(nodes["dose"], nodes["dose"], 3.0, 3.0)
        self._wait(job)
        gamma, summary = finish()
        self.assertEqual(summary["pass_rate_pct"], 100.0)  # a dose against itself
        self.assertEqual(gamma.GetImageData().GetDimensions(), nodes["dose"].GetImageData().GetDimensions())
        self.delayDisplay("Test passed")

    def test_prediction_when_a_dose_model_is_installed(self):
        import importlib.util

        from rtrai.mrml import is_dose_volume

        models = DosePredictLogic.doseModels()
        if not models:
            self.skipTest(NO_MODEL_MESSAGE)
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("monai") is None:
            self.skipTest("PyTorch and MONAI are needed: install them from the RTRadiomicsAI hub module")
        self.delayDisplay(f"Predicting the phantom's dose with {models[0]}")
        from rtrai.phantom import make_phantom
        from rtrai.mrml import case_to_scene

        nodes = case_to_scene(make_phantom(seed=0), slicer.mrmlScene)  # OpenKBP's grid, as the models were trained
        job, finish = DosePredictLogic().startPrediction(nodes["ct"], nodes["structures"], "", models[0], "cpu")
        self._wait(job)
        dose = finish()
        self.assertTrue(is_dose_volume(dose))
        self.assertGreater(slicer.util.arrayFromVolume(dose).max(), 40.0)  # a 70 Gy plan, not an empty volume
        self.delayDisplay("Test passed")
