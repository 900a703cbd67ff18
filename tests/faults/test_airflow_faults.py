"""Airflow's real scheduler (``cluster/airflow_components.py``, LocalExecutor) runs the cycle on a short schedule,
and a task that fails after submitting its Ray job is retried by Airflow and re-attaches to that job:
one Ray job per step of the run, never two. Then the main job's path: the demo triggers one run per
batch through the same scheduler until the API is exhausted, every batch decided with its reason."""

from __future__ import annotations

import pytest

from bench import faults
from bench.faults import api_batches
from cluster import airflow, processes
from tasador import audit

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")]
GROUP = 4242


def test_the_scheduler_runs_the_cycle_and_a_retried_task_reattaches(fault_stack, tmp_path):
    from cli import demo

    s = faults.with_scheduler(fault_stack.replace(group=GROUP, day="Monday", model_name="faults-airflow",
                                                  train_families="ridge", fault_dir=str(tmp_path)))
    pid = airflow.start(s)  # the schedule goes live: the DAG is unpaused
    try:
        first = faults.first_scheduled_run(s)
        listening = processes.listening_sockets([pid])  # a task has run: every component is up
        assert {x["port"] for x in listening} >= {s.airflow_port}
        assert [x for x in listening if not x["loopback"]] == []  # no log server on every interface
        demo.through_airflow(s)  # the main job's path: a triggered run per batch until one ingests nothing
    finally:
        processes.stop_pid(pid)
    faults.settle_after_airflow(s)
    jobs = faults.jobs_of_run(s, first["run_id"])
    assert [j.rsplit("-", 2)[-2] for j in jobs] == ["decide", "ingest", "process", "promote", "train"], jobs
    check_every_batch(s)


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
