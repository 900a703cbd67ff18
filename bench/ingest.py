"""Ingestion throughput: the 230,366-row batch from the data API into raw.

Measured, same run, same rows, each from HTTP request to committed rows:
- tasador: ``DataApiClient.next_batch`` + ``store_batch`` (rows as received, COPY, ledger, one transaction);
- baseline pandas: ``requests`` + ``pd.DataFrame`` + ``DataFrame.to_sql`` (SQLAlchemy, psycopg2);
- bound bare COPY: the same rows pre-rendered as CSV, one ``COPY`` (no HTTP, no parsing).
Also the data API server's peak memory after serving the 361,457-row batch.
"""

from __future__ import annotations

import io

import pandas as pd
import requests
import sqlalchemy
from psycopg2 import sql

from bench.common import parser, peak_rss_mb, private_stack, report, timer
from cluster import processes
from data_api.plan import PLAN, SOLD_KIND, batch_order
from tasador import db
from tasador.api_client import DataApiClient
from tasador.ingest import store_batch
from tasador.schema import COLUMNS


def main() -> None:
    args = parser(__doc__).parse_args()
    scale = 0.1 if args.quick else 1.0
    with private_stack(scale) as settings:
        client = DataApiClient(settings.data_api)
        db.create_tables(settings.raw_db, "raw")

        with timer() as t_tasador:
            batch = client.next_batch(1, "bench")
            result = store_batch(settings.raw_db, batch)
        rows = result.rows
        assert batch_order(1, "bench")[0] == SOLD_KIND and result.status == "ingested"

        client.restart(2, "bench")
        engine = sqlalchemy.create_engine(db.sqlalchemy_url(settings.raw_db))
        with timer() as t_pandas:
            body = requests.get(f"{settings.data_api}/data", params={"group_number": 2, "day": "bench"},
                                timeout=300).json()
            frame = pd.DataFrame(body["data"], columns=list(COLUMNS))
            frame.to_sql("bench_pandas", engine, if_exists="replace", index=False, chunksize=10_000)
        engine.dispose()

        csv_text = io.StringIO()
        frame.to_csv(csv_text, index=False, header=False)
        with db.transaction(settings.raw_db) as cur:
            cur.execute("CREATE TABLE bench_copy AS SELECT * FROM listings WHERE false")
        with timer() as t_copy, db.transaction(settings.raw_db) as cur:
            csv_text.seek(0)
            copy = sql.SQL("COPY bench_copy ({}) FROM STDIN WITH (FORMAT csv)").format(db.identifiers(COLUMNS))
            cur.copy_expert(copy.as_string(cur), csv_text)

        # the data API's memory while it serves its largest batch (361,457 rows at full scale)
        order = batch_order(3, "bench")
        for _ in range(order.index(5) + 1):
            client.next_batch(3, "bench")
        api_pid = processes.load_registry(settings.state_path)["data_api"]["pid"]
        api_peak = peak_rss_mb(api_pid)

    report({
        "benchmark": "ingest", "rows": rows, "scale": scale,
        "tasador_s": t_tasador["s"], "tasador_rows_per_s": rows / t_tasador["s"],
        "pandas_to_sql_s": t_pandas["s"], "pandas_to_sql_rows_per_s": rows / t_pandas["s"],
        "bare_copy_s": t_copy["s"], "bare_copy_rows_per_s": rows / t_copy["s"],
        "ratio_tasador_vs_pandas": t_pandas["s"] / t_tasador["s"],
        "ratio_tasador_vs_bare_copy": t_copy["s"] / t_tasador["s"],
        "largest_batch_rows": round(PLAN[5].rows * scale) if scale < 1 else PLAN[5].rows,
        "data_api_peak_rss_mb": api_peak,
    })


if __name__ == "__main__":
    main()
