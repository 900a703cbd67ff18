"""The demo's live progress of an Airflow run (cli.demo.StepProgress), fed the REST API's answers."""

from __future__ import annotations

import datetime as dt

from cli.demo import StepProgress
from tasador.settings import Settings


def run(*tasks: tuple[str, str | None, str | None]) -> dict:
    return {"state": "running", "tasks": [{"task_id": t, "state": s, "start_date": d} for t, s, d in tasks]}


def test_a_line_per_change_of_state_and_a_beat_while_a_step_runs(capsys):
    progress = StepProgress(Settings.load(env={}), beat_s=0)
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=75)).isoformat()
    progress(run(("ingest", "running", started), ("process", None, None)))
    progress(run(("ingest", "running", started), ("process", None, None)))  # unchanged: a beat
    progress(run(("ingest", "success", started), ("process", "running", started)))
    lines = capsys.readouterr().out.splitlines()
    assert "ingest" in lines[0] and lines[0].endswith("running")
    assert "ingest" in lines[1] and "running for 1:1" in lines[1]  # 75 s and a little more
    assert lines[2].split()[1:] == ["ingest", "success"] and lines[3].split()[1:] == ["process", "running"]
    assert len(lines) == 4  # a step that has not started says nothing


def test_a_queued_run_says_so_once(capsys):
    progress = StepProgress(Settings.load(env={}), beat_s=0)
    for _ in range(3):
        progress({"state": "queued", "tasks": []})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "queued" in lines[0] and "one run of the DAG at a time" in lines[0]


def test_a_run_queued_for_a_moment_says_nothing(capsys):
    progress = StepProgress(Settings.load(env={}), beat_s=20)
    progress({"state": "queued", "tasks": []})
    assert capsys.readouterr().out == ""


def test_the_runs_that_go_before_a_triggered_run_are_followed_first():
    from cluster.airflow import ahead_of

    def dag_run(run_id: str, state: str, run_after: str) -> dict:
        return {"dag_run_id": run_id, "state": state, "run_after": run_after}

    scheduled = dag_run("scheduled__2026-12-03T20:00:00+00:00", "running", "2026-12-03T20:00:00Z")
    earlier = dag_run("demo__1", "queued", "2026-12-03T20:00:00.5Z")  # a string compare would put it first
    ours = dag_run("demo__2", "queued", "2026-12-03T20:31:03.515499Z")
    later = dag_run("demo__3", "queued", "2026-12-03T20:40:00Z")
    assert [r["run_id"] for r in ahead_of([ours, later, earlier, scheduled], "demo__2")] == [
        scheduled["dag_run_id"], "demo__1"]
    assert ahead_of([{**ours, "state": "running"}, later], "demo__2") == []  # it runs: nothing before it
    assert ahead_of([scheduled, later], "demo__2") == []  # not active (ended): nothing to wait for
