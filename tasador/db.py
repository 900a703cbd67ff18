"""PostgreSQL access: connections (retried while the server restarts), table creation, COPY in and out.

Every table of every database is created here, once. SQL is parameterised; identifiers that vary
(table names) only ever come from the constants below, never from input.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress

import psycopg2
import psycopg2.extensions
import tenacity
from psycopg2 import sql

from tasador.retry import retrying
from tasador.schema import COLUMNS, FEATURES

log = logging.getLogger(__name__)


def _text_columns(names) -> sql.Composed:
    """``name TEXT, ...``: the data contract's columns, kept as text in the raw database."""
    return sql.SQL(",\n    ").join(sql.SQL("{} TEXT").format(sql.Identifier(name)) for name in names)


PREDICTION_COLUMNS: tuple[str, ...] = ("prediction_id", "requested_at", "model_name", "model_version",
                                       "predicted_price", *FEATURES)

RAW_DDL = sql.SQL("""
CREATE TABLE IF NOT EXISTS batches (
    batch_id BIGSERIAL PRIMARY KEY,
    group_number INT NOT NULL,
    day TEXT NOT NULL,
    batch_number INT NOT NULL,
    rows INT NOT NULL CHECK (rows >= 0),
    payload_sha256 TEXT NOT NULL,
    source_url TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (group_number, day, batch_number)
);
CREATE TABLE IF NOT EXISTS listings (
    raw_id BIGSERIAL PRIMARY KEY,
    batch_id BIGINT NOT NULL,  -- batches.batch_id, committed in the same transaction (a per-row FK
    row_number INT NOT NULL,    -- check cost about 1 s per 230k rows at commit and added no atomicity)
    {raw_columns},
    UNIQUE (batch_id, row_number)
);
-- every GET /data, written before the request: an attempt still open (outcome NULL) or failed when the
-- next run starts may have been served by the API and never stored, so that run verifies by replay
CREATE TABLE IF NOT EXISTS fetches (
    fetch_id BIGSERIAL PRIMARY KEY,
    group_number INT NOT NULL,
    day TEXT NOT NULL,
    expected_batch_number INT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome TEXT  -- 'stored', 'exhausted', 'failed: ...'; NULL: in flight, or lost with its process
);
-- every replay of the API (restart, verify each stored batch by its payload hash, store the missing one)
CREATE TABLE IF NOT EXISTS recoveries (
    recovery_id BIGSERIAL PRIMARY KEY,
    group_number INT NOT NULL,
    day TEXT NOT NULL,
    recovered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    cause TEXT NOT NULL,
    missing_batch_number INT NOT NULL,
    restarted BOOLEAN NOT NULL,
    replayed INT NOT NULL,
    verified INT NOT NULL,
    outcome TEXT NOT NULL,
    batch_id BIGINT
);
-- every listing the prediction API priced: new raw data, as the course asked (features as text, like listings)
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id UUID PRIMARY KEY,  -- the id the API answered with: a re-sent write is skipped
    requested_at TIMESTAMPTZ NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    predicted_price DOUBLE PRECISION NOT NULL,
    {feature_columns}
);
""").format(raw_columns=_text_columns(COLUMNS), feature_columns=_text_columns(FEATURES))

