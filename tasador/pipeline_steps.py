"""The train and promote steps as the pipeline runs them: driven by the batch's recorded decision."""

from __future__ import annotations

from tasador import db, decisions
from tasador.settings import Settings


def latest_decision(settings: Settings, group: int, day: str) -> dict | None:
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT d.batch_id FROM decisions d JOIN processed_batches p USING (batch_id)"
                    " WHERE p.group_number = %s AND p.day = %s ORDER BY p.batch_number DESC LIMIT 1", (group, day))
        row = cur.fetchone()
    return decisions.get(settings, row[0]) if row else None


def train_if_decided(settings: Settings, group: int, day: str, force: bool = False) -> dict:
    from tasador.training import train

    decision = latest_decision(settings, group, day)
    base = {"job": "train", "group_number": group, "day": day}
    if decision is None and not force:
        return {**base, "status": "nothing_to_train", "reason": "no decision recorded for this group and day"}
    if decision and decision["training"] and not force:
        return {**base, "status": "already_trained", "batch_id": decision["batch_id"], **decision["training"]}
    if decision and not decision["retrain"] and not force:
        return {**base, "status": "skipped", "batch_id": decision["batch_id"], "reason": decision["retrain_reason"]}
    trigger = decision or {"batch_id": 0, "retrain_reason": "forced by the operator"}
    result = train(settings, trigger)
    if decision:
        decisions.record_outcome(settings, decision["batch_id"], result, None, None)
    return {**base, "status": "trained", "batch_id": trigger["batch_id"], **result}


def promote_latest(settings: Settings, group: int, day: str, version: str | None = None) -> dict:
    from tasador.promotion import promote

    decision = latest_decision(settings, group, day)
    batch_id = decision["batch_id"] if decision else None
    if version is None:
        if not decision or not decision["training"]:
            return {"job": "promote", "status": "nothing_to_promote", "batch_id": batch_id,
                    "reason": "the latest batch trained no model"}
        if decision["promoted"] is not None:
            return {"job": "promote", "status": "already_decided", "batch_id": batch_id,
                    "promoted": decision["promoted"], "reason": decision["promotion_reason"]}
        version = decision["training"]["version"]
    return {**promote(settings, str(version), batch_id), "batch_id": batch_id}
