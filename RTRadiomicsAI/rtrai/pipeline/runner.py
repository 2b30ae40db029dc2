"""The step runner: runs the steps of :mod:`rtrai.pipeline.steps` in order, times each (the only place that does),
and tells whoever follows the run each time a step's status changes.

Step events: whenever a step starts (``running``) and ends (``done``, ``skipped`` or ``failed``), ``on_step(event)``
is called with :meth:`Step.event`'s dict (keys ``case``, ``name``, ``title``, ``status``, ``seconds``, ``summary``,
``reason``); when the progress is machine lines (``RTRAI_PROGRESS=lines``, how Slicer runs ``rtrai``) the same event
is also printed on stdout as one ``<rtrai-step>{JSON}</rtrai-step>`` line, which
:meth:`rtrai.core.jobs.Job.poll` hands over as ``JobUpdate.steps``.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rtrai.pipeline.case_run import DONE, FAILED, PLAN_STEPS, RUNNING, SKIPPED, STEP_TITLES, STEPS, CaseRun, \
    Options, StepSkipped

# Share of the progress bar each step takes (segmentation, planning and radiomics are the long ones); a run without
# --plan shares the planning steps' part out among the others (see _weights).
_WEIGHTS = {"load": 0.04, "segment": 0.36, "qa": 0.02, "dose": 0.12, "dvh": 0.04, "plan": 0.5, "plan_qa": 0.02,
            "radiomics": 0.28, "outcome": 0.02, "report": 0.14}

StepListener = Callable[[dict], object]


def run_case(source, outdir, options: Options | None = None, progress=None, on_step: StepListener | None = None,
             case: str | None = None) -> CaseRun:
    """Run one case (a path, or a :class:`~rtrai.core.case.Case`) into ``outdir``; returns what it did.

    ``on_step(event)`` is called at each change of a step's status (see the module's text); ``case`` is the name
    the events carry (a cohort's case name; None for a single case).

    Raises :class:`~rtrai.core.errors.RTRAIError` only for input the load step refuses (nothing is written then);
    a later step that cannot run is skipped with its reason.
    """
    from rtrai.core.progress import silent, sub

    run = CaseRun(source, options or Options(), Path(outdir))
    check_models(run.options)
    report = progress or silent
    notify = _step_notifier(on_step, case)
    start, weights = 0.0, _weights(run.options)
    for name in STEPS:
        stop = min(1.0, start + weights[name])
        _run_step(run, name, sub(report, start, stop), notify)
        start = stop
    report(1.0, "report: done")
    return run


def _weights(options: Options) -> dict[str, float]:
    """Each step's share of the progress bar for this run (summing to 1)."""
    weights = {n: 0.0 if n in PLAN_STEPS and not options.plan else _WEIGHTS[n] for n in STEPS}
    total = sum(weights.values())
    return {n: w / total for n, w in weights.items()}


def _step_notifier(on_step: StepListener | None, case: str | None) -> Callable:
    from rtrai.core.progress import machine_lines_enabled, print_step_event

    lines = machine_lines_enabled()

    def notify(step) -> None:
        event = step.event(case)
        if lines:
            print_step_event(event)
        if on_step is not None:
            on_step(event)

    return notify


def _run_step(run: CaseRun, name: str, progress, notify: Callable) -> None:
    """Run one step and record it. A step function returns its summary, or is a generator that yields it and, once
    resumed with its step recorded as done, writes what needs that record (the report's provenance.json and run.log
    list every step, the report's own included)."""
    from rtrai.core.errors import RTRAIError

    from rtrai.pipeline.steps import STEP_FUNCTIONS

    step = run.steps[name]
    progress(0.0, f"{name}: {STEP_TITLES[name]}")
    step.status = RUNNING
    notify(step)
    started, cpu = time.perf_counter(), cpu_seconds()

    def measure() -> None:
        step.seconds = time.perf_counter() - started
        step.cpu_seconds = cpu_seconds() - cpu
        step.peak_rss_mib = peak_rss_mib()

    work = None
    try:
        result = STEP_FUNCTIONS[name](run, progress)
        if inspect.isgenerator(result):
            work, result = result, next(result)
        step.status, step.summary = DONE, result or ""
    except StepSkipped as exc:
        step.status, step.reason = SKIPPED, str(exc)
    except RTRAIError as exc:
        if name in ("load", "report"):  # no case to work on, or nothing written: the run failed
            _fail(step, exc, measure, notify)
            raise
        step.status, step.reason = SKIPPED, str(exc)
    except BaseException as exc:
        _fail(step, exc, measure, notify)
        raise
    measure()
    run.log.append(step.log_line())
    if work is not None:
        try:
            next(work, None)
        except BaseException as exc:
            run.log.pop()
            _fail(step, exc, lambda: None, notify)
            raise
    notify(step)
    progress(1.0, f"{name}: {step.status}")


def _fail(step, exc: BaseException, measure: Callable, notify: Callable) -> None:
    from rtrai.core.errors import RTRAIError

    measure()
    step.status = FAILED
    step.reason = str(exc) if isinstance(exc, RTRAIError) else f"unexpected {type(exc).__name__}: {exc}"
    notify(step)


def check_models(options: Options) -> None:
    """The models a run names exist (their manifests read; weights are checked by sha256 when loaded): a model asked
    for and not found is an error, not a skipped step."""
    from rtrai.core.errors import ModelError
    from rtrai.models import read_manifest
    from rtrai.segmentation.engines import engine_kind

    for role, name in (("segmentation", options.segmentation_model), ("dose", options.dose_model)):
        try:
            if role == "segmentation" and engine_kind(name) != "zoo":
                continue  # a MONAI bundle, TorchScript file or nnU-Net folder: engine_kind found its files there
            manifest = read_manifest(name)
        except ModelError as exc:
            raise ModelError(f"{role} model: {exc}") from None
        if manifest.get("task") not in (None, role):
            raise ModelError(f"{role} model '{name}' is a {manifest.get('task')} model")
    if options.outcome_model is not None:
        path = Path(options.outcome_model)
        if not (path / "model.json").is_file() and not path.is_file():
            raise ModelError(f"--outcome-model {options.outcome_model}: no outcome model there (a folder written by "
                             "rtrai outcome fit, with model.json)")


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and its finished child processes."""
    try:
        import resource
    except ImportError:  # Windows
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mib() -> float | None:
    """The peak resident memory of this process so far (MiB), where the platform says it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
