"""The cleaning rules, on the real-format samples and on hand-made bad rows."""

from __future__ import annotations

import datetime as dt
import itertools

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasador.cleaning import DuplicateMarker, clean_frame, clean_table, hash_columns, mark_duplicates, split_key
from tasador.schema import COLUMNS
from tests.conftest import SAMPLES, needs_samples

TODAY = dt.date(2026, 11, 22)


def raw_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS), dtype=object)
    df["raw_id"], df["batch_id"] = range(1, len(df) + 1), 1
    return df


def sample(name: str) -> pd.DataFrame:
    df = pd.read_csv(SAMPLES / name, dtype=str, keep_default_na=False, encoding="utf-8-sig").replace({"": None})
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    df["raw_id"], df["batch_id"] = range(1, len(df) + 1), 1
    return df


GOOD = {"brokered_by": "103378.0", "status": "for_sale", "price": "105000.0", "bed": "3", "bath": "2",
        "acre_lot": "0.12", "street": "1962661.0", "city": "Adjuntas", "state": "Puerto Rico",
        "zip_code": "601", "house_size": "920.0", "prev_sold_date": "2/28/2020"}


def test_types_are_normalised():
    out = clean_frame(raw_frame([GOOD]), 10_000, 1e8, TODAY).iloc[0]
    assert out["reason"] is pd.NA or pd.isna(out["reason"])
    assert out["brokered_by"] == 103378 and out["street"] == 1962661
    assert out["zip_code"] == "00601"
    assert out["prev_sold_date"] == dt.date(2020, 2, 28)
    assert out["price"] == 105000.0 and out["bed"] == 3.0


def test_a_date_with_a_time_or_a_zone_keeps_its_date_as_written():
    rows = [{**GOOD, "prev_sold_date": d} for d in ("2020-02-28T23:00:00-05:00", "2020-02-28 13:45", "2020-02-28")]
    out = clean_frame(raw_frame(rows), 10_000, 1e8, TODAY)
    assert out["reason"].isna().all() and (out["prev_sold_date"] == dt.date(2020, 2, 28)).all()


@pytest.mark.parametrize("change,reason", [
    ({"price": None}, "price missing"),
    ({"price": "0"}, "price is $0"),
    ({"price": "445"}, "price $445 below the $10,000 bound"),
    ({"price": "2100000000"}, "price $2,100,000,000 above"),
    ({"price": "cheap"}, "price 'cheap' is not a number"),
    ({"status": "pending"}, "status 'pending' is not one of"),
    ({"state": "Narnia"}, "state 'Narnia' is not a known"),
    ({"bed": "-1"}, "bed -1.0 outside"),
    ({"bath": "2.5"}, "bath 2.5 is not a whole number"),
    ({"house_size": "1450112"}, "house_size 1450112.0 outside"),
    ({"zip_code": "123456"}, "zip_code '123456' is not a 5-digit code"),
    ({"prev_sold_date": "2099-01-01"}, "prev_sold_date 2099-01-01 outside"),
    ({"prev_sold_date": "yesterday"}, "prev_sold_date 'yesterday' is not a date"),
    ({"prev_sold_date": "2099-01-01T00:00:00Z"}, "prev_sold_date 2099-01-01 outside"),
    ({"prev_sold_date": "2020-02-30T00:00:00+05:00"}, "prev_sold_date '2020-02-30T00:00:00+05:00' is not a date"),
    ({"brokered_by": "-5"}, "brokered_by -5.0 is not a positive integer id"),
    ({"brokered_by": "1e30"}, "brokered_by 1e+30 is not a positive integer id (below 2^63)"),
    ({"street": "9223372036854775808"}, "street 9.223372036854776e+18 is not a positive integer id"),
])
def test_bad_rows_are_rejected_with_a_reason_naming_the_field(change, reason):
    out = clean_frame(raw_frame([GOOD, {**GOOD, **change}]), 10_000, 1e8, TODAY)
    assert pd.isna(out["reason"].iloc[0])
    assert out["reason"].iloc[1].startswith(reason), out["reason"].iloc[1]


def test_missing_values_stay_missing_and_zero_size_means_unknown():
    out = clean_frame(raw_frame([{**GOOD, "bed": None, "house_size": "0", "zip_code": None}]), 10_000, 1e8, TODAY)
    assert pd.isna(out["reason"].iloc[0])
    assert pd.isna(out["bed"].iloc[0]) and pd.isna(out["house_size"].iloc[0]) and out["zip_code"].iloc[0] is None


def test_exact_duplicates_after_typing_keep_the_first():
    rows = [GOOD, {**GOOD, "brokered_by": "103378", "price": "105000"}, {**GOOD, "price": "99000"}]
    out = mark_duplicates(clean_frame(raw_frame(rows), 10_000, 1e8, TODAY))
    assert list(out["reason"].fillna("")) == ["", "exact duplicate of raw row 1", ""]


