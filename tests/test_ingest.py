"""Ingestion as a real Ray job (``ray job submit`` to the local head) into the real raw database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bench.fault_proxy import FaultProxy
from data_api.plan import PLAN, batch_order, scaled_rows
from tasador import ray_jobs
from tests.conftest import REPO, TEST_SCALE, module_data

settings = module_data()  # this module's own databases, model and experiment


def ingest(settings, group, day="Monday", **changes):
    s = settings.replace(**changes) if changes else settings
    return ray_jobs.run(s, "jobs.ingest", ["--group", str(group), "--day", day], timeout_s=300)


def ledger(raw, group, day="Monday"):
    with raw.cursor() as cur:
        cur.execute("SELECT b.batch_number, b.rows, count(l.raw_id) FROM batches b"
                    " LEFT JOIN listings l USING (batch_id) WHERE group_number = %s AND day = %s"
                    " GROUP BY b.batch_id ORDER BY b.batch_number", (group, day))
        return cur.fetchall()


def test_ray_job_submit_cli_ingests_one_batch(settings, raw, group):
    """The user's entry point, verbatim: ``ray job submit --working-dir . -- python -m jobs.ingest``."""
    env = {**os.environ, "RAY_ADDRESS": settings.ray_dashboard}
    runtime_env = json.dumps({"excludes": [".venv", "state", ".git"], "env_vars": settings.as_env()})
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--working-dir", ".",
           "--runtime-env-json", runtime_env,
           "--", "python", "-m", "jobs.ingest", "--group", str(group), "--day", "Monday"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = ray_jobs.last_json(out.stdout)
    first = PLAN[batch_order(group, "Monday")[0]]
    assert summary["status"] == "ingested" and summary["rows"] == scaled_rows(first, TEST_SCALE)
    assert ledger(raw, group) == [(1, summary["rows"], summary["rows"])]


def test_every_batch_then_exhausted_ends_cleanly(settings, raw, group):
    for n in range(1, len(PLAN) + 1):
        outcome = ingest(settings, group)
        assert outcome.status == "SUCCEEDED", outcome.logs
        assert outcome.summary["batch_number"] == n
    outcome = ingest(settings, group)
    assert outcome.status == "SUCCEEDED"
    assert outcome.summary["status"] == "exhausted"
    assert "no more batches" in outcome.summary["message"]
    expected = [scaled_rows(PLAN[k], TEST_SCALE) for k in batch_order(group, "Monday")]
    assert ledger(raw, group) == [(n, rows, rows) for n, rows in enumerate(expected, start=1)]


def test_an_api_restarted_behind_the_ledger_is_replayed_not_duplicated(settings, raw, group):
    """Someone restarted the API's counter: the next ingest verifies batch 1 by its hash and stores
    batch 2, instead of storing batch 1 twice or stopping."""
    first = ingest(settings, group).summary
    ray_jobs_client_restart(settings, group)
    again = ingest(settings, group).summary
    assert again["status"] == "ingested" and again["batch_number"] == 2
    assert again["recovery"]["verified"] == 1 and not again["recovery"]["restarted"]
    assert "behind the ledger" in again["recovery"]["cause"]
    assert [n for n, *_ in ledger(raw, group)] == [1, 2] and ledger(raw, group)[0][1] == first["rows"]


def ray_jobs_client_restart(settings, group, day="Monday"):
    from tasador.api_client import DataApiClient

    DataApiClient(settings.data_api).restart(group, day)


def test_server_errors_are_retried_with_backoff(settings, raw, group):
    proxy = FaultProxy(settings.data_api, fail_first=2, fail_status=503)
    try:
        outcome = ingest(settings, group, data_api_url=proxy.url)
    finally:
        proxy.close()
    assert outcome.status == "SUCCEEDED", outcome.logs
    assert outcome.summary["status"] == "ingested"
    assert proxy.requests == 3
    assert "retry 1/" in outcome.logs and "retry 2/" in outcome.logs
    assert len(ledger(raw, group)) == 1


def test_persistent_failure_fails_the_job_and_writes_nothing(settings, raw, group):
    proxy = FaultProxy(settings.data_api, fail_first=100, fail_status=500)
    try:
        outcome = ingest(settings, group, data_api_url=proxy.url, data_api_retries=2)
    finally:
        proxy.close()
    assert outcome.status == "FAILED"
    assert outcome.summary["status"] == "failed"
    assert "failed after 3 attempts" in outcome.summary["error"] and "HTTP 500" in outcome.summary["error"]
    assert ledger(raw, group) == []


@pytest.mark.parametrize("body,problem", [(b"not json", "not a batch"),
                                          (b'{"batch_number": 1, "data": [1, 2]}', "not a list of listing objects")])
def test_malformed_answer_is_reported_not_stored(settings, raw, group, body, problem):
    proxy = FaultProxy(settings.data_api, body=body)
    try:
        outcome = ingest(settings, group, data_api_url=proxy.url)
    finally:
        proxy.close()
    assert outcome.status == "FAILED" and problem in outcome.summary["error"]
    assert ledger(raw, group) == []


