"""The production alias as a node's replicas read it (``serve_app.model.NodeAliasRead``): one registry
read per node and period, shared through a file. No server: the registry is a counting function."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.model import NodeAliasRead, RegistryUnreachable


class CountingRegistry:
    """The registry's alias as ``NodeAliasRead`` sees it: counts reads, may fail, may be slow."""

    def __init__(self):
        self.reads, self.version, self.failure, self.delay_s = 0, "3", None, 0.0
        self._count = threading.Lock()

    def __call__(self) -> str:
        with self._count:
            self.reads += 1
        time.sleep(self.delay_s)
        if self.failure:
            raise self.failure
        return self.version


def test_a_nodes_replicas_share_one_registry_read_per_period(tmp_path):
    registry = CountingRegistry()
    path = tmp_path / "alias.json"
    replicas = [NodeAliasRead(path, registry, max_age_s=60) for _ in range(4)]
    assert [r() for r in replicas] == ["3"] * 4
    assert registry.reads == 1
    registry.version = "4"  # the alias moves: a replica that reads now sees it, and so do the others
    assert replicas[0](max_age_s=0) == "4" and registry.reads == 2
    assert [r() for r in replicas] == ["4"] * 4 and registry.reads == 2
    assert replicas[1](max_age_s=-1) == "4" and registry.reads == 3  # any reading is too old: a read


def test_replicas_whose_reading_is_stale_together_read_once(tmp_path):
    registry = CountingRegistry()
    registry.delay_s = 0.2  # a slow registry: the others wait on the lock, then take the fresh reading
    path = tmp_path / "alias.json"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: NodeAliasRead(path, registry, 60)(), range(8)))
    assert answers == ["3"] * 8 and registry.reads == 1


def test_a_failed_read_is_every_replicas_failure_until_the_next_read(tmp_path):
    registry = CountingRegistry()
    registry.failure = ConnectionError("registry refused the connection")
    path = tmp_path / "alias.json"
    first, second = NodeAliasRead(path, registry, 60), NodeAliasRead(path, registry, 60)
    for replica in (first, second):
        with pytest.raises(RegistryUnreachable, match="ConnectionError: registry refused the connection"):
            replica()
    assert registry.reads == 1
    registry.failure = None
    assert second(max_age_s=0) == "3" and first() == "3" and registry.reads == 2


def test_without_a_writable_directory_each_replica_reads_for_itself(tmp_path):
    registry = CountingRegistry()
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the directory should be
    replica = NodeAliasRead(blocked / "alias.json", registry, 60)
    assert replica() == "3" and replica() == "3" and registry.reads == 2
