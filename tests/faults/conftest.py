"""The fault suite's own stack (PostgreSQL, MLflow, Ray head, data API): its scenarios kill the
PostgreSQL server and Ray drivers, which no other test's stack should feel."""

from __future__ import annotations

import pytest

from cluster import stack
from tasador.ray_jobs import use_cluster_auth
from tests.conftest import fresh_settings


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fault-stack")
    s = fresh_settings(tmp)
    try:
        stack.up(s, only=stack.TRAINING)
        use_cluster_auth(s)
        yield s
    finally:
        stack.down(s)
