"""The fault suite's own stack (PostgreSQL, MLflow, Ray head, data API): its scenarios kill the
PostgreSQL server and Ray drivers, which no other test's stack should feel."""

from __future__ import annotations

import os

import pytest

from cluster import stack
from tasador.ray_jobs import use_cluster_auth
from tests.conftest import fresh_settings


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fault-stack")
    s = fresh_settings(tmp)
    saved = os.environ.get("RAY_AUTH_TOKEN_PATH")
    try:
        stack.up(s, only=stack.TRAINING)
        use_cluster_auth(s)
        yield s
    finally:
        stack.down(s)
        # this stack's token must not be the session stack's (use_cluster_auth keeps a token already set)
        if saved is None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = saved
