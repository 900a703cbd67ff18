"""``cluster/ray_supervisor.py`` without a cluster: which dead daemons it restarts and which it leaves to
Ray's ``--block`` loop (the live kill is ``tests/serving_faults``' dashboard scenario)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from ray._private import ray_constants

from cluster import ray_supervisor
from cluster.ray_supervisor import DASHBOARD, dead_processes_restarting_dashboard


class FakeNode:
    def __init__(self, dead: list):
        self.dead, self.started = dead, 0
        self.all_processes = {kind: [p] for kind, p in dead}
        self._ray_params = SimpleNamespace(include_dashboard=True)

    def start_api_server(self, include_dashboard, raise_on_failure):
        self.started += 1


@pytest.fixture()
def node(monkeypatch):
    def make(*dead):
        fake = FakeNode([(kind, SimpleNamespace(returncode=code)) for kind, code in dead])
        monkeypatch.setattr(ray_supervisor, "_ray_dead_processes", lambda n: n.dead)
        return fake
    return make


def test_a_dashboard_that_died_is_started_again_and_not_reported(node):
    fake = node((DASHBOARD, -signal.SIGKILL))
    assert dead_processes_restarting_dashboard(fake) == [] and fake.started == 1
    assert DASHBOARD not in fake.all_processes


@pytest.mark.parametrize("code", [0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM])
def test_a_dashboard_stopped_deliberately_is_left_to_ray(node, code):
    fake = node((DASHBOARD, code))
    assert [p.returncode for _, p in dead_processes_restarting_dashboard(fake)] == [code]
    assert fake.started == 0


def test_a_dead_raylet_still_ends_the_node(node):
    fake = node(("raylet", -signal.SIGKILL), (DASHBOARD, 1))
    assert [kind for kind, _ in dead_processes_restarting_dashboard(fake)] == ["raylet"] and fake.started == 1



def test_the_dashboard_agent_is_put_at_the_lowest_priority_every_thread_of_it():
    """A real process tree: a stand-in raylet whose child carries the agent's command line (Ray's agent is
    ``dashboard/agent.py``) and runs a second thread; the raylet's other child stays as it was."""
    agent_code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    tree = ("import subprocess, sys, time\n"
            f"kids = [subprocess.Popen([sys.executable, '-c', {agent_code!r}, '/ray/dashboard/agent.py']),\n"
            "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'other'])]\n"
            "print(kids[0].pid, kids[1].pid, flush=True)\n"
            "time.sleep(60)\n")
    raylet = subprocess.Popen([sys.executable, "-c", tree], stdout=subprocess.PIPE, text=True)
    agent, other = map(int, raylet.stdout.readline().split())
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{agent}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        node = SimpleNamespace(all_processes={ray_constants.PROCESS_TYPE_RAYLET: [SimpleNamespace(process=raylet)]})
        lower = ray_supervisor.AgentPriority()
        lower(node)
        assert lower.pid == agent
        threads = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{agent}/task")}
        assert len(threads) == 2 and set(threads.values()) == {ray_supervisor.AGENT_NICENESS}
        assert os.getpriority(os.PRIO_PROCESS, other) == os.getpriority(os.PRIO_PROCESS, raylet.pid)
    finally:
        for pid in (agent, other, raylet.pid):  # the processes this test started, by PID
            os.kill(pid, 9)
        raylet.wait()
