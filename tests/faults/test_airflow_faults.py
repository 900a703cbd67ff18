"""Airflow's real scheduler (``airflow standalone``, LocalExecutor) runs the cycle on a short schedule,
and a task that fails after submitting its Ray job is retried by Airflow and re-attaches to that job:
one Ray job per step of the run, never two. Then the main job's path: the demo triggers one run per
batch through the same scheduler until the API is exhausted, every batch decided with its reason."""

from __future__ import annotations

import json
import time

import pytest

from bench.faults import api_batches
from cluster import airflow, processes
from tasador import audit, ray_jobs

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")]
GROUP = 4242


def scheduled_runs(s) -> list[dict]:
    listed = airflow.airflow(s, "dags", "list-runs", airflow.DAG_ID, "-o", "json")
    if listed.returncode != 0:
        return []
    return [r for r in json.loads(listed.stdout.strip().splitlines()[-1] or "[]")
            if r["run_id"].startswith("scheduled__")]


def test_the_scheduler_runs_the_cycle_and_a_retried_task_reattaches(fault_stack, tmp_path):
    from cluster import demo

    s = fault_stack.replace(group=GROUP, day="Monday", model_name="faults-airflow", train_families="ridge",
                            airflow_instance="airflow_scheduler_test", airflow_port=processes.free_port(),
                            airflow_schedule="* * * * *", airflow_retries=1, airflow_retry_delay_s=1,
                            fault_point="airflow.after_submit", fault_action="raise", fault_dir=str(tmp_path))
    pid = airflow.start(s)  # the schedule goes live: the DAG is unpaused
    try:
        deadline = time.monotonic() + 900
        while not any(r["state"] == "success" for r in scheduled_runs(s)):
            assert not [r for r in scheduled_runs(s) if r["state"] == "failed"], scheduled_runs(s)
            assert time.monotonic() < deadline, "no scheduled run succeeded in 15 minutes"
            time.sleep(3)
        first = scheduled_runs(s)[-1]  # the oldest: list-runs puts the newest first
        demo.through_airflow(s)  # the main job's path: a triggered run per batch until one ingests nothing
        airflow.set_paused(s, True)
        while any(r["state"] == "running" for r in scheduled_runs(s)):  # a scheduled run under way ends
            assert time.monotonic() < deadline + 900, "a scheduled run did not end"
            time.sleep(3)
        assert all(r["state"] in ("success", "queued") for r in scheduled_runs(s)), scheduled_runs(s)
    finally:
        processes.stop_pid(pid)
    check_one_job_per_step(s, first, tmp_path)
    check_every_batch(s)


def check_one_job_per_step(s, run: dict, tmp_path) -> None:
    # the first try of ingest failed after submitting; its retry re-attached to that job
    assert (tmp_path / "airflow.after_submit.fired").exists()
    jobs = ray_jobs.JobsApi(s).list()
    base = ray_jobs.submission_id("tasador", airflow.DAG_ID, run["run_id"])
    mine = sorted(j["submission_id"] for j in jobs if (j.get("submission_id") or "").startswith(base))
    assert [j.rsplit("-", 2)[-2] for j in mine] == ["decide", "ingest", "process", "promote", "train"], mine
    assert all(j.endswith("-a1") for j in mine), mine
    assert all(j["status"] == "SUCCEEDED" for j in jobs if airflow.DAG_ID in (j.get("submission_id") or ""))


def check_every_batch(s) -> None:
    from data_api.plan import PLAN
    from tasador import decisions

    report = decisions.batch_report(s, GROUP, "Monday")
    assert [r["batch_number"] for r in report] == list(range(1, len(PLAN) + 1))
    assert all(r["retrain_reason"] for r in report)  # every batch decided, with its reason
    assert any(r["drift_found"] for r in report[1:]) and report[0]["promoted"]
    accounts = audit.audit(s, GROUP, "Monday", api_batches(s.data_api, GROUP, "Monday", len(PLAN)))
    assert accounts["problems"] == [] and accounts["production_version"]
    assert accounts["trainings"] >= 1 and accounts["decisions_dropped"] == 0
