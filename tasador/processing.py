"""Processing: raw batches -> clean listings and rejects, with Ray Data.

Ray Data reads the batch from the raw database in parallel shards (``raw_id`` ranges, each a read task
that fetches Arrow through ADBC: ``arrow_ranges``) and cleans each block in ``map_batches``; the driver
takes the blocks in ``raw_id`` order as they finish, marks exact duplicates (they may sit in different
blocks: ``DuplicateMarker``) and writes each block's clean rows and rejects by binary COPY (pgpq's
encoding, sent by psycopg2: ``db.copy_arrow``) while the next are cleaned, all in one transaction that ends with
the processed-batch ledger row, after checking clean + rejected = raw. Processing a batch twice is a no-op.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tasador import db, faults, locks
from tasador.cleaning import CLEAN_COLUMNS, DuplicateMarker, clean_table
from tasador.schema import COLUMNS
from tasador.settings import Settings

log = logging.getLogger(__name__)



def raw_batch_query(batch_id: int | None = None) -> sql.Composable:
    """The raw rows of a batch: the batch id a ``%s`` parameter, or (COPY takes none) a literal."""
    value = sql.Placeholder() if batch_id is None else sql.Literal(int(batch_id))
    return sql.SQL("SELECT raw_id, batch_id, {} FROM listings WHERE batch_id = {}").format(
        db.identifiers(COLUMNS), value)


class AccountingError(Exception):
    """Clean + rejected rows do not add up to the raw rows of the batch."""


def pending_batches(raw: str | Connection, clean: str | Connection, group: int, day: str) -> list[dict]:
    """Raw batches of (group, day) that are not processed yet, oldest first. ``raw``, ``clean``: each
    database's URL or an open session (``db.transaction``)."""
    with db.transaction(raw) as cur:
        cur.execute("SELECT batch_id, group_number, day, batch_number, rows FROM batches"
                    " WHERE group_number = %s AND day = %s ORDER BY batch_number", (group, day))
        ledger = [dict(zip(("batch_id", "group_number", "day", "batch_number", "rows"), r, strict=True))
                  for r in cur.fetchall()]
    with db.transaction(clean) as cur:
        cur.execute("SELECT batch_id FROM processed_batches WHERE batch_id = ANY(%s)",
                    ([b["batch_id"] for b in ledger],))
        done = {r[0] for r in cur.fetchall()}
    return [b for b in ledger if b["batch_id"] not in done]


def process_pending(settings: Settings, group: int, day: str) -> dict:
    """Process every pending batch of (group, day) under its writer lock. The step's work runs on two
    sessions: the lock's on the raw database and one on the clean database (it opened seven connections,
    ~7 ms each, before its reads could start: 50-60 ms of a 1.1-s batch)."""
    with (locks.writer_lock(settings, locks.pipeline(group, day), "process") as raw,
          contextlib.closing(db.connect(settings.clean_db)) as clean):
        db.create_all_tables(settings, raw, clean)
        results = [process_batch(settings, batch, raw, clean) for batch in pending_batches(raw, clean, group, day)]
    return {"job": "process", "status": "processed" if results else "nothing_to_process",
            "group_number": group, "day": day, "batches": results}


# A batch's first and last raw_id, each one entry of its (batch_id, row_number) key. A batch is stored by
# one COPY in row order, and the BIGSERIAL takes its values in input order, so every row of the batch
# lies between the two (dense unless another batch was ingested at the same time; the read's batch_id
# filter drops the other's rows, and processing's accounting fails a batch if a row were ever missed).
# Not ``min(raw_id), max(raw_id) ... WHERE batch_id``: for min the planner walks the primary key from the
# table's first row and filters out every earlier batch's rows (66 ms behind two 230k-row batches,
# growing with the table; 0.03 ms this way)
BATCH_RAW_ID_BOUNDS = ("SELECT (SELECT raw_id FROM listings WHERE batch_id = %(batch)s ORDER BY row_number LIMIT 1),"
                       " (SELECT raw_id FROM listings WHERE batch_id = %(batch)s ORDER BY row_number DESC LIMIT 1)")


def raw_id_ranges(raw: str | Connection, batch_id: int, shards: int) -> list[str]:
    """The batch's raw rows as ``shards`` queries over contiguous ``raw_id`` ranges: each an index range
    scan, where hashing the key made every shard scan the whole batch. Rendered SQL text (ADBC takes no
    psycopg2 composables). ``raw``: the raw database's URL or an open session."""
    with db.transaction(raw) as cur:
        cur.execute(BATCH_RAW_ID_BOUNDS, {"batch": batch_id})
        low, high = cur.fetchone()
        if low is None:
            return []
        step = (high - low) // shards + 1
        return [sql.SQL("{} AND raw_id >= {} AND raw_id < {}").format(
            raw_batch_query(batch_id), sql.Literal(start), sql.Literal(min(start + step, high + 1))).as_string(cur)
            for start in range(low, high + 1, step)]


