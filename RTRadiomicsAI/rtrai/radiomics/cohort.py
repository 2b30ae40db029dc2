"""Cohort extraction: a pyradiomics batch file in, one CSV row per case out, robust to failures and kills.

Why it beats ``pyradiomics cohort.csv --jobs N`` on the same rows (see benchmarks/bench_radiomics_cohort.py):
- the rows that share an image (a radiotherapy case: 10-20 structures on one CT, the same on its dose) are one task:
  the image is read once and their features computed together (:mod:`rtrai.radiomics.shared_image`), where
  pyradiomics redoes the image's work -- hashes, statistics, whole-grid checks, filters -- for every row;
- pyradiomics hands out cases in static chunks of up to 10 per worker (``map_async(chunksize=10)``), so with 13
  cases and 2 workers one worker runs 10 of them; we hand out one case at a time, to whichever worker is free;
- its main process busy-waits on the result (``while not task.ready(): pass``) and so burns one CPU core that its
  workers need; ours sleeps until a result arrives;
- each of our workers builds (and validates) the extractor once, not once per case.
The features are pyradiomics' own per-pair values (GLCM's MCC to about 1e-15 relative, :mod:`.glcm_mcc`).

Output safety: rows go to ``NAME.partial.csv`` while the cohort runs, each appended and flushed (fsync) as it arrives,
so a kill loses at most the rows in flight and never leaves a file under the final name that looks finished;
``--resume`` keeps the rows already written (failed rows are retried) and never duplicates an ID. At the end the file
is rewritten atomically in the order of the batch file and renamed to its final name. The worker processes exit
when the command is killed.
"""

from __future__ import annotations

import csv
import io
import os
from collections import OrderedDict
from pathlib import Path

from rtrai.core.errors import FormatError, InputError, RTRAIError
from rtrai.core.outputs import atomic_file

INPUT_COLUMNS = ("ID", "Image", "Mask", "Label", "Structure")
ERROR_COLUMN = "error"


