"""Processing (Ray Data job) and the retrain decision, on the real PostgreSQL and Ray cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from data_api.plan import PLAN, batch_order
from tasador import db, decisions, processing, ray_jobs
from tasador.cleaning import ARROW_STRINGS, clean_table, mark_duplicates
from tasador.registry import Production
from tasador.schema import COLUMNS
from tests.conftest import module_data

settings = module_data()  # this module's own databases, model and experiment
READ_SHARDS = 16  # blocks of a few hundred rows at the test scale: exact duplicates fall in different blocks


def run(settings, job, group, day="Monday"):
    outcome = ray_jobs.run(settings, job, ["--group", str(group), "--day", day], timeout_s=600)
    assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    return outcome.summary


@pytest.fixture(scope="module")
def six_batches(settings):
    """Group 77/Monday: every batch ingested (a job per batch), then processed by one job, oldest batch
    first, each in a transaction of its own as the pipeline's per-batch jobs do (one process job instead
    of six saves a CI run about a minute of Ray job start-up). Each batch's last raw row is made a copy
    of its first, as an API that sends a listing twice would: an exact duplicate blocks apart."""
    group = 77
    for _ in PLAN:
        run(settings, "jobs.ingest", group)
    with psycopg2.connect(settings.raw_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT batch_id, min(raw_id), max(raw_id) FROM listings WHERE batch_id IN"
                    " (SELECT batch_id FROM batches WHERE group_number = %s) GROUP BY batch_id", (group,))
        copy_first_row = sql.SQL("UPDATE listings SET ({columns}) = (SELECT {columns} FROM listings WHERE raw_id = %s)"
                                 " WHERE raw_id = %s").format(columns=db.identifiers(COLUMNS))
        for _, first, last in cur.fetchall():
            cur.execute(copy_first_row, (first, last))
    processed = run(settings.replace(process_read_shards=READ_SHARDS), "jobs.process", group)["batches"]
    assert [b["batch_number"] for b in processed] == list(range(1, len(PLAN) + 1))
    return group, processed


def clean_conn(settings):
    conn = psycopg2.connect(settings.clean_db)
    conn.autocommit = True
    return conn


def test_every_batch_accounts_clean_plus_rejected_equals_raw(settings, six_batches):
    group, processed = six_batches
    assert [b["status"] for b in processed] == ["processed"] * len(PLAN)
    raw = psycopg2.connect(settings.raw_db)
    with raw.cursor() as rc, clean_conn(settings).cursor() as cc:
        for b in processed:
            rc.execute("SELECT count(*) FROM listings WHERE batch_id = %s", (b["batch_id"],))
            raw_rows = rc.fetchone()[0]
            cc.execute("SELECT (SELECT count(*) FROM listings WHERE batch_id = %(b)s),"
                       " (SELECT count(*) FROM rejects WHERE batch_id = %(b)s),"
                       " (SELECT raw_rows FROM processed_batches WHERE batch_id = %(b)s)", {"b": b["batch_id"]})
            clean, rejected, ledger = cc.fetchone()
            assert clean + rejected == raw_rows == ledger == b["raw_rows"]
            assert clean == b["clean_rows"] and rejected == b["rejected_rows"]
    raw.close()


def test_every_row_gets_the_reason_the_whole_batch_gives_it(settings, six_batches):
    """Processing writes each block as Ray Data finishes it, so an exact duplicate may be judged in a
    later block than the row it repeats: every batch's rejects must be exactly those of the cleaning
    rules over the batch's raw rows in one frame, and some pair must lie in different read shards, or
    this would not test it."""
    _, processed = six_batches
    pairs_across_blocks = 0
    with clean_conn(settings).cursor() as cur:
        for b in processed:
            query = processing.raw_batch_query(b["batch_id"]).as_string(cur)
            whole = mark_duplicates(clean_table(db.read_arrow(settings.raw_db, query), settings.clean_price_min,
                                                settings.clean_price_max).to_pandas(types_mapper=ARROW_STRINGS))
            expected = whole[whole["reason"].notna()]
            cur.execute("SELECT raw_id, reason FROM rejects WHERE batch_id = %s ORDER BY raw_id", (b["batch_id"],))
            assert cur.fetchall() == list(zip(expected["raw_id"], expected["reason"], strict=True))
            first = expected["reason"].str.extract(r"exact duplicate of raw row (\d+)")[0].dropna().astype(int)
            low, step = whole["raw_id"].min(), (whole["raw_id"].max() - whole["raw_id"].min()) // READ_SHARDS + 1
            later = expected.loc[first.index, "raw_id"]
            pairs_across_blocks += int(((later - low) // step != (first - low) // step).sum())
    assert pairs_across_blocks >= len(processed)  # the fixture's first-and-last pairs, at least


def test_processing_again_is_a_no_op(settings, six_batches):
    group, _ = six_batches
    with clean_conn(settings).cursor() as cur:
        cur.execute("SELECT count(*) FROM listings")
        before = cur.fetchone()[0]
        again = run(settings, "jobs.process", group)
        cur.execute("SELECT count(*) FROM listings")
        assert cur.fetchone()[0] == before
    assert again["status"] == "nothing_to_process"


def test_a_process_step_runs_on_two_sessions(settings, six_batches, monkeypatch):
    """A step's set-up (both databases' tables, the writer lock, the two ledgers) runs on the lock's session
    and one clean-database session, which the batch's transaction and range query reuse: it opened five
    connections before a read could start (about 7 ms each), then two more per batch."""
    group, _ = six_batches
    opened = []
    connect = psycopg2.connect
    monkeypatch.setattr(psycopg2, "connect", lambda url, **params: opened.append(url) or connect(url, **params))
    assert processing.process_pending(settings, group, "Monday")["status"] == "nothing_to_process"
    assert sorted(opened) == sorted([settings.raw_db, settings.clean_db]), opened


def test_a_batch_raw_id_range_is_found_by_its_key_not_past_earlier_batches(settings, six_batches):
    """The newest batch's first and last raw_id are those of min/max(raw_id), and finding them reads one
    index entry each: ``min(raw_id) ... WHERE batch_id`` walked the primary key past every earlier
    batch's rows (``Rows Removed by Filter``), a cost that grew with the raw table."""
    _, processed = six_batches
    newest = {"batch": processed[-1]["batch_id"]}

    def scans(node: dict) -> Iterator[dict]:
        if "Scan" in node["Node Type"]:
            yield node
        for child in node.get("Plans", []):
            yield from scans(child)

    with psycopg2.connect(settings.raw_db) as conn, conn.cursor() as cur:
        cur.execute(processing.BATCH_RAW_ID_BOUNDS, newest)
        bounds = cur.fetchone()
        cur.execute("SELECT min(raw_id), max(raw_id) FROM listings WHERE batch_id = %(batch)s", newest)
        assert bounds == cur.fetchone() and None not in bounds
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + processing.BATCH_RAW_ID_BOUNDS, newest)
        plan = cur.fetchone()[0][0]["Plan"]
    read = [(n["Node Type"], n["Actual Rows"], n.get("Rows Removed by Filter", 0)) for n in scans(plan)]
    assert len(read) == 2 and all(rows == 1 and removed == 0 for _, rows, removed in read), read


