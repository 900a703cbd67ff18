"""The quirks of real realtor.com CSV files, in files this test writes (the third-party samples in
../shared/ are tested by test_samples.py when present): a byte-order mark, zip codes that lost their
leading zeros, ids written as floats, a ten-column variant, a last line cut short, exact duplicates.
Through the data API's CSV source and the cleaning; no server."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from data_api.plan import PLAN
from data_api.sources import CsvSource
from tasador.cleaning import clean_frame, mark_duplicates
from tasador.schema import COLUMNS

HEADER = ",".join(COLUMNS)
LINES = [
    "103378.0,for_sale,105000.0,3.0,2.0,0.12,1962661.0,Adjuntas,Puerto Rico,601.0,920.0,",
    "52707.0,for_sale,80000.0,4.0,2.0,0.08,1902874.0,Adjuntas,Puerto Rico,601.0,1527.0,",
    "103378.0,for_sale,105000.0,3.0,2.0,0.12,1962661.0,Adjuntas,Puerto Rico,601.0,920.0,",  # the first, again
    "22611.0,sold,525000.0,3.0,2.0,0.25,1594530.0,Boston,Massachusetts,2108.0,1800.0,2015-06-30",
    "31239.0,for_sale,65000.0,2.0,1.0,0.34,1947675.0,Juana Diaz,Puer",  # the file ends mid-row
]
TEN_COLUMNS = [c for c in COLUMNS if c not in ("brokered_by", "street")]


@pytest.fixture()
def realtor_csv(tmp_path):
    path = tmp_path / "realtor-data.csv"
    path.write_bytes(("\ufeff" + HEADER + "\n" + "\n".join(LINES)).encode("utf-8"))  # no newline at the end
    return path


def served(path) -> pd.DataFrame:
    source = CsvSource(path)
    return pd.concat([source.batch(k.index, 1, "Monday") for k in PLAN], ignore_index=True)


def test_every_row_is_served_once_as_written(realtor_csv):
    rows = served(realtor_csv)
    assert len(rows) == len(LINES)  # the BOM is not a column name, the cut row is a row
    assert list(rows.columns) == list(COLUMNS)
    first = rows[rows["city"] == "Adjuntas"].iloc[0]
    assert (first["brokered_by"], first["zip_code"], first["prev_sold_date"]) == ("103378.0", "601.0", None)


def test_the_cleaning_types_the_quirks_and_rejects_the_cut_row_and_the_duplicate(realtor_csv):
    rows = served(realtor_csv)
    rows["raw_id"], rows["batch_id"] = range(1, len(rows) + 1), 1
    out = mark_duplicates(clean_frame(rows, 10_000, 1e8))
    clean = out[out["reason"].isna()]
    assert len(clean) == 3, out[["raw_id", "reason"]]
    assert set(clean["zip_code"]) == {"00601", "02108"} and set(clean["brokered_by"]) == {103378, 52707, 22611}
    reasons = list(out["reason"].dropna())
    assert any(r.startswith("exact duplicate of raw row") for r in reasons), reasons
    assert any(r == "state missing" or "is not a known US state" in r for r in reasons), reasons  # the cut row


def test_a_ten_column_file_serves_the_missing_columns_as_null(tmp_path):
    path = tmp_path / "realtor-data-10col.csv"
    full = pd.read_csv(io.StringIO(HEADER + "\n" + "\n".join(LINES[:4])), dtype=str)
    full[TEN_COLUMNS].to_csv(path, index=False)
    rows = served(path)
    assert list(rows.columns) == list(COLUMNS) and len(rows) == 4
    assert rows["brokered_by"].isna().all() and rows["street"].isna().all()
    rows["raw_id"], rows["batch_id"] = range(1, len(rows) + 1), 1
    out = clean_frame(rows, 10_000, 1e8)
    assert out["reason"].isna().sum() == 4 and out["property_id"].nunique() == 3  # ids from the other fields
