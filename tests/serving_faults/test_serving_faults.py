"""Serving under faults, on a stack of its own with the Serve app (its scenarios kill replicas,
MLflow, PostgreSQL and Ray's dashboard): the scenarios of ``bench.serving_faults``, each under load
from a separate process, each within the bounds the bench reports. Then ``tasador down`` with a
backlog nobody has flushed: every answered prediction is in the database, and nothing the stack
started is left running or listening.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from bench import serving_faults
from cluster import postgres, ray_head, serve, stack
from tests.conftest import fresh_settings, own_stack

SCENARIOS = list(serving_faults.SCENARIOS)


@pytest.fixture(scope="module")
def serving_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving-faults")
    with own_stack(fresh_settings(tmp)) as s:
        workdir = Path(tmp) / "load"
        workdir.mkdir()
        yield serving_faults.prepare(s, workdir)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_serving_scenario_within_its_bounds(serving_stack, scenario):
    figures = scenario.run(serving_stack)
    shown = json.dumps({k: v for k, v in figures.items() if k != "lost_ids"})
    assert figures["within"], shown
    assert figures["requests"] > 100 and figures["log_duplicated"] == 0, shown


def test_tasador_down_writes_every_prediction_and_leaves_nothing_behind(serving_stack):
    """No flush on its own (one hour): the backlog of both replicas exists only in memory when the
    stack stops. ``stack.down`` shuts Serve down gracefully first: every answered id is logged. Then
    no process of the stack runs and nothing listens on its ports."""
    lab = serving_stack
    s = lab.s
    serve.deploy(s.replace(prediction_log_flush_s=3600.0))
    lab.wait_serving(lab.versions["good"])
    with lab.load("tasador-down", seconds=60) as result:
        serving_faults.wait_for(lambda: os.path.getsize(lab.workdir / "tasador-down.jsonl") > 100_000, 90)
    haproxy = ray_head.haproxy_pids(s)
    assert haproxy, "the Serve app runs behind HAProxy: its processes are found before the stop"
    ports = stack.ports(s)
    stack.down(s, discard=True)
    postgres.start(s)  # to count
    try:
        figures = lab.account(result, settle_s=0)
    finally:
        postgres.stop(s)
    shown = json.dumps({k: v for k, v in figures.items() if k != "lost_ids"})
    assert figures["answered"] > 500 and figures["log_lost"] == 0, shown
    left = [p.info for p in psutil.process_iter(["pid", "name", "cmdline"]) if mine(s, p.info["cmdline"] or [])
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port in ports]
    assert not listening, listening


def mine(s, cmdline: list[str]) -> bool:
    marks = (str(s.state_path), str(ray_head.temp_dir(s)), str(ray_head.haproxy_dir(s)))
    return any(mark in arg for arg in cmdline for mark in marks)
