"""The Airflow DAG against a real stack: Airflow 3 from .venv-airflow, every task submitting a real Ray
job. It runs on the fault suite's Airflow instance (``scheduled``), after the scheduler's test has
migrated and used it: a metadata database of its own cost a CI run 40 s of ``airflow db migrate``.
It runs after that test, because its failed Ray jobs would spoil that test's count of the DAG's jobs.

The whole cycle over every batch, through the real scheduler (scheduled and triggered runs, a retried
task re-attaching to its Ray job), is ``test_airflow_faults.py``.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from cluster import airflow

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")]
GROUP = 66


@pytest.fixture(scope="module")
def af(scheduled):
    s = scheduled.replace(group=GROUP, model_name="tasador-airflow-test", airflow_retries=0, fault_point="",
                          retrain_min_rows=1_000_000)
    airflow.migrate(s)  # a no-op after the scheduler's test (a few seconds); the whole migration run alone
    return s


def test_the_dag_imports_with_its_tasks(af):
    errors = airflow.airflow(af, "dags", "list-import-errors", "-o", "json")
    assert errors.returncode == 0, errors.stderr[-2000:]
    assert json.loads(errors.stdout.strip().splitlines()[-1]) == []  # the last line: the JSON list of errors
    tasks = airflow.airflow(af, "tasks", "list", airflow.DAG_ID)
    assert set(tasks.stdout.split()) >= {"ingest", "process", "decide", "train", "promote",
                                         "skip_training"}


def test_tasador_airflow_runs_the_stacks_airflow_with_its_arguments_and_exit_code(af):
    runner = CliRunner()
    listed = runner.invoke(app, ["airflow", "tasks", "list", airflow.DAG_ID], env=af.as_env())
    assert listed.exit_code == 0, listed.output[-2000:]
    assert {"ingest", "process", "decide", "train", "promote"} <= set(listed.stdout.split())
    assert runner.invoke(app, ["airflow", "tasks", "list", "no_such_dag"], env=af.as_env()).exit_code != 0


def test_a_failed_ray_job_fails_its_task(af):
    broken = af.replace(data_api_url="http://127.0.0.1:9/nothing-listens", data_api_retries=0)
    done = airflow.airflow(broken, "tasks", "test", airflow.DAG_ID, "ingest",
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    output = done.stdout + done.stderr
    assert "ended FAILED" in output and "new_state=failed" in output, output[-3000:]


def test_a_run_whose_job_fails_is_a_failed_run(af):
    state, output = airflow.dags_test(af.replace(data_api_url="http://127.0.0.1:9/nothing-listens",
                                                 data_api_retries=0), timeout_s=600)
    assert state == "failed" and "ended FAILED" in output