def arrow_ranges(url: str, queries: list[str]):
    """A Ray Data datasource: one read task per query, each fetching its rows as an Arrow table through
    ADBC (PostgreSQL's binary COPY decoded in C++). Not ``ray.data.read_sql``: it fetches Python
    tuples through a DB-API cursor and builds Arrow from them (0.39x the bare COPY; issue 18)."""
    import functools

    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ArrowRanges(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(functools.partial(_read_arrow, url, q),
                             BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))
                    for q in queries]

    return ArrowRanges()


def _read_arrow(url: str, query: str) -> list:
    """One read task's range; the worker keeps its connection for its next range (a batch has two per CPU)."""
    return [db.read_arrow(url, query, keep_connection=True)]


def read_shards(settings: Settings) -> int:
    """How many ``raw_id`` ranges a batch is read in: two per CPU of the cluster (at least 4), so that a
    shard's database fetch and its cleaning overlap with another's, and the last block's write is short."""
    import ray

    return settings.process_read_shards or max(4, 2 * int(ray.cluster_resources().get("CPU", 2)))


def cleaned_blocks(settings: Settings, batch_id: int, raw: str | Connection | None = None) -> Iterator[pa.Table]:
    """The batch's rows typed and judged by ``clean_table`` in Ray Data tasks (duplicates not marked yet),
    block by block in ``raw_id`` order as they finish: the caller writes one while the next are cleaned.
    ``raw``: a session on the raw database to find the ranges on (default: a connection of its own)."""
    # Ray Data hands a finished task's block on once its metadata is fetched, by default by a thread that
    # polls every 0.1 s: the first block reached the driver 0.08-0.17 s after its task ended, and a batch's
    # writing cannot start before it. Fetched inline (Ray Data's own switch, an env var read when ray.data is
    # first imported: a process that imported it before keeps its mode), a batch took 0.896 s where it
    # took 0.946 (medians of 12 runs each, 230k rows)
    os.environ.setdefault("RAY_DATA_METADATA_PREFETCH_ON_THREAD", "0")
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)  # inside a Ray job: the job's cluster
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # DuplicateMarker needs the blocks in raw_id order
    # Ray Data reserves half of the cluster's CPUs for each operator of a pipeline and lets an operator
    # use the rest only as it frees up: with one (fused read + clean) operator on 2 CPUs, its tasks ran
    # one at a time, all on one worker (a 230k-row batch's four: 0.99 s; four 0.2-s tasks: 0.96 s, and
    # 0.50 s without the reservation, two at a time)
    context.op_resource_reservation_enabled = False
    queries = raw_id_ranges(raw or settings.raw_db, batch_id, read_shards(settings))
    if not queries:
        return
    ds = ray.data.read_datasource(arrow_ranges(settings.raw_db, queries), override_num_blocks=len(queries))
    ds = ds.map_batches(clean_table, batch_format="pyarrow", batch_size=None,
                        fn_kwargs={"price_min": settings.clean_price_min, "price_max": settings.clean_price_max,
                                   "today": dt.date.today()})
    # Without prefetching: with Ray Data's default (one batch ahead) a block reached the driver only once
    # the next one was fetched too, 0.2 s after its task ended when two tasks end together (a batch's
    # median 0.945 -> 0.896 s, 12 runs each). On one node every block is in its object store already.
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


def distinct_ids(ids: np.ndarray) -> int:
    """How many distinct ids a block has: its length when they increase, else by marking each in a
    bitmap of the block's id range (a shard is a range of a batch's dense ids). A range comes back in
    heap order, not id order (a fresh 230k-row batch had 210 inversions), so ``np.unique``'s sort ran for
    every block: 0.085 s of the driver's CPU per batch, against about 1 ms; it stays for sparse ids."""
    if not len(ids) or bool((ids[1:] > ids[:-1]).all()):
        return len(ids)
    low, high = int(ids.min()), int(ids.max())
    if high - low >= 8 * len(ids):
        return len(np.unique(ids))
    seen = np.zeros(high - low + 1, dtype=bool)
    seen[ids - low] = True
    return int(np.count_nonzero(seen))


