"""Loading clean rows for training and promotion: every row of the full-scale demo's last training
(1,084,909 by default), in the frame the model's code takes.

Measured, same run, same rows, on a private PostgreSQL:
- tasador: ``training.load_dataset`` (ADBC's PostgreSQL driver: binary COPY to Arrow, then pandas);
- baseline: the reader it replaced, a CSV ``COPY ... TO STDOUT`` through psycopg2 parsed by
  ``pandas.read_csv`` (C parser);
- promotion: ``load_dataset(held_out_only=True)``, the test split selected by SQL, against the whole load
  it did before.

The rows: one generated full-scale batch, cleaned by the real cleaning, repeated under new raw ids and
properties until there are as many as asked. Last line: ``load_all_rows_s``, ``csv_baseline_s``,
``speedup``, ``held_out_s``, ``rows``.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
from psycopg2 import sql

from bench.common import parser, private_stack, report, timer
from data_api.generator import World, generate_batch
from data_api.plan import PLAN, TOTAL_ROWS
from tasador import db, training
from tasador.cleaning import CLEAN_COLUMNS, clean_frame, mark_duplicates
from tasador.schema import FEATURES

BATCH_ID = 1


def fill(settings, rows: int) -> int:
    """``rows`` clean rows in the clean database, under one processed batch. Returns how many."""
    raw = generate_batch(World(7), PLAN[0], seed=7, group=1, day="Monday", scale=1.0).astype(object)
    raw = raw.astype(str).where(raw.notna(), None)
    raw.insert(0, "batch_id", BATCH_ID)
    raw.insert(0, "raw_id", range(1, len(raw) + 1))
    clean = mark_duplicates(clean_frame(raw, settings.clean_price_min, settings.clean_price_max))
    clean = clean[clean["reason"].isna()][list(CLEAN_COLUMNS)]
    step = int(clean["raw_id"].max())
    with db.transaction(settings.clean_db) as cur:
        db.copy_arrow(cur, "listings", pa.Table.from_pandas(clean, preserve_index=False))
    with db.transaction(settings.clean_db) as cur:
        copies = 1
        columns = [c for c in CLEAN_COLUMNS if c not in ("raw_id", "property_id")]
        while copies * len(clean) < rows:  # doubling, new raw ids and properties each time
            cur.execute(sql.SQL("INSERT INTO listings (raw_id, property_id, {cols}) SELECT raw_id + %(shift)s, "
                                "property_id + %(shift)s, {cols} FROM listings").format(cols=db.identifiers(columns)),
                        {"shift": step * copies})
            copies *= 2
        cur.execute("DELETE FROM listings WHERE raw_id IN (SELECT raw_id FROM listings ORDER BY raw_id OFFSET %s)",
                    (rows,))
        cur.execute("SELECT count(*) FROM listings")
        count = cur.fetchone()[0]
        cur.execute("INSERT INTO processed_batches (batch_id, group_number, day, batch_number, raw_rows, "
                    "clean_rows, rejected_rows) VALUES (%s, 1, 'Monday', 1, %s, %s, 0)", (BATCH_ID, count, count))
    with db.transaction(settings.clean_db) as cur:
        cur.execute("ANALYZE listings")
    return count


def csv_reader(settings, batch_ids: list[int]) -> pd.DataFrame:
    """The reader ``load_dataset`` used before Arrow: CSV COPY out, ``pandas.read_csv``."""
    with db.transaction(settings.clean_db) as cur:
        text = db.copy_out_csv(cur, sql.SQL("SELECT raw_id, property_id, {}, price FROM listings WHERE {} ORDER BY "
                                            "raw_id").format(db.identifiers(FEATURES), db.in_batches(batch_ids)))
    return pd.read_csv(io.StringIO(text), dtype={"zip_code": "string", "city": "string"})


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=TOTAL_ROWS)
    args = p.parse_args()
    rows = 100_000 if args.quick else args.rows
    with private_stack(0.1, only=("postgres",)) as settings:
        count = fill(settings, rows)
        csv_reader(settings, [BATCH_ID])  # warm PostgreSQL's cache for both readers
        with timer() as t_arrow:
            ds = training.load_dataset(settings, [BATCH_ID])
        with timer() as t_csv:
            frame = csv_reader(settings, [BATCH_ID])
        with timer() as t_held:
            held = training.load_dataset(settings, [BATCH_ID], held_out_only=True)
    assert len(ds.frame) == len(frame) == count and len(held.frame) == int(ds.test.sum())
    report({"rows": count, "held_out_rows": len(held.frame), "load_all_rows_s": t_arrow["s"],
            "csv_baseline_s": t_csv["s"], "speedup": t_csv["s"] / t_arrow["s"], "held_out_s": t_held["s"]})


if __name__ == "__main__":
    main()
