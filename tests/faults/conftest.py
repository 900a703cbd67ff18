"""The pipeline fault suite's own stack (PostgreSQL, MLflow, Ray head, data API): its scenarios kill the
PostgreSQL server and Ray drivers, which no other test's stack should feel. It stops when this package's
tests end, before the serving faults (``tests/serving_faults/``) measure on a stack of their own."""

from __future__ import annotations

import pytest

from bench import faults
from tests.conftest import fresh_settings, own_stack

AIRFLOW_GROUP = 4242


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    with own_stack(fresh_settings(tmp_path_factory.mktemp("fault-stack"))) as s:
        yield s


@pytest.fixture(scope="package")
def scheduled(fault_stack, tmp_path_factory):
    """The settings of an Airflow instance of the fault stack's own, on a one-minute schedule whose first
    task to submit a Ray job fails right after (``bench.faults.with_scheduler``). Its metadata database
    is migrated once, by the first module that starts or runs it. A component of the stack
    (``airflow_server``): ``tasador demo`` on it goes through the scheduler."""
    return faults.with_scheduler(fault_stack.replace(group=AIRFLOW_GROUP, day="Monday", model_name="faults-airflow",
                                                     airflow_server=True,
                                                     train_families="ridge",
                                                     fault_dir=str(tmp_path_factory.mktemp("airflow-faults"))))
