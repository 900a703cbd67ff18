"""The pipeline's accounting for one (group, day), from the databases and the registry: what the fault
tests and ``bench.faults`` assert after every scenario, and what an operator can run after an incident.

- the raw ledger is contiguous (batch numbers 1..n) and, given the API's own batches, holds exactly
  their rows: compared as multisets of row content hashes, so a lost or a doubled row shows;
- every raw row is clean or rejected exactly once (clean + rejected = raw, by raw_id);
- every processed batch has a decision; every "retrain" decision names a training that registered
  a version, and its promotion outcome is written; each training registered exactly one version;
- no MLflow run of its trainings is left RUNNING (a crashed attempt's are marked KILLED by the next);
- the ``production`` alias is on the version the last recorded alias move says.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable

from psycopg2 import sql

from tasador import db, registry
from tasador.retrain import runs_left_running
from tasador.schema import COLUMNS
from tasador.settings import Settings

SEP, VALUE, NULL = "\x1f", "v", "n"
# one key per stored row: the md5 of its columns joined by SEP, each value tagged VALUE and a NULL
# written as NULL, so that no text stands for a NULL (a fixed marker such as "\\N" did)
ROW_KEYS = sql.SQL("SELECT md5(concat_ws(%s, {})) FROM listings WHERE batch_id = %s").format(
    sql.SQL(", ").join(sql.SQL("coalesce(%s || {}, %s)").format(sql.Identifier(c)) for c in COLUMNS))


def content_key(values: Iterable) -> str:
    """A row's content hash: its 12 values as stored in raw (JSON scalars' text, NULL for null; text
    PostgreSQL cannot hold as ingest stores it, ``db.storable_text``)."""
    text = SEP.join(NULL if v is None else VALUE + db.storable_text(str(v)) for v in values)
    return hashlib.md5(text.encode()).hexdigest()


def api_row_keys(rows: list[dict]) -> Counter:
    return Counter(content_key(row.get(c) for c in COLUMNS) for row in rows)


def audit(settings: Settings, group: int, day: str, api_batches: list[list[dict]] | None = None) -> dict:
    """The accounting of (group, day). ``api_batches``: the rows of batches 1..k as the API serves
    them, every one of which must be stored by now. Returns counts and the problems found, in words."""
    problems: list[str] = []
    lost = duplicated = 0
    with db.transaction(settings.raw_db) as cur:
        cur.execute("SELECT batch_id, batch_number, rows, payload_sha256 FROM batches WHERE group_number = %s"
                    " AND day = %s ORDER BY batch_number", (group, day))
        ledger = cur.fetchall()
        numbers = [b[1] for b in ledger]
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"the ledger is not contiguous: batch numbers {numbers}")
        if len({b[3] for b in ledger}) != len(ledger):
            problems.append("two ledger batches carry the same payload")
        stored: dict[int, Counter] = {}
        for batch_id, number, rows, _ in ledger:
            cur.execute(ROW_KEYS, (SEP, *[VALUE, NULL] * len(COLUMNS), batch_id))
            stored[number] = Counter(r[0] for r in cur.fetchall())
            held = sum(stored[number].values())
            if held != rows:
                problems.append(f"batch {number}: the ledger says {rows} rows, raw holds {held}")
    if api_batches is not None:
        for number, rows in enumerate(api_batches, start=1):
            want, have = api_row_keys(rows), stored.get(number, Counter())
            missing, extra = sum((want - have).values()), sum((have - want).values())
            lost += missing
            duplicated += extra
            if missing or extra:
                problems.append(f"batch {number}: {missing} of the API's rows missing, {extra} rows extra")
        for number in stored.keys() - set(range(1, len(api_batches) + 1)):
            duplicated += sum(stored[number].values())
            problems.append(f"batch {number} is stored but the API served only {len(api_batches)} batches")
    batch_ids = [b[0] for b in ledger]

    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT batch_id, raw_rows, clean_rows, rejected_rows FROM processed_batches"
                    " WHERE batch_id = ANY(%s)", (batch_ids,))
        processed = {r[0]: r[1:] for r in cur.fetchall()}
        for batch_id, number, rows, _ in ledger:
            if batch_id not in processed:
                problems.append(f"batch {number} (batch_id {batch_id}) is not processed")
                continue
            cur.execute("SELECT (SELECT count(*) FROM listings WHERE batch_id = %(b)s),"
                        " (SELECT count(*) FROM rejects WHERE batch_id = %(b)s),"
                        " (SELECT count(*) FROM (SELECT raw_id FROM listings WHERE batch_id = %(b)s UNION"
                        "  SELECT raw_id FROM rejects WHERE batch_id = %(b)s) ids)", {"b": batch_id})
            clean, rejected, distinct = cur.fetchone()
            if not clean + rejected == distinct == rows:
                problems.append(f"batch {number}: clean {clean} + rejected {rejected} ({distinct} distinct raw ids)"
                                f" != raw {rows}")
                duplicated += max(0, clean + rejected - distinct)
        cur.execute("SELECT d.batch_id, d.retrain, d.training_id, t.version, d.promoted, t.promoted_at"
                    " FROM decisions d LEFT JOIN trainings t USING (training_id) WHERE d.batch_id = ANY(%s)",
                    (batch_ids,))
        decisions = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute("SELECT training_id, version FROM trainings WHERE group_number = %s AND day = %s"
                    " AND model_name = %s", (group, day, settings.model_name))
        trainings = dict(cur.fetchall())
        cur.execute("SELECT version FROM alias_moves WHERE model_name = %s ORDER BY move_id DESC LIMIT 1",
                    (settings.model_name,))
        last_move = cur.fetchone()
    dropped = 0
    for batch_id, number, *_ in ledger:
        if batch_id not in processed:
            continue
        if batch_id not in decisions:
            dropped += 1
            problems.append(f"batch {number} has no decision")
            continue
        retrain, training_id, version, promoted, promoted_at = decisions[batch_id]
        if retrain and (training_id is None or version is None):
            dropped += 1
            problems.append(f"batch {number}: its retrain decision was never carried out")
        elif retrain and (promoted is None or promoted_at is None):
            dropped += 1
            problems.append(f"batch {number}: v{version} was trained for it but its promotion is not recorded")

    versions = _versions_by_training(settings)
    extra_versions = 0
    for training_id, version in trainings.items():
        found = versions.get(str(training_id), [])
        if len(found) > 1 or (version is not None and found != [version]):
            extra_versions += max(0, len(found) - 1)
            problems.append(f"training {training_id} (recorded v{version}) has versions {found} in the registry")
    running = {training_id: runs_left_running(settings, training_id) for training_id in trainings}
    for training_id, runs in running.items():
        if runs:
            problems.append(f"training {training_id} left {len(runs)} MLflow run(s) RUNNING: {runs}")
    production = registry.production(settings)
    alias = production.version if production else None
    recorded = last_move[0] if last_move else None
    if recorded != alias:
        problems.append(f"the alias is on v{alias} but the last recorded move says v{recorded}")
    return {"group_number": group, "day": day, "batches": len(ledger), "rows_lost": lost,
            "rows_duplicated": duplicated, "decisions_dropped": dropped, "extra_versions": extra_versions,
            "trainings": len(trainings), "mlflow_runs_left_running": sum(map(len, running.values())),
            "production_version": alias, "problems": problems}


def _versions_by_training(settings: Settings) -> dict[str, list[str]]:
    client = registry.mlflow_client(settings)
    found: dict[str, list[str]] = {}
    for mv in client.search_model_versions(f"name = '{registry.quoted_name(settings.model_name)}'"):
        found.setdefault(mv.tags.get("training_id", "none"), []).append(mv.version)
    return {k: sorted(v, key=int) for k, v in found.items()}


def as_json(report: dict) -> str:
    return json.dumps(report, default=str)
