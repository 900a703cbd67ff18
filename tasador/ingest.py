"""Ingestion: the next batch from the data API into the raw database, wholly or not at all, and never
a batch after a missing one.

The rows are stored exactly as received (each JSON scalar as text) with COPY, in the same transaction
as the batch's ledger row. The ledger holds contiguous batch numbers per (group, day): batch k+1 is
stored only after batch k.

The API counts a batch as served before it sends the body (the course's API too), so a timeout, a
cut connection, a retried GET or a process killed between the GET and the COMMIT can lose a batch
the API will not serve again. Every GET is therefore written down first (``fetches``); when the API
answers with a later batch than the ledger expects, or says "exhausted" after a GET that never
ended well, the run recovers: ``/restart_data_generation``, then replay in order, verifying every
stored batch by its payload hash (a no-op), and store the missing one. Each recovery is a row in
``recoveries`` and part of the job's summary. Where the replay cannot produce the missing batch the
job fails naming it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from operator import itemgetter

import psycopg2

from tasador import db, faults, locks
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
    recovery: dict | None = field(default=None)  # set when this run replayed the API

    def as_dict(self) -> dict:
        return {"job": "ingest", **asdict(self)}


class BatchConflict(Exception):
    """The ledger already holds this batch number with a different payload."""


class MissingBatch(Exception):
    """A batch the API served was never stored, and replaying the API did not bring it back."""


EXHAUSTED = None  # what ``fetch`` returns for the API's "exhausted" answer


def ingest_next(settings: Settings, group: int, day: str, client: DataApiClient | None = None) -> IngestResult:
    client = client or DataApiClient(settings.data_api, settings.data_api_timeout_s,
                                     settings.data_api_retries, settings.data_api_backoff_s)
    db.create_tables(settings.raw_db, "raw")
    with locks.writer_lock(settings, locks.pipeline(group, day), "ingest"):
        return Ingestion(settings, client, group, day).run()


class Ingestion:
    """One ingest run for (group, day), under the writer lock."""

    def __init__(self, settings: Settings, client: DataApiClient, group: int, day: str):
        self.settings, self.client, self.group, self.day = settings, client, group, day
        self.url = settings.raw_db

    def run(self) -> IngestResult:
        stored = stored_hashes(self.url, self.group, self.day)
        expected = next_batch_number(stored)
        suspect = self._last_fetch_unfinished()
        fetch_id = self._open_fetch(expected)
        try:
            got = self._fetch()
            faults.point("ingest.after_fetch", self.settings)
            move = first_move(stored, None if got is EXHAUSTED else got.batch_number, suspect)
            if move == "store":
                result = store_batch(self.url, got)
            elif move == "exhausted":
                result = IngestResult("exhausted", self.group, self.day,
                                      message="the data API has no more batches for this group and day")
            else:
                result = self._recover(stored, expected, got, suspect)
        except Exception as exc:
            self._close_fetch(fetch_id, f"failed: {type(exc).__name__}: {exc}"[:500])
            raise
        self._close_fetch(fetch_id, "exhausted" if result.status == "exhausted" else "stored")
        return result

    def _fetch(self) -> Batch | None:
        try:
            return self.client.next_batch(self.group, self.day)
        except BatchesExhausted:
            return EXHAUSTED

    def _recover(self, stored: dict[int, str], expected: int, got: Batch | None, suspect: str) -> IngestResult:
        """Replay the API from its first batch (or from where it stands, when it is behind the ledger),
        verify each stored batch by hash, store the missing one."""
        if got is EXHAUSTED:
            cause = f"the API said exhausted, but {suspect}"
        elif got.batch_number > expected:
            cause = f"the API served batch {got.batch_number} while the ledger expects batch {expected}"
        else:
            cause = f"the API served batch {got.batch_number}, behind the ledger (next: batch {expected})"
        behind = (got is not EXHAUSTED and got.batch_number < expected
                  and stored.get(got.batch_number) == got.payload_sha256)
        log.warning("recovering batch %d of group %s, day %s: %s", expected, self.group, self.day, cause)
        if not behind:
            self.client.restart(self.group, self.day)
            got = self._fetch()
        replayed = verified = last = 0
        while True:
            if got is EXHAUSTED:
                if expected == len(stored) + 1 and last == len(stored):
                    outcome = "exhausted: nothing was missing"
                    self._record_recovery(cause, expected, not behind, replayed, verified, outcome)
                    return IngestResult("exhausted", self.group, self.day, recovery=self._summary(
                        cause, expected, not behind, replayed, verified, outcome),
                        message="the data API has no more batches (verified by replaying every stored batch)")
                raise MissingBatch(self._missing(expected, f"the API was exhausted after replaying {replayed} batches"))
            replayed += 1
            last = got.batch_number
            if replay_step(stored, expected, got, self.group, self.day) == "verified":
                verified += 1
                got = self._fetch()
                continue
            outcome = f"stored batch {expected}"
            result = store_batch(self.url, got, recovery=(cause, not behind, replayed, verified, outcome))
            result.recovery = self._summary(cause, expected, not behind, replayed, verified, outcome)
            return result

    def _missing(self, expected: int, why: str) -> str:
        return (f"batch {expected} of group {self.group}, day {self.day!r} is missing from the raw ledger and could "
                f"not be recovered: {why}. Nothing after it is stored; run the ingest again to retry the recovery")

    def _summary(self, cause, expected, restarted, replayed, verified, outcome) -> dict:
        return {"cause": cause, "missing_batch_number": expected, "restarted": restarted, "replayed": replayed,
                "verified": verified, "outcome": outcome}

    def _record_recovery(self, cause, expected, restarted, replayed, verified, outcome) -> None:
        with db.transaction(self.url) as cur:
            cur.execute("INSERT INTO recoveries (group_number, day, cause, missing_batch_number, restarted, replayed,"
                        " verified, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (self.group, self.day, cause, expected, restarted, replayed, verified, outcome))

    def _last_fetch_unfinished(self) -> str:
        """Why the previous GET of (group, day) may have lost a batch ('' when it ended well)."""
        with db.transaction(self.url) as cur:
            cur.execute("SELECT fetch_id, expected_batch_number, outcome FROM fetches WHERE group_number = %s"
                        " AND day = %s ORDER BY fetch_id DESC LIMIT 1", (self.group, self.day))
            last = cur.fetchone()
        if last is None or last[2] in ("stored", "exhausted"):
            return ""
        state = "never finished" if last[2] is None else last[2][:200]
        return f"the previous GET (fetch {last[0]}, for batch {last[1]}) {state}"

    def _open_fetch(self, expected: int) -> int:
        with db.transaction(self.url) as cur:
            cur.execute("INSERT INTO fetches (group_number, day, expected_batch_number) VALUES (%s, %s, %s)"
                        " RETURNING fetch_id", (self.group, self.day, expected))
            return cur.fetchone()[0]

    def _close_fetch(self, fetch_id: int, outcome: str) -> None:
        with db.transaction(self.url) as cur:
            cur.execute("UPDATE fetches SET outcome = %s, finished_at = now() WHERE fetch_id = %s", (outcome, fetch_id))


def first_move(stored: dict[int, str], got: int | None, suspect: str) -> str:
    """What to do with the API's answer to a GET (``got``: its batch number, None for "exhausted"):
    "store" the batch the ledger expects next; accept "exhausted" when no earlier GET may have lost
    a batch and the ledger has no gap; else "recover" by replaying the API."""
    expected = next_batch_number(stored)
    if got is not None and got == expected:
        return "store"
    if got is None and not suspect and expected == len(stored) + 1:
        return "exhausted"
    return "recover"


def replay_step(stored: dict[int, str], expected: int, batch: Batch, group: int, day: str) -> str:
    """One batch of a replay: "verified" (stored with the same payload) or "store" (the missing one).
    A stored batch whose payload changed, or a batch past the missing one, ends the recovery."""
    n = batch.batch_number
    if n in stored:
        if stored[n] != batch.payload_sha256:
            raise BatchConflict(f"replaying group {group}, day {day!r}: batch {n} is stored with payload "
                                f"{stored[n][:12]} but the API now sends {batch.payload_sha256[:12]}; cannot "
                                f"recover batch {expected} from an API that changed its data")
        return "verified"
    if n == expected:
        return "store"
    raise MissingBatch(f"batch {expected} of group {group}, day {day!r} is missing from the raw ledger and could not "
                       f"be recovered: the replay served batch {n} instead. Nothing after it is stored; run the "
                       "ingest again to retry the recovery")


def stored_hashes(url: str, group: int, day: str) -> dict[int, str]:
    """The ledger of (group, day): batch number -> payload hash."""
    with db.transaction(url) as cur:
        cur.execute("SELECT batch_number, payload_sha256 FROM batches WHERE group_number = %s AND day = %s",
                    (group, day))
        return dict(cur.fetchall())


def next_batch_number(stored) -> int:
    """The lowest batch number not in the ledger (a ledger written before contiguity was enforced
    may have a gap: that batch is the one to recover)."""
    n = 1
    while n in stored:
        n += 1
    return n


def store_batch(raw_url: str, batch: Batch, recovery: tuple | None = None) -> IngestResult:
    """Store ``batch`` with its ledger row in one transaction. A stored batch is a no-op (same payload)
    or refused (different payload); a batch whose predecessor is not stored is refused.

    A value PostgreSQL's text cannot hold (a NUL, a lone surrogate: both valid JSON) failed the batch's
    COPY at every run, stalling its (group, day). When the COPY fails and the rows hold such values,
    the batch is stored with U+FFFD in their place (``db.storable_text``), and the result says how many
    values were; the rows are looked at only then, so a batch without them costs nothing more."""
    try:
        return _store(raw_url, batch, recovery, batch.rows, "")
    except (psycopg2.DataError, psycopg2.OperationalError, UnicodeError):
        rows, changed = storable_rows(batch.rows)
        if not changed:
            raise
    note = (f"; {changed} values held characters PostgreSQL text cannot store (NUL, lone surrogates), "
            "stored with U+FFFD in their place")
    log.warning("batch %s%s", (batch.group_number, batch.day, batch.batch_number), note)
    return _store(raw_url, batch, recovery, rows, note)


def storable_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """``rows`` with their text values as PostgreSQL can store them (``db.storable_text``), and how many
    values that changed."""
    changed, out = 0, []
    for row in rows:
        fixed = {k: db.storable_text(v) if isinstance(v, str) else v for k, v in row.items()}
        changed += sum(fixed[k] != v for k, v in row.items() if isinstance(v, str))
        out.append(fixed)
    return out, changed


def _store(raw_url: str, batch: Batch, recovery: tuple | None, rows: list[dict], note: str) -> IngestResult:
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
        cur.execute("SELECT batch_number FROM batches WHERE group_number = %s AND day = %s", key[:2])
        missing = next_batch_number({r[0] for r in cur.fetchall()})
        if batch.batch_number != missing:
            raise MissingBatch(f"refusing to store batch {batch.batch_number} of group {key[0]}, day {key[1]!r}: "
                               f"batch {missing} is not stored and must come first")
        cur.execute("SELECT nextval(pg_get_serial_sequence('batches', 'batch_id'))")
        batch_id = cur.fetchone()[0]
        stored = db.copy_in(cur, "listings", ("batch_id", "row_number", *COLUMNS), _raw_rows(batch_id, rows))
        faults.point("ingest.after_copy")
        # the ledger row goes last: until it commits, the batch does not exist for anyone
        cur.execute("INSERT INTO batches (batch_id, group_number, day, batch_number, rows, payload_sha256, source_url)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (batch_id, *key, stored, batch.payload_sha256, batch.source_url))
        if recovery:
            cause, restarted, replayed, verified, outcome = recovery
            cur.execute("INSERT INTO recoveries (group_number, day, cause, missing_batch_number, restarted, replayed,"
                        " verified, outcome, batch_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (*key[:2], cause, batch.batch_number, restarted, replayed, verified, outcome, batch_id))
    log.info("batch %s stored as batch_id %s with %d rows", key, batch_id, stored)
    return IngestResult("ingested", *key, batch_id=batch_id, rows=stored, payload_sha256=batch.payload_sha256,
                        message=f"stored {stored} rows{note}")


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
