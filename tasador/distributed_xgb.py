"""XGBoost trained data-parallel across the Ray cluster with Ray Train's ``XGBoostTrainer`` (for data
larger than one node), selected by ``TASADOR_XGB_DISTRIBUTED=true``.

The training matrix goes into Ray Data (object store) and is split across ``xgb_workers`` workers;
Ray Train sets up XGBoost's collective (rabit) so the workers build each tree together. (xgboost-ray
0.1.19 fails on xgboost >= 2.1 and its Tune glue needs ray <= 2.9, hence Ray Train.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasador.models import BoosterRegressor, price_metrics, xgboost_params
from tasador.settings import Settings


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]).assign(y=y)


def _worker(config: dict) -> None:
    """One Ray Train worker: its shard of the rows, the trees built together with the others (the
    collective Ray Train set up), one report at the end with the model from rank 0. Not
    ``RayTrainReportCallback``: it calls ``ray.train.report`` after every round, and each report is a
    barrier with the Train controller: about 2 s a round here, where the rounds take milliseconds."""
    import os
    import tempfile

    import ray.train
    import xgboost as xgb
    from ray.train.xgboost import RayTrainReportCallback

    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    val = ray.train.get_dataset_shard("validation").materialize().to_pandas()
    dtrain = xgb.DMatrix(train.drop(columns="y"), label=train["y"])
    dval = xgb.DMatrix(val.drop(columns="y"), label=val["y"])
    evals: dict = {}
    booster = xgb.train(config["params"], dtrain, num_boost_round=config["rounds"], evals=[(dval, "validation")],
                        evals_result=evals, verbose_eval=False)
    metrics = {"validation_rmse": evals["validation"]["rmse"][-1], "rounds": booster.num_boosted_rounds()}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            booster.save_model(os.path.join(tmp, RayTrainReportCallback.CHECKPOINT_NAME))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def fit(settings: Settings, config: dict, arrays: dict, name: str) -> tuple[BoosterRegressor, dict]:
    """Fit one XGBoost config of the search space with ``xgb_workers`` Ray Train workers."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    params = xgboost_params(config, threads=1) | {"eval_metric": "rmse"}
    trainer = XGBoostTrainer(
        _worker, train_loop_config={"params": params, "rounds": config["n_estimators"]},
        scaling_config=ScalingConfig(num_workers=settings.xgb_workers, resources_per_worker={"CPU": 1},
                                     placement_strategy="SPREAD"),  # one worker per node where possible
        datasets={"train": ray.data.from_pandas(_frame(arrays["X_train"], arrays["y_train"])),
                  "validation": ray.data.from_pandas(_frame(arrays["X_validation"], arrays["y_validation"]))},
        run_config=RunConfig(name=name, storage_path=str(settings.state_path / "ray_results")),
    )
    result = trainer.fit()
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    booster.feature_names = None  # trained from named columns; served from plain matrices
    model = BoosterRegressor(booster)
    return model, price_metrics(arrays["y_validation"], model.predict(arrays["X_validation"]))
