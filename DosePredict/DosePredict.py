"""DosePredict: deep-learning prediction of the 3D dose from CT + structures, and dose evaluation (DVH, gamma).

"Predict" runs ``rtrai dose predict`` on the CT and the segmentation, with the segments chosen as targets at their
prescriptions, in a background process (:mod:`rtrai.core.jobs`) polled from a QTimer on the main thread, with
progress and Cancel. The result is a dose volume SlicerRT takes as its own (isodose colours, Gy unit on its study),
followed by its DVH (``rtrai dvh``: plot chart and metrics table). "Gamma" runs ``rtrai gamma`` between a reference
and an evaluated dose and loads the gamma map as a volume. "Plan" runs ``rtrai plan`` (an IMRT fluence plan whose dose
mimics a given or predicted dose) and loads the plan dose as a dose volume; "QA" runs ``rtrai dose qa`` (a plan's
dose against the predicted achievable dose) and loads qa.csv as a table. The jobs run in the background through
:class:`RTRadiomicsAILib.jobs.BackgroundJobPanel`; MRML is touched on the main thread only; the file exchange with
the jobs is in :mod:`rtrai.mrml.exchange` and :mod:`rtrai.mrml.plots`.
"""

from __future__ import annotations

import json
from typing import Annotated

import slicer
from RTRadiomicsAILib import results
from RTRadiomicsAILib.jobs import startJob
from RTRadiomicsAILib.settings import DEVICES
from RTRadiomicsAILib.template import ModuleTest, ModuleWidget, describeModule, zooModels
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

NO_MODEL_MESSAGE = ("No dose model is installed in the RTRadiomicsAI model zoo yet (hn-dose-openkbp is being "
                    "trained). Type the path of a model folder in 'Model' to use one.")


class DosePredict(ScriptedLoadableModule):
    def __init__(self, parent):
        describeModule(self, parent, "DosePredict", ["Radiotherapy"], HELP, ACKNOWLEDGEMENT)


# The module's entry in Slicer's help panel.
HELP = """
Predicts the 3D dose of a head-and-neck plan from the CT, the structures and the targets with their prescriptions
(a deep-learning model of the RTRadiomicsAI model zoo), as a dose volume SlicerRT's Isodose and Dose Volume Histogram
modules take as their own. Also the DVH (plot and metrics) of any dose and the 3D gamma index between two doses, with
the gamma map as a volume. <b>Plan</b> makes a photon IMRT fluence plan whose dose mimics a given or the predicted dose
and loads the plan dose; <b>QA</b> checks a plan's dose against the predicted achievable dose (a flag where an OAR is
above it or a target's coverage below it by more than the margin).
Work runs in a background process; the same steps are <code>rtrai dose predict</code>, <code>rtrai dvh</code>,
<code>rtrai gamma</code>, <code>rtrai plan</code> and <code>rtrai dose qa</code>."""
ACKNOWLEDGEMENT = """Dose prediction trained on OpenKBP (Babier et al., Med. Phys. 2021)."""


@parameterNodeWrapper
class DosePredictParameterNode:
    """ct, structures, targets ("PTV70=70, PTV56=56": segment=Gy), device ("auto": the hub's setting) and
    predictedDose (a new volume when none) for Predict; dvhDose, dvhChart, dvhMetrics for the DVH; referenceDose,
    evaluatedDose, doseDifference (%), distanceToAgreement (mm) and gammaMap for the gamma index; planSourceDose
    (the dose to mimic; none: predicted with the model), planDose and planComparison for Plan; qaPlanDose,
    qaPredictedDose (none: predicted by the command), marginGy and qaTable for QA. The model is chosen in a combo box
    filled from the model zoo at run time."""

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
    planSourceDose: vtkMRMLScalarVolumeNode
    planDose: vtkMRMLScalarVolumeNode
    planComparison: vtkMRMLTableNode
    qaPlanDose: vtkMRMLScalarVolumeNode
    qaPredictedDose: vtkMRMLScalarVolumeNode
    marginGy: Annotated[float, WithinRange(0.0, 20.0), Default(5.0)]  # rtrai dose qa's default
    qaTable: vtkMRMLTableNode


