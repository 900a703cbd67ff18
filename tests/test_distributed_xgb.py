"""Distributed XGBoost (Ray Train's XGBoostTrainer) on a real two-node Ray cluster on this machine:
a head and a worker node; the two training workers are spread, one per node. (About a minute: it
took five while the workers reported to Ray Train after every boosting round.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cluster import processes, ray_head
from tasador import distributed_xgb, ray_jobs, training
from tasador.models import price_metrics, trials
from tasador.schema import FEATURES
from tests.conftest import module_data

settings = module_data()  # this module's own databases, model and experiment


@pytest.fixture(scope="module")
def two_nodes(settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twonodes")
    s = settings.replace(state_dir=str(tmp / "state"), ray_gcs_port=processes.free_block(3 * ray_head.PORT_BLOCK),
                         ray_dashboard_port=processes.free_port(), ray_client_port=processes.free_port(),
                         ray_metrics_port=processes.free_port(), ray_num_cpus=2, xgb_distributed=True, xgb_workers=2)
    s.state_path.mkdir(parents=True)
    shutil.copy(ray_jobs.token_path(settings), ray_jobs.token_path(s))  # clients here hold the session's token
    head = ray_head.start(s, multi_node=True)  # Ray's cluster mode: a worker node joins
    worker = None
    try:
        worker = ray_head.start_worker(s, 0, num_cpus=2)
        yield s
    finally:
        if worker:
            processes.stop_pid(worker)
        processes.stop_pid(head)
        ray_head.discard_files(s)


def test_xgboost_trains_across_two_nodes(two_nodes, settings):
    group, day = 99, "Monday"
    for job in ("jobs.ingest", "jobs.process"):  # a batch of its own, through the session's cluster
        assert ray_jobs.run(settings, job, ["--group", str(group), "--day", day]).status == "SUCCEEDED"
    ds = training.load_dataset(settings)
    features, arrays = training.prepare(ds)
    config = next(c for c in trials() if c["family"] == "xgboost" and c["max_depth"] == 6)
    config = {k: v for k, v in config.items() if k != "family"} | {"n_estimators": 120}
    import ray

    ray.init(address=f"127.0.0.1:{two_nodes.ray_gcs_port}", logging_level="WARNING")
    try:
        model, val = distributed_xgb.fit(two_nodes, config, arrays, "two-nodes")
        from ray.util.state import list_actors

        workers = [a for a in list_actors(address=two_nodes.ray_dashboard, detail=True, limit=1000)
                   if "TrainWorker" in (a.class_name or "")]  # this cluster ran only this fit
    finally:
        ray.shutdown()
    nodes = {a.node_id for a in workers}
    assert len(nodes) == 2, f"training workers ran on {len(nodes)} node(s)"
    single = price_metrics(arrays["y_validation"], np.full(len(arrays["y_validation"]), arrays["y_train"].mean()))
    assert val["rmse_log"] < 0.8 * single["rmse_log"], (val, single)  # it learned: far better than the mean
    assert model.booster.num_boosted_rounds() == 120  # the model returned is the one the workers built
    X_test = features.transform(ds.frame[ds.test][list(FEATURES)]).astype(np.float32)  # rows no worker saw
    y_test = np.log(ds.frame[ds.test]["price"].to_numpy(dtype=float))
    test = price_metrics(y_test, model.predict(X_test))
    assert test["rmse_log"] < 0.8 * price_metrics(y_test, np.full(len(y_test), arrays["y_train"].mean()))["rmse_log"]
