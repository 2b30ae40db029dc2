"""The hub's workflow step table, followed from the workflow's structured step events (pure Python, no Qt).

``rtrai run`` reports each step as it starts and ends; :meth:`rtrai.core.jobs.Job.poll` hands these events over in
``JobUpdate.steps`` (the events since the previous poll, in order), each a dict with ``case`` (str or None), ``name``
(as in ``rtrai.pipeline.STEPS``), ``title``, ``status`` ("running", "done", "skipped" or "failed"), ``seconds``,
``summary`` and ``reason`` (None where not known). A row of the table is such a dict too, with the statuses
"pending" (no event yet) and "cancelled" (the user stopped the run) besides.

The hub follows one case: rows are keyed by step name, and the case of the latest event is kept in the row.
"""

from __future__ import annotations

EVENT_STATUSES = ("running", "done", "skipped", "failed")
ROW_KEYS = ("case", "name", "title", "status", "seconds", "summary", "reason")


def emptySteps(names, titles: dict) -> list[dict]:
    """One pending row per step, in the workflow's order."""
    return [{"case": None, "name": name, "title": titles.get(name, name), "status": "pending", "seconds": None,
             "summary": None, "reason": None} for name in names]


def applyStepEvents(steps: list[dict], events: list[dict]) -> list[dict]:
    """The table after ``events`` (in order; the input table is not changed). An event replaces its step's status,
    seconds, summary and reason; a step the table does not list yet (one an option adds to the run) is appended."""
    out = [dict(step) for step in steps]
    rows = {step["name"]: step for step in out}
    for event in events:
        if event["status"] not in EVENT_STATUSES:
            raise ValueError(f"step event with status {event['status']!r}, not one of {', '.join(EVENT_STATUSES)}")
        row = rows.get(event["name"])
        if row is None:
            row = rows[event["name"]] = {"name": event["name"]}
            out.append(row)
        row.update({key: event[key] for key in ROW_KEYS if key != "name"})
        row["title"] = event["title"] or event["name"]
    return out


def cancelledSteps(steps: list[dict]) -> list[dict]:
    """The table after the user cancelled: what had not ended was cancelled."""
    return [{**step, "status": "cancelled"} if step["status"] in ("pending", "running") else dict(step)
            for step in steps]


def stepCells(step: dict) -> tuple[str, str, str, str]:
    """The texts of a row in the hub's table: title, status, seconds, and the reason (else the summary)."""
    seconds = step.get("seconds")
    return (step["title"], step["status"], "" if seconds is None else f"{seconds:.1f}",
            step.get("reason") or step.get("summary") or "")
