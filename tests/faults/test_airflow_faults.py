"""Airflow's real scheduler (``cluster/airflow_components.py``, LocalExecutor) runs the cycle on a short schedule,
and a task that fails after submitting its Ray job is retried by Airflow and re-attaches to that job:
one Ray job per step of the run, never two. Two batches go through ``jobs.pipeline`` Ray jobs (while
the schedule stays live), then the main job's path: the demo triggers one run per batch through the
same scheduler until the API is exhausted, as ``tasador demo`` through Typer's runner on the stack (its
``up`` starts what the fault stack lacks: Serve, Prometheus, the Dash app). Every one of the six batches
is decided with its reason."""

from __future__ import annotations

import json
import re
import stat

import pytest
import requests
from typer.testing import CliRunner

from bench import faults
from bench.faults import api_batches
from cli.main import app
from cluster import airflow, processes, stack
from tasador import audit, ray_jobs

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")]


def test_the_scheduler_runs_the_cycle_and_a_retried_task_reattaches(scheduled):
    s = scheduled
    pid = stack.up(s, only=("airflow",))["airflow"]["pid"]  # the schedule goes live: the DAG is unpaused
    try:
        first = faults.first_scheduled_run(s)
        listening = processes.listening_sockets([pid])  # a task has run: every component is up
        assert {x["port"] for x in listening} >= {s.airflow_port}
        assert [x for x in listening if not x["loopback"]] == []  # no log server on every interface
        check_the_login(s)
        for _ in range(2):  # batches 2-3 the way `ray job submit` users run them: half an Airflow run's CI time
            done = ray_jobs.run(s.replace(fault_point=""), "jobs.pipeline", ["--group", str(s.group), "--day", s.day])
            assert done.status == "SUCCEEDED", done.logs[-3000:]
        check_the_demo(s)  # the main job's path: a triggered run per batch until one ingests nothing
    finally:
        processes.stop_pid(pid)
        processes.forget(s.state_path, "airflow")
    faults.settle_after_airflow(s)
    jobs = faults.jobs_of_run(s, first["run_id"])
    assert [j.rsplit("-", 2)[-2] for j in jobs] == ["decide", "ingest", "process", "promote", "train"], jobs
    check_every_batch(s)


def check_the_demo(s) -> None:
    """``tasador demo`` as a user types it, on the stack the schedule already runs: live progress per
    step, the closing table with every batch, the URLs with where each login is."""
    shown = CliRunner().invoke(app, ["demo"], env=s.as_env(), catch_exceptions=False)
    assert shown.exit_code == 0, shown.output[-4000:]
    out = shown.output
    assert "Airflow run demo__" in out, out[-4000:]
    for step in ("ingest", "process", "decide"):
        assert re.search(rf"^  \d+:\d\d  {step} +success$", out, re.M), f"no progress line for {step}"
    table = [line for line in out.splitlines() if re.match(r"^ ?\d \s+[\d,]+ ", line)]
    assert [int(line.split()[0]) for line in table] == [1, 2, 3, 4, 5, 6], out[-4000:]
    assert "Raw rows ingested:" in out and f"user {airflow.AIRFLOW_USER}, password in" in out


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
