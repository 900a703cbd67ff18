"""``cluster/ray_supervisor.py`` without a cluster: which dead daemons it restarts and which it leaves to
Ray's ``--block`` loop (the live kill is ``tests/serving_faults``' dashboard scenario)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

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
