"""The whole cycle for one batch: ingest -> process -> decide -> (train -> promote | skip).

``cycle`` runs each step through a ``step`` callable: in-process (``jobs.pipeline``, one Ray job) or
as a Ray job of its own per step (``tasador demo``, Airflow). Each step's JSON summary is kept.
"""

from __future__ import annotations

from collections.abc import Callable

from tasador.settings import Settings

STEPS = ("ingest", "process", "decide", "train", "promote")


def run_in_process(settings: Settings, step: str, group: int, day: str) -> dict:
    from tasador import decisions, ingest, processing, retrain

    if step == "ingest":
        return ingest.ingest_next(settings, group, day).as_dict()
    if step == "process":
        return processing.process_pending(settings, group, day)
    if step == "decide":
        return decisions.decide_pending(settings, group, day)
    if step == "train":
        return retrain.train_pending(settings, group, day)
    if step == "promote":
        return retrain.promote_pending(settings, group, day)
    raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")


def cycle(settings: Settings, group: int, day: str,
          step: Callable[[Settings, str, int, str], dict] = run_in_process) -> dict:
    """One batch through the whole cycle. Returns the steps' summaries and a one-line row."""
    done = {"ingest": step(settings, "ingest", group, day)}
    if done["ingest"]["status"] == "exhausted" and not work_pending(settings, group, day):
        return {"job": "pipeline", "status": "exhausted", "steps": done, "row": None}
    done["process"] = step(settings, "process", group, day)
    done["decide"] = step(settings, "decide", group, day)
    if done["decide"].get("work_pending"):  # this batch's retrain, or one a crashed run left undone
        done["train"] = step(settings, "train", group, day)
        done["promote"] = step(settings, "promote", group, day)
    return {"job": "pipeline", "status": "done", "steps": done, "row": summary_row(done)}


def work_pending(settings: Settings, group: int, day: str) -> bool:
    """Whether a crashed run left a raw batch unprocessed or undecided, a training or a promotion."""
    from tasador import decisions, processing

    if (processing.pending_batches(settings.raw_db, settings.clean_db, group, day)
            or decisions.undecided_batches(settings, group, day)):
        return True
    pending = decisions.pending_work(settings, group, day)
    return bool(pending["retrain_decisions"] or pending["promotions"])


def summary_row(done: dict) -> dict:
    """The report row of the batch this cycle carried (tasador.decisions.report_row)."""
    from tasador.decisions import report_row

    decision = (done["decide"].get("decisions") or [{}])[-1]
    processed = (done["process"].get("batches") or [{}])[-1]
    promote = done.get("promote", {})
    return report_row(done["ingest"], processed.get("rejected_rows"), decision, done.get("train", {}),
                      promote.get("status") == "promoted" if promote else None, promote.get("reason"))
