"""What one run is made of: the options a user chooses, the steps with their status and timings, and what each step
produced (:class:`CaseRun`, from which the report and the output files are written)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rtrai.plan.engine import DEFAULT_BEAMS

STEPS = ("load", "segment", "qa", "dose", "dvh", "plan", "plan_qa", "radiomics", "outcome", "report")
STEP_TITLES = {"load": "Load case", "segment": "AutoSegment", "qa": "Contour QA", "dose": "DosePredict",
               "dvh": "DVH and constraints", "plan": "Treatment plan", "plan_qa": "Plan QA", "radiomics": "Radiomics",
               "outcome": "Outcome model", "report": "Report and scene"}
PLAN_STEPS = ("plan", "plan_qa")  # only with --plan (skipped with that reason otherwise)
PENDING, RUNNING, DONE, SKIPPED, FAILED = "pending", "running", "done", "skipped", "failed"
OUTPUT_FILES = ("CT.nrrd", "Structures.seg.nrrd", "Dose.nrrd", "features.csv", "dvh.csv", "report.html", "scene.mrb",
                "provenance.json")
DVH_METRICS = ("Volume", "Dmean", "Dmax", "Dmin", "D98%", "D95%", "D50%", "D2%", "D0.03cc")


class StepSkipped(Exception):
    """Raised inside a step that cannot run; the message is the reason shown in the report and the log."""


@dataclass
class Options:
    """What ``rtrai run`` lets a user choose (defaults: the shipped models, everything on)."""

    keep_structures: bool = False
    segmentation_model: str = "hn-oar-ct"
    dose_model: str = "hn-dose-openkbp"
    prescription: dict[str, float] = field(default_factory=dict)
    outcome_model: str | None = None
    device: str = "auto"
    scene: bool = True
    jobs: int | None = None  # radiomics worker processes (default: up to 4, as many as there are CPUs)
    plan: bool = False  # --plan: a fluence plan mimicking the dose (rtrai.plan) and its QA (rtrai.dose.qa)
    plan_beams: int = DEFAULT_BEAMS  # the defaults of `rtrai plan`
    plan_bixel_mm: float = 7.0
    plan_grid_mm: float = 6.0
    plan_iterations: int = 500
    qa_margin_gy: float | None = None  # plan QA margin (None: rtrai.dose.qa.DEFAULT_MARGIN_GY)
    notes: list[str] = field(default_factory=list)  # plain sentences for the report's banner (the demo's)
    command: str = "run"  # what provenance.json names as the command ("demo" for the demo)
    provenance: dict = field(default_factory=dict)  # more for provenance.json (the demo's cohort and seeds)

    def to_dict(self) -> dict:
        return {"keep_structures": self.keep_structures, "segmentation_model": self.segmentation_model,
                "dose_model": self.dose_model, "prescription": dict(self.prescription),
                "outcome_model": self.outcome_model, "device": self.device, "scene": self.scene, "jobs": self.jobs,
                "plan": self.plan, **({"plan_beams": self.plan_beams, "plan_bixel_mm": self.plan_bixel_mm,
                                       "plan_grid_mm": self.plan_grid_mm, "plan_iterations": self.plan_iterations,
                                       "qa_margin_gy": self.qa_margin_gy} if self.plan else {})}


@dataclass
class Step:
    """One step's status and measurements; only the step runner (:mod:`rtrai.pipeline.runner`) changes them."""

    name: str
    status: str = PENDING
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process and its finished workers: the work, whatever the load
    peak_rss_mib: float | None = None
    summary: str = ""
    reason: str = ""

    @property
    def title(self) -> str:
        return STEP_TITLES[self.name]

    def to_dict(self) -> dict:
        """The step as provenance.json and the scene's table hold it."""
        return {"name": self.name, "title": self.title, "status": self.status, "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3), "peak_rss_mib": self.peak_rss_mib,
                "summary": self.summary, "reason": self.reason}

    def event(self, case: str | None = None) -> dict:
        """The structured step event (``on_step`` and ``<rtrai-step>`` lines): case, name, title, status, seconds,
        summary, reason; seconds is None while running, summary and reason None when empty."""
        return {"case": case, "name": self.name, "title": self.title, "status": self.status,
                "seconds": None if self.status == RUNNING else round(self.seconds, 3),
                "summary": self.summary or None, "reason": self.reason or None}

    def log_line(self) -> str:
        return (f"{self.name}: {self.status} in {self.seconds:.1f} s" + (f" - {self.summary}" if self.summary else "")
                + (f" - {self.reason}" if self.reason else ""))


