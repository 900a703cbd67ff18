"""Production history as data: every move of a model's ``production`` alias (a promotion or an
operator's rollback) is a row of ``alias_moves`` with its time and reason, so "what served at time T"
is answered from the project's own records; an operator's rollback; and a prediction's lineage (the
version that priced it, that version's run, batches, rows and data hash, the decision that triggered
its training, and sample raw rows of those batches).

``moved_at`` is when the move was recorded, just after the alias moved and serving was asked to follow
(``registry.move_production_alias``: the answering replica loads the version before the record; the rest
follow within ``serve_poll_s``, or ``serve_registry_poll_s`` when serving was not reached), so "served at
T" is exact to that interval.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime

from tasador import db, decisions, locks
from tasador.registry import mlflow_client, move_production_alias, production
from tasador.settings import Settings

log = logging.getLogger(__name__)

MOVE_KEYS = ("move_id", "version", "previous_version", "moved_at", "kind", "reason", "training_id")


def moves(settings: Settings) -> list[dict]:
    """Every move of the production alias of ``settings.model_name``, oldest first."""
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT move_id, version, previous_version, moved_at, kind, reason, training_id"
                    " FROM alias_moves WHERE model_name = %s ORDER BY moved_at, move_id", (settings.model_name,))
        return [dict(zip(MOVE_KEYS, row, strict=True)) for row in cur.fetchall()]


def serving_at(history: list[dict], when: datetime) -> dict | None:
    """The move that put in place the version serving at ``when`` (None before the first promotion).
    ``history`` is ``moves()``; ``when`` must carry a time zone (the records do)."""
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone: say which (e.g. 2026-12-01T12:00+00:00)")
    current = None
    for move in history:
        if move["moved_at"] > when:
            break
        current = move
    return current


def served_versions(history: list[dict]) -> list[str]:
    """Every version that held the alias: moved to, or the production a recorded move replaced."""
    return sorted({m["version"] for m in history} | {m["previous_version"] for m in history if m["previous_version"]},
                  key=_number)


def rollback(settings: Settings, version: str, reason: str) -> dict:
    """Move the production alias back to ``version``, an earlier production version, and record it as
    any promotion is recorded: the version's tags and a row of ``alias_moves`` (the timeline). Under
    the model's writer lock, so no promotion interleaves. A re-run after a crash between the alias
    move and the record finds the alias already there and writes the missing record."""
    reason = reason.strip()
    if not reason:
        raise ValueError("a rollback needs a written reason (--reason TEXT)")
    version = str(version).removeprefix("v")
    with locks.writer_lock(settings, locks.model(settings.model_name), "rollback"):
        history = moves(settings)
        served = served_versions(history)
        if version not in served:
            raise ValueError(f"v{version} of {settings.model_name} never served as production (served: "
                             f"{', '.join('v' + v for v in served) or 'none yet'}): a rollback returns to an "
                             "earlier production version")
        current = production(settings)
        last = history[-1]["version"] if history else None
        if current is not None and current.version == version and last == version:
            return {"status": "already_production", "version": version, "previous_version": version}
        previous = last if current is None or current.version == version else current.version
        client, serving = mlflow_client(settings), None
        if current is None or current.version != version:
            serving = move_production_alias(settings, client, version)
        client.set_model_version_tag(settings.model_name, version, "rollback_reason", reason)
        if previous is not None:
            client.set_model_version_tag(settings.model_name, previous, "rolled_back_to", f"v{version}: {reason}")
        with db.transaction(settings.clean_db) as cur:
            cur.execute("INSERT INTO alias_moves (model_name, version, previous_version, kind, reason)"
                        " VALUES (%s, %s, %s, 'rollback', %s) RETURNING moved_at",
                        (settings.model_name, version, previous, reason))
            moved_at = cur.fetchone()[0]
    log.info("rolled back to v%s (from v%s): %s", version, previous, reason)
    return {"status": "rolled_back", "version": version, "previous_version": previous, "reason": reason,
            "moved_at": moved_at, "serving": serving}


def lineage(settings: Settings, prediction_id: str, sample_rows: int = 3) -> dict:
    """From a prediction id (as ``/predict`` answers it) to the data behind it."""
    try:
        pid = str(uuid.UUID(prediction_id))
    except ValueError:
        raise ValueError(f"{prediction_id!r} is not a prediction id (a UUID, as /predict answers it)") from None
    with db.transaction(settings.raw_db) as cur:
        cur.execute("SELECT requested_at, model_name, model_version, predicted_price FROM predictions"
                    " WHERE prediction_id = %s", (pid,))
        found = cur.fetchone()
    if found is None:
        raise LookupError(f"prediction {pid} is not in the prediction log (it may still be in a replica's buffer,"
                          " written within the log's flush interval)")
    requested_at, model_name, model_version, price = found
    client = mlflow_client(settings)
    mv = client.get_model_version(model_name, model_version)
    tags = dict(mv.tags)
    run = client.get_run(mv.run_id) if mv.run_id else None
    batch_ids = [int(b) for b in json.loads(tags.get("batch_ids", "[]"))]
    trigger = int(tags.get("trigger_batch_id", "0") or 0)
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT batch_id, batch_number, clean_rows FROM processed_batches WHERE batch_id = ANY(%s)"
                    " ORDER BY batch_id", (batch_ids,))
        batches = [{"batch_id": r[0], "batch_number": r[1], "clean_rows": r[2]} for r in cur.fetchall()]
    with db.transaction(settings.raw_db) as cur:
        cur.execute("SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY batch_id ORDER BY row_number) AS k"
                    " FROM listings WHERE batch_id = ANY(%s)) s WHERE k <= %s ORDER BY batch_id, row_number",
                    (batch_ids, sample_rows))
        names = [d[0] for d in cur.description]
        samples = [{k: v for k, v in zip(names, row, strict=True) if k != "k"} for row in cur.fetchall()]
    decision = decisions.get(settings, trigger) if trigger else None
    run_url = (f"{settings.mlflow_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
               if run else None)
    return {"prediction_id": pid, "requested_at": requested_at, "predicted_price": price, "model_name": model_name,
            "model_version": model_version, "run_id": mv.run_id, "run_url": run_url,
            "trained_on": {"batch_ids": batch_ids, "rows": _int(tags.get("rows")),
                           "train_rows": _int(tags.get("train_rows")), "data_hash": tags.get("data_hash"),
                           "batches": batches},
            "trigger": {"batch_id": trigger or None, "reason": tags.get("trigger_reason"),
                        "decision": _plain(decision)},
            "sample_raw_rows": samples}


def _plain(decision: dict | None) -> dict | None:
    return None if decision is None else {k: decision[k] for k in ("batch_id", "batch_rows", "drift_found",
                                                                   "retrain", "retrain_reason")}


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _number(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (0, version)