CLEAN_DDL = """
CREATE TABLE IF NOT EXISTS processed_batches (
    batch_id BIGINT PRIMARY KEY,  -- the raw ledger's batch_id
    group_number INT NOT NULL,
    day TEXT NOT NULL,
    batch_number INT NOT NULL,
    raw_rows INT NOT NULL,
    clean_rows INT NOT NULL,
    rejected_rows INT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (clean_rows + rejected_rows = raw_rows)
);
CREATE TABLE IF NOT EXISTS listings (
    raw_id BIGINT PRIMARY KEY,  -- the raw row it came from
    batch_id BIGINT NOT NULL,   -- processed_batches.batch_id, written in the same transaction
    property_id BIGINT NOT NULL,
    brokered_by BIGINT,
    status TEXT NOT NULL,
    price DOUBLE PRECISION NOT NULL,
    bed REAL,
    bath REAL,
    acre_lot DOUBLE PRECISION,
    street BIGINT,
    city TEXT,
    state TEXT NOT NULL,
    zip_code CHAR(5),
    house_size DOUBLE PRECISION,
    prev_sold_date DATE
);
-- a batch's rows are appended together (one transaction's COPYs), so a BRIN index finds them: its
-- upkeep is nearly free where the B-tree's was 0.13 s of a 230k-row batch's ~0.5 s of COPY (issue 18)
DROP INDEX IF EXISTS listings_batch_id;
CREATE INDEX IF NOT EXISTS listings_batch_range ON listings USING brin (batch_id) WITH (autosummarize = on);
CREATE TABLE IF NOT EXISTS rejects (
    raw_id BIGINT PRIMARY KEY,
    batch_id BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejects_batch_id ON rejects (batch_id);
CREATE TABLE IF NOT EXISTS decisions (
    batch_id BIGINT PRIMARY KEY REFERENCES processed_batches (batch_id),
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    batch_rows INT NOT NULL,
    reference_batches BIGINT[] NOT NULL,
    drift JSONB NOT NULL,
    drift_found BOOLEAN NOT NULL,
    retrain BOOLEAN NOT NULL,
    retrain_reason TEXT NOT NULL,
    production_version TEXT,
    training JSONB,
    promoted BOOLEAN,
    promotion_reason TEXT
);
-- one row per training, written before it starts: a crashed training is found and finished by the
-- next run (its version, if registered, is found in the registry by the training_id tag)
CREATE TABLE IF NOT EXISTS trainings (
    training_id BIGSERIAL PRIMARY KEY,
    group_number INT NOT NULL,
    day TEXT NOT NULL,
    model_name TEXT NOT NULL,
    trigger_batch_id BIGINT NOT NULL,  -- the newest decision it answers (0: forced by an operator)
    covers BIGINT[] NOT NULL,  -- every retrain decision it carries out
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version TEXT,  -- once registered and recorded
    result JSONB,
    trained_at TIMESTAMPTZ,
    verdict TEXT CHECK (verdict IN ('promoted', 'rejected')),  -- written before the alias moves
    promotion_reason TEXT,
    promotion_scores JSONB,
    previous_production TEXT,
    promoted_at TIMESTAMPTZ  -- once the alias, the version's tags and the decisions all say so
);
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS training_id BIGINT REFERENCES trainings (training_id);
-- every move of a model's production alias (promotion or rollback), with its reason: what served when
CREATE TABLE IF NOT EXISTS alias_moves (
    move_id BIGSERIAL PRIMARY KEY,
    model_name TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_version TEXT,
    moved_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind TEXT NOT NULL CHECK (kind IN ('promotion', 'rollback')),
    reason TEXT NOT NULL,
    training_id BIGINT UNIQUE REFERENCES trainings (training_id)
);
"""

DDL_BY_DATABASE = {"raw": RAW_DDL, "clean": CLEAN_DDL}


# libpq's words for a login the server refused (wrong or missing password, pg_hba.conf): not retried
AUTH_REFUSED = ("password authentication failed", "no password supplied", "pg_hba.conf rejects")
LOCK_TIMEOUT_MS = 120_000  # no statement of ours waits longer for a lock (the writer lock sets its own)


def connect(url: str, attempts: int = 30, delay_s: float = 1.0, **params) -> psycopg2.extensions.connection:
    """Connect (``params``: more libpq keywords), retrying while the server is starting or restarting
    (then raise the last error). A refused login is raised at once: retrying cannot fix it."""

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, psycopg2.OperationalError) and not any(words in str(exc) for words in AUTH_REFUSED)

    return retrying(f"database {_safe(url)} not reachable", attempts, tenacity.wait_fixed(delay_s), transient, log)(
        psycopg2.connect, url, connect_timeout=10, options=f"-c lock_timeout={LOCK_TIMEOUT_MS}", **params)


