"""Processing throughput: the 230,366-row raw batch -> clean listings + rejects.

Measured, same run, same rows:
- tasador: ``process_pending`` (Ray Data read tasks over raw-id ranges, each fetching Arrow through ADBC,
  + ``map_batches`` cleaning, duplicates, COPY of clean rows, rejects and ledger in one transaction),
  against the local Ray head;
- baseline pandas: single process ``pd.read_sql`` + the same rules + ``DataFrame.to_sql``;
- bound: a bare ``COPY ... TO STDOUT`` of the raw rows plus a bare ``COPY ... FROM STDIN`` of the clean
  rows (pre-rendered) into a table like clean ``listings`` (same indexes): the I/O alone.

And, in a run of its own (sampling costs CPU) from a fresh process, as a Ray job's driver is, the peak
memory of processing the batch: that driver and every process of the Ray head (workers, the object store),
summed as PSS in samples 50 ms apart (a sample reads every process's smaps, so it takes longer), above the
level just before, against the batch's raw rows as Arrow (issue 18: at most 2x).
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
from collections.abc import Iterator

import pandas as pd
import sqlalchemy
from psycopg2 import sql

from bench.common import TreeMemory, parser, private_stack, report, timer
from cluster import processes, ray_head
from tasador import db, processing
from tasador.cleaning import CLEAN_COLUMNS, clean_frame, mark_duplicates
from tasador.ingest import ingest_next
from tasador.ray_jobs import use_cluster_auth


def main() -> None:
    args = parser(__doc__).parse_args()
    scale = 0.1 if args.quick else 1.0
    with private_stack(scale) as settings:
        rows, batch_id, t_tasador = tasador_time(settings, 1, "bench")
        t_pandas, clean = pandas_time(settings, batch_id)
        t_bound = copy_bound_time(settings, batch_id, clean)
        with multiprocessing.get_context("spawn").Pool(1) as fresh:  # a fresh driver, as a Ray job's is
            memory = fresh.apply(memory_run, (settings, batch_id))
        _report(rows, scale, t_tasador, t_pandas, t_bound, memory)


def tasador_time(settings, group: int, day: str) -> tuple[int, int, dict]:
    """Ingest (group, day)'s next batch, then time ``process_pending`` on it from a ``warm_driver``: (raw
    rows, batch id, timer)."""
    ingested = ingest_next(settings, group, day)
    with warm_driver(settings, ingested.batch_id), timer() as t_tasador:
        result = processing.process_pending(settings, group, day)
    assert result["batches"][0]["clean_rows"] + result["batches"][0]["rejected_rows"] == ingested.rows
    return ingested.rows, ingested.batch_id, t_tasador


@contextlib.contextmanager
def warm_driver(settings, batch_id: int) -> Iterator[None]:
    """This process as a driver of the stack's Ray cluster, its workers warmed once on the batch first (as
    a running cluster's are); disconnected at the end, before the stack goes down (or the driver aborts
    waiting for the GCS)."""
    use_cluster_auth(settings)
    import ray

    ray.init(address=ray_head.driver_address(settings), logging_level=logging.WARNING)
    try:
        list(processing.cleaned_blocks(settings, batch_id))
        yield
    finally:
        ray.shutdown()


def pandas_time(settings, batch_id: int) -> tuple[dict, pd.DataFrame]:
    """The baseline: ``pd.read_sql``, the same rules, ``to_sql``; (timer, the clean rows)."""
    engine = sqlalchemy.create_engine(db.sqlalchemy_url(settings.raw_db))
    clean_engine = sqlalchemy.create_engine(db.sqlalchemy_url(settings.clean_db))
    with timer() as t_pandas:
        with contextlib.closing(db.connect(settings.raw_db)) as conn:
            raw_sql = processing.raw_batch_query().as_string(conn).replace("%s", ":b")
        raw = pd.read_sql(sqlalchemy.text(raw_sql), engine, params={"b": batch_id})
        df = mark_duplicates(clean_frame(raw, settings.clean_price_min, settings.clean_price_max))
        df[df["reason"].isna()][list(CLEAN_COLUMNS)].to_sql("bench_pandas_clean", clean_engine,
                                                              if_exists="replace", index=False, chunksize=10_000)
        df[df["reason"].notna()][["raw_id", "batch_id", "reason"]].to_sql(
            "bench_pandas_rejects", clean_engine, if_exists="replace", index=False)
    engine.dispose()
    clean_engine.dispose()
    return t_pandas, df[df["reason"].isna()][list(CLEAN_COLUMNS)]


def copy_bound_time(settings, batch_id: int, clean: pd.DataFrame) -> dict:
    """The bound: a bare COPY out of the batch's raw rows plus a bare COPY in of its clean rows (rendered
    before the clock starts) into a table like ``listings`` (same indexes)."""
    rendered = io.StringIO()
    clean.to_csv(rendered, index=False, header=False)
    with db.transaction(settings.clean_db) as cur:
        cur.execute("DROP TABLE IF EXISTS bench_bound")
        cur.execute("CREATE TABLE bench_bound (LIKE listings INCLUDING INDEXES)")
    with timer() as t_bound:
        with db.transaction(settings.raw_db) as cur:
            db.copy_out_csv(cur, processing.raw_batch_query(batch_id))
        with db.transaction(settings.clean_db) as cur:
            rendered.seek(0)
            copy = sql.SQL("COPY bench_bound ({}) FROM STDIN WITH (FORMAT csv)").format(db.identifiers(CLEAN_COLUMNS))
            cur.copy_expert(copy.as_string(cur), rendered)
    return t_bound


def memory_run(settings, batch_id: int) -> dict:
    """The batch processed again (its clean rows, rejects and ledger row deleted first) while ``TreeMemory``
    samples the PSS of this driver and of the Ray head's process tree: the peak above the first sample,
    and the batch's raw rows as an Arrow table, in MiB."""
    with db.transaction(settings.clean_db) as cur:
        for table in ("listings", "rejects", "processed_batches"):
            cur.execute(sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(sql.Identifier(table)), (batch_id,))
        query = processing.raw_batch_query(batch_id).as_string(cur)
    arrow_mb = db.read_arrow(settings.raw_db, query).nbytes / 2**20
    head = processes.load_registry(settings.state_path)["ray_head"]["pid"]
    with warm_driver(settings, batch_id), TreeMemory(head, every_s=0.05, proportional=True) as memory:
        processing.process_pending(settings, 1, "bench")
    return {"batch_arrow_mb": arrow_mb, "peak_memory_mb": memory.peak_mb - memory.first_mb}


def _report(rows, scale, t_tasador, t_pandas, t_bound, memory) -> None:
    report({
        "benchmark": "process", "rows": rows, "scale": scale,
        "tasador_s": t_tasador["s"], "tasador_rows_per_s": rows / t_tasador["s"],
        "pandas_s": t_pandas["s"], "pandas_rows_per_s": rows / t_pandas["s"],
        "copy_bound_s": t_bound["s"], "copy_bound_rows_per_s": rows / t_bound["s"],
        "ratio_tasador_vs_pandas": t_pandas["s"] / t_tasador["s"],
        "ratio_tasador_vs_copy_bound": t_bound["s"] / t_tasador["s"],
        **memory, "memory_vs_arrow_ratio": memory["peak_memory_mb"] / memory["batch_arrow_mb"],
    })


if __name__ == "__main__":
    main()
