"""The Airflow DAG against the real stack: Airflow 3 from .venv-airflow with its metadata in the
session's PostgreSQL, every task submitting a real Ray job to the session's Ray cluster.

The six-batch run uses its own group and registered-model name, so its versions and alias are its own;
its retrain minimum is above every later batch's size, so the first batch trains (no production model)
and the drifted ones are decided "too small to retrain": both branches run, and CI trains once.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg2
import pytest

from cluster import airflow
from data_api.plan import PLAN
from tasador import decisions, registry

pytestmark = pytest.mark.skipif(not airflow.available(), reason="Airflow is not installed (.venv-airflow)")
GROUP = 66


@pytest.fixture(scope="module")
def af(settings):
    s = settings.replace(group=GROUP, day="Monday", model_name="tasador-airflow-test", airflow_retries=0,
                         retrain_min_rows=1_000_000)
    airflow.migrate(s)
    return s


def test_the_dag_imports_with_its_tasks(af):
    errors = airflow.airflow(af, "dags", "list-import-errors", "-o", "json")
    assert errors.returncode == 0, errors.stderr[-2000:]
    assert json.loads(errors.stdout.strip().splitlines()[-1]) == []  # the last line: the JSON list of errors
    tasks = airflow.airflow(af, "tasks", "list", airflow.DAG_ID)
    assert set(tasks.stdout.split()) >= {"ingest", "process", "decide", "retrain_or_skip", "train", "promote",
                                         "skip_training"}


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


def test_dags_test_runs_every_batch_through_the_whole_cycle(af):
    runs = []
    for _ in range(len(PLAN) + 1):  # six batches, then one run that finds the API exhausted
        state, output = airflow.dags_test(af, timeout_s=1800)
        assert state == "success", output[-4000:]
        runs.append(output)
    report = decisions.batch_report(af, GROUP, "Monday")
    assert [r["batch_number"] for r in report] == list(range(1, len(PLAN) + 1))
    assert all(r["retrain_reason"] for r in report)  # every batch decided, with its reason
    assert "AirflowSkipException" in runs[-1] or "no more batches" in runs[-1]
    trained = [r for r in report if r["version"]]
    assert [r["batch_number"] for r in trained] == [1] and trained[0]["promoted"] and trained[0]["promotion_reason"]
    assert all(not r["retrain"] and r["version"] is None for r in report[1:])
    assert any(r["drift_found"] for r in report[1:])  # drift found, and the reason says why no retrain
    assert "skip_training" in "".join(runs[1:-1]) and "promote" in runs[0]
    client = registry.mlflow_client(af)
    versions = client.search_model_versions(f"name = '{af.model_name}'")
    assert sorted(int(v.version) for v in versions) == sorted(int(r["version"]) for r in trained)
    production = registry.production(af)
    assert production.version == max((r for r in trained if r["promoted"]), key=lambda r: r["batch_number"])["version"]
    conn = psycopg2.connect(af.raw_db)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM batches WHERE group_number = %s AND day = 'Monday'", (GROUP,))
        assert cur.fetchone()[0] == len(PLAN)
    conn.close()
