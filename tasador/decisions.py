"""The retrain decision for each new clean batch, written down with its reason.

Retrain when there is no production model, or when the batch has at least ``retrain_min_rows`` rows
and drift is found against the data behind the production model. One record per batch (re-deciding
a batch returns the record already written).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from psycopg2.extras import Json

from tasador import db, faults, locks
from tasador.settings import Settings

if TYPE_CHECKING:  # drift (pandas) and the registry (MLflow) load only when a batch is decided
    from tasador import drift
    from tasador.registry import Production

log = logging.getLogger(__name__)


def undecided_batches(settings: Settings, group: int, day: str) -> list[dict]:
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT p.batch_id, p.batch_number, p.clean_rows FROM processed_batches p"
                    " LEFT JOIN decisions d USING (batch_id)"
                    " WHERE p.group_number = %s AND p.day = %s AND d.batch_id IS NULL ORDER BY p.batch_number",
                    (group, day))
        return [{"batch_id": r[0], "batch_number": r[1], "clean_rows": r[2]} for r in cur.fetchall()]


def retrain_verdict(production_version: str | None, report: drift.DriftReport | None, rows: int,
                    min_rows: int) -> tuple[bool, str]:
    """Retrain or not, and why in words: always without a production model; with one, only when the
    batch drifted from its data and has at least ``min_rows`` rows."""
    if production_version is None:
        return True, "no production model yet: train the first one"
    if report is None or not report.drifted:
        described = report.explain() if report else "nothing to compare with"
        return False, f"no drift against production v{production_version}'s data: {described}"
    if rows < min_rows:
        return False, (f"drift found ({report.explain()}) but the batch has only {rows:,} rows "
                       f"(< {min_rows:,}): not enough to retrain on")
    return True, f"drift against production v{production_version}'s data: {report.explain()}"


def decide(settings: Settings, batch_id: int, production: Production | None) -> dict:
    """Compare the batch with the production model's data, decide, record, return the record."""
    from tasador import drift

    existing = get(settings, batch_id)
    if existing:
        return {**existing, "status": "already_decided"}
    reference_ids = [b for b in (production.batch_ids if production else []) if b != batch_id]
    if not reference_ids:  # no model yet: describe the batch against everything collected before it
        with db.transaction(settings.clean_db) as cur:
            cur.execute("SELECT batch_id FROM processed_batches WHERE batch_id < %s ORDER BY batch_id", (batch_id,))
            reference_ids = [r[0] for r in cur.fetchall()]
    if reference_ids:
        drift.import_statistics_meanwhile()
    batch = drift.load(settings, [batch_id])
    report = drift.compare(batch, drift.load(settings, reference_ids), settings) if reference_ids else None
    found = bool(report and report.drifted)
    retrain, reason = retrain_verdict(production.version if production else None, report, len(batch),
                                      settings.retrain_min_rows)
    record = {"batch_id": batch_id, "batch_rows": len(batch), "reference_batches": reference_ids,
              "drift": report.as_dict() if report else {}, "drift_found": found, "retrain": retrain,
              "retrain_reason": reason, "production_version": production.version if production else None}
    faults.point("decide.before_record", settings)
    with db.transaction(settings.clean_db) as cur:
        cur.execute("INSERT INTO decisions (batch_id, batch_rows, reference_batches, drift, drift_found, retrain,"
                    " retrain_reason, production_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (batch_id) DO NOTHING",
                    (batch_id, len(batch), reference_ids, Json(record["drift"]), found, retrain, reason,
                     record["production_version"]))
    log.info("batch %s: retrain=%s: %s", batch_id, retrain, reason)
    return {**record, "status": "decided"}


def decide_pending(settings: Settings, group: int, day: str) -> dict:
    """Decide every processed batch of (group, day) that has no decision yet, oldest first. The summary
    says what work is pending: retrain decisions no training carried out yet (this run's or an earlier
    one's), and trained versions whose promotion is not recorded. ``production_version`` is the version
    the batches were compared with (None when there was nothing to decide)."""
    from tasador import registry

    with locks.writer_lock(settings, locks.pipeline(group, day), "decide"):
        undecided = undecided_batches(settings, group, day)
        # the registry only when there is something to compare: importing MLflow costs about 2 s, most
        # of a decide's fixed cost when the batch is unchanged (issue 18's step overhead)
        production = registry.production(settings) if undecided else None
        results = [summary(decide(settings, b["batch_id"], production)) for b in undecided]
        pending = pending_work(settings, group, day)
    return {"job": "decide", "status": "decided" if results else "nothing_to_decide", "group_number": group,
            "day": day, "production_version": production.version if production else None,
            "retrain": any(r["retrain"] for r in results), "decisions": results, "pending": pending,
            "work_pending": bool(pending["retrain_decisions"] or pending["promotions"])}