def test_first_decision_without_a_model_is_to_train(settings, six_batches):
    group, processed = six_batches
    summary = run(settings, "jobs.decide", group)
    first = summary["decisions"][0]
    assert first["batch_id"] == processed[0]["batch_id"]
    assert first["retrain"] is True and "no production model" in first["retrain_reason"]
    assert summary["production_version"] is None


def test_decisions_over_the_six_batches_make_sense(settings, six_batches):
    """With a production model trained on the first batch (sold <= $300k), each later batch is
    compared with that batch's clean rows."""
    group, processed = six_batches
    order = batch_order(group, "Monday")
    production = Production("1", "run", [processed[0]["batch_id"]], {})
    by_kind = {}
    with clean_conn(settings).cursor() as cur:
        cur.execute("DELETE FROM decisions WHERE batch_id = ANY(%s)", ([b["batch_id"] for b in processed[1:]],))
    for kind, batch in zip(order[1:], processed[1:], strict=True):
        by_kind[kind] = decisions.decide(settings, batch["batch_id"], production)
    mid = by_kind[4]  # mixed $300k-$500k
    assert mid["retrain"] and mid["drift_found"]
    assert mid["retrain_reason"].startswith("drift against production v1")
    assert "price median moved from" in mid["retrain_reason"]
    price = next(f for f in mid["drift"]["features"] if f["feature"] == "price")
    assert price["drifted"] and price["statistic"] > 0.5
    small = by_kind[3]  # one state, 4,055 rows at full scale: below the minimum at any test scale
    assert small["retrain"] is False and "not enough to retrain on" in small["retrain_reason"]
    assert "state shares shifted" in small["retrain_reason"]
    for kind in (0, 1):  # for_sale <= $300k: the same price band as the reference
        price = next(f for f in by_kind[kind]["drift"]["features"] if f["feature"] == "price")
        assert price["statistic"] < 0.2
    again = decisions.decide(settings, processed[4]["batch_id"], production)
    assert again["status"] == "already_decided"