class DosePredictWidget(ModuleWidget, ScriptedLoadableModuleWidget):
    UI_FILE = "UI/DosePredict.ui"
    DEFAULT_INPUTS = {"ct": "vtkMRMLScalarVolumeNode", "structures": "vtkMRMLSegmentationNode"}
    MODEL_TASK = "dose"

    def __init__(self, parent=None) -> None:
        self._structuresID = None  # the segmentation the targets text was last filled for
        ModuleWidget.__init__(self, parent)

    def createLogic(self):
        return DosePredictLogic()

    def fillModels(self) -> list:
        models = ModuleWidget.fillModels(self)
        self.ui.modelStatusLabel.text = "" if models else NO_MODEL_MESSAGE
        return models

    def updateButtons(self) -> None:
        p, idle = self.parameterNode, self.idle
        structuresID = p.structures.GetID() if p and p.structures else None
        if structuresID != self._structuresID:
            # Another segmentation: fill the targets from its names (PTV70 -> 70 Gy; the user may change them), but
            # keep a text the user wrote for this one when the module is entered again.
            refill = structuresID and (self._structuresID is not None or not p.targets.strip())
            self._structuresID = structuresID
            if refill:
                self.onTargetsFromNames()
        hasModel = bool(self.ui.modelComboBox.currentText.strip())
        hasCase = bool(idle and p and p.ct and p.structures)
        self.ui.predictButton.enabled = hasCase and hasModel
        self.ui.predictButton.toolTip = ("Predict the dose in a background process." if hasModel
                                         else NO_MODEL_MESSAGE)
        self.ui.dvhButton.enabled = bool(idle and p and p.dvhDose and p.structures)
        self.ui.gammaButton.enabled = bool(idle and p and p.referenceDose and p.evaluatedDose)
        self.ui.planButton.enabled = bool(hasCase and (p.planSourceDose or hasModel))
        self.ui.qaButton.enabled = bool(hasCase and p.qaPlanDose)

    def onTargetsFromNames(self) -> None:
        from rtrai.mrml import guess_targets, prescription_text, segment_names

        p = self.parameterNode
        if p and p.structures:
            text = prescription_text(guess_targets(segment_names(p.structures)))
            if text != p.targets:
                p.targets = text

    # -- panels ------------------------------------------------------------------------------------------------
    def onPredict(self) -> None:
        p = self.parameterNode

        def show(dose):
            p.predictedDose = p.dvhDose = p.evaluatedDose = dose
            slicer.util.setSliceViewerLayers(background=p.ct, foreground=dose, foregroundOpacity=0.4)
            self.ui.statusLabel.text = f"Predicted dose in '{dose.GetName()}'; computing its DVH..."
            self.onDvh()  # the DVH belongs with every prediction

        self.jobs.run("the dose prediction", lambda: self.logic.startPrediction(
            p.ct, p.structures, p.targets, self.ui.modelComboBox.currentText, p.device, p.predictedDose), show)

    def onDvh(self) -> None:
        p = self.parameterNode

        def show(loaded):
            p.dvhChart, p.dvhMetrics = loaded
            slicer.modules.plots.logic().ShowChartInLayout(p.dvhChart)
            self.ui.dvhTableView.setMRMLTableNode(p.dvhMetrics)
            self.ui.statusLabel.text = f"DVH of '{p.dvhDose.GetName()}' in '{p.dvhChart.GetName()}'."

        self.jobs.run("the DVH", lambda: self.logic.startDvh(p.dvhDose, p.structures, p.ct, p.dvhChart, p.dvhMetrics),
                      show)

    def onGamma(self) -> None:
        p = self.parameterNode

        def show(loaded):
            p.gammaMap, summary = loaded
            slicer.util.setSliceViewerLayers(foreground=p.gammaMap, foregroundOpacity=0.6)
            self.ui.gammaResultLabel.text = self.logic.describeGamma(summary)
            self.ui.statusLabel.text = f"Gamma map in '{p.gammaMap.GetName()}'."

        self.jobs.run("the gamma index", lambda: self.logic.startGamma(
            p.referenceDose, p.evaluatedDose, p.doseDifference, p.distanceToAgreement, p.gammaMap), show)

    def onPlan(self) -> None:
        p = self.parameterNode

        def show(loaded):
            p.planDose, p.planComparison = loaded
            p.qaPlanDose = p.dvhDose = p.evaluatedDose = p.planDose
            slicer.util.setSliceViewerLayers(background=p.ct, foreground=p.planDose, foregroundOpacity=0.4)
            self.ui.planTableView.setMRMLTableNode(p.planComparison)
            self.ui.statusLabel.text = f"Plan dose in '{p.planDose.GetName()}'."

        self.jobs.run("the planning", lambda: self.logic.startPlan(
            p.ct, p.structures, p.targets, p.planSourceDose, self.ui.modelComboBox.currentText, p.planDose,
            p.planComparison), show)

    def onQa(self) -> None:
        p = self.parameterNode

        def show(loaded):
            p.qaTable, verdict = loaded
            self.ui.qaTableView.setMRMLTableNode(p.qaTable)
            self.ui.qaResultLabel.text = self.ui.statusLabel.text = verdict

        self.jobs.run("the plan QA", lambda: self.logic.startQa(
            p.ct, p.structures, p.targets, p.qaPlanDose, p.qaPredictedDose, p.marginGy, p.qaTable), show)


