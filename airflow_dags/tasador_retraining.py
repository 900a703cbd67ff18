"""DAG ``tasador_retraining``: one batch through the whole cycle per run, each step a Ray job.

    ingest -> process -> decide -> train -> promote
                                \\-> skip_training

Each task submits ``python -m jobs.<step>`` to the Ray cluster through Ray's Jobs REST API (the
cluster's token; no Ray provider package: the maintained ones target hosted platforms and
astro-provider-ray is deprecated), streams the job's logs into the task log, returns the job id and
the job's JSON summary (XCom), and fails when the job fails.

A task's Ray job id is derived from the DAG run and the task, not the try: a retried task (its
worker died, the task timed out, the job failed) re-attaches to the job its earlier try submitted,
waiting for it when it runs and reading its result when it succeeded; only after a failed job does
it submit the next attempt. Every step is idempotent, so that attempt finishes what the failed one
started.

When the data API is exhausted and no earlier run left work behind, ingest is skipped and so is the
rest: the run succeeds. Training and promotion run when the decide step reports work pending (this
batch's retrain, or a training or promotion a crashed run left). The schedule (live after
``tasador up`` unless ``TASADOR_AIRFLOW_PAUSED``), group and day come from the settings
(``TASADOR_*``), as every component's do.
"""

from __future__ import annotations

import datetime as dt
import sys

from airflow.sdk import dag, task

from tasador import faults
from tasador.ray_jobs import run_attached, submission_id
from tasador.settings import Settings

SETTINGS = Settings.load()


def run_step(step: str, *extra: str) -> dict:
    """Run the step's Ray job (once per DAG run and task, whatever the retries), stream its logs
    here, return what it did; raise if it failed."""
    from airflow.sdk import get_current_context

    settings = Settings.load()  # at run time: the worker's environment
    context = get_current_context()
    base_id = submission_id("tasador", context["dag"].dag_id, context["run_id"], context["ti"].task_id)

    def submitted(job_id: str) -> None:
        print(f"Ray job {job_id} submitted to {settings.ray_dashboard}: jobs.{step}", flush=True)
        faults.point("airflow.after_submit", settings)

    outcome = run_attached(settings, f"jobs.{step}", ["--group", str(settings.group), "--day", settings.day, *extra],
                           base_id, timeout_s=settings.airflow_job_timeout_s, on_submit=submitted,
                           echo=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    if outcome.status != "SUCCEEDED":
        raise RuntimeError(f"Ray job {outcome.job_id} (jobs.{step}) ended {outcome.status}")
    return {"job_id": outcome.job_id, "summary": outcome.summary}


@dag(dag_id="tasador_retraining", schedule=SETTINGS.dag_schedule,
     start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False, max_active_runs=1,
     is_paused_upon_creation=SETTINGS.airflow_paused,
     default_args={"retries": SETTINGS.airflow_retries,
                   "retry_delay": dt.timedelta(seconds=SETTINGS.airflow_retry_delay_s)},
     tags=["tasador", "ray"], doc_md=__doc__)
def tasador_retraining():
    @task
    def ingest() -> dict:
        from airflow.exceptions import AirflowSkipException

        result = run_step("ingest")
        if result["summary"].get("status") == "exhausted" and not result["summary"].get("work_pending"):
            raise AirflowSkipException(result["summary"].get("message", "the data API has no more batches"))
        return result

    @task
    def process(_ingested: dict) -> dict:
        return run_step("process")

    @task.branch
    def decide(_processed: dict) -> str:
        """The decide job, and the branch it implies: train when it reports work pending. One task, not
        a decide task and a branch task: every task costs the cycle a scheduler gap (about 1 s)."""
        from airflow.sdk import get_current_context

        decided = run_step("decide")
        get_current_context()["ti"].xcom_push(key="decided", value=decided)
        summary = decided["summary"]
        reason = next((d.get("retrain_reason") for d in reversed(summary.get("decisions") or [])), "")
        print(f"retrain: {summary.get('retrain')} ({reason}); pending: {summary.get('pending')}")
        return "train" if summary.get("work_pending") else "skip_training"

    @task
    def train() -> dict:
        return run_step("train")

    @task
    def promote(_trained: dict) -> dict:
        return run_step("promote")

    @task
    def skip_training() -> str:
        return "no retraining: see the decide task's reason"

    branch = decide(process(ingest()))
    trained = train()
    branch >> [trained, skip_training()]
    promote(trained)


tasador_retraining()
