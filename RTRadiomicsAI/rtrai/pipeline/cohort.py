"""A folder of patients or a ``--cohort`` list: each case runs into ``OUT/<case>/`` (:func:`run_cohort`); finished
cases are skipped, a failing case is recorded in ``OUT/cohort.csv`` and the cohort goes on; ``OUT/cohort_features.csv``
holds one row of features per case (the table ``rtrai outcome fit`` reads)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rtrai.pipeline.case_run import SKIPPED, Options
from rtrai.pipeline.runner import StepListener, run_case


def is_finished(folder: Path) -> bool:
    """True when ``folder`` holds a complete ``rtrai run`` result: its provenance (moved in last, atomically, and
    removed first when a folder is written again) says so, and every output it lists is there."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("command") not in ("run", "demo") \
            or record.get("status") != "complete":
        return False
    outputs = record.get("outputs")
    return not isinstance(outputs, list) or all(isinstance(n, str) and (folder / n).is_file() for n in outputs)


def read_cohort_list(path: str | os.PathLike) -> list[Path]:
    """Case paths from a list file: one per line, relative to the file; blank lines and ``#`` comments ignored."""
    from rtrai.core.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort list not found: {path}")
    from rtrai.io.text import read_text

    text = read_text(path, "a cohort list (one case path per line)")
    cases = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            item = Path(line)
            cases.append(item if item.is_absolute() else (path.parent / item))
    if not cases:
        raise InputError(f"{path}: no case paths in the list")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: several cases are named {', '.join(duplicates)} (each gets OUT/<name>/)")
    return cases


def _cohort_case(options, outdir: Path, path: Path, progress=None, on_step: StepListener | None = None) -> dict:
    """One case of a cohort into ``outdir/<name>``: its cohort.csv row. The serial loop calls it with the case's share
    of the progress bar and the step listener; as a task of rtrai.core.workers.run_cases it runs on a Dask worker
    without them (at module level, as Dask pickles it by reference)."""
    target = outdir / path.name
    started = time.perf_counter()
    row = {"case": path.name, "input": str(path), "status": "done", "error": "", "seconds": 0.0, "skipped_steps": ""}
    if is_finished(target):  # a rerun, or Dask running the case again after its worker was lost once it had written
        row["status"] = "finished before"
        if progress is not None:
            progress(1.0, f"{path.name}: finished before")
        return row
    case_progress = None if progress is None else (lambda f, m="": progress(f, f"{path.name}: {m}" if m else path.name))
    try:
        run = run_case(path, target, options, case_progress, on_step, case=path.name)
        row["skipped_steps"] = " ".join(s.name for s in run.steps.values() if s.status == SKIPPED)
        if not is_finished(target):
            row["status"], row["error"] = "failed", f"{target} is not a finished result folder"
    except Exception as exc:  # noqa: BLE001 - a failing case is recorded and the cohort goes on
        row["status"] = "failed"
        row["error"] = str(exc) if _is_rtrai_error(exc) else f"unexpected {type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def run_cohort(cases: list[Path], outdir, options: Options | None = None, progress=None,
               on_step: StepListener | None = None, scheduler: str | None = None, workers: int = 1,
               worker_memory: str | None = None) -> dict:
    """Run each case into ``outdir/<name>``; returns counts and writes ``cohort.csv`` and ``cohort_features.csv``.
    ``on_step`` gets the step events of every case run (``case``: its name; serial runs only).

    ``scheduler`` (a Dask scheduler address, or "local" for a LocalCluster of ``workers`` single-threaded
    processes limited to ``worker_memory`` each): each case is one task on the cluster
    (:func:`rtrai.core.workers.run_cases`), its radiomics in one process; only this process writes the tables.

    Kill-safe: while the cohort runs its table is ``cohort.partial.csv`` (rewritten atomically after each case, a
    case recorded as done only once its folder is finished), renamed to ``cohort.csv`` at the end; a ``cohort.csv``
    of an earlier run is removed when a new run starts. Run again, finished cases are skipped and the others redone.
    """
    import pandas as pd

    from rtrai.core.outputs import write_text
    from rtrai.core.progress import silent, sub

    outdir = Path(outdir)
    report = progress or silent
    table, partial = outdir / "cohort.csv", outdir / "cohort.partial.csv"
    if table.is_file() and not table.is_symlink():
        table.unlink()  # it described the cohort as finished; from now on it is not, until this run ends
    rows = []
    if scheduler:
        rows = _run_on_cluster(cases, outdir, options, report, scheduler, workers, worker_memory, partial)
    for i, path in enumerate([] if scheduler else cases):
        rows.append(_cohort_case(options, outdir, path, sub(report, i / len(cases), (i + 1) / len(cases)), on_step))
        outdir.mkdir(parents=True, exist_ok=True)
        write_text(partial, pd.DataFrame(rows).to_csv(index=False))
    features = []
    for row in rows:
        case_table = outdir / row["case"] / "features.csv"
        if row["status"] != "failed" and case_table.is_file():
            from rtrai.radiomics.case_features import wide_features

            features.append(wide_features(pd.read_csv(case_table, dtype={"ID": str, "error": str})))
    if features:
        write_text(outdir / "cohort_features.csv", pd.concat(features, ignore_index=True).to_csv(index=False))
    if rows:
        os.replace(partial, table)  # the finished table takes its final name last
    report(1.0, "cohort done")
    return {"cases": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "finished_before": sum(r["status"] == "finished before" for r in rows),
            "failed": [r for r in rows if r["status"] == "failed"]}


def _run_on_cluster(cases, outdir: Path, options, report, scheduler, workers, worker_memory, partial) -> list[dict]:
    """The cases as tasks of a Dask cluster; the partial table rewritten as each case comes back (in case order)."""
    from dataclasses import replace
    from functools import partial as bind

    import pandas as pd

    from rtrai.core.outputs import write_text
    from rtrai.core.workers import run_cases

    options = replace(options or Options(), jobs=1)  # a worker is one core: its case's radiomics in one process
    found = {}
    for index, row, error in run_cases(bind(_cohort_case, options, outdir), cases, workers, scheduler, worker_memory,
                                       progress=report, names=[c.name for c in cases]):
        found[index] = row or {"case": cases[index].name, "input": str(cases[index]), "status": "failed",
                               "error": error, "seconds": 0.0, "skipped_steps": ""}
        outdir.mkdir(parents=True, exist_ok=True)
        write_text(partial, pd.DataFrame([found[i] for i in sorted(found)]).to_csv(index=False))
    return [found[i] for i in sorted(found)]


def _is_rtrai_error(exc: Exception) -> bool:
    from rtrai.core.errors import RTRAIError

    return isinstance(exc, RTRAIError)
