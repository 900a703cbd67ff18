"""Airflow's real scheduler (``cluster/airflow_components.py``, LocalExecutor) runs the cycle on a short schedule,
and a task that fails after submitting its Ray job is retried by Airflow and re-attaches to that job:
one Ray job per step of the run, never two. Two batches go through ``jobs.pipeline`` Ray jobs (while
the schedule stays live), then the main job's path: the demo triggers one run per batch through the
same scheduler until the API is exhausted. Every one of the six batches is decided with its reason."""

from __future__ import annotations

import json
import stat

import pytest
import requests

from bench import faults
from bench.faults import api_batches
from cluster import airflow, processes
from tasador import audit, ray_jobs

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")]


def test_the_scheduler_runs_the_cycle_and_a_retried_task_reattaches(scheduled):
    from cli import demo

    s = scheduled
    pid = airflow.start(s)  # the schedule goes live: the DAG is unpaused
    try:
        first = faults.first_scheduled_run(s)
        listening = processes.listening_sockets([pid])  # a task has run: every component is up
        assert {x["port"] for x in listening} >= {s.airflow_port}
        assert [x for x in listening if not x["loopback"]] == []  # no log server on every interface
        check_the_login(s)
        for _ in range(2):  # batches 2-3 the way `ray job submit` users run them: half an Airflow run's CI time
            done = ray_jobs.run(s.replace(fault_point=""), "jobs.pipeline", ["--group", str(s.group), "--day", s.day])
            assert done.status == "SUCCEEDED", done.logs[-3000:]
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

    report = decisions.batch_report(s, s.group, "Monday")
    assert [r["batch_number"] for r in report] == list(range(1, len(PLAN) + 1))
    assert all(r["retrain_reason"] for r in report)  # every batch decided, with its reason
    assert any(r["drift_found"] for r in report[1:]) and report[0]["promoted"]
    accounts = audit.audit(s, s.group, "Monday", api_batches(s.data_api, s.group, "Monday", len(PLAN)))
    assert accounts["problems"] == [] and accounts["production_version"]
    assert accounts["trainings"] >= 1 and accounts["decisions_dropped"] == 0