def pending_work(settings: Settings, group: int, day: str) -> dict:
    """Retrain decisions of (group, day) no training has carried out, and trainings of (group, day) for
    the configured model whose promotion is not recorded (a crashed train or promote leaves these)."""
    db.create_tables(settings.clean_db, "clean")
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT d.batch_id FROM decisions d JOIN processed_batches p USING (batch_id)"
                    " LEFT JOIN trainings t ON t.training_id = d.training_id"
                    " WHERE p.group_number = %s AND p.day = %s AND d.retrain"
                    " AND (d.training_id IS NULL OR t.version IS NULL) ORDER BY p.batch_number", (group, day))
        retrain = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT training_id FROM trainings WHERE group_number = %s AND day = %s AND model_name = %s"
                    " AND promoted_at IS NULL ORDER BY training_id", (group, day, settings.model_name))
        promotions = [r[0] for r in cur.fetchall()]
    return {"retrain_decisions": retrain, "promotions": promotions}


def get(settings: Settings, batch_id: int) -> dict | None:
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT batch_id, batch_rows, reference_batches, drift, drift_found, retrain, retrain_reason,"
                    " production_version, training, promoted, promotion_reason, training_id FROM decisions"
                    " WHERE batch_id = %s",
                    (batch_id,))
        row = cur.fetchone()
    if not row:
        return None
    keys = ("batch_id", "batch_rows", "reference_batches", "drift", "drift_found", "retrain", "retrain_reason",
            "production_version", "training", "promoted", "promotion_reason", "training_id")
    return dict(zip(keys, row, strict=True))


def summary(record: dict) -> dict:
    """The decision without the per-feature details, for job summaries."""
    out = {k: v for k, v in record.items() if k != "drift"}
    features = (record.get("drift") or {}).get("features", [])
    out["drifted_features"] = [f["feature"] for f in features if f["drifted"]]
    return json.loads(json.dumps(out, default=str))


def batch_report(settings: Settings, group: int, day: str) -> list[dict]:
    """Per batch of (group, day), from the databases: rows in, rejected, drift, retrain and why, the
    version trained, its RMSE, promoted and why (the rows of the demo's table)."""
    with db.transaction(settings.raw_db) as cur:
        cur.execute("SELECT batch_id, batch_number, rows FROM batches WHERE group_number = %s AND day = %s"
                    " ORDER BY batch_number", (group, day))
        ledger = cur.fetchall()
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT batch_id, rejected_rows FROM processed_batches WHERE batch_id = ANY(%s)",
                    ([b[0] for b in ledger],))
        rejected = dict(cur.fetchall())
    rows = []
    for batch_id, number, n in ledger:
        decision = summary(get(settings, batch_id) or {})
        rows.append(report_row({"batch_number": number, "batch_id": batch_id, "rows": n}, rejected.get(batch_id),
                               decision, decision.get("training") or {}, decision.get("promoted"),
                               decision.get("promotion_reason")))
    return rows


def report_row(batch: dict, rejected: int | None, decision: dict, training: dict, promoted: bool | None,
               promotion_reason: str | None) -> dict:
    """One batch's row of the report (the demo's table; a cycle's summary): rows in, rejected, drift,
    retrain and why, the version trained, its RMSE, promoted and why."""
    return {"batch_number": batch.get("batch_number"), "batch_id": batch.get("batch_id"), "rows_in": batch.get("rows"),
            "rejected": rejected, "drift_found": decision.get("drift_found"),
            "drifted": decision.get("drifted_features"), "retrain": decision.get("retrain"),
            "retrain_reason": decision.get("retrain_reason"), "version": training.get("version"),
            "family": training.get("family"), "rmse": (training.get("test_metrics") or {}).get("rmse"),
            "promoted": promoted, "promotion_reason": promotion_reason}
