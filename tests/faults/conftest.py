"""The fault suite's own stack (PostgreSQL, MLflow, Ray head, data API): its scenarios kill the
PostgreSQL server and Ray drivers, which no other test's stack should feel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cluster import stack
from tasador.ray_jobs import use_cluster_auth
from tasador.settings import Settings
from tests.conftest import fresh_settings


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


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    with own_stack(fresh_settings(tmp_path_factory.mktemp("fault-stack"))) as s:
        yield s