@contextmanager
def transaction(target: str | psycopg2.extensions.connection,
                attempts: int = 30) -> Iterator[psycopg2.extensions.cursor]:
    """One transaction, committed on success, rolled back on any exception: on a new connection to the URL
    ``target`` (closed after it; ``attempts``: how many times to try connecting, a second apart: a page
    that must answer now uses few), or on the open connection ``target``, an autocommit one included
    (left open, in its mode): a step runs its transactions on its few sessions, where a connection costs
    about 7 ms of its critical path (a fork and a SCRAM login on the server)."""
    conn = connect(target, attempts=attempts) if isinstance(target, str) else target
    autocommit, conn.autocommit = conn.autocommit, False
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        if conn is not target:
            conn.close()
        elif not conn.closed:  # a session the server dropped raises its own error, not this one's
            conn.autocommit = autocommit


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy (MLflow, pandas): psycopg2 named, as SQLAlchemy 2.1 defaults to psycopg 3."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


# which DDL each database was last brought to: its text's SHA-256, written with the DDL it names
SCHEMA_VERSIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_versions (
    database TEXT PRIMARY KEY,
    ddl_sha256 TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


def create_tables(target: str | psycopg2.extensions.connection, database: str) -> None:
    """Create the tables of ``database`` ("raw", "clean") if missing, or bring them to this code's DDL.
    Idempotent. The DDL runs only when ``schema_versions`` says the database was last brought to another
    text: its statements lock tables even when there is nothing to do (``CREATE INDEX IF NOT EXISTS`` a
    SHARE lock before it finds the index, ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` an exclusive one),
    so running it at every step made a step wait for any writer of those tables and for autovacuum
    (processing stalled 1 s, PostgreSQL's ``deadlock_timeout``, before autovacuum was cancelled, in 3 of
    43 lab batches), and held off the decisions' readers. Each step still calls this: a database
    another version of the code set up is brought to this one's at its first step. ``target``: a URL or
    an open connection (``transaction``)."""
    with transaction(target) as cur:
        ddl = ddl_text(cur, database)
        digest = hashlib.sha256(ddl.encode()).hexdigest()
        if _schema_is(cur, database, digest):
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tasador-ddl-{database}",))
        if _schema_is(cur, database, digest):  # another step brought it there while this one waited
            return
        cur.execute(ddl)
        cur.execute("INSERT INTO schema_versions (database, ddl_sha256) VALUES (%s, %s) ON CONFLICT (database)"
                    " DO UPDATE SET ddl_sha256 = EXCLUDED.ddl_sha256, applied_at = now()", (database, digest))


def ddl_text(cur, database: str) -> str:
    """``database``'s DDL as the server runs it (the raw one names its columns through ``psycopg2.sql``),
    ``schema_versions``' own included: a change to either is a new digest, so it is applied."""
    ddl = DDL_BY_DATABASE[database]
    return f"{ddl.as_string(cur) if isinstance(ddl, sql.Composable) else ddl};\n{SCHEMA_VERSIONS_DDL};"


def _schema_is(cur, database: str, digest: str) -> bool:
    """Whether ``database`` was last brought to the DDL whose SHA-256 is ``digest``: no table lock taken
    but ``schema_versions``' own (ACCESS SHARE)."""
    cur.execute("SELECT to_regclass('schema_versions') IS NOT NULL")
    if not cur.fetchone()[0]:
        return False
    cur.execute("SELECT ddl_sha256 = %s FROM schema_versions WHERE database = %s", (digest, database))
    row = cur.fetchone()
    return bool(row and row[0])


def create_all_tables(settings, raw: psycopg2.extensions.connection | None = None,
                      clean: psycopg2.extensions.connection | None = None) -> None:
    """Create the tables of every database this project owns (raw and clean); ``raw``, ``clean``: open
    sessions to do it on (default: a connection each)."""
    create_tables(raw or settings.raw_db, "raw")
    create_tables(clean or settings.clean_db, "clean")


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL's text can hold it: a NUL and a lone surrogate (both valid in JSON, neither
    storable nor encodable as UTF-8) replaced by U+FFFD; any other text as it is."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def copy_in(cur, table: str, columns: Sequence[str], rows: Iterable[Sequence] | CsvRows) -> int:
    """COPY ``rows`` (tuples of Python values, None for NULL; or a ``CsvRows``) into ``table``. Returns
    the count. The CSV is rendered as the server reads it (``CsvRows``), so PostgreSQL parses one chunk
    while the next is rendered: a 361k-row raw batch no longer waits for its whole 80-MB text first."""
    source = rows if isinstance(rows, CsvRows) else CsvRows(rows)
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL {})").format(
        sql.Identifier(table), identifiers(columns), sql.Literal(source.null))
    copy_from(cur, statement, source)
    return source.count