def read_batch(path: str | os.PathLike) -> list[OrderedDict]:
    """Rows of a pyradiomics batch file (columns Image, Mask, optional ID, Label, Structure); relative paths are
    relative to the file, as in pyradiomics. IDs default to the row number and must be unique."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort file not found: {path}")
    from rtrai.io.text import read_text

    text = read_text(path, "a pyradiomics batch file (UTF-8 CSV)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in ("Image", "Mask") if c not in (reader.fieldnames or [])]
        if missing:
            raise FormatError(f"{path}: missing column(s) {', '.join(missing)} (a batch file has Image, Mask and "
                              "optional ID, Label)")
        rows = []
        for number, raw in enumerate(reader, start=1):
            row = OrderedDict((k, _cell(raw.get(k))) for k in INPUT_COLUMNS if k in reader.fieldnames)
            row["ID"] = row.get("ID") or str(number)
            for key in ("Image", "Mask"):
                if row[key] and not os.path.isabs(row[key]):
                    try:
                        row[key] = str((path.parent / row[key]).resolve())
                    except (OSError, RuntimeError) as exc:
                        raise FormatError(f"{path}: line {reader.line_num}: {key} {row[key][:80]!r} is not a "
                                          f"usable path ({' '.join(str(exc).split())})") from None
            rows.append(row)
    except csv.Error as exc:
        raise FormatError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    ids = [r["ID"] for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FormatError(f"{path}: duplicate ID(s) {', '.join(duplicates[:5])}")
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def _cell(value) -> str:
    """A cell's text; a row with more fields than the header gives a list under the None key, ignored here, and
    a short row gives None."""
    return value.strip() if isinstance(value, str) else ""


# -- worker side: one extractor per process, built once --------------------------------------------------------
_WORKER: dict = {}


def _init_worker(params, preset, dvh, use_dose, resample_mask) -> None:
    from rtrai.radiomics.extract import make_extractor

    _WORKER.update(extractor=make_extractor(params, preset), dvh=dvh, use_dose=use_dose,
                   resample_mask=resample_mask)


def _process_group(rows: list[OrderedDict]) -> list[tuple[str, OrderedDict, str]]:
    """(ID, feature columns as text, error message or '') of rows that share one image: the image is read once and
    their features computed together (:func:`rtrai.radiomics.extract.extract_rows`), each row as pyradiomics
    computes it alone."""
    from rtrai.radiomics.extract import extract_rows, format_value, load_image, load_mask

    extractor = _WORKER["extractor"]
    errors, inputs = {}, []
    try:
        if not rows[0].get("Image"):
            raise InputError("the row has no Image or no Mask")
        loaded = load_image(rows[0]["Image"], _WORKER["use_dose"])
    except Exception as exc:  # noqa: BLE001 - every row of this image fails with it; the cohort goes on
        return [(row["ID"], OrderedDict(), _reason(exc)) for row in rows]
    for row in rows:
        try:
            if not row.get("Mask") and not row.get("Structure"):
                raise InputError("the row has no Image or no Mask")
            inputs.append((row["ID"], load_mask(loaded, row.get("Mask") or None,
                                                int(row["Label"]) if row.get("Label") else None,
                                                row.get("Structure") or None, _WORKER["resample_mask"],
                                                extractor.settings.get("label", 1))))
        except Exception as exc:  # noqa: BLE001 - a cohort records any per-case failure and goes on
            errors[row["ID"]] = _reason(exc)
    try:
        extracted = extract_rows(extractor, [i for _, i in inputs], _WORKER["dvh"])
    except Exception as exc:  # noqa: BLE001
        extracted = [exc] * len(inputs)
    features = {}
    for (case_id, _), row in zip(inputs, extracted):
        if isinstance(row, Exception):
            errors[case_id] = _reason(row)
            continue
        for key in ("ID", "Image", "Mask", "Label"):
            row.pop(key, None)
        features[case_id] = OrderedDict((k, format_value(v)) for k, v in row.items())
    return [(row["ID"], features.get(row["ID"], OrderedDict()), errors.get(row["ID"], "")) for row in rows]


def _reason(exc: Exception) -> str:
    if isinstance(exc, RTRAIError):
        return str(exc)
    if isinstance(exc, ValueError):  # unreadable label value and the like
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


def image_groups(rows: list[OrderedDict], jobs: int = 1) -> list[list[OrderedDict]]:
    """The rows grouped by image (first-seen order), each group one task (see
    :func:`rtrai.radiomics.shared_image.split_groups` for fewer groups than ``jobs``)."""
    from rtrai.radiomics.shared_image import split_groups

    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get("Image") or f"\0{row['ID']}", []).append(row)
    return split_groups(list(groups.values()), jobs)


# -- output file -----------------------------------------------------------------------------------------------
def probe_columns(params=None, preset: str | None = None, dvh: bool = False) -> list[str]:
    """The feature columns these settings produce, from a run on a tiny synthetic image (so the header is known
    before the first real case finishes, and a failing first case can still be written)."""
    import numpy as np
    import SimpleITK as sitk

    from rtrai.radiomics.extract import Inputs, extract_row, make_extractor

    extractor = make_extractor(params, preset)
    label = int(extractor.settings.get("label", 1))
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.uniform(0, 100, (12, 12, 12)).astype(np.float32))
    mask_array = np.zeros((12, 12, 12), np.uint8)
    mask_array[3:9, 3:9, 3:9] = label
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    row = extract_row(extractor, Inputs(image, mask, label, "probe", "", ""), dvh)
    return [k for k in row if k not in ("ID", "Image", "Mask", "Label")]


def partial_path(output: str | os.PathLike) -> Path:
    """Where ``output`` is written while unfinished: ``NAME.partial.csv`` beside ``NAME.csv``."""
    output = Path(output)
    suffix = output.suffix
    return output.with_name(f"{output.name[:len(output.name) - len(suffix)]}.partial{suffix}")


def _finished_rows(path: Path, header: list[str]) -> list[dict]:
    """Complete rows of an earlier run's table (its partial file, or the finished one; none when it is absent): a row
    cut by a kill (no line end after it, or inside a quoted value) is dropped; another header means other settings
    or inputs."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    text = text[:text.rfind("\n") + 1]  # each complete row ends with a line end; what follows is cut
    rows, reader = [], csv.reader(io.StringIO(text, newline=""))
    try:
        found = next(reader, None)
        if found is None:
            return []
        if found != header:
            raise InputError(f"--resume: {path} was written with other settings or inputs (its columns differ); "
                             "write to a new file")
        for values in reader:
            if len(values) == len(header):
                rows.append(dict(zip(header, values)))
    except csv.Error:
        pass  # the last row was cut inside a quoted value: the rows before it are whole
    return rows