@dataclass
class Structures:
    """The segment step's account of the structures (the load step fills ``source`` with "input")."""

    source: dict[str, str] = field(default_factory=dict)  # name -> "AutoSegment <model>" | "input"
    reference: dict = field(default_factory=dict)  # given structures AutoSegment replaced (name -> mask)
    dice: dict[str, float] = field(default_factory=dict)  # AutoSegment vs the given structure


@dataclass
class DoseResult:
    """Where the case's dose came from (the dose step)."""

    source: str = ""  # "predicted by <model>" | "from the input" | ""
    input_dose: object = None  # the input's own dose when a predicted one replaced it
    comparison: dict = field(default_factory=dict)  # predicted vs the input's dose


@dataclass
class DvhResult:
    """The dvh step's DVHs, metrics and constraints."""

    samples: dict = field(default_factory=dict)  # structure -> dose samples
    table: dict = field(default_factory=dict)  # the cumulative DVH table (dvh.csv)
    metrics: list[dict] = field(default_factory=list)  # rows: structure, metric, value
    constraints: list = field(default_factory=list)  # rtrai.dose.constraints results


@dataclass
class PlanRun:
    """The plan and plan_qa steps' results (with --plan)."""

    result: object = None  # rtrai.plan.mimicking.PlanResult
    mimicked: str = ""  # which dose the plan mimics ("the predicted dose" | "the dose of the input")
    own_dose: object = None  # the input's own dose on the CT grid (the plan QA's reference when there is one)
    comparison: list[dict] = field(default_factory=list)  # per structure and metric: predicted, planned, input
    qa: object = None  # rtrai.dose.qa.QAResult
    qa_reference: str = ""  # what the plan dose was checked against
    images: dict[str, bytes] = field(default_factory=dict)  # report: dvh, fluence, qa (PNG, as written in plan/)


@dataclass
class CaseRun:
    """Everything one run produced, grouped by the step that produced it; the report and the output files are
    written from it."""

    source: object  # a path, or a Case handed over in memory (the demo)
    options: Options
    outdir: Path
    steps: dict[str, Step] = field(default_factory=lambda: {name: Step(name) for name in STEPS})
    case: object = None  # rtrai.core.case.Case (load; the later steps add to it)
    structures: Structures = field(default_factory=Structures)  # load, segment
    dose: DoseResult = field(default_factory=DoseResult)  # dose
    dvh: DvhResult = field(default_factory=DvhResult)  # dvh
    features: object = None  # pandas DataFrame, long format (radiomics)
    contour_qa: dict = field(default_factory=dict)  # qa: rows (one per structure, rtrai.segmentation.qa), reference
    plan: PlanRun = field(default_factory=PlanRun)  # plan, plan_qa
    outcome: dict = field(default_factory=dict)  # outcome
    models: list[dict] = field(default_factory=list)  # every model used: role, name, version, sha256
    log: list[str] = field(default_factory=list)  # one line per finished step
    written: list[str] = field(default_factory=list)  # report: the files written
    scene_note: str = ""  # report: scene.mrb's name, or why it was not written
    started: float = field(default_factory=time.time)

    @property
    def synthetic(self) -> bool:
        return bool(self.case is not None and self.case.metadata.get("synthetic"))

    @property
    def source_label(self) -> str:
        if isinstance(self.source, (str, os.PathLike)):
            return str(self.source)
        return f"in-memory case ({getattr(self.case, 'metadata', {}).get('description', 'built by rtrai')})"

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.steps.values())