def copy_from(cur, statement: sql.Composable, source: CsvRows | EncodedRows) -> None:
    """Run the COPY ... FROM STDIN ``statement`` reading ``source``, a file-like object that keeps the
    error of a failed ``read``: psycopg2 then ends the COPY with an error of its own ("error in .read()
    call"), and what failed is raised instead."""
    try:
        cur.copy_expert(statement.as_string(cur), source, size=CsvRows.CHUNK)
    except psycopg2.Error:
        if source.error is not None:
            raise source.error from None
        raise


class CsvRows:
    """A file-like object whose ``read`` renders the next rows as CSV for psycopg2's ``copy_expert``.
    None is written as ``null``, a marker of this COPY's own: Python's CSV writer leaves a value
    unquoted unless it must quote it, so with a fixed marker such as ``\\N`` a text value equal to it
    (a listing's city sent as ``\\N``) would be stored as NULL. An empty string stays an empty string."""

    CHUNK = 1 << 20  # characters per read: large enough that a read's Python overhead is nothing
    ROWS_PER_RENDER = 2_000

    def __init__(self, rows: Iterable[Sequence]):
        self.rows = iter(rows)
        self.null = "\\N" + secrets.token_hex(4)  # 32 random bits: no value can be chosen to equal it
        self.count = 0
        self.buf = io.StringIO()
        self.writer = csv.writer(self.buf, lineterminator="\n")
        self.pending = ""
        self.done = False
        self.error: Exception | None = None

    @classmethod
    def of_columns(cls, columns: Sequence[Sequence]) -> CsvRows:
        """Rows given column by column (equal lengths): a column's None values are replaced by the marker
        all at once, and the rows are zipped in C, so no row is built or rebuilt in Python (the
        prediction log's 1,000 rows of a request: 12.7 -> 7.1 ms, most of it now the CSV writer)."""
        source = cls(())
        null = source.null
        source.rows = zip(*[[null if v is None else v for v in column] if None in column else column
                            for column in columns], strict=True)
        return source

    def read(self, size: int = -1) -> str:
        try:
            self._render(size)
        except Exception as exc:
            self.error = exc
            raise
        if size < 0 or len(self.pending) <= size:
            out, self.pending = self.pending, ""
        else:
            out, self.pending = self.pending[:size], self.pending[size:]
        return out

    def _render(self, size: int) -> None:
        null = self.null
        while not self.done and (size < 0 or len(self.pending) < size):
            batch = [tuple(null if v is None else v for v in row) if None in row else row
                     for row in itertools.islice(self.rows, self.ROWS_PER_RENDER)]
            if not batch:
                self.done = True
                break
            self.count += len(batch)
            self.writer.writerows(batch)
            self.pending += self.buf.getvalue()
            self.buf.seek(0)
            self.buf.truncate()


