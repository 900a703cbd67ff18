"""Ingestion: the next batch from the data API into the raw database, wholly or not at all.

The rows are stored exactly as received (each JSON scalar as text) with COPY, in the same transaction
as the batch's ledger row. A batch whose (group, day, batch_number) is already in the ledger with the
same payload is a no-op; with a different payload it is refused (the API changed under us).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from operator import itemgetter

from tasador import db
from tasador.api_client import Batch, BatchesExhausted, DataApiClient
from tasador.schema import COLUMNS
from tasador.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    status: str  # "ingested", "already_stored", "exhausted"
    group_number: int
    day: str
    batch_number: int | None = None
    batch_id: int | None = None
    rows: int = 0
    payload_sha256: str | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return {"job": "ingest", **asdict(self)}


class BatchConflict(Exception):
    """The ledger already holds this batch number with a different payload."""


def ingest_next(settings: Settings, group: int, day: str, client: DataApiClient | None = None) -> IngestResult:
    client = client or DataApiClient(settings.data_api, settings.data_api_timeout_s,
                                     settings.data_api_retries, settings.data_api_backoff_s)
    db.create_tables(settings.raw_db, "raw")
    try:
        batch = client.next_batch(group, day)
    except BatchesExhausted as exc:
        return IngestResult("exhausted", group, day, message=f"the data API has no more batches: {exc}")
    return store_batch(settings.raw_db, batch)


def store_batch(raw_url: str, batch: Batch) -> IngestResult:
    key = (batch.group_number, batch.day, batch.batch_number)
    with db.transaction(raw_url) as cur:
        # one writer per (group, day) at a time; a concurrent duplicate waits, then sees the ledger row
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ingest-{batch.group_number}-{batch.day}",))
        cur.execute("SELECT batch_id, payload_sha256, rows FROM batches"
                    " WHERE group_number = %s AND day = %s AND batch_number = %s", key)
        found = cur.fetchone()
        if found:
            batch_id, sha, rows = found
            if sha != batch.payload_sha256:
                raise BatchConflict(f"batch {key} is stored with payload {sha[:12]} but the API now sends "
                                    f"{batch.payload_sha256[:12]}; refusing to mix them")
            return IngestResult("already_stored", *key, batch_id=batch_id, rows=rows, payload_sha256=sha,
                                message="this batch is already in raw; nothing written")
        cur.execute("SELECT nextval(pg_get_serial_sequence('batches', 'batch_id'))")
        batch_id = cur.fetchone()[0]
        rows = db.copy_in(cur, "listings", ("batch_id", "row_number", *COLUMNS), _raw_rows(batch_id, batch.rows))
        # the ledger row goes last: until it commits, the batch does not exist for anyone
        cur.execute("INSERT INTO batches (batch_id, group_number, day, batch_number, rows, payload_sha256, source_url)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (batch_id, *key, rows, batch.payload_sha256, batch.source_url))
    log.info("batch %s stored as batch_id %s with %d rows", key, batch_id, rows)
    return IngestResult("ingested", *key, batch_id=batch_id, rows=rows, payload_sha256=batch.payload_sha256,
                        message=f"stored {rows} rows")


_values = itemgetter(*COLUMNS)


def _raw_rows(batch_id: int, rows: list[dict]):
    """Each listing as received: JSON scalars as their text (a float keeps its form, 103378.0),
    null as NULL, a missing key as NULL, keys outside the schema ignored."""
    for i, row in enumerate(rows):
        try:
            values = _values(row)
        except KeyError:
            values = tuple(row.get(c) for c in COLUMNS)
        yield (batch_id, i, *values)
