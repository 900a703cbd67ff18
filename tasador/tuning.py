"""Ray Tune's side of training: the trial function, run in Tune's actors, and the callback, run in
the driver, that records every trial as an MLflow run under the training's parent run.

Every Tune actor imports this module to run a trial, so it imports only numpy and the model
families: no pandas, no database, no MLflow (MLflow alone is about a second per actor). The driver
already holds an MLflow client, so it logs for the trials: their runs, params and every reported step.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time

from ray import tune

from tasador import faults
from tasador.models import STEPS, fit_steps, price_metrics

THREADS = 1  # every trial holds one CPU: trials are packed one per core


def reports(config: dict) -> int:
    return 1 if config["family"] == "ridge" else STEPS


def run_trial(config: dict, arrays: dict) -> None:
    """One Tune trial: fit, report validation metrics per growth step (ASHA may stop the trial at
    any of them); a trial that finishes reports its test metrics and checkpoints its regressor."""
    spec = config["spec"]
    started = time.perf_counter()
    for step, model in fit_steps(dict(spec), arrays["X_train"], arrays["y_train"], THREADS):
        val = price_metrics(arrays["y_validation"], model.predict(arrays["X_validation"]))
        metrics = {**{f"val_{k}": v for k, v in val.items()}, "step": step,
                   "fit_seconds": time.perf_counter() - started}
        if step < reports(spec):
            tune.report(metrics)
            faults.point("train.trial_step")
            continue
        test = price_metrics(arrays["y_test"], model.predict(arrays["X_test"]))
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "regressor.pkl"), "wb") as f:
                pickle.dump(model, f)
            tune.report({**metrics, **{f"test_{k}": v for k, v in test.items()}},
                        checkpoint=tune.Checkpoint.from_directory(tmp))


class MlflowTrialRuns(tune.Callback):
    """Each trial as an MLflow run under the parent run: its params, tagged with its family, and the
    metrics of every step it reports; the run ends FINISHED (finished or stopped early) or FAILED.

    Not Ray's ``MLflowLoggerCallback`` (ray.air.integrations.mlflow, 2.60): it can carry the parent
    (an ``mlflow.parentRunId`` tag) but gives every trial the same tags (no family per trial, which the
    runs are searched by), logs every result key Tune adds, and keeps each trial's run id in a private
    dict keyed by Tune's Trial objects, while the best trial's registration needs that id
    (``run_ids`` here)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.run_ids: dict[str, str] = {}  # Tune trial id -> MLflow run id

    def on_trial_start(self, iteration, trials, trial, **info):
        from mlflow.entities import Param

        spec = trial.config["spec"]
        run = self.client.create_run(self.experiment_id, run_name=f"{spec['family']}-{trial.trial_id}",
                                     tags={"mlflow.parentRunId": self.parent_run_id, "family": spec["family"],
                                           "tune_trial_id": trial.trial_id})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in spec.items()])
        self.run_ids[trial.trial_id] = run.info.run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result["step"])
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k.startswith(("val_", "test_")) or k == "fit_seconds"]
        self.client.log_batch(self.run_ids[trial.trial_id], metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_ids[trial.trial_id], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_ids[trial.trial_id], "FAILED")