def test_drift_reads_every_clean_row_of_its_batches_as_numbers_and_text(settings, six_batches):
    """drift.load (Arrow through ADBC) against PostgreSQL's own aggregates over the same rows."""
    from tasador import drift

    _, processed = six_batches
    ids = [b["batch_id"] for b in processed[:3]]
    frame = drift.load(settings, ids)
    with clean_conn(settings).cursor() as cur:
        cur.execute("SELECT count(*), sum(price), sum(bed), count(bath), count(DISTINCT state), count(status)"
                    " FROM listings WHERE batch_id = ANY(%s)", (ids,))
        rows, price, bed, baths, states, statuses = cur.fetchone()
    assert len(frame) == rows == sum(b["clean_rows"] for b in processed[:3])
    assert list(frame.columns) == [*drift.NUMERIC, *drift.CATEGORICAL]
    assert all(frame[c].dtype == "float64" for c in drift.NUMERIC)
    assert frame["price"].sum() == pytest.approx(price) and frame["bed"].sum() == pytest.approx(bed)
    assert frame["bath"].notna().sum() == baths  # a missing number is NaN
    assert frame["state"].nunique() == states and frame["status"].notna().sum() == statuses
    assert frame["state"].dropna().map(type).eq(str).all()
    assert drift.load(settings, []).empty


def test_a_kept_read_connection_the_server_ended_is_replaced(settings):
    """Processing's read tasks keep their ADBC connection for the worker's next range; one the server
    ended since (a restart, an operator's pg_terminate_backend) is replaced and the read gets its rows."""
    import time

    query = "SELECT pg_backend_pid() AS pid"
    first = db.read_arrow(settings.raw_db, query, keep_connection=True)["pid"][0].as_py()
    assert db.read_arrow(settings.raw_db, query, keep_connection=True)["pid"][0].as_py() == first
    with psycopg2.connect(settings.raw_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (first,))
        assert cur.fetchone()[0]
        for _ in range(100):  # until the backend has gone
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,))
            if not cur.fetchone()[0]:
                break
            time.sleep(0.05)
    second = db.read_arrow(settings.raw_db, query, keep_connection=True)["pid"][0].as_py()
    assert second != first
    assert db.read_arrow(settings.raw_db, query, keep_connection=True)["pid"][0].as_py() == second
    db._KEPT_READERS.pop(settings.raw_db).close()


def test_a_step_does_not_wait_for_a_writer_to_set_up_its_tables(settings):
    """Every step calls ``db.create_tables``; once the database is at this code's DDL it takes no table
    lock, so a step does not queue behind a COPY into ``listings`` or a reader of ``decisions`` (its
    ``CREATE INDEX IF NOT EXISTS`` and ``ALTER TABLE ... IF NOT EXISTS`` used to wait for both)."""
    import threading

    db.create_tables(settings.clean_db, "clean")
    holder = psycopg2.connect(settings.clean_db)
    try:
        with holder.cursor() as cur:  # a writer of listings and a reader of decisions, both in flight
            cur.execute("LOCK TABLE listings IN ROW EXCLUSIVE MODE")
            cur.execute("LOCK TABLE decisions IN ACCESS SHARE MODE")
        step = threading.Thread(target=db.create_tables, args=(settings.clean_db, "clean"), daemon=True)
        step.start()
        step.join(timeout=10)
        assert not step.is_alive(), "create_tables waited for a writer's table lock"
    finally:
        holder.rollback()
        holder.close()
    step.join(timeout=30)


def test_a_changed_ddl_is_applied_at_the_next_step(settings, monkeypatch):
    """A database last set up by other code (another DDL text) is brought to this code's at the next step."""
    import hashlib

    extra = "\nCREATE TABLE IF NOT EXISTS ddl_probe (x INT);"
    monkeypatch.setitem(db.DDL_BY_DATABASE, "clean", db.DDL_BY_DATABASE["clean"] + extra)
    try:
        db.create_tables(settings.clean_db, "clean")
        with db.transaction(settings.clean_db) as cur:
            cur.execute("SELECT to_regclass('ddl_probe') IS NOT NULL")
            assert cur.fetchone()[0]
        db.create_tables(settings.clean_db, "clean")  # now current: nothing to do, and nothing fails
    finally:
        with db.transaction(settings.clean_db) as cur:
            cur.execute("DROP TABLE IF EXISTS ddl_probe")
    monkeypatch.undo()
    db.create_tables(settings.clean_db, "clean")  # back to this code's DDL, recorded as such
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT ddl_sha256 FROM schema_versions WHERE database = 'clean'")
        assert cur.fetchone()[0] == hashlib.sha256(db.ddl_text(cur, "clean").encode()).hexdigest()


