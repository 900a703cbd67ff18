"""Cleaning rules: raw listings (text, as received) -> typed clean listings, or a reject with a reason.

The rules, decided from the real file (DESIGN 3.1) and the real-format samples:
- types: ids written as floats ("103378.0") become integers; zip codes that lost their leading zeros
  ("601", "7838.0") become 5-character strings ("00601"); dates are ISO dates (the raw file also has
  M/D/YYYY, "2/28/2020"); the rest are numbers. A house_size of 0 means "unknown" in the raw file
  (299 of the 999 rows of the verbatim Puerto Rico sample) and becomes missing.
- a row is rejected (never silently changed) when: status is not one of the three known; state is not
  one of the 54 known; price is missing, not a number, $0 or outside [price_min, price_max]; a
  number field holds text; bed or bath is negative, fractional or above 50; house_size is outside
  [100, 100,000] sq ft; acre_lot is negative or above 100,000; prev_sold_date is not a date or lies
  before 1900 or after the day the batch is processed; or the row repeats another row of the same
  batch exactly (after typing), which keeps the first.
- a missing value (bed, bath, house_size, acre_lot, ids, city, zip, date) stays missing: the model's
  pipeline imputes it, and "missing" carries signal (ready_to_build never has a previous sale).
- the same property listed more than once (for_sale, later sold) is kept, and every listing gets a
  ``property_id`` (a hash of street, zip, city and state; of every property field when the street is
  unknown) so that train/test splits keep all listings of a property on one side.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasador.schema import (
    BOUNDS,
    COLUMNS,
    EARLIEST_SALE,
    ID_FEATURES,
    ID_LIMIT,
    NUMERIC_FEATURES,
    STATES,
    STATUSES,
    TARGET,
    WHOLE_NUMBERS,
    ZIP_MAX,
    ZIP_WIDTH,
)

CLEAN_COLUMNS: tuple[str, ...] = ("raw_id", "batch_id", "property_id", *COLUMNS)


def clean_frame(raw: pd.DataFrame, price_min: float, price_max: float,
                today: dt.date | None = None) -> pd.DataFrame:
    """``raw`` has raw_id, batch_id and the 12 text columns. Returns the typed columns of CLEAN_COLUMNS
    plus ``reason``: None for a clean row, else why it was rejected (the first rule it breaks);
    ``prev_sold_date`` as ``datetime.date`` objects (None where missing)."""
    out = _judged(raw, price_min, price_max, today)
    dates, zips = out["prev_sold_date"], out["zip_code"]
    out["prev_sold_date"] = dates.dt.date.where(dates.notna(), None)
    out["zip_code"] = zips.astype(object).where(zips.notna(), None)
    return out


def _judged(raw: pd.DataFrame, price_min: float, price_max: float, today: dt.date | None) -> pd.DataFrame:
    """``clean_frame`` with ``prev_sold_date`` left as datetime64 (NaT where missing) and ``zip_code`` as
    Arrow strings: ``clean_table`` hands them to Arrow as they are (a Python date object per row cost 7 ms
    per 57,000 rows; a Python string per zip code, 2.8 ms to make, more to hash and to convert back)."""
    today = today or dt.date.today()
    out = pd.DataFrame({"raw_id": raw["raw_id"].astype("int64"), "batch_id": raw["batch_id"].astype("int64")})
    reasons = pd.Series(None, index=raw.index, dtype=object)
    open_rows = np.ones(len(raw), dtype=bool)  # not rejected yet (an object Series' isna per rule cost 0.1 s)

    def reject(mask: pd.Series, why) -> None:
        """Record ``why`` for rows in ``mask`` not yet rejected: a string, or a function of the boolean
        row mask that builds the messages from the value Series (called on the rejected rows only)."""
        new = mask.to_numpy(dtype=bool, na_value=False) & open_rows
        if new.any():
            open_rows[new] = False
            reasons[new] = why if isinstance(why, str) else why(new).astype(object).to_numpy()

    text = {c: _text(raw[c]) for c in COLUMNS}

    status = text["status"].str.lower()
    reject(status.isna(), "status missing")
    reject(~status.isin(STATUSES) & status.notna(),
           lambda m: "status '" + text["status"][m] + "' is not one of " + "/".join(STATUSES))
    out["status"] = status

    state = text["state"]
    reject(state.isna(), "state missing")
    reject(~state.isin(STATES) & state.notna(),
           lambda m: "state '" + state[m] + "' is not a known US state or territory")
    out["state"] = state

    numbers = {}
    for col in (TARGET, *NUMERIC_FEATURES, *ID_FEATURES, "zip_code"):
        parsed = _number(text[col])
        numbers[col] = parsed
        reject(text[col].notna() & (parsed.isna() | ~np.isfinite(parsed)),
               lambda m, col=col: col + " '" + text[col][m] + "' is not a number")

    price = numbers["price"]
    reject(price.isna() & text["price"].isna(), "price missing")
    reject(price == 0, "price is $0")
    dollars = "${:,.0f}".format
    reject(price < price_min, lambda m: "price " + price[m].map(dollars) + f" below the {dollars(price_min)} bound")
    reject(price > price_max, lambda m: "price " + price[m].map(dollars) + f" above the {dollars(price_max)} bound")
    out["price"] = price.astype("float64")

    numbers["house_size"] = numbers["house_size"].replace(0.0, np.nan)
    for col, (low, high) in BOUNDS.items():
        value = numbers[col]
        reject((value < low) | (value > high),
               lambda m, col=col, value=value, low=low, high=high: f"{col} " + value[m].astype(str)
               + f" outside [{low:,}, {high:,}]")
        if col in WHOLE_NUMBERS:
            reject(value.notna() & _fractional(value),
                   lambda m, col=col, value=value: f"{col} " + value[m].astype(str) + " is not a whole number")
        out[col] = value.astype("float64")

    for col in ID_FEATURES:
        value = numbers[col]
        reject(value.notna() & ((value < 0) | (value >= ID_LIMIT) | _fractional(value)),
               lambda m, col=col, value=value: f"{col} " + value[m].astype(str)
               + " is not a positive integer id (below 2^63)")
        out[col] = _ids(value)

    zip_num = numbers["zip_code"]
    reject(zip_num.notna() & ((zip_num < 0) | (zip_num > ZIP_MAX) | _fractional(zip_num)),
           lambda m: "zip_code '" + text["zip_code"][m] + "' is not a 5-digit code")
    valid_zip = zip_num.between(0, ZIP_MAX) & ~_fractional(zip_num)
    # padded in Arrow (a per-value Python zfill took 0.16 s of a 230k-row batch's 1.1 s)
    padded = pc.utf8_lpad(pc.cast(pa.array(zip_num.where(valid_zip).to_numpy(), from_pandas=True).cast(pa.int64()),
                                  pa.string()), ZIP_WIDTH, "0")
    out["zip_code"] = pd.Series(pd.arrays.ArrowStringArray(padded), index=raw.index)

    out["city"] = text["city"]
    dates = _iso_dates(text["prev_sold_date"])
    us_style = dates.isna() & text["prev_sold_date"].notna()
    if us_style.any():
        dates[us_style] = pd.to_datetime(text["prev_sold_date"][us_style], errors="coerce", format="%m/%d/%Y")
    reject(text["prev_sold_date"].notna() & dates.isna(),
           lambda m: "prev_sold_date '" + text["prev_sold_date"][m] + "' is not a date")
    reject((dates < pd.Timestamp(EARLIEST_SALE)) | (dates > pd.Timestamp(today)),
           lambda m: "prev_sold_date " + dates[m].dt.strftime("%Y-%m-%d") + f" outside {EARLIEST_SALE}..{today}")
    out["prev_sold_date"] = dates

    out["property_id"] = property_ids(out)
    out["reason"] = reasons.astype("string")
    return out[[*CLEAN_COLUMNS, "reason"]]


def _text(column: pd.Series) -> pd.Series:
    """A raw column as Arrow-backed strings, trimmed, with "" as missing: in Arrow's kernels (pandas'
    ``str.strip`` and ``mask`` on the same strings took 3.1 ms a column per 57,000 rows, these 1.2)."""
    strings = pc.utf8_trim_whitespace(column.astype("string[pyarrow]").array.__arrow_array__())
    return pd.Series(pd.arrays.ArrowStringArray(pc.if_else(pc.equal(strings, ""), None, strings)), index=column.index)


def _ids(value: pd.Series) -> pd.Series:
    """Ids as nullable Int64: missing where NaN, negative or not below ``ID_LIMIT`` (values only a rejected
    row has). Built from the values and their mask: ``astype("Int64")`` checked every value again (6 ms
    per 57,000, against 0.4) and raised on one beyond int64."""
    values = value.to_numpy(dtype="float64")
    missing = ~((values >= 0) & (values < ID_LIMIT))  # NaN compares false: missing
    whole = np.round(np.where(missing, 0.0, values)).astype(np.int64)
    return pd.Series(pd.arrays.IntegerArray(whole, missing), index=value.index)


def _iso_dates(text: pd.Series) -> pd.Series:
    """ISO dates (a time of day dropped) as naive datetime64, NaT where not one. A value with a time zone
    ("2020-02-28T00:00:00Z") is taken at its date as written: pandas turned the column tz-aware or mixed,
    and comparing it with the date bounds failed the whole batch, every time it was processed."""
    dates = pd.to_datetime(text, errors="coerce", format="ISO8601")
    if isinstance(dates.dtype, np.dtype) and dates.dtype.kind == "M":
        return dates
    valid = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True).notna()
    return pd.to_datetime(text.str.slice(0, 10), errors="coerce", format="ISO8601").where(valid)


def _fractional(value: pd.Series) -> pd.Series:
    """True where ``value`` is not a whole number, NaN included (as ``value % 1 != 0``): numpy's float
    modulo took 2.3 ms per 57,000 values, six times a block; truncating takes 0.1."""
    return np.trunc(value) != value


def _number(text: pd.Series) -> pd.Series:
    """Text to float64 (NaN where missing or not a number): Arrow's cast when the whole column parses,
    pandas' coercing parser when some value does not."""
    try:
        values = pc.cast(pa.array(text.array), pa.float64())
    except pa.ArrowInvalid:
        return pd.to_numeric(text.astype(object), errors="coerce").astype("float64")
    return pd.Series(values.to_numpy(zero_copy_only=False), index=text.index, dtype="float64")