class OrderedCopies:
    """A batch's COPYs, one at a time and in order, on its transaction's cursor in a thread of their own:
    the driver takes and marks the next block while the server ingests this one (most of a batch's
    writing), where before the two took turns. At most ``depth`` COPYs wait, so memory stays bounded.
    ``written``: the rows the server stored, per table, once ``wait`` returns. A failed COPY is raised at
    the next ``put`` or at ``wait``; ``close`` drops the waiting ones and waits for the running one,
    before the transaction rolls back."""

    def __init__(self, cur, depth: int = 4) -> None:
        self.cur, self.depth, self.seconds = cur, depth, 0.0
        self.written: collections.Counter[str] = collections.Counter()
        self.targets: dict[tuple, pa.Schema] = {}  # (table, columns): their types (db.copy_target)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="copy")
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def put(self, table: str, rows: pa.Table, where: pa.ChunkedArray | None = None) -> None:
        """COPY ``rows`` (or those where ``where`` is true) into ``table`` after the COPYs put before."""
        while self.pending and (self.pending[0].done() or len(self.pending) >= self.depth):
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._copy, table, rows, where))

    def _copy(self, table: str, rows: pa.Table, where: pa.ChunkedArray | None) -> None:
        started = time.perf_counter()
        key = (table, tuple(rows.column_names))  # the catalogue read once, not at each of a batch's COPYs
        if key not in self.targets:
            self.targets[key] = db.copy_target(self.cur, table, rows.column_names)
        self.written[table] += db.copy_arrow(self.cur, table, rows, where, self.targets[key])
        self.seconds += time.perf_counter() - started

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def process_batch(settings: Settings, batch: dict, raw: str | Connection | None = None,
                  clean: str | Connection | None = None) -> dict:
    """Clean one raw batch into clean listings and rejects, in one transaction with its ledger row. The
    blocks are written as they come (the server's COPY overlaps the cleaning of the next blocks); the
    accounting is checked before the ledger row, and a failure rolls every block back. ``raw``, ``clean``:
    sessions to use (default: connections of its own)."""
    batch_id = batch["batch_id"]
    started = time.perf_counter()
    duplicates = DuplicateMarker()
    distinct, reasons = 0, collections.Counter()
    with db.transaction(clean or settings.clean_db) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (batch_id,))
        # The raw batch stays the source of truth and the ledger row commits with the rows, so a crash
        # just after commit can only lose the whole batch, which the next run processes again.
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SELECT clean_rows FROM processed_batches WHERE batch_id = %s", (batch_id,))
        if cur.fetchone():
            return {**batch, "status": "already_processed"}
        with contextlib.closing(OrderedCopies(cur)) as copies:
            for block in cleaned_blocks(settings, batch_id, raw):
                block = duplicates.mark(block)
                # the block itself (in the object store) with a mask: COPY filters it slice by slice
                is_rejected = block["reason"].is_valid()
                copies.put("listings", block.select(list(CLEAN_COLUMNS)), block["reason"].is_null())
                copies.put("rejects", block.select(["raw_id", "batch_id", "reason"]), is_rejected)
                distinct += distinct_ids(block["raw_id"].to_numpy())  # blocks in raw_id order: the marker checks
                # by the field at fault
                reasons.update(r.split(" ", 1)[0] for r in block["reason"].filter(is_rejected).to_pylist())
            copies.wait()
        # the rows the server stored, not the driver's own count of what it sent
        clean_rows, rejected_rows = copies.written["listings"], copies.written["rejects"]
        if clean_rows + rejected_rows != batch["rows"] or distinct != batch["rows"]:
            raise AccountingError(f"batch {batch_id}: raw ledger says {batch['rows']} rows, read "
                                  f"{clean_rows + rejected_rows} ({distinct} distinct): clean {clean_rows} + "
                                  f"rejected {rejected_rows}")
        faults.point("process.after_copy", settings)
        cur.execute("INSERT INTO processed_batches (batch_id, group_number, day, batch_number, raw_rows,"
                    " clean_rows, rejected_rows) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (batch_id, batch["group_number"], batch["day"], batch["batch_number"], batch["rows"],
                     clean_rows, rejected_rows))
    log.info("batch %s: %d clean, %d rejected", batch_id, clean_rows, rejected_rows)
    return {**batch, "status": "processed", "raw_rows": batch["rows"], "clean_rows": clean_rows,
            "rejected_rows": rejected_rows, "reject_reasons": dict(reasons.most_common(10)),
            "seconds": {"total": round(time.perf_counter() - started, 3), "writing": round(copies.seconds, 3)}}