def test_binary_copy_stores_every_value_as_given(settings):
    """``db.copy_arrow`` (pgpq's binary COPY encoding) into ``listings``: nulls in every nullable column,
    the extremes of each type, text beyond ASCII, a zip code with a leading zero, and float64 bed and
    bath cast to the table's real; read back in the same transaction, which then rolls back."""
    import datetime as dt

    import pyarrow as pa

    from tasador.cleaning import CLEAN_COLUMNS

    rows = pa.table({
        "raw_id": [2**62, 2**62 + 1, 2**62 + 2], "batch_id": [-1, -1, -1], "property_id": [1, 2**63 - 1, 3],
        "brokered_by": [None, 2**63 - 1, 0], "status": ["for_sale", "sold", "ready_to_build"],
        "price": [1.0, 1.7976931348623157e308, 123456.789], "bed": [None, 2.5, 1e30],
        "bath": [1.0, None, 0.5], "acre_lot": [None, 5e-324, 0.25], "street": [7, None, 2**62],
        "city": ["São Paulo ☃ 🏠", None, ""], "state": ["Puerto Rico", "New York", "Texas"],
        "zip_code": ["00601", None, "12345"], "house_size": [None, 1500.0, 1e-3],
        "prev_sold_date": [dt.date(1900, 1, 1), None, dt.date(2099, 12, 31)],
    })
    assert rows.column_names == list(CLEAN_COLUMNS)
    with db.transaction(settings.clean_db) as cur:
        assert db.copy_arrow(cur, "listings", rows) == 3
        assert db.copy_arrow(cur, "listings", rows.slice(0, 0)) == 0
        with pytest.raises(TypeError, match=r"listings: no Arrow type for nope \(not a column\)"):
            db.copy_arrow(cur, "listings", pa.table({"nope": [1]}))
        cur.execute(sql.SQL("SELECT {} FROM listings WHERE batch_id = -1 ORDER BY raw_id").format(
            db.identifiers(CLEAN_COLUMNS)))
        stored = cur.fetchall()
        cur.connection.rollback()
    def real(row):  # bed and bath as float32 (PostgreSQL prints a real in its shortest form: 1e+30)
        return (*row[:6], *(None if v is None else np.float32(v) for v in row[6:8]), *row[8:])

    assert [real(r) for r in stored] == [real(tuple(r.values())) for r in rows.to_pylist()]


def test_a_failed_copy_is_raised_and_nothing_of_the_batch_stays(settings):
    """``OrderedCopies`` runs the COPYs in a thread of its own: a COPY that fails (here a raw_id written
    twice) is raised to the caller, which rolls the transaction back with every earlier COPY of it."""
    import pyarrow as pa

    ids = [2**62 + 10, 2**62 + 11]
    rows = pa.table({"raw_id": ids, "batch_id": [-1, -1], "property_id": [1, 2], "status": ["sold", "sold"],
                     "price": [1.0, 2.0], "state": ["Texas", "Texas"]})
    with (pytest.raises(psycopg2.errors.UniqueViolation), db.transaction(settings.clean_db) as cur,
          contextlib.closing(processing.OrderedCopies(cur, depth=1)) as copies):
        copies.put("listings", rows.slice(0, 1))
        copies.put("listings", rows)  # its first row again
        copies.wait()
    with clean_conn(settings).cursor() as cur:
        cur.execute("SELECT count(*) FROM listings WHERE raw_id = ANY(%s)", (ids,))
        assert cur.fetchone()[0] == 0


def test_a_copy_that_fails_midway_names_the_value_and_nothing_stays(settings):
    """``db.copy_arrow`` encodes and filters slice by slice as psycopg2 sends: a value that cannot take
    its column's type in a later slice (here raw_id "x" as bigint, after the first 8192 rows were sent)
    fails the COPY with Arrow's error naming it, and the transaction keeps none of the rows sent before it;
    the mask ``where`` writes only its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    count = db.EncodedRows.SLICE_ROWS + 100
    ids = [str(2**62 + 20 + i) for i in range(count)]
    rows = pa.table({"raw_id": ids, "batch_id": [-1] * count, "reason": ["test"] * count})
    odd = pc.equal(pc.bit_wise_and(pa.array(range(count)), 1), 1)
    with db.transaction(settings.clean_db) as cur:
        assert db.copy_arrow(cur, "rejects", rows, where=odd) == count // 2
        cur.execute("SELECT count(*), min(raw_id) FROM rejects WHERE batch_id = -1")
        assert cur.fetchone() == (count // 2, 2**62 + 21)
        cur.connection.rollback()
    bad = rows.set_column(0, "raw_id", pa.array([*ids[:-1], "x"]))
    with (pytest.raises(pa.ArrowInvalid, match=r"Failed to parse string: 'x' as a scalar of type int64"),
          db.transaction(settings.clean_db) as cur):
        db.copy_arrow(cur, "rejects", bad)
    with clean_conn(settings).cursor() as cur:
        cur.execute("SELECT count(*) FROM rejects WHERE batch_id = -1")
        assert cur.fetchone()[0] == 0