# listings that often repeat one another, before or after typing ("103378.0" and "103378"), missing
# values included, with a bad row now and then
VARIANTS = st.fixed_dictionaries({
    "brokered_by": st.sampled_from(["103378.0", "103378", None, "5"]),
    "price": st.sampled_from(["105000.0", "105000", "99000", "0"]),
    "bed": st.sampled_from(["3", None, "-1"]),
    "zip_code": st.sampled_from(["601", "00601", None]),
    "prev_sold_date": st.sampled_from(["2/28/2020", "2020-02-28", None]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(VARIANTS, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=5))
def test_duplicates_marked_block_by_block_match_the_whole_batch(rows, cuts):
    """Processing writes each block as it comes: the reasons must be the ones the whole batch gets,
    wherever the blocks are cut (the first of a pair in an earlier block, in the same one, or both later)."""
    import pyarrow as pa

    raw = raw_frame([{**GOOD, **r} for r in rows])
    whole = mark_duplicates(clean_frame(raw, 10_000, 1e8, TODAY))
    table = pa.Table.from_pandas(raw.astype({c: "string" for c in COLUMNS}), preserve_index=False)
    bounds = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    marker = DuplicateMarker()
    blocks = [marker.mark(clean_table(table.slice(a, b - a), 10_000, 1e8, TODAY))
              for a, b in itertools.pairwise(bounds)]
    streamed = pa.concat_tables(blocks).to_pandas().sort_values("raw_id", ignore_index=True)
    assert streamed["reason"].fillna("").tolist() == whole["reason"].fillna("").tolist()
    assert streamed["raw_id"].tolist() == whole["raw_id"].tolist()


def test_a_blocks_distinct_ids_are_counted_in_any_order():
    """Processing's accounting counts each raw row once per block; a range read comes back in heap order."""
    import numpy as np

    from tasador.processing import distinct_ids

    ids = np.random.default_rng(7).permutation(np.arange(5_000, 62_592))
    assert distinct_ids(ids) == len(ids)
    assert distinct_ids(np.concatenate([ids, ids[:10]])) == len(ids)  # a row read twice is not a new row
    assert distinct_ids(np.arange(10)) == 10
    assert distinct_ids(np.array([1, 10**15, 1])) == 2  # sparse ids: counted by sorting
    assert distinct_ids(np.array([], dtype=np.int64)) == 0


def test_a_block_before_an_earlier_one_is_refused():
    """The marker keeps the first of a pair: a block that goes back in raw_id order would mark the wrong one."""
    import pyarrow as pa

    table = pa.Table.from_pandas(raw_frame([GOOD, GOOD]).astype({c: "string" for c in COLUMNS}), preserve_index=False)
    marker = DuplicateMarker()
    marker.mark(clean_table(table.slice(1, 1), 10_000, 1e8, TODAY))
    with pytest.raises(ValueError, match="out of raw_id order"):
        marker.mark(clean_table(table.slice(0, 1), 10_000, 1e8, TODAY))


def test_relisted_property_shares_its_id_and_split_bucket():
    rows = [GOOD, {**GOOD, "status": "sold", "price": "98000", "brokered_by": "5"}, {**GOOD, "street": "77"}]
    out = clean_frame(raw_frame(rows), 10_000, 1e8, TODAY)
    ids = out["property_id"].tolist()
    assert ids[0] == ids[1] != ids[2]
    assert split_key(out["property_id"])[0] == split_key(out["property_id"])[1]


PLACE = st.one_of(st.none(), st.sampled_from(["Boston", "San Juan", "Añasco", ""]), st.text(max_size=6))


@settings(max_examples=80, deadline=None)
@given(places=st.lists(st.tuples(PLACE, PLACE, st.one_of(st.none(), st.integers(0, 2**62)),
                                 st.one_of(st.none(), st.floats(allow_nan=True))), max_size=30))
def test_columns_hash_as_pandas_hashes_them(places):
    """The property id's hashing (Arrow strings hashed by their distinct values) gives pandas' own
    ``hash_pandas_object``, bit for bit: the ids already stored are made of it."""
    df = pd.DataFrame(places, columns=["city", "state", "street", "bed"]).astype(
        {"city": "string[pyarrow]", "state": "string[pyarrow]", "street": "Int64", "bed": "float64"})
    expected = pd.util.hash_pandas_object(df, index=False).to_numpy()
    assert (hash_columns(df, list(df.columns)) == expected).all()
    assert (hash_columns(df.astype({"city": object}), list(df.columns)) == expected).all()


@pytest.mark.parametrize("name", ["pjayajothi_realtor-data_head999.csv", "cmaldikar_realtor-data_head1MiB.csv",
                                  "eshaank1_realtor-data_NJ_PA_NY_10col.csv"])
@needs_samples
def test_real_samples_every_row_is_clean_or_rejected(name):
    raw = sample(name)
    out = mark_duplicates(clean_frame(raw, 10_000, 1e8, TODAY))
    assert len(out) == len(raw) and out["raw_id"].is_unique
    clean = out[out["reason"].isna()]
    assert len(clean) > 0.6 * len(raw)
    assert clean["zip_code"].dropna().str.fullmatch(r"\d{5}").all()
    assert (clean["price"] >= 10_000).all()


@needs_samples
def test_verbatim_sample_keeps_its_rows():
    out = clean_frame(sample("pjayajothi_realtor-data_head999.csv"), 10_000, 1e8, TODAY)
    assert out["reason"].isna().all()  # 299 house_size 0 = unknown, 2 US-style dates: all kept
    assert out["house_size"].isna().sum() >= 299
    assert out["prev_sold_date"].notna().sum() == 2


@needs_samples
def test_ten_column_sample_has_exact_duplicates_found():
    out = mark_duplicates(clean_frame(sample("eshaank1_realtor-data_NJ_PA_NY_10col.csv"), 10_000, 1e8, TODAY))
    assert out["reason"].str.startswith("exact duplicate").sum() > 500


LISTING_JSON = {"brokered_by": 103378, "status": "for_sale", "bed": 3, "bath": 2, "acre_lot": 0.12,
                "street": 1962661, "city": "Adjuntas", "state": "Puerto Rico", "zip_code": "601",
                "house_size": 920, "prev_sold_date": "2020-02-28"}
VERDICT_CASES = [
    {}, {"bath": 2.5}, {"bed": 2.0}, {"bed": -1}, {"bed": 51}, {"house_size": 50}, {"acre_lot": 100_001},
    {"zip_code": "123456"}, {"zip_code": "02108"}, {"zip_code": 2108.0}, {"zip_code": "002108"},
    {"brokered_by": 1.5}, {"street": -3}, {"brokered_by": 1e30}, {"street": 2**63}, {"street": 2**63 - 2**10},
    {"prev_sold_date": "1850-01-01"}, {"prev_sold_date": "2099-01-01"},
    {"state": "Narnia"}, {"status": "pending"}, {"city": None}, {"bed": None},
]


@pytest.mark.parametrize("change", VERDICT_CASES, ids=[str(c) for c in VERDICT_CASES])
def test_the_api_and_the_cleaning_agree_on_what_a_valid_listing_is(change):
    """One definition of a valid listing (tasador/schema.py): the prediction API refuses a listing
    exactly when the cleaning would reject it as a row (the price aside, which a listing to price has
    not), and both read its zip code alike."""
    from pydantic import ValidationError

    from serve_app.schemas import LISTING

    listing = {**LISTING_JSON, **change}
    try:
        api_zip = LISTING.validate_python(listing).zip_code
    except ValidationError:
        api_zip = "refused"
    row = {k: (None if v is None else str(v)) for k, v in listing.items()} | {"price": "105000"}
    cleaned = clean_frame(raw_frame([row]), 10_000, 1e8, dt.date.today()).iloc[0]
    clean_zip = "refused" if pd.notna(cleaned["reason"]) else cleaned["zip_code"]
    assert api_zip == clean_zip, (api_zip, cleaned["reason"])


# any text a raw field may hold: numbers of every size and form, dates, words, control characters
RAW_TEXT = st.one_of(
    st.none(), st.text(max_size=12),
    st.integers(-2**70, 2**70).map(str), st.floats().map(repr), st.floats().map("{:.0f}".format),
    st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(str), st.sampled_from(["for_sale", "sold", "Texas"]),
    st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31), timezones=st.sampled_from([None, dt.UTC])).map(
        dt.datetime.isoformat),
    st.sampled_from(["2020-02-28T00:00:00+05:00", "2020-02-28T23:00:00-05:00", "2020-02-28Z", "20200228"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries({c: RAW_TEXT for c in COLUMNS}), min_size=1, max_size=8))
def test_any_raw_text_is_cleaned_or_rejected_never_raised(rows):
    """Processing's cleaning (``clean_table``, in Ray Data's tasks) takes whatever the raw database
    holds: every row comes out, either with a reason or with values its clean table can store."""
    import pyarrow as pa

    table = pa.Table.from_pandas(raw_frame([GOOD, *rows]).astype({c: "string" for c in COLUMNS}),
                                 preserve_index=False)
    out = clean_table(table, 10_000, 1e8, TODAY).to_pandas()
    assert out["raw_id"].tolist() == list(range(1, len(rows) + 2))
    assert pd.isna(out["reason"].iloc[0])
    clean = out[out["reason"].isna()]
    for col in ("brokered_by", "street"):
        assert clean[col].dropna().between(0, 2**63 - 1).all()
    assert clean["zip_code"].dropna().str.fullmatch(r"\d{5}").all()
    assert clean["price"].between(10_000, 1e8).all()
