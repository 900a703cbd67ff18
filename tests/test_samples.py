"""The real-format samples (../shared/data/realtor-samples) through the data API's CSV source and
ingestion: every row accounted for, formatting quirks kept as received."""

from __future__ import annotations

import csv

import pytest

from data_api.plan import PLAN
from data_api.sources import CsvSource
from tasador.api_client import Batch
from tasador.ingest import store_batch
from tasador.schema import COLUMNS
from tests.conftest import SAMPLES, needs_samples

pytestmark = needs_samples

SAMPLE_FILES = sorted(SAMPLES.glob("*.csv"))


def read_rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    if path.name.startswith("cmaldikar"):
        rows = rows[:-1]  # that file is cut at 1 MiB mid-row
    return rows


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name[:20])
def test_csv_source_splits_every_row_into_exactly_one_batch(path):
    source = CsvSource(path)
    served = sum(len(source.batch(k.index, 1, "Monday")) for k in PLAN)
    with open(path, encoding="utf-8-sig") as f:
        lines = sum(1 for _ in f) - 1
    assert served == lines


def test_ten_column_file_serves_the_missing_columns_as_null():
    path = SAMPLES / "eshaank1_realtor-data_NJ_PA_NY_10col.csv"
    batch = next(CsvSource(path).batch(k.index, 1, "Monday") for k in PLAN)
    assert list(batch.columns) == list(COLUMNS)
    assert batch["brokered_by"].isna().all() and batch["street"].isna().all()


def test_raw_keeps_the_verbatim_formatting(settings, raw):
    """The BOM file with zip '601' and ids '103378': stored exactly as the text received."""
    path = SAMPLES / "pjayajothi_realtor-data_head999.csv"
    rows = [{c: (r.get(c) or None) for c in COLUMNS} for r in read_rows(path)]
    result = store_batch(settings.raw_db, Batch(424242, "sample", 1, rows, "sha-sample", "file://" + path.name))
    assert result.status == "ingested" and result.rows == 999
    with raw.cursor() as cur:
        cur.execute("SELECT brokered_by, zip_code, price, prev_sold_date FROM listings"
                    " WHERE batch_id = %s ORDER BY row_number LIMIT 1", (result.batch_id,))
        assert cur.fetchone() == ("103378", "601", "105000", None)
    again = store_batch(settings.raw_db, Batch(424242, "sample", 1, rows, "sha-sample", "file://x"))
    assert again.status == "already_stored"


def test_float_formatted_sample_keeps_float_text(settings, raw):
    path = SAMPLES / "cmaldikar_realtor-data_head1MiB.csv"
    rows = [{c: (r.get(c) or None) for c in COLUMNS} for r in read_rows(path)[:500]]
    result = store_batch(settings.raw_db, Batch(424243, "sample", 1, rows, "sha-float", "file://x"))
    with raw.cursor() as cur:
        cur.execute("SELECT brokered_by, zip_code FROM listings WHERE batch_id = %s AND row_number = 0",
                    (result.batch_id,))
        assert cur.fetchone() == ("103378.0", "00601")
