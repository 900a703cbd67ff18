"""Airflow's real scheduler (``cluster/airflow_components.py``, LocalExecutor) runs the cycle on a short schedule,
and a task that fails after submitting its Ray job is retried by Airflow and re-attaches to that job:
one Ray job per step of the run, never two. Then the main job's path: the demo triggers one run per
batch through the same scheduler until the API is exhausted, every batch decided with its reason."""

from __future__ import annotations

import json
import stat

import pytest
import requests

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
        check_the_login(s)
        demo.through_airflow(s)  # the main job's path: a triggered run per batch until one ingests nothing
    finally:
        processes.stop_pid(pid)
    faults.settle_after_airflow(s)
    jobs = faults.jobs_of_run(s, first["run_id"])
    assert [j.rsplit("-", 2)[-2] for j in jobs] == ["decide", "ingest", "process", "promote", "train"], jobs
    check_every_batch(s)


def check_the_login(s) -> None:
    """The UI/API login is the stack's own 0600 file (README): its password gets a token, a wrong one
    is refused, and Airflow neither generated a password file of its own nor logged the password."""
    path = airflow.login_file(s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = json.loads(path.read_text())[airflow.AIRFLOW_USER]
    url = f"http://127.0.0.1:{s.airflow_port}/auth/token"
    good = requests.post(url, json={"username": airflow.AIRFLOW_USER, "password": password}, timeout=30)
    assert good.status_code == 201 and good.json()["access_token"]
    assert requests.post(url, json={"username": airflow.AIRFLOW_USER, "password": password[::-1]},
                         timeout=30).status_code == 401
    home = s.state_path / s.airflow_instance
    assert not list(home.glob("simple_auth_manager_passwords*"))
    written = [p for d in (s.state_path / "logs", home) for p in d.rglob("*") if p.is_file()]
    assert written and not [p for p in written if password.encode() in p.read_bytes()]


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
