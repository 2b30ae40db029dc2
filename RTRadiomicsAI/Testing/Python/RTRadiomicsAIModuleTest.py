"""Tests of the RTRadiomicsAI hub logic for Slicer's own test runner (ctest: py_RTRadiomicsAIModuleTest).

They need the Slicer application (qt, slicer.app, the module on the module path), so pytest does not collect them;
the library behind the logic is tested headless by the pytest suite in the repository's Testing/ folder.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from RTRadiomicsAI import RTRadiomicsAILogic
from RTRadiomicsAILib import workflow
from RTRadiomicsAILib.jobs import startJob
from RTRadiomicsAILib.settings import ENV_DEVICE, jobEnvironment


class RTRadiomicsAIModuleTest(ScriptedLoadableModuleTest):
    """Load a small synthetic case through the logic and check the scene against the phantom's ground truth."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = Path(tempfile.mkdtemp(prefix="RTRadiomicsAIModuleTest-", dir=slicer.app.temporaryPath))

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self):
        for test in (self.test_LoadCaseFolder, self.test_RefusedInputAddsNothing, self.test_SettingsReachJobs,
                     self.test_PackageStatus, self.test_WorkflowStepsFromEvents, self.test_WorkflowRunsAndLoads):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def _writePhantomCase(self):
        from rtrai.io.case_io import write_case
        from rtrai.phantom import make_phantom

        # Coarse sampling keeps the case small (a few MB) while the anatomy, defined in mm, stays whole.
        case = make_phantom(seed=0, size=(64, 64, 48), spacing=(4.0, 4.0, 5.0))
        write_case(case, self.folder)
        return case

    def test_LoadCaseFolder(self):
        self.delayDisplay("Loading a synthetic case folder")
        expected = self._writePhantomCase()
        logic = RTRadiomicsAILogic()
        loaded = logic.loadCase(self.folder)

        ct = loaded["ct"]
        self.assertTrue(ct.IsA("vtkMRMLScalarVolumeNode"))
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(ct.GetID()))  # in the application's scene
        self.assertEqual(tuple(ct.GetImageData().GetDimensions()), tuple(expected.ct.GetSize()))
        np.testing.assert_allclose(slicer.util.arrayFromVolume(ct), sitk.GetArrayFromImage(expected.ct))

        segmentation = loaded["structures"].GetSegmentation()
        names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
        self.assertEqual(names, sorted(expected.structures))
        for name, mask in expected.structures.items():
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(loaded["structures"], segmentId, ct)
            self.assertEqual(int(np.count_nonzero(voxels)), int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))),
                             name)

        from rtrai.mrml import is_dose_volume

        dose = loaded["dose"]
        self.assertTrue(is_dose_volume(dose))
        self.assertAlmostEqual(float(slicer.util.arrayFromVolume(dose).max()),
                               float(sitk.GetArrayViewFromImage(expected.dose).max()), places=4)

        logic.showCase(loaded)
        self.assertIn(expected.patient_id, logic.describeCase(loaded))
        self.delayDisplay("Case loaded")

    def test_RefusedInputAddsNothing(self):
        from rtrai.core.errors import InputError

        (self.folder / "notes.txt").write_text("not a case")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            RTRadiomicsAILogic().loadCase(self.folder)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_SettingsReachJobs(self):
        logic = RTRadiomicsAILogic()
        parameterNode = logic.getParameterNode()
        saved = (parameterNode.device, parameterNode.modelCacheFolder)
        try:
            parameterNode.device = "cpu"
            parameterNode.modelCacheFolder = self.folder / "models"
            logic.applySettings(parameterNode)
            self.assertEqual(os.environ[ENV_DEVICE], "cpu")
            self.assertEqual(logic.resolvedDevice("cpu"), "cpu")
            self.assertIn(logic.resolvedDevice("auto"), ("cpu", "cuda"))

            # Child processes (PythonSlicer) see the settings...
            from rtrai.core.jobs import Job, python_executable

            script = "import os; print(os.environ['RTRAI_DEVICE'], os.environ['RTRAI_MODEL_CACHE'])"
            job = Job([python_executable(), "-c", script], env=jobEnvironment()).start()
            self.assertEqual(job.wait(120).state, "succeeded", job.log)
            self.assertEqual(job.log[-1], f"cpu {self.folder / 'models'}")

            # ... and a real background `rtrai` command runs to success.

            job = startJob("--help")
            self.assertEqual(job.wait(120).state, "succeeded", job.log)
            self.assertTrue(any(line.startswith("usage: rtrai") for line in job.log), job.log)
        finally:
            parameterNode.device, parameterNode.modelCacheFolder = saved
            logic.applySettings(parameterNode)

    def test_PackageStatus(self):
        from rtrai.core.dependencies import PACKAGES

        status = RTRadiomicsAILogic.packageStatus()
        self.assertEqual([s.package for s in status], list(PACKAGES))
        # Slicer itself ships these, so they must be reported as present.
        present = {s.package.module for s in status if s.present}
        self.assertTrue({"SimpleITK", "pydicom"} <= present, present)

    def test_WorkflowStepsFromEvents(self):
        from rtrai.pipeline import STEPS

        logic = RTRadiomicsAILogic()
        steps = logic.emptySteps()
        self.assertEqual([s["name"] for s in steps], list(STEPS))
        self.assertEqual({s["status"] for s in steps}, {"pending"})
        event = {"case": "pt_1", "name": "dose", "title": "DosePredict", "status": "running", "seconds": None,
                 "summary": None, "reason": None}
        steps = workflow.applyStepEvents(steps, [event, {**event, "status": "done", "seconds": 2.5}])
        self.assertEqual(steps[STEPS.index("dose")]["status"], "done")
        self.assertEqual(workflow.cancelledSteps(steps)[0]["status"], "cancelled")
        self.assertEqual(logic.workflowArguments("in", "out", True, "model"),
                         ["run", "in", "-o", "out", "--keep-structures", "--outcome-model", "model"])

    def test_WorkflowRunsAndLoads(self):
        """"Run all" on a small synthetic case in a background process, then its results in the scene."""
        import json
        import time

        self.delayDisplay("Running the workflow on a small synthetic case")
        self._writePhantomCase()
        logic = RTRadiomicsAILogic()
        output = self.folder / "results"
        job = logic.startWorkflow(self.folder, output, keepStructures=True)
        deadline = time.time() + 600
        steps = logic.emptySteps()
        while time.time() < deadline:
            update = job.poll()
            steps = workflow.applyStepEvents(steps, update.steps)
            if update.finished:
                break
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(job.state, "succeeded", job.log[-20:])
        followed = {s["name"]: s["status"] for s in steps}  # from the events alone, before provenance.json is read
        self.assertEqual(followed["segment"], "skipped")
        self.assertEqual(followed["radiomics"], "done")
        loaded = logic.loadResults(output)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(loaded["ct"].GetID()))
        self.assertIn("DVH constraints", loaded["tables"])
        statuses = {s["name"]: s["status"] for s in loaded["steps"]}
        self.assertEqual(statuses["segment"], "skipped")  # --keep-structures
        self.assertEqual(statuses["radiomics"], "done")
        record = json.loads((output / "provenance.json").read_text())
        self.assertEqual(record["status"], "complete")
        self.assertTrue((output / "report.html").is_file())
        self.delayDisplay("Workflow done")
