"""The pipeline's pure logic, with no server: what ingestion does with an answer of the API (and while
replaying it), the drift report, the retrain decision's branches and the promotion verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasador import drift
from tasador.api_client import Batch
from tasador.decisions import retrain_verdict
from tasador.ingest import BatchConflict, MissingBatch, first_move, next_batch_number, replay_step
from tasador.promotion import measured_on_these_rows, verdict
from tasador.settings import Settings

STORED = {1: "a" * 64, 2: "b" * 64}


def batch(n: int, sha: str) -> Batch:
    return Batch(9, "Tuesday", n, [], sha, "http://api")


@pytest.mark.parametrize("stored,got,suspect,move", [
    (STORED, 3, "", "store"),  # the batch the ledger expects
    (STORED, 4, "", "recover"),  # batch 3 was served and lost: replay
    (STORED, 1, "", "recover"),  # the API is behind the ledger (restarted by someone)
    (STORED, None, "", "exhausted"),  # exhausted and nothing can have been lost
    (STORED, None, "the previous GET never finished", "recover"),  # maybe batch 3 was the last, lost
    ({1: "a", 3: "c"}, None, "", "recover"),  # a ledger with a gap (written before contiguity)
    ({1: "a", 3: "c"}, 2, "", "store"),  # ... whose missing batch is the one to store
    ({}, 1, "", "store"),
])
def test_first_move(stored, got, suspect, move):
    assert first_move(stored, got, suspect) == move


def test_next_batch_number_is_the_lowest_missing():
    assert next_batch_number({}) == 1 and next_batch_number(STORED) == 3 and next_batch_number({1: "", 3: ""}) == 2


def test_replay_verifies_stored_batches_and_stores_the_missing_one():
    assert replay_step(STORED, 3, batch(1, "a" * 64), 9, "Tuesday") == "verified"
    assert replay_step(STORED, 3, batch(3, "c" * 64), 9, "Tuesday") == "store"


def test_replay_refuses_a_changed_payload_and_a_batch_past_the_missing_one():
    with pytest.raises(BatchConflict, match="batch 2 is stored with payload bbbb"):
        replay_step(STORED, 3, batch(2, "x" * 64), 9, "Tuesday")
    with pytest.raises(MissingBatch, match="batch 3 of group 9.*served batch 4 instead"):
        replay_step(STORED, 3, batch(4, "d" * 64), 9, "Tuesday")


def frames(shift: float, n: int = 5_000, seed: int = 0):
    rng = np.random.default_rng(seed)

    def frame(offset):
        return pd.DataFrame({"price": np.exp(rng.normal(12.5 + offset, 0.5, n)), "bed": rng.integers(1, 6, n),
                             "bath": rng.integers(1, 4, n), "acre_lot": rng.exponential(0.3, n),
                             "house_size": rng.normal(1800, 400, n), "status": rng.choice(["sold", "for_sale"], n),
                             "state": rng.choice(["Texas", "Ohio"], n)}).astype({"bed": float, "bath": float})
    return frame(shift), frame(0.0)


def test_drift_finds_a_price_shift_and_not_noise():
    s = Settings()
    same = drift.compare(*frames(0.0), s)
    assert not same.drifted and "no feature drifted" in same.explain()
    moved = drift.compare(*frames(1.0), s)
    assert [f.feature for f in moved.drifted] == ["price"] and "price median moved from" in moved.explain()


def test_a_batch_with_no_clean_rows_is_not_called_drift():
    """A batch whose every row was rejected has nothing to compare: its written reason must not say the
    shares of status and state moved by half (they did, from every category to none)."""
    batch, reference = frames(0.0)
    report = drift.compare(batch.iloc[:0], reference, Settings())
    assert not report.drifted and report.explain() == "the batch has no clean rows: nothing to compare"
    retrain, reason = retrain_verdict("3", report, 0, 10_000)
    assert not retrain and "no drift" in reason and "shifted" not in reason


def test_retrain_branches():
    s = Settings()
    drifted, calm = drift.compare(*frames(1.0), s), drift.compare(*frames(0.0), s)
    assert retrain_verdict(None, None, 10, 10_000) == (True, "no production model yet: train the first one")
    retrain, reason = retrain_verdict("3", calm, 50_000, 10_000)
    assert not retrain and reason.startswith("no drift against production v3's data")
    retrain, reason = retrain_verdict("3", drifted, 5_000, 10_000)
    assert not retrain and "only 5,000 rows (< 10,000): not enough to retrain on" in reason
    retrain, reason = retrain_verdict("3", drifted, 50_000, 10_000)
    assert retrain and reason.startswith("drift against production v3's data: price median moved")


def test_promotion_verdict():
    assert verdict("1", None, 50_000, None, 0.01, 100) == (True, "no production model: v1 (RMSE $50,000) becomes it")
    promoted, reason = verdict("2", "1", 49_000, 50_000, 0.01, 1_000)
    assert promoted and "v2 RMSE $49,000 beats production v1 RMSE $50,000 by the 1% margin" in reason
    promoted, reason = verdict("2", "1", 49_800, 50_000, 0.01, 1_000)  # better, but within the margin
    assert not promoted and "does not beat" in reason and "(change -0.4%)" in reason


def test_promotion_reuses_a_training_s_scores_only_on_the_very_rows_it_priced():
    from types import SimpleNamespace

    held_out = SimpleNamespace(batch_ids=[1, 2], test=np.ones(5, dtype=bool))  # load_dataset(held_out_only=True)
    recorded = {"version": "3", "batch_ids": [1, 2], "test_rows": 5, "test_metrics": {"rmse": 10.0, "r2": 0.9}}
    assert measured_on_these_rows(recorded, "3", held_out) == recorded["test_metrics"]
    for other in ({"batch_ids": [1]}, {"batch_ids": [1, 2, 3]},  # a batch processed since (or fewer)
                  {"test_rows": 4}, {"test_rows": None},  # other rows; a training recorded before test_rows
                  {"test_metrics": None}, {"test_metrics": {}}):
        assert measured_on_these_rows({**recorded, **other}, "3", held_out) is None, other
    assert measured_on_these_rows(recorded, "4", held_out) is None  # another version's training
    assert measured_on_these_rows(None, "3", held_out) is None  # an operator's promotion: priced


def test_every_fault_point_is_placed_in_the_code_once():
    """A fault point named in tasador/faults.py but never called would make its scenario pass vacuously."""
    import re
    from pathlib import Path

    from tasador.faults import POINTS

    root = Path(__file__).resolve().parent.parent
    code = "".join(p.read_text() for d in ("tasador", "airflow_dags", "jobs") for p in (root / d).rglob("*.py"))
    placed = re.findall(r'faults\.point\("([a-z_.]+)"', code)
    assert sorted(placed) == sorted(POINTS)