# a cleaned block as Arrow, the same for every block whatever its values (an all-missing column would
# otherwise become Arrow's null type in one block and not in the next); names and order from CLEAN_COLUMNS
_BLOCK_TYPES = {"raw_id": pa.int64(), "batch_id": pa.int64(), "property_id": pa.int64(), "brokered_by": pa.int64(),
                "status": pa.string(), "price": pa.float64(), "bed": pa.float64(), "bath": pa.float64(),
                "acre_lot": pa.float64(), "street": pa.int64(), "city": pa.string(), "state": pa.string(),
                "zip_code": pa.string(), "house_size": pa.float64(), "prev_sold_date": pa.date32(),
                "reason": pa.string(), "row_hash": pa.uint64()}
CLEAN_BLOCK_SCHEMA = pa.schema([(name, _BLOCK_TYPES[name]) for name in (*CLEAN_COLUMNS, "reason", "row_hash")])
ARROW_STRINGS = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}.get


def clean_table(table: pa.Table, price_min: float, price_max: float, today: dt.date | None = None) -> pa.Table:
    """``clean_frame`` for an Arrow block (Ray Data's format), strings kept in Arrow, with each row's
    ``row_hash`` (``with_row_hashes``), returned as Arrow (``CLEAN_BLOCK_SCHEMA``): the hashing and the
    conversion run in the Ray task, and the driver gets the block without a copy or a pickled object
    per string (a pandas block came to it pickled and went back to Arrow for the COPY)."""
    frame = with_row_hashes(_judged(table.to_pandas(types_mapper=ARROW_STRINGS), price_min, price_max, today))
    return pa.Table.from_pandas(frame, schema=CLEAN_BLOCK_SCHEMA, preserve_index=False)