def run_cohort(batch: str | os.PathLike, output: str | os.PathLike, params=None, preset: str | None = None,
               jobs: int = 1, resume: bool = False, dvh: bool = False, use_dose: bool = False,
               resample_mask: bool = False, progress=None, scheduler: str | None = None,
               worker_memory: str | None = None) -> dict:
    """Extract every row of ``batch`` into the CSV ``output``; returns counts of done, failed and skipped rows.
    The rows run as :func:`rtrai.core.workers.run_cases` runs them (``jobs`` processes, or on the Dask cluster
    ``scheduler``); only this process writes the table.

    Until every row is done the rows go to ``NAME.partial.csv`` (:func:`partial_path`), renamed to ``output`` at the
    end: a file under the final name is always complete. ``resume`` continues from the partial file of an interrupted
    run (or from ``output`` itself, retrying its failed rows)."""
    from rtrai.core.progress import silent

    report = progress or silent
    rows = read_batch(batch)
    output = Path(output)
    partial = partial_path(output)
    input_columns = [c for c in INPUT_COLUMNS if any(c in r for r in rows)]
    header = input_columns + [ERROR_COLUMN] + probe_columns(params, preset, dvh)
    kept = {}
    if resume:
        earlier = partial if partial.is_file() else output  # a partial file is newer: an interrupted run left it
        kept = {r["ID"]: r for r in _finished_rows(earlier, header) if not r[ERROR_COLUMN]}
    elif output.exists():
        raise InputError(f"{output} exists; use --resume to continue it or choose another file")
    elif partial.exists():
        raise InputError(f"{partial} holds the rows of an interrupted run; use --resume to continue it (or delete it "
                         "to start again)")
    todo = [r for r in rows if r["ID"] not in kept]
    by_id = {r["ID"]: r for r in rows}
    from rtrai.core.workers import run_cases

    groups = image_groups(todo, jobs)  # the rows of one image: one task, the image read once
    results = run_cases(_process_group, groups, jobs, scheduler, worker_memory, _init_worker,
                        (params, preset, dvh, use_dose, resample_mask), "fork" if os.name == "posix" else "spawn")
    # Start from a partial file holding exactly the kept rows, then append as cases finish.
    _write_all(partial, header, [kept[r["ID"]] for r in rows if r["ID"] in kept])
    failed = 0
    with open(partial, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="raise")

        def append(case_id: str, features: OrderedDict, error: str) -> None:
            nonlocal failed, done
            unknown = [k for k in features if k not in header]
            if unknown:  # e.g. a 2D image where the cohort's settings give 3D columns
                features, error = OrderedDict(), f"this case gives other feature columns ({', '.join(unknown[:3])})"
            out = {k: by_id[case_id].get(k, "") for k in input_columns}
            out[ERROR_COLUMN] = error
            out.update(features)
            writer.writerow(out)
            handle.flush()
            os.fsync(handle.fileno())
            kept[case_id] = {k: str(out.get(k, "")) for k in header}
            failed += bool(error)
            done += 1
            report(done / len(todo), f"{case_id} ({done}/{len(todo)})")

        done = 0
        report(0.0, f"{len(todo)} cases to extract ({len(rows) - len(todo)} already done)")
        for index, result, error in results:
            for item in result or [(row["ID"], OrderedDict(), error) for row in groups[index]]:
                append(*item)
    # Final order = the batch file's order, written atomically; then the finished file takes its final name.
    _write_all(partial, header, [kept[r["ID"]] for r in rows if r["ID"] in kept])
    os.replace(partial, output)
    report(1.0, "done")
    return {"rows": len(rows), "extracted": len(todo) - failed, "failed": failed, "skipped": len(rows) - len(todo)}


def _write_all(path: Path, header: list[str], rows: list[dict]) -> None:
    with atomic_file(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in header})
