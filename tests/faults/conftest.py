"""The pipeline fault suite's own stack (PostgreSQL, MLflow, Ray head, data API): its scenarios kill the
PostgreSQL server and Ray drivers, which no other test's stack should feel. It stops when this package's
tests end, before the serving faults (``tests/serving_faults/``) measure on a stack of their own."""

from __future__ import annotations

import pytest

from tests.conftest import fresh_settings, own_stack


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    with own_stack(fresh_settings(tmp_path_factory.mktemp("fault-stack"))) as s:
        yield s