def property_ids(df: pd.DataFrame) -> pd.Series:
    """A stable 63-bit id per property: street, zip, city and state identify it; without a street,
    every property field does. Deterministic across processes and batches."""
    ids = hash_columns(df, ["street", "zip_code", "city", "state"])
    no_street = df["street"].isna().to_numpy()
    if no_street.any():
        described = df.loc[no_street, ["zip_code", "city", "state", "bed", "bath", "acre_lot", "house_size"]]
        ids[no_street] = hash_columns(described, list(described.columns))
    return pd.Series((ids >> np.uint64(1)).astype("int64"), index=df.index)


def hash_columns(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``pd.util.hash_pandas_object(df[columns], index=False)``, bit for bit (the property ids already
    stored are made of it), with each Arrow-backed string column hashed by its distinct values: pandas
    makes a Python string of every row to factorize it (4.9 ms for a block's 57,600 cities, 352 of them
    distinct) where Arrow's dictionary encoding takes 1.4; the whole id, 18 -> 4 ms a block. pandas' own
    pieces do the hashing and the combining (``combine_hash_arrays`` is not public; a test holds this to
    ``hash_pandas_object``)."""
    from pandas.core.util.hashing import combine_hash_arrays

    return combine_hash_arrays(iter([_column_hashes(df[name]) for name in columns]), len(columns))


def _column_hashes(column: pd.Series) -> np.ndarray:
    """What ``hash_pandas_object`` gives each value of ``column`` (a missing one: the largest uint64)."""
    if not isinstance(column.array, pd.arrays.ArrowStringArray):
        return pd.util.hash_array(column._values)
    encoded = pc.dictionary_encode(column.array.__arrow_array__().combine_chunks())
    hashes = np.full(len(column), np.iinfo(np.uint64).max, dtype=np.uint64)
    if len(encoded.dictionary):
        distinct = pd.util.hash_array(np.asarray(encoded.dictionary.to_pylist(), dtype=object), categorize=False)
        valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
        hashes[valid] = distinct[encoded.indices.drop_null().to_numpy()]
    return hashes


def mark_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Reject rows that repeat an earlier (lower raw_id) clean row of the batch exactly, after typing
    ("103378.0" and "103378" are the same broker)."""
    df = df.sort_values("raw_id", kind="stable", ignore_index=True)
    clean = df.index[df["reason"].isna()]
    dup = df.loc[clean].duplicated(subset=list(COLUMNS), keep="first")
    if dup.any():
        keys = df.loc[clean, list(COLUMNS)].astype(object).where(df.loc[clean, list(COLUMNS)].notna(), None)
        first = df.loc[clean, "raw_id"].groupby([keys[c] for c in COLUMNS], dropna=False, sort=False).transform("first")
        df.loc[dup[dup].index, "reason"] = "exact duplicate of raw row " + first[dup].astype(str)
    return df


class MarkedBlock(NamedTuple):
    """A block ``DuplicateMarker`` has marked, kept for the exact check of later blocks: the block itself
    (Ray Data's, in the object store), not a filtered copy (the driver's Arrow memory per batch 53 -> 23
    MiB); its clean rows' hashes, sorted; the row of each; whether that row is still clean after marking."""

    rows: pa.Table
    hashes: np.ndarray
    rows_at: np.ndarray
    kept: np.ndarray

    def kept_rows(self, wanted: np.ndarray) -> pa.Table:
        """The rows that are still clean and whose hash is in ``wanted``."""
        match = sorted_matches(self.hashes, wanted)
        return self.rows.take(self.rows_at[match][self.kept[match]])


class DuplicateMarker:
    """``mark_duplicates`` over a batch that arrives block by block in ``raw_id`` order (each block's ids
    above every earlier block's), so that each block can be written while later ones are still cleaned: a
    row gets the reason it would get in the whole batch. Blocks carry ``row_hash`` (``clean_table``
    computes it in the Ray task): only the clean rows whose hash was seen before, in an earlier block or
    in their own, are compared, exactly, by ``mark_duplicates``; a hash collision can only add a row to
    compare, never mark one. The driver's work per block is then a hash lookup, not a sort of the block
    (0.6-0.9 s per 230k-row batch on the driver before, the whole block through ``mark_duplicates``)."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)  # every clean row's hash so far, sorted
        self.blocks: list[MarkedBlock] = []  # every earlier block, for the exact check
        self.last_raw_id: int | None = None

    def mark(self, block: pa.Table) -> pa.Table:
        """``block`` (``clean_table``'s) with ``reason`` set on the rows that repeat an earlier clean row."""
        if not block.num_rows:
            return block
        raw_ids = block["raw_id"].to_numpy()
        if self.last_raw_id is not None and raw_ids.min() <= self.last_raw_id:
            raise ValueError(f"blocks out of raw_id order: raw_id {raw_ids.min()} after {self.last_raw_id}")
        # the block's clean hashes sorted once, with their rows: the hashes worth comparing (seen in an earlier
        # block, or twice in this one, where repeats are neighbours) are a few dozen, and every block's rows
        # with them are found by binary search in its sorted hashes. Searching each earlier block's every
        # row for them instead, and a stable sort, took 60 ms of the driver's CPU per 230k-row batch
        clean_rows = np.flatnonzero(block["reason"].is_null().to_numpy(zero_copy_only=False))
        hashes = block["row_hash"].to_numpy()[clean_rows]
        order = np.argsort(hashes)
        fresh, fresh_rows = hashes[order], clean_rows[order]
        kept = np.ones(len(fresh), dtype=bool)
        wanted = np.union1d(fresh[in_sorted(fresh, self.hashes)], fresh[1:][fresh[1:] == fresh[:-1]])
        if len(wanted):
            mine = sorted_matches(fresh, wanted)  # positions in ``fresh``
            earlier = [earlier_block.kept_rows(wanted) for earlier_block in self.blocks]
            compared = pa.concat_tables([*(rows for rows in earlier if rows.num_rows),
                                         block.take(np.sort(fresh_rows[mine]))])
            judged = mark_duplicates(compared.to_pandas(types_mapper=ARROW_STRINGS))  # in raw_id order
            position = np.searchsorted(judged["raw_id"].to_numpy(), raw_ids[fresh_rows[mine]])
            reasons = judged["reason"].to_numpy(dtype=object, na_value=None)[position]
            repeated = pd.notna(reasons)
            if repeated.any():
                kept[mine[repeated]] = False
                rows_marked = fresh_rows[mine[repeated]]
                in_row_order = np.argsort(rows_marked)
                mask = np.zeros(block.num_rows, dtype=bool)
                mask[rows_marked] = True
                reason = pc.replace_with_mask(block["reason"].combine_chunks(), pa.array(mask),
                                              pa.array(reasons[repeated][in_row_order].tolist(), type=pa.string()))
                block = block.set_column(block.schema.get_field_index("reason"), "reason", reason)
        self.blocks.append(MarkedBlock(block, fresh, fresh_rows, kept))
        # the hashes of the rows just marked stay in: each repeats a kept clean row's, so the set is the same.
        # Two sorted runs: numpy's stable sort (a timsort for 64-bit keys) merges them in one pass, where its
        # default quicksort sorted them again (290k hashes: 15.9 -> 2.7 ms; the marker's CPU a batch 73 -> 53 ms)
        self.hashes = np.sort(np.concatenate([self.hashes, fresh]), kind="stable")
        self.last_raw_id = int(raw_ids.max())
        return block


def in_sorted(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_values)`` by binary search: ``np.isin`` hashes its second argument again
    at every call (0.2 s of the marker's 0.4 s per batch)."""
    if not len(sorted_values):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[at] == values


def sorted_matches(sorted_values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The positions in ``sorted_values`` of its values that are in ``wanted`` (sorted too, distinct): each
    wanted value's run, found by two binary searches, so the cost is in the few wanted, not the many."""
    low, high = np.searchsorted(sorted_values, wanted, "left"), np.searchsorted(sorted_values, wanted, "right")
    runs = high - low
    return np.repeat(low - np.cumsum(runs) + runs, runs) + np.arange(runs.sum())


def with_row_hashes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``row_hash``, for ``DuplicateMarker``: a 64-bit hash of the row's ``property_id`` (itself
    a hash of street, zip, city and state) and price. Rows that repeat each other exactly share it; so
    do a property's listings at one price, which the marker then compares in full. Two columns a clean
    row always has, never NaN (whose bits a hash would compare), and 12 ms a batch, not 0.24 s for all
    twelve columns."""
    return df.assign(row_hash=pd.util.hash_pandas_object(df[["property_id", "price"]], index=False).to_numpy())


def split_key(property_id: pd.Series | np.ndarray, buckets: int = 100) -> np.ndarray:
    """A bucket in [0, buckets) per property: splits by bucket never divide a property."""
    return (np.asarray(property_id, dtype=np.int64) % buckets).astype(np.int64)


# split_key in SQL, for a selection by split (numpy's modulo is never negative; PostgreSQL's takes the
# dividend's sign); tests/test_training.py holds the two to the same rows
SPLIT_KEY_SQL = "(property_id % 100 + 100) % 100"
