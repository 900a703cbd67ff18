"""Distributed XGBoost (Ray Train's XGBoostTrainer) on a real two-node Ray cluster on this machine:
a head and a worker node with one CPU each, so the two training workers must sit on different nodes."""

from __future__ import annotations

import shutil

import pytest
import requests

from cluster import processes, ray_head
from tasador import ray_jobs, registry


@pytest.fixture(scope="module")
def two_nodes(settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twonodes")
    s = settings.replace(state_dir=str(tmp / "state"), ray_gcs_port=processes.free_block(700),
                         ray_dashboard_port=processes.free_port(), ray_client_port=processes.free_port(),
                         ray_metrics_port=processes.free_port(), ray_num_cpus=1, xgb_distributed=True, xgb_workers=2)
    s.state_path.mkdir(parents=True)
    shutil.copy(ray_jobs.token_path(settings), ray_jobs.token_path(s))  # clients here hold the session's token
    head = ray_head.start(s)
    worker = None
    try:
        worker = ray_head.start_worker(s, 0, num_cpus=1)
        yield s
    finally:
        if worker:
            processes.stop_pid(worker)
        processes.stop_pid(head)


def test_xgboost_trains_across_two_nodes(two_nodes, settings):
    group, day = 88, "Monday"  # batches the training tests ingested and processed already
    outcome = ray_jobs.run(two_nodes, "jobs.train", ["--group", str(group), "--day", day, "--force"], timeout_s=900)
    assert outcome.status == "SUCCEEDED", outcome.logs[-4000:]
    summary = outcome.summary
    assert summary["xgboost_distributed"] is True and not summary["trials_failed"]
    assert summary["families"]["xgboost"]["finished"]
    headers = {"Authorization": f"Bearer {ray_jobs.token_path(two_nodes).read_text().strip()}"}
    actors = requests.get(f"{two_nodes.ray_dashboard}/api/v0/actors", params={"limit": 1000, "detail": 1},
                          headers=headers, timeout=30).json()["data"]["result"]["result"]
    train_nodes = {a["node_id"] for a in actors if "TrainWorker" in a.get("class_name", "")}
    assert len(train_nodes) == 2, f"training workers ran on {len(train_nodes)} node(s)"
    client = registry.mlflow_client(settings)
    runs = client.search_runs([client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert sum(1 for r in runs if r.data.tags.get("distributed") == "true") == 2
