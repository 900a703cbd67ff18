"""The re-created data API over real HTTP (the stack's server process), and its generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import requests

from data_api.plan import EXHAUSTED_DETAIL, PLAN, SOLD_KIND, TOTAL_ROWS, batch_order, scaled_rows
from data_api.sources import SyntheticSource
from tasador.schema import COLUMNS, STATES, STATUSES
from tests.conftest import TEST_SCALE


def get(settings, path, **params):
    return requests.get(f"{settings.data_api}{path}", params=params, timeout=60)


def test_plan_totals_match_the_real_api():
    assert TOTAL_ROWS == 1_084_909
    assert sorted(k.rows for k in PLAN) == [4_055, 73_784, 94_551, 230_366, 320_696, 361_457]


def test_banner_and_health(settings):
    assert get(settings, "/").json()["service"] == "tasador data API"
    assert get(settings, "/health").json() == {"status": "ok"}


def test_serves_the_six_batches_then_400_exhausted(settings, group):
    order = batch_order(group, "Monday")
    for n, kind in enumerate(order, start=1):
        resp = get(settings, "/data", group_number=group, day="Monday")
        assert resp.status_code == 200
        body = resp.json()
        assert (body["group_number"], body["day"], body["batch_number"]) == (group, "Monday", n)
        assert len(body["data"]) == scaled_rows(PLAN[kind], TEST_SCALE)
        assert all(tuple(row) == COLUMNS for row in body["data"][:50])
    resp = get(settings, "/data", group_number=group, day="Monday")
    assert resp.status_code == 400
    assert resp.json() == {"detail": EXHAUSTED_DETAIL}


def test_same_request_count_gives_the_same_rows_and_restart_resets(settings, group):
    first = [hashlib.sha256(get(settings, "/data", group_number=group, day="Friday").content).hexdigest()
             for _ in range(2)]
    assert get(settings, "/restart_data_generation", group_number=group, day="Friday").status_code == 200
    again = [hashlib.sha256(get(settings, "/data", group_number=group, day="Friday").content).hexdigest()
             for _ in range(2)]
    assert first == again
    assert first[0] != first[1]


def test_default_group_and_day_serve_the_sold_batch_first(settings):
    assert batch_order(settings.group, settings.day)[0] == SOLD_KIND
    orders = {tuple(batch_order(g, d)) for g in range(1, 6) for d in ("Monday", "Tuesday", "Wednesday")}
    assert len(orders) > 1, "the order must depend on (group, day)"


@pytest.mark.parametrize("params", [{}, {"group_number": "x", "day": "Monday"}, {"group_number": 1},
                                    {"group_number": -1, "day": "Monday"}])
def test_bad_parameters_get_422_naming_the_field(settings, params):
    resp = get(settings, "/data", **params)
    assert resp.status_code == 422
    assert any(err["loc"][-1] in ("group_number", "day") for err in resp.json()["detail"])


def test_generator_is_calibrated_to_the_real_file():
    source = SyntheticSource(seed=7, scale=0.05)
    df = pd.concat([source.batch(k.index, 3, "Monday") for k in PLAN], ignore_index=True)
    assert len(df) == sum(scaled_rows(k, 0.05) for k in PLAN)
    assert set(df["status"]) <= set(STATUSES) and set(df["state"]) <= set(STATES)
    assert df["state"].nunique() >= 45
    # missing values at about the real rates
    assert 0.20 < df["bed"].isna().mean() < 0.32
    assert 0.09 < df["acre_lot"].isna().mean() < 0.16
    assert 0.20 < df["prev_sold_date"].isna().mean() < 0.40
    assert df.loc[df.status == "sold", "prev_sold_date"].notna().all()
    assert df.loc[df.status == "ready_to_build", "prev_sold_date"].isna().all()
    # raw-format quirks: zip codes without leading zeros, ids as floats
    assert (df["zip_code"] < 10_000).any()
    assert df["brokered_by"].dtype == float and df["street"].dtype == float
    # price range: a median in the hundreds of thousands, a heavy upper tail
    assert 150_000 < df["price"].median() < 450_000
    assert df["price"].max() > 20_000_000
    # the same property listed more than once (about 10%)
    key = df[["street", "zip_code", "house_size"]].astype(str).agg("|".join, axis=1)
    assert 0.05 < key.duplicated().mean() < 0.15


def test_batches_differ_on_purpose():
    source = SyntheticSource(seed=7, scale=0.05)
    low = source.batch(0, 3, "Monday")
    high = source.batch(5, 3, "Monday")
    single = source.batch(3, 3, "Monday")
    assert (low["status"] == "for_sale").all() and low["price"].max() <= 300_000
    assert high["price"].min() > 500_000
    assert single["state"].nunique() == 1
    assert np.isclose(len(source.batch(2, 3, "Monday")), 230_366 * 0.05, atol=1)


@pytest.mark.parametrize("content,words", [
    (None, "No such file"),
    ("zip_code,city\n02108,Boston\n", "lacks the column(s)"),
])
def test_the_command_refuses_a_bad_source_in_one_line_naming_it(tmp_path, content, words):
    """``tasador data-api --source`` through Typer's runner: a missing CSV, or one without the columns
    the batches are split by, is one line naming the file and the log's path, not a traceback."""
    from typer.testing import CliRunner

    from cli.main import app

    source = tmp_path / "realtor.csv"
    if content is not None:
        source.write_text(content)
    env = {"TASADOR_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(app, ["data-api", "--source", str(source), "--port", "1"], env=env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines() if hasattr(result, "stderr") else result.output.strip().splitlines()
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and str(source) in error[0] and words in error[0], lines
    assert any("cli.log" in line for line in lines) and "Traceback" not in result.output