class DosePredictLogic(ScriptedLoadableModuleLogic):
    """MRML in, ``rtrai dose predict`` / ``rtrai dvh`` / ``rtrai gamma`` in a background process, MRML out."""

    def getParameterNode(self):
        return DosePredictParameterNode(super().getParameterNode())

    @staticmethod
    def targetsOf(segmentationNode, text: str) -> dict:
        """Segment name -> prescription (Gy) from the text, or from the segment names when the text is empty."""
        from rtrai.mrml import guess_targets, parse_targets, segment_names

        targets = parse_targets(text) if text.strip() else guess_targets(segment_names(segmentationNode))
        if not targets:
            raise ValueError("Say which segments are targets and their prescriptions, e.g. PTV70=70, PTV56=56 (no "
                             "segment name carries a dose level to take them from).")
        return targets

    @staticmethod
    def doseModels() -> list:
        return zooModels("dose")

    def startPrediction(self, ctNode, segmentationNode, targetsText: str, model: str, device: str = "auto",
                        doseNode=None):
        """Start ``rtrai dose predict``; returns the job and a function that loads the dose as a SlicerRT dose volume
        (``doseNode``, or a new one named after the CT)."""
        from rtrai.core.jobs import job_folder
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
            job = startJob("dose", "predict", str(folder / "case"), "-o", str(output), "--model", model.strip(),
                           "--device", device, "--prescription", prescription_text(case.prescription),
                           temporary=[folder])
            return job, lambda: load_dose_file(output / "Dose.nrrd", slicer.mrmlScene,
                                               f"{ctNode.GetName()} predicted dose", reference_node=ctNode,
                                               node=doseNode)

    def startDvh(self, doseNode, segmentationNode, ctNode=None, chartNode=None, tableNode=None):
        """Start ``rtrai dvh`` of every segment (on the CT grid when a CT is given) in the dose (in Gy); returns the
        job and a function that loads the plot chart and the metrics table."""
        import pandas as pd

        from rtrai.core.jobs import job_folder
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
            job = startJob("dvh", "--dose", str(folder / "Dose.nrrd"), "--structures",
                           str(folder / "Structures.seg.nrrd"), "-o", str(output), temporary=[folder])
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
        from rtrai.core.jobs import job_folder
        from rtrai.io.images import write_image
        from rtrai.mrml import dose_node_in_gy, load_gamma_map

        if referenceNode is None or evaluatedNode is None:
            raise ValueError("Select a reference and an evaluated dose.")
        with job_folder("DosePredict-gamma-") as folder:
            write_image(dose_node_in_gy(referenceNode), folder / "reference.nrrd")
            write_image(dose_node_in_gy(evaluatedNode), folder / "evaluated.nrrd")
            output = folder / "gamma"
            job = startJob("gamma", "--reference", str(folder / "reference.nrrd"), "--evaluated",
                           str(folder / "evaluated.nrrd"), "--dd", f"{float(doseDifference):g}", "--dta",
                           f"{float(distanceToAgreement):g}", "-o", str(output), temporary=[folder])
            name = f"gamma {doseDifference:g}%-{distanceToAgreement:g}mm {evaluatedNode.GetName()}"

            def finish():
                node = load_gamma_map(output / "gamma.nrrd", slicer.mrmlScene, name, node=gammaNode)
                return node, json.loads((output / "gamma.json").read_text(encoding="utf-8"))

            return job, finish

    def _writePlanningCase(self, folder, ctNode, segmentationNode, targetsText: str):
        """The case the planning commands read (CT, structures, targets at their prescriptions) in ``folder``/case."""
        from rtrai.io.case_io import write_case
        from rtrai.mrml import nodes_to_case

        if ctNode is None or segmentationNode is None:
            raise ValueError("Select a CT and its segmentation.")
        case = nodes_to_case(ctNode, segmentationNode, targets=self.targetsOf(segmentationNode, targetsText))
        write_case(case, folder / "case")
        return folder / "case"

    def startPlan(self, ctNode, segmentationNode, targetsText: str, sourceDoseNode=None, model: str = "",
                  planDoseNode=None, comparisonNode=None):
        """Start ``rtrai plan`` mimicking ``sourceDoseNode`` (``--dose``), or the dose the model predicts
        (``--predict --model``) when there is none; returns the job and a function that loads OUT/PlanDose.nrrd as a
        SlicerRT dose volume and OUT/dvh_comparison.csv as a table node."""
        from rtrai.core.jobs import job_folder
        from rtrai.io.images import write_image
        from rtrai.mrml import dose_node_in_gy, load_dose_file

        if sourceDoseNode is None and not model.strip():
            raise ValueError("Select the dose to mimic, or a dose model to predict it with. " + NO_MODEL_MESSAGE)
        with job_folder("DosePredict-plan-") as folder:
            case = self._writePlanningCase(folder, ctNode, segmentationNode, targetsText)
            if sourceDoseNode is not None:
                write_image(dose_node_in_gy(sourceDoseNode), folder / "mimic.nrrd")
                source = ["--dose", str(folder / "mimic.nrrd")]
            else:
                source = ["--predict", "--model", model.strip()]
            output = folder / "plan"
            job = startJob("plan", str(case), "-o", str(output), *source, temporary=[folder])
            name = f"{ctNode.GetName()} plan"

            def finish():
                dose = load_dose_file(output / "PlanDose.nrrd", slicer.mrmlScene, f"{name} dose", reference_node=ctNode,
                                      node=planDoseNode)
                table = results.loadCsvTable(output / "dvh_comparison.csv", slicer.mrmlScene, f"{name} DVH comparison",
                                             comparisonNode)
                return dose, table

            return job, finish

    def startQa(self, ctNode, segmentationNode, targetsText: str, planDoseNode, predictedDoseNode=None,
                marginGy: float = 5.0, tableNode=None):
        """Start ``rtrai dose qa`` of the plan dose against ``predictedDoseNode`` (``--predicted``; predicted by the
        command when there is none); returns the job and a function that loads OUT/qa.csv as a table node and returns
        it with the command's one-line verdict."""
        import pandas as pd

        from rtrai.core.jobs import job_folder
        from rtrai.io.images import write_image
        from rtrai.mrml import dose_node_in_gy

        if planDoseNode is None:
            raise ValueError("Select the plan dose to check.")
        with job_folder("DosePredict-qa-") as folder:
            case = self._writePlanningCase(folder, ctNode, segmentationNode, targetsText)
            write_image(dose_node_in_gy(planDoseNode), folder / "plan.nrrd")
            predicted = []
            if predictedDoseNode is not None:
                write_image(dose_node_in_gy(predictedDoseNode), folder / "predicted.nrrd")
                predicted = ["--predicted", str(folder / "predicted.nrrd")]
            output = folder / "qa"
            job = startJob("dose", "qa", str(case), "--plan-dose", str(folder / "plan.nrrd"), *predicted,
                           "--margin-gy", f"{float(marginGy):g}", "-o", str(output), temporary=[folder])

            def finish():
                table = results.loadCsvTable(output / "qa.csv", slicer.mrmlScene, f"{planDoseNode.GetName()} QA",
                                             tableNode)
                return table, results.describePlanQa(pd.read_csv(output / "qa.csv"))

            return job, finish

    @staticmethod
    def describeGamma(summary: dict) -> str:
        parameters = summary.get("parameters", {})
        criteria = f"{parameters.get('dose_percent', '?')} %/{parameters.get('dta_mm', '?')} mm"
        return (f"Gamma {criteria}: pass rate {summary['pass_rate_pct']:.2f} % of {summary['evaluated_points']} "
                f"voxels, mean gamma {summary['mean_gamma']:.3f}.")


class DosePredictTest(ModuleTest, ScriptedLoadableModuleTest):
    def _phantom(self):
        from rtrai.mrml import case_to_scene
        from rtrai.phantom import make_phantom

        return case_to_scene(make_phantom(seed=0, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0)), slicer.mrmlScene)

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
        self.waitForJob(job)
        chart, table = finish()
        segments = nodes["structures"].GetSegmentation().GetNumberOfSegments()
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), segments)
        metrics = node_to_table(table).set_index("Structure")
        self.assertGreater(metrics.loc["PTV70", "D95%"], 60.0)  # the phantom's PTV70 D95 is 69 Gy
        self.assertLess(metrics.loc["SpinalCord", "Dmax"], 30.0)

        job, finish = logic.startGamma(nodes["dose"], nodes["dose"], 3.0, 3.0)
        self.waitForJob(job)
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
        self.waitForJob(job)
        dose = finish()
        self.assertTrue(is_dose_volume(dose))
        self.assertGreater(slicer.util.arrayFromVolume(dose).max(), 40.0)  # a 70 Gy plan, not an empty volume
        self.delayDisplay("Test passed")
