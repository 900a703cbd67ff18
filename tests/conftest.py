"""Session fixtures: a real local stack (PostgreSQL server, Ray head with token auth, data API over
HTTP) in a temporary state dir, on free loopback ports, started by the same code as ``tasador up``."""

from __future__ import annotations

import os
import random
import socket
import zlib
from pathlib import Path

import psycopg2
import pytest

from cluster import processes, stack
from tasador.ray_jobs import use_cluster_auth
from tasador.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "data" / "realtor-samples"
TEST_SCALE = 0.02  # every data API batch at 2%: 21,698 rows over the six batches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_block(size: int) -> int:
    """The first port of ``size`` consecutive free ports (Ray's head uses a block)."""
    for _ in range(200):
        base = random.randrange(21000, 45000)
        try:
            socks = []
            for p in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def fresh_settings(tmp: Path, **changes) -> Settings:
    base = dict(state_dir=str(tmp / "state"), pg_port=free_port(), data_api_port=free_port(),
                ray_gcs_port=free_block(210), ray_dashboard_port=free_port(), ray_client_port=free_port(),
                ray_metrics_port=free_port(), data_api_scale=TEST_SCALE, data_api_backoff_s=0.2)
    base.update(changes)
    return Settings(**base)


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    tmp = tmp_path_factory.mktemp("stack")
    os.chmod(tmp, 0o755)  # the postgres user must reach its data dir
    for parent in tmp.parents:
        if str(parent).startswith("/tmp/pytest"):
            os.chmod(parent, 0o755)
    s = fresh_settings(tmp)
    # the jobs this session submits read the same settings
    os.environ.update(s.as_env())
    try:
        stack.up(s)
        use_cluster_auth(s)
        yield s
    finally:
        stack.down(s)


@pytest.fixture()
def raw(settings):
    conn = psycopg2.connect(settings.raw_db)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture()
def group(request) -> int:
    """A data API group number of this test's own, so its batch counter starts at zero."""
    return 1000 + zlib.crc32(request.node.nodeid.encode()) % 900_000


def registry_pids(s: Settings) -> dict[str, int]:
    return {name: info["pid"] for name, info in processes.load_registry(s.state_path).items()}