# PostgreSQL's column types (``format_type``) as the Arrow types binary COPY must send them in
ARROW_TYPE_NAMES = {"bigint": "int64", "integer": "int32", "smallint": "int16", "real": "float32",
                    "double precision": "float64", "text": "string", "character": "string", "date": "date32",
                    "boolean": "bool"}


class EncodedRows:
    """A file-like object for psycopg2's ``copy_expert``: the binary COPY of an Arrow table, encoded by
    pgpq one slice of ``SLICE_ROWS`` rows at a time as psycopg2 reads (pgpq hands its buffer out at
    about a megabyte; ``read`` returns it whatever size is asked: psycopg2 sends what it gets). A
    block's rows are never all encoded, cast or filtered at once, so a COPY holds about a megabyte of
    the client's memory whatever its size; the whole block's encoding (~9 MiB per 57.6k rows), its cast
    and its filtered copy were held before. Hand-written: pgpq has no streaming reader of its own, and
    psycopg2 takes only a file."""

    SLICE_ROWS = 8192

    def __init__(self, rows, target, where=None) -> None:
        import pgpq

        self.encoder = pgpq.ArrowToPostgresBinaryEncoder(target)
        self.parts = self._encoded(rows, target, where)
        self.error: Exception | None = None

    def _encoded(self, rows, target, where) -> Iterator[bytes]:
        yield self.encoder.write_header()
        for start in range(0, rows.num_rows, self.SLICE_ROWS):
            part = rows.slice(start, self.SLICE_ROWS)
            if where is not None:
                part = part.filter(where[start:start + self.SLICE_ROWS])
            for batch in part.cast(target).to_batches():
                yield self.encoder.write_batch(batch)
        yield self.encoder.finish()

    def read(self, size: int = -1) -> bytes:
        """The next encoded bytes; empty only at the end (pgpq returns none for a slice while it buffers)."""
        try:
            return next((part for part in self.parts if part), b"")
        except Exception as exc:  # a value that cannot take its column's type, say
            self.error = exc
            raise


def copy_arrow(cur, table: str, rows, where=None, target=None) -> int:
    """Append the Arrow table ``rows`` (its columns are some of ``table``'s), or only the rows where the
    Arrow boolean array ``where`` is true, to ``table`` by binary COPY, in ``cur``'s transaction: pgpq encodes
    the columns in PostgreSQL's binary COPY format (``EncodedRows``, slice by slice) and psycopg2 sends
    it, so no text is rendered by the client or parsed by the server. pgpq, not ADBC's ``adbc_ingest``:
    ADBC needs its own connection for the transaction (25-30 ms of CPU to open, for the type catalogue)
    and took ~65 ms of CPU to encode a 57.6k-row block before the server saw a byte; pgpq ~20 ms. Binary
    COPY takes each value in its column's exact type, so the rows are cast to the table's first
    (float64 -> real for bed and bath): ``target``, ``copy_target``'s schema for these columns, read from
    the catalogue when not given. Returns the number of rows the server says it stored."""
    import pyarrow.compute as pc

    if not rows.num_rows or (where is not None and not pc.any(where).as_py()):
        return 0
    target = target or copy_target(cur, table, rows.column_names)
    copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(sql.Identifier(table),
                                                                          identifiers(rows.column_names))
    copy_from(cur, copy, EncodedRows(rows, target, where))
    return cur.rowcount