def test_job_killed_mid_batch_leaves_nothing(settings, raw, group):
    """Block the ingest transaction after its COPY (the test holds a lock on the ledger), stop the
    job while it waits there, release: neither the rows nor the ledger row may remain."""
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM listings")
        rows_before = cur.fetchone()[0]
    holder = __import__("psycopg2").connect(settings.raw_db)
    lock = holder.cursor()
    lock.execute("LOCK TABLE batches IN EXCLUSIVE MODE")
    job_id = ray_jobs.submit(settings, "jobs.ingest", ["--group", str(group), "--day", "Monday"])
    try:
        deadline = time.monotonic() + 120
        while True:
            with raw.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE 'INSERT INTO batches%%'")
                if cur.fetchone()[0]:
                    break
            assert time.monotonic() < deadline, "the ingest job never reached its ledger insert"
            time.sleep(0.1)
        ray_jobs.JobsApi(settings).stop(job_id)
        while ray_jobs.JobsApi(settings).status(job_id) not in ray_jobs.TERMINAL:
            time.sleep(0.2)
    finally:
        holder.rollback()
        holder.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the dead client's backend aborts its transaction
        with raw.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND state <> 'idle'")
            if cur.fetchone()[0] == 0:
                break
        time.sleep(0.2)
    assert ray_jobs.JobsApi(settings).status(job_id) == "STOPPED"
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM listings")
        assert cur.fetchone()[0] == rows_before
    assert ledger(raw, group) == []


def test_copy_in_streams_rows_exactly_and_a_failing_source_writes_nothing(settings, monkeypatch):
    """``db.copy_in`` renders the CSV as PostgreSQL reads it: with chunks a few rows long, values that
    CSV must quote (commas, quotes, newlines, the NULL marker as text), NULL and the empty string come
    back exactly; a row source that fails mid-COPY raises its own error and leaves no row."""
    from tasador import db

    monkeypatch.setattr(db.CsvRows, "CHUNK", 64)
    monkeypatch.setattr(db.CsvRows, "ROWS_PER_RENDER", 3)
    tricky = [None, "", "a,b", 'say "hi"', "two\nlines", "\\N", "ünïcode ☃", "x" * 200, "1e+16", "103378.0"]
    rows = [(i, tricky[i % len(tricky)], tricky[(i * 7) % len(tricky)]) for i in range(500)]
    with db.transaction(settings.raw_db) as cur:
        cur.execute("CREATE TEMP TABLE copy_check (n int, a text, b text)")
        assert db.copy_in(cur, "copy_check", ("n", "a", "b"), iter(rows)) == len(rows)
        cur.execute("SELECT n, a, b FROM copy_check ORDER BY n")
        assert cur.fetchall() == rows

        def failing():
            yield from rows[:100]
            raise ValueError("row 100 is bad")

        cur.execute("SAVEPOINT before_failing")
        with pytest.raises(ValueError, match="row 100 is bad"):
            db.copy_in(cur, "copy_check", ("n", "a", "b"), failing())
        cur.execute("ROLLBACK TO SAVEPOINT before_failing")
        cur.execute("SELECT count(*) FROM copy_check")
        assert cur.fetchone()[0] == len(rows)


def test_the_audit_tells_a_text_backslash_n_from_a_null(settings, raw, group):
    """A stored batch whose rows carry the text ``\\N`` and a NULL in the same column is accounted for
    exactly; turning the text into NULL in raw (the loss a fixed NULL marker caused) shows as one row
    missing and one extra."""
    import hashlib

    from tasador import audit
    from tasador.api_client import Batch
    from tasador.ingest import store_batch
    from tasador.schema import COLUMNS

    rows = [{c: f"{c}-{i}" for c in COLUMNS} for i in range(3)]
    rows[0]["city"], rows[1]["city"] = "\\N", None
    payload = hashlib.sha256(repr(rows).encode()).hexdigest()
    assert store_batch(settings.raw_db, Batch(group, "Monday", 1, rows, payload, "test")).status == "ingested"
    accounts = audit.audit(settings, group, "Monday", [rows])
    assert (accounts["rows_lost"], accounts["rows_duplicated"]) == (0, 0), accounts["problems"]
    with raw.cursor() as cur:
        cur.execute("UPDATE listings SET city = NULL WHERE city = '\\N' AND batch_id IN"
                    " (SELECT batch_id FROM batches WHERE group_number = %s)", (group,))
        assert cur.rowcount == 1
    accounts = audit.audit(settings, group, "Monday", [rows])
    assert (accounts["rows_lost"], accounts["rows_duplicated"]) == (1, 1), accounts["problems"]


def test_text_postgresql_cannot_hold_is_stored_marked_not_refused(settings, raw, group):
    """A NUL and a lone surrogate are valid JSON but not PostgreSQL text: such a batch failed its COPY at
    every run and stalled its (group, day). It is stored with U+FFFD in their place, the result says so,
    and the audit, reading the API's rows the same way, finds nothing lost or doubled."""
    import hashlib

    from tasador import audit
    from tasador.api_client import Batch
    from tasador.ingest import store_batch
    from tasador.schema import COLUMNS

    rows = [{c: f"{c}-{i}" for c in COLUMNS} for i in range(3)]
    rows[1]["city"], rows[2]["street"] = "San\x00Juan", "12\ud800"
    payload = hashlib.sha256(repr(rows).encode()).hexdigest()
    result = store_batch(settings.raw_db, Batch(group, "Monday", 1, rows, payload, "test"))
    assert (result.status, result.rows) == ("ingested", 3)
    assert "2 values held characters PostgreSQL text cannot store" in result.message
    with raw.cursor() as cur:
        cur.execute("SELECT city, street FROM listings WHERE batch_id = %s ORDER BY row_number", (result.batch_id,))
        stored = cur.fetchall()
    assert stored[1][0] == "San\ufffdJuan" and stored[2][1] == "12\ufffd" and stored[0] == ("city-0", "street-0")
    accounts = audit.audit(settings, group, "Monday", [rows])
    assert (accounts["rows_lost"], accounts["rows_duplicated"]) == (0, 0), accounts["problems"]
