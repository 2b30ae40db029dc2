"""One case end to end. ``rtrai run``, ``rtrai demo`` and the hub module's workflow all call :func:`run_case`.

- :mod:`~rtrai.pipeline.case_run`  what a run is made of: :class:`Options`, :class:`Step`, :class:`CaseRun` (the
  products grouped by the step that made them), the step names and statuses;
- :mod:`~rtrai.pipeline.runner`    :func:`run_case`: runs the steps in order, times each, and sends structured step
  events (``on_step(event)``; ``<rtrai-step>{JSON}</rtrai-step>`` lines with ``RTRAI_PROGRESS=lines``);
- :mod:`~rtrai.pipeline.steps`     the ten steps (load, segment, qa, dose, dvh, plan, plan_qa, radiomics, outcome,
  report; the plan steps only with ``--plan``);
- :mod:`~rtrai.pipeline.cohort`    a folder of patients or a ``--cohort`` list, kill-safe and resumable;
- :mod:`~rtrai.pipeline.results`   a run's output folder read back into an MRML scene;
- :mod:`~rtrai.pipeline.command`   the ``rtrai run`` command line.

A model asked for that cannot be found (``--segmentation-model``, ``--dose-model``, ``--outcome-model``) is an error
before any step runs, never a silently skipped step.
"""

from rtrai.pipeline.case_run import (DONE, DVH_METRICS, FAILED, OUTPUT_FILES, PENDING, PLAN_STEPS, RUNNING, SKIPPED,
                                     STEP_TITLES, STEPS, CaseRun, DoseResult, DvhResult, Options, PlanRun, Step,
                                     StepSkipped, Structures)
from rtrai.pipeline.cohort import is_finished, read_cohort_list, run_cohort
from rtrai.pipeline.command import options_from_args, register, run_command
from rtrai.pipeline.results import load_results
from rtrai.pipeline.runner import check_models, cpu_seconds, peak_rss_mib, run_case

__all__ = ["DONE", "DVH_METRICS", "FAILED", "OUTPUT_FILES", "PENDING", "PLAN_STEPS", "RUNNING", "SKIPPED",
           "STEP_TITLES", "STEPS", "CaseRun", "DoseResult", "DvhResult", "Options", "PlanRun", "Step", "StepSkipped",
           "Structures", "check_models", "cpu_seconds", "is_finished", "load_results", "options_from_args",
           "peak_rss_mib", "read_cohort_list", "register", "run_case", "run_cohort", "run_command"]