def copy_target(cur, table: str, columns: list[str]):
    """The Arrow schema ``columns`` of ``table`` take in a binary COPY, from the catalogue: a caller that
    COPYs into the same table again in a transaction reads it once (``processing.OrderedCopies``)."""
    import pyarrow as pa

    cur.execute("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,))
    types = dict(cur.fetchall())
    unknown = [f"{name} ({types.get(name, 'not a column')})" for name in columns
               if types.get(name) not in ARROW_TYPE_NAMES]
    if unknown:
        raise TypeError(f"cannot COPY into {table}: no Arrow type for {', '.join(unknown)}")
    return pa.schema([pa.field(name, ARROW_TYPE_NAMES[types[name]]) for name in columns])


def copy_out_csv(cur, query: sql.Composable) -> str:
    """COPY the result of ``query`` out as CSV with a header (COPY takes no parameters: values reach
    ``query`` as ``sql.Literal``, names as ``sql.Identifier``)."""
    buf = io.StringIO()
    statement = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true, NULL '')").format(query)
    cur.copy_expert(statement.as_string(cur), buf)
    return buf.getvalue()


def read_arrow(url: str, query: str | sql.Composable, attempts: int = 30, delay_s: float = 1.0,
               keep_connection: bool = False):
    """The rows of ``query`` as an Arrow table, read by ADBC's PostgreSQL driver: PostgreSQL's binary
    COPY decoded in C++, no CSV text and no Python object per value. ADBC takes SQL text only (bound
    parameters would turn its COPY into a row-by-row fetch), so a composable query (values as
    ``sql.Literal``, names as ``sql.Identifier``) is rendered by psycopg2 first, on a connection of
    its own; Ray Data's read tasks pass text rendered once by their driver. Connecting is retried
    while the server is starting or restarting, as ``connect`` does.

    ``keep_connection``: the connection (autocommit, no transaction left open) stays open for this
    process's next read of ``url`` (``_KEPT_READERS``). An ADBC connection costs 25-30 ms of CPU to
    open, most of it reading PostgreSQL's type catalogue, against 3 ms for psycopg2: a Ray worker
    reading several of a batch's ranges opens one. A kept connection that fails (its server
    restarted) is closed and the read made once more on a new one."""
    import adbc_driver_postgresql.dbapi as adbc

    if isinstance(query, sql.Composable):
        with closing(connect(url, attempts, delay_s)) as conn:
            query = query.as_string(conn)

    keep_for = url if keep_connection else None

    def fetch():
        kept = _KEPT_READERS.pop(url, None) if keep_connection else None
        if kept is not None:
            try:
                return _fetch_arrow(kept, query, keep_for)
            except Exception as exc:
                log.info("a kept connection to %s failed (%s): reading on a new one", _safe(url), type(exc).__name__)
        return _fetch_arrow(adbc.connect(url, autocommit=True), query, keep_for)

    return retrying(f"database {_safe(url)} not reachable", attempts, tenacity.wait_fixed(delay_s), _adbc_transient,
                    log)(fetch)


# url -> this process's open ADBC connection to it, kept by read_arrow(keep_connection=True)
_KEPT_READERS: dict = {}


def _fetch_arrow(conn, query: str, keep_for: str | None):
    """``query``'s rows on ``conn``; then ``conn`` is kept for ``keep_for`` (a URL) or closed. A failed
    read closes it."""
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            table = cur.fetch_arrow_table()
    except BaseException:
        with suppress(Exception):
            conn.close()
        raise
    if keep_for is None:
        conn.close()
    else:
        _KEPT_READERS[keep_for] = conn
    return table


def _adbc_transient(exc: BaseException) -> bool:
    """An ADBC failure that retrying may fix: the server not reachable, but not a refused login."""
    import adbc_driver_manager

    return (isinstance(exc, adbc_driver_manager.OperationalError)
            and not any(words in str(exc) for words in AUTH_REFUSED))


def identifiers(names: Iterable[str]) -> sql.Composable:
    """``a, b, c`` as quoted SQL identifiers."""
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def in_batches(batch_ids: Iterable[int]) -> sql.Composable:
    """``batch_id = ANY(...)`` for a list of batch ids (empty: no row)."""
    return sql.SQL("batch_id = ANY({}::bigint[])").format(sql.Literal([int(b) for b in batch_ids]))


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
