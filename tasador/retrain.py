"""The train and promote steps as the pipeline runs them: driven by the recorded decisions, exactly once.

Train: every "retrain" decision of (group, day) that no training carried out yet is answered by one
training over all clean rows (which may serve several such decisions: ``trainings.covers`` says
which, and each decision names its training). The training's row is written before Tune starts; a
re-run after a crash finds it, looks for its version in the registry (``training_id`` tag) and
either records it or trains again, so one training registers exactly one version.

Promote: every trained version of (group, day) whose promotion is not recorded, oldest first
(``tasador.promotion.promote_training``: judged once, applied idempotently).
"""

from __future__ import annotations

import logging

from psycopg2.extras import Json

from tasador import db, decisions, faults, locks
from tasador.settings import Settings

log = logging.getLogger(__name__)


def train_pending(settings: Settings, group: int, day: str, force: bool = False) -> dict:
    from tasador import registry, training

    base = {"job": "train", "group_number": group, "day": day}
    with locks.writer_lock(settings, locks.pipeline(group, day), "train"):
        pending = decisions.pending_work(settings, group, day)["retrain_decisions"]
        unfinished = _unfinished_training(settings, group, day)
        if not pending and unfinished is None and not force:
            latest = _latest_decision(settings, group, day)
            reason = latest["retrain_reason"] if latest else "no decision recorded for this group and day"
            return {**base, "status": "nothing_to_train", "reason": reason}
        trigger = decisions.get(settings, pending[-1]) if pending else {"batch_id": 0,
                                                                          "retrain_reason": "forced by the operator"}
        training_id = _open_training(settings, group, day, unfinished, trigger["batch_id"], pending)
        version = registry.version_for_training(settings, training_id)
        if version is None:
            result = training.train(settings, trigger, training_id, pending)
            faults.point("train.after_register", settings)
            status = "trained"
        else:  # a crashed run registered it: record it, do not train again
            result = _result_from_registry(settings, version)
            status = "recovered"
            log.warning("training %s had registered v%s before a crash: recording it", training_id, version)
        # what a crashed attempt left RUNNING, and a trial whose worker died (Tune ran it again in a new
        # run); under the lock, nothing of this training runs now
        _end_stale_runs(settings, training_id)
        covered = _record_training(settings, training_id, trigger["batch_id"], result)
    return {**base, "status": status, "training_id": training_id, "batch_id": trigger["batch_id"],
            "covers": covered, **result}


def promote_pending(settings: Settings, group: int, day: str, version: str | None = None) -> dict:
    """Promote (or reject) every trained version of (group, day) not judged yet; ``version``: an
    operator's promotion of that version instead."""
    from tasador.promotion import promote, promote_training

    if version is not None:
        return promote(settings, str(version))
    with locks.writer_lock(settings, locks.pipeline(group, day), "promote"):
        todo = decisions.pending_work(settings, group, day)["promotions"]
        results = [promote_training(settings, t) for t in todo]
    if not results:
        return {"job": "promote", "status": "nothing_to_promote", "group_number": group, "day": day,
                "reason": "no trained version of this group and day waits for its promotion"}
    return {**results[-1], "group_number": group, "day": day, "promotions": results}


def _latest_decision(settings: Settings, group: int, day: str) -> dict | None:
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT d.batch_id FROM decisions d JOIN processed_batches p USING (batch_id)"
                    " WHERE p.group_number = %s AND p.day = %s ORDER BY p.batch_number DESC LIMIT 1", (group, day))
        row = cur.fetchone()
    return decisions.get(settings, row[0]) if row else None


def _unfinished_training(settings: Settings, group: int, day: str) -> int | None:
    """A training of (group, day) for this model that started and never recorded its version."""
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT training_id FROM trainings WHERE group_number = %s AND day = %s AND model_name = %s"
                    " AND version IS NULL ORDER BY training_id DESC LIMIT 1", (group, day, settings.model_name))
        row = cur.fetchone()
    return row[0] if row else None


def _open_training(settings: Settings, group: int, day: str, unfinished: int | None, trigger: int,
                   covers: list[int]) -> int:
    """The training's row, committed before any work: a crashed run's row is taken over (with every
    decision pending now), else a new one."""
    with db.transaction(settings.clean_db) as cur:
        if unfinished is not None:
            cur.execute("UPDATE trainings SET trigger_batch_id = greatest(trigger_batch_id, %s),"
                        " covers = ARRAY(SELECT DISTINCT unnest(covers || %s::bigint[]) ORDER BY 1)"
                        " WHERE training_id = %s", (trigger, covers, unfinished))
            return unfinished
        cur.execute("INSERT INTO trainings (group_number, day, model_name, trigger_batch_id, covers)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING training_id",
                    (group, day, settings.model_name, trigger, covers))
        return cur.fetchone()[0]


def _record_training(settings: Settings, training_id: int, trigger: int, result: dict) -> list[int]:
    """One transaction: the training's version and result, and on every decision it covers, the
    training that carried it out (the trigger's own decision holds the whole result)."""
    with db.transaction(settings.clean_db) as cur:
        cur.execute("UPDATE trainings SET version = %s, result = %s, trained_at = now() WHERE training_id = %s"
                    " RETURNING covers", (result["version"], Json(result), training_id))
        covers = cur.fetchone()[0]
        for batch_id in covers:
            own = batch_id == trigger
            outcome = result if own else {"version": result["version"], "family": result.get("family"),
                                          "covered_by_batch_id": trigger, "training_id": training_id,
                                          "test_metrics": result.get("test_metrics")}
            cur.execute("UPDATE decisions SET training_id = %s, training = %s WHERE batch_id = %s",
                        (training_id, Json(outcome), batch_id))
    return covers


def _result_from_registry(settings: Settings, version: str) -> dict:
    """What a training that registered ``version`` and then crashed would have returned, from the
    version's tags (its lineage and metrics)."""
    import json

    from tasador.registry import mlflow_client

    tags = mlflow_client(settings).get_model_version(settings.model_name, version).tags
    return {"version": version, "family": tags.get("family"), "test_metrics": json.loads(tags.get("metrics", "{}")),
            "rows": int(tags.get("rows", 0)), "batch_ids": json.loads(tags.get("batch_ids", "[]")),
            "data_hash": tags.get("data_hash")}


def runs_left_running(settings: Settings, training_id: int) -> list[str]:
    """The MLflow runs of this training still RUNNING: its parent runs (tagged with its ``training_id``)
    and their trials' runs. A crash leaves them so: during the search (the parent and its trials), or
    while the best trial's run, resumed after the parent ended, logs the model (``training.register``);
    so does a Tune worker's death, its trial run again in a new run."""
    from tasador.registry import mlflow_client

    client = mlflow_client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    ids = [experiment.experiment_id]
    parents = client.search_runs(ids, f"tags.training_id = '{int(training_id)}'")
    running = [run.info.run_id for run in parents if run.info.status == "RUNNING"]
    for run in parents:
        children = f"tags.mlflow.parentRunId = '{run.info.run_id}' AND attributes.status = 'RUNNING'"
        running += [child.info.run_id for child in client.search_runs(ids, children)]
    return running


def _end_stale_runs(settings: Settings, training_id: int) -> None:
    """Mark the MLflow runs a crashed attempt of this training left RUNNING as KILLED."""
    from tasador.registry import mlflow_client

    client = mlflow_client(settings)
    for run_id in runs_left_running(settings, training_id):
        client.set_terminated(run_id, "KILLED")
