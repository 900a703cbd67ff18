"""Every pipeline fault scenario of ``bench.faults`` on real components (PostgreSQL, Ray jobs, the data
API behind a fault proxy, MLflow): after the fault and the re-runs, nothing lost, nothing written twice,
no decision dropped, one version per training, the alias where the decisions say."""

from __future__ import annotations

import pytest

from bench import faults

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("name", [s.name for s in faults.SCENARIOS if not s.needs_airflow])  # test_airflow_faults
def test_scenario_loses_and_duplicates_nothing(fault_stack, tmp_path, name):
    row = faults.run_scenario(fault_stack, faults.BY_NAME[name], tmp_path)
    assert row["problems"] == []
    assert (row["rows_lost"], row["rows_duplicated"], row["decisions_dropped"], row["extra_versions"]) == (0, 0, 0, 0)
    assert row["statuses"][-1] == "SUCCEEDED"
    if faults.BY_NAME[name].trains:
        assert row["production_version"] is not None
