"""Ray Tune's side of training: the trial function, run in Tune's actors, and the callback, run in
the driver, that records every trial as an MLflow run under the training's parent run.

Every Tune actor imports this module to run a trial, so it imports only numpy, psutil and the model
families: no pandas, no database, no MLflow (MLflow alone is about a second per actor). The driver
already holds an MLflow client, so it logs for the trials: their runs, params and every reported step.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time

import numpy as np
import psutil
from ray import tune

from tasador import faults
from tasador.models import SERVING_THREADS, STEPS, fit_steps, price_metrics, set_threads


def reports(config: dict) -> int:
    return 1 if config["family"] == "ridge" else STEPS


class NodeCores:
    """How many threads a trial may use now: its own CPU, plus each core of its node that nothing else
    used since the last look, up to the CPUs Ray gives the node. A trial holds one CPU (trials are
    packed one per core), but near the end of a search the last, longest trial runs alone while the
    other core idles (30 s of a 92-s search on 1.08M rows); it borrows that core and gives it back as
    soon as anything else (another trial, serving, a Ray job) uses it. "Others" is the machine's busy
    CPU time less this process's, from psutil: on a shared host it counts other tenants too, so a trial
    there stays at one thread. Not Ray's resources: they say what is reserved, not what is used, and
    Ray has no public per-node view of free CPUs."""

    LOOK_S = 1.0  # the shortest window judged: a trial starts on one thread, its reserved CPU

    def __init__(self, node_cpus: int):
        self.node_cpus = max(1, node_cpus)
        self.me = psutil.Process()
        self.last, self.threads = self._times(), 1

    def _times(self) -> tuple[float, float, float]:
        machine, mine = psutil.cpu_times(), self.me.cpu_times()
        # Linux counts guest time inside user time as well: not added twice
        not_busy = ("idle", "iowait", "guest", "guest_nice")
        busy = sum(machine) - sum(getattr(machine, name, 0.0) for name in not_busy)
        return time.monotonic(), busy, mine.user + mine.system

    def __call__(self) -> int:
        now = self._times()
        wall, busy, mine = (b - a for a, b in zip(self.last, now, strict=True))
        if wall < self.LOOK_S:
            return self.threads
        self.last = now
        self.threads = threads_beside(self.node_cpus, max(0.0, busy - mine) / wall)
        return self.threads


def threads_beside(node_cpus: int, others: float) -> int:
    """Threads for a trial on a node of ``node_cpus`` where everything else used ``others`` cores: one
    more for each core at least half free (OpenMP's barriers make two threads that share a busy core no
    faster than one), never fewer than one."""
    return int(min(node_cpus, max(1, np.floor(node_cpus - others + 0.5))))


def node_cpus() -> int:
    """The CPUs Ray gives the node this process runs on."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return int(next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == here), 1))


def run_trial(config: dict, arrays: dict) -> None:
    """One Tune trial: fit, report validation metrics per growth step (ASHA may stop the trial at
    any of them); a trial that finishes checkpoints its regressor with its last report."""
    spec = config["spec"]
    started = time.perf_counter()
    for step, model, predicted in fit_steps(dict(spec), arrays["X_train"], arrays["y_train"],
                                            NodeCores(node_cpus()), arrays["X_validation"]):
        val = price_metrics(arrays["y_validation"], predicted)
        metrics = {**{f"val_{k}": v for k, v in val.items()}, "step": step,
                   "fit_seconds": time.perf_counter() - started}
        if step < reports(spec):
            tune.report(metrics)
            faults.point("train.trial_step")
            continue
        # no test pricing here: the test rows judge only the version the search chose (the driver prices
        # them through the whole pipeline), and pricing them in the trial that finishes last held up
        # the whole search (3.6 s of a 1.08M-row training's, on one thread)
        set_threads(model, SERVING_THREADS)  # what the version is pickled, and served, with
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "regressor.pkl"), "wb") as f:
                pickle.dump(model, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


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
                   if k.startswith("val_") or k == "fit_seconds"]
        self.client.log_batch(self.run_ids[trial.trial_id], metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_ids[trial.trial_id], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_ids[trial.trial_id], "FAILED")
