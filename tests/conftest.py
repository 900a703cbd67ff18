"""Session fixtures: a real local stack (PostgreSQL server, Ray head with token auth, data API over
HTTP) in a temporary state dir, on free loopback ports, started by the same code as ``tasador up``."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from cluster import postgres, processes, stack
from tasador import db
from tasador.ray_jobs import use_cluster_auth
from tasador.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "data" / "realtor-samples"
# the real-format samples live beside the repository in this workplace only (../shared/); elsewhere
# the tests over them skip, saying why
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"the real-format samples are not at {SAMPLES}")
TEST_SCALE = 0.02  # every data API batch at 2%: 21,698 rows over the six batches


STACK_FIXTURES = {"settings", "fault_stack", "serving_stack"}


def pytest_collection_modifyitems(items):
    """``-m "not stack"`` selects the fast layer: a test that needs a running stack (directly or
    through a fixture) is marked ``stack``."""
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def fresh_settings(tmp: Path, **changes) -> Settings:
    # at 2% of the plan the mixed $300k-$500k batch has 6,414 rows: the minimum scales down with it
    return stack.isolated_settings(str(tmp / "state"), data_api_scale=TEST_SCALE, data_api_backoff_s=0.2,
                                   retrain_min_rows=1_000, airflow_server=False, **changes)


@contextmanager
def own_stack(s: Settings) -> Iterator[Settings]:
    """A stack of the fault suite's own (training components) with this process's Ray clients on its
    token, put back afterwards: this stack's token must not become the session stack's
    (``use_cluster_auth`` keeps a token already set)."""
    saved = os.environ.get("RAY_AUTH_TOKEN_PATH")
    try:
        stack.up(s, only=stack.TRAINING)
        use_cluster_auth(s)
        yield s
    finally:
        stack.down(s, discard=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = saved


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    tmp = tmp_path_factory.mktemp("stack")
    s = fresh_settings(tmp)
    try:
        stack.up(s)
        use_cluster_auth(s)
        yield s
    finally:
        stack.down(s, discard=True)


def own_data(settings: Settings, name: str) -> Settings:
    """``settings`` with raw and clean databases, a registered model and an MLflow experiment of ``name``'s
    own, on the session's stack: what one test module ingests, trains and promotes is invisible to the
    others, whatever order they run in."""
    for database in (f"raw_{name}", f"clean_{name}"):
        postgres.create_database(settings, database)
    own = settings.replace(raw_db_url=settings.pg_url(f"raw_{name}"), clean_db_url=settings.pg_url(f"clean_{name}"),
                           model_name=f"tasador-price-{name}", mlflow_experiment=f"tasador-{name}")
    db.create_all_tables(own)
    return own


def module_data():
    """A module's ``settings = module_data()``: the session's stack with this module's own data (own_data)."""

    @pytest.fixture(scope="module", name="settings")
    def settings_with_own_data(settings, request) -> Settings:
        return own_data(settings, request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))

    return settings_with_own_data


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
    return {name: info["pid"] for name, info in processes.load_registry(s.state_path).items() if info.get("pid")}
