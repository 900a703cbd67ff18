"""What served when, from the records (the pure part of tasador.history; the database part runs in
tests/test_operator.py against the real stack)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tasador.history import served_versions, serving_at

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MOVES = [{"version": "1", "previous_version": None, "moved_at": T0, "kind": "promotion", "reason": "first"},
         {"version": "3", "previous_version": "1", "moved_at": T0 + timedelta(hours=2), "kind": "promotion",
          "reason": "beats v1"},
         {"version": "1", "previous_version": "3", "moved_at": T0 + timedelta(hours=5), "kind": "rollback",
          "reason": "v3 misprices condos"}]


@pytest.mark.parametrize(("when", "version"), [
    (T0 - timedelta(seconds=1), None),  # before the first promotion
    (T0, "1"),  # a move takes effect at its own moment
    (T0 + timedelta(hours=2) - timedelta(microseconds=1), "1"),
    (T0 + timedelta(hours=3), "3"),
    (T0 + timedelta(days=30), "1"),  # after the rollback
])
def test_serving_at_is_the_last_move_at_or_before_the_moment(when, version):
    move = serving_at(MOVES, when)
    assert (move["version"] if move else None) == version


def test_serving_at_compares_moments_not_wall_clocks():
    tokyo = (T0 + timedelta(hours=3)).astimezone(timezone(timedelta(hours=9)))
    assert serving_at(MOVES, tokyo)["version"] == "3"


def test_serving_at_refuses_a_moment_without_a_time_zone():
    with pytest.raises(ValueError, match="no time zone"):
        serving_at(MOVES, datetime(2026, 12, 1, 12, 0))


def test_served_versions_counts_the_production_a_move_replaced():
    assert served_versions([{"version": "4", "previous_version": "2"}]) == ["2", "4"]
    assert served_versions(MOVES) == ["1", "3"]
    assert served_versions([]) == []


def test_a_job_driver_knows_its_submission_id_from_rays_job_config(monkeypatch):
    from tasador import ray_jobs

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert ray_jobs.current_submission_id() is None
    config = {"runtime_env": {}, "metadata": {"job_submission_id": "tasador-train-0123", "job_name": "x"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    assert ray_jobs.current_submission_id() == "tasador-train-0123"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{not json")
    assert ray_jobs.current_submission_id() is None
