"""Training: Ray Tune runs the three families' search spaces side by side on ALL clean rows.

The driver loads every clean row (COPY), splits by property (test / validation / train never share a
property), fits the feature pipeline once on the training rows and puts the three matrices in the
object store once (``tune.with_parameters``). Each trial (``tasador.tuning``) fits one regressor,
reports validation RMSE after each growth step (ASHA stops the bad ones) and checkpoints its fitted
regressor; the driver records each trial as an MLflow run under one parent run. The best trial by
validation RMSE becomes a new registered model version: the whole pipeline (features + regressor),
with its test metrics and lineage as tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from psycopg2 import sql

from tasador import compiled, db, faults, ray_jobs
from tasador.cleaning import SPLIT_KEY_SQL, split_key
from tasador.features import ListingFeatures, PriceModel
from tasador.models import STEPS, price_metrics, threads_for_batch_work, trials
from tasador.registry import mlflow_client, tracking_server
from tasador.schema import FEATURES
from tasador.settings import Settings

log = logging.getLogger(__name__)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class Phases(dict):
    """Seconds per named phase of a job (a training, a promotion's judgment), in the order they ran: the
    job's result carries them (a training's row in ``trainings`` too), so an operator sees where a slow
    job's time went."""

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - started, 2)


@dataclass
class Dataset:
    frame: pd.DataFrame  # every clean row of the batches
    batch_ids: list[int]
    train: np.ndarray  # boolean masks over frame
    validation: np.ndarray
    test: np.ndarray

    @property
    def data_hash(self) -> str:
        ids = np.sort(self.frame["raw_id"].to_numpy(dtype=np.int64))
        return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def load_dataset(settings: Settings, batch_ids: list[int] | None = None, held_out_only: bool = False) -> Dataset:
    """Every clean row of ``batch_ids`` (default: every processed batch), split by property
    (``cleaning.split_key``: the property id's bucket). ``held_out_only``: the test split's rows only,
    selected by SQL (promotion judges on them and needs no other)."""
    test_cut = round(settings.test_share * 100)
    val_cut = test_cut + round(settings.validation_share * 100)
    if batch_ids is None:
        with db.transaction(settings.clean_db) as cur:
            cur.execute("SELECT batch_id FROM processed_batches ORDER BY batch_id")
            batch_ids = [r[0] for r in cur.fetchall()]
    where = db.in_batches(batch_ids)
    if held_out_only:
        where = sql.SQL("{} AND {} < {}").format(where, sql.SQL(SPLIT_KEY_SQL), sql.Literal(test_cut))
    query = sql.SQL("SELECT raw_id, property_id, {}, price FROM listings WHERE {}").format(
        db.identifiers(FEATURES), where)
    # processed batches never change, so reading their rows on another connection sees what this one did;
    # ordered by raw id in Arrow (in memory, C++), not by PostgreSQL (a sort of every row that spills to
    # disk past work_mem): the same frame, row for row
    frame = clean_frame_from_arrow(db.read_arrow(settings.clean_db, query).sort_by("raw_id"))
    bucket = split_key(frame["property_id"])
    return Dataset(frame, list(batch_ids), bucket >= val_cut, (bucket >= test_cut) & (bucket < val_cut),
                   bucket < test_cut)


def clean_frame_from_arrow(table) -> pd.DataFrame:
    """The clean rows as the model's code takes them (as the API hands them over): text for the zip
    code, city and date, float64 for every number, NaN for a missing one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_date(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.string()))
        elif pa.types.is_floating(field.type) or (pa.types.is_integer(field.type)
                                                  and field.name not in ("raw_id", "property_id")):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.float64()))
    frame = table.to_pandas()
    for name in ("zip_code", "city"):
        frame[name] = frame[name].astype("string")
    return frame


def prepare(ds: Dataset) -> tuple[ListingFeatures, dict[str, np.ndarray]]:
    """Fit the features on the training rows; the matrices every trial shares (training and validation
    rows: the test rows judge only the chosen version, priced through the whole pipeline)."""
    X = ds.frame[list(FEATURES)]
    y = np.log(ds.frame["price"].to_numpy(dtype=float))
    features = ListingFeatures()
    arrays = {"X_train": features.fit_transform(X[ds.train], y[ds.train]).astype(np.float32), "y_train": y[ds.train],
              "X_validation": features.transform(X[ds.validation]).astype(np.float32),
              "y_validation": y[ds.validation]}
    return features, arrays


def tune_families(settings: Settings, arrays: dict, parent_run_id: str, experiment_id: str, name: str,
                  skip: tuple[str, ...] = ()):
    """Run every trial of the search space with Ray Tune (ASHA early stopping), each an MLflow run
    under ``parent_run_id``. Returns the ResultGrid and the MLflow run id of each Tune trial id."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tasador.tuning import MlflowTrialRuns, run_trial

    cpus = int(ray.cluster_resources().get("CPU", 1))
    runs = MlflowTrialRuns(settings.mlflow_uri, experiment_id, parent_run_id)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, arrays=arrays), {"cpu": 1}),
        param_space={"spec": tune.grid_search(searched(settings, skip))},
        tune_config=tune.TuneConfig(metric="val_rmse_log", mode="min",
                                    scheduler=ASHAScheduler(max_t=STEPS, grace_period=1, reduction_factor=3),
                                    max_concurrent_trials=settings.tune_max_concurrent or cpus,
                                    reuse_actors=True),  # an actor imports the trial's libraries once
        # a trial whose worker dies (a killed process, a lost node) starts again from its last checkpoint
        run_config=tune.RunConfig(name=name, storage_path=str(settings.state_path / "ray_results"),
                                  verbose=0, callbacks=[runs],
                                  failure_config=tune.FailureConfig(max_failures=settings.tune_max_failures)),
    )
    return tuner.fit(), runs.run_ids


def searched(settings: Settings, skip: tuple[str, ...] = ()) -> list[dict]:
    """The trials of the search space whose family the settings include (``train_families``)."""
    wanted = {f.strip() for f in settings.train_families.split(",") if f.strip()}
    known = {c["family"] for c in trials()}
    if wanted - known:
        raise ValueError(f"TASADOR_TRAIN_FAMILIES names unknown families {sorted(wanted - known)};"
                         f" known: {sorted(known)}")
    return [c for c in trials() if c["family"] not in skip and (not wanted or c["family"] in wanted)]


@dataclass
class Candidate:
    """A fitted (or stopped) trial, from Tune or from a distributed XGBoost fit."""
    family: str
    params: dict
    val_rmse: float
    val_rmse_log: float
    steps: int
    mlflow_run_id: str
    load: object = None  # () -> fitted regressor; None when ASHA stopped the trial

    @property
    def finished(self) -> bool:
        return self.load is not None


def _from_tune(result, run_ids: dict[str, str]) -> Candidate:
    spec = dict(result.config["spec"])

    def load():
        with result.checkpoint.as_directory() as path, open(os.path.join(path, "regressor.pkl"), "rb") as f:
            return pickle.load(f)

    return Candidate(spec.pop("family"), spec, result.metrics["val_rmse"], result.metrics["val_rmse_log"],
                     result.metrics["step"], run_ids[result.metrics["trial_id"]], load if result.checkpoint else None)


def _distributed_xgboost(settings: Settings, arrays: dict, parent: str, experiment_id: str, name: str) -> list:
    import mlflow

    from tasador import distributed_xgb

    found = []
    for i, config in enumerate(c for c in trials() if c["family"] == "xgboost"):
        params = {k: v for k, v in config.items() if k != "family"}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"xgboost-distributed-{i}",
                              tags={"mlflow.parentRunId": parent, "family": "xgboost", "distributed": "true"}) as run:
            mlflow.log_params({**params, "workers": settings.xgb_workers})
            model, val = distributed_xgb.fit(settings, params, arrays, f"{name}-xgb-{i}")
            mlflow.log_metrics({f"val_{k}": v for k, v in val.items()})
        found.append(Candidate("xgboost", params, val["rmse"], val["rmse_log"], STEPS, run.info.run_id,
                               lambda model=model: model))
    return found


def train(settings: Settings, trigger: dict, training_id: int | None = None, covers: list[int] | None = None) -> dict:
    """Train on every clean row collected so far and register the best model as a new version.
    ``trigger`` is the decision that asked for it (batch_id, retrain_reason); ``training_id`` the
    training's row (tagged on the runs and, in the same request that registers it, on the version)."""
    import mlflow
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    started, phase = time.perf_counter(), Phases()
    with phase("load"):
        ds = load_dataset(settings)
    if ds.train.sum() == 0 or ds.validation.sum() == 0 or ds.test.sum() == 0:
        raise ValueError(f"not enough clean rows to train on ({len(ds.frame)} in batches {ds.batch_ids}): "
                         "ingest and process a batch first")
    with phase("prepare"):
        features, arrays = prepare(ds)
    experiment_id = experiment(settings)
    lineage = {"batch_ids": json.dumps(ds.batch_ids), "rows": str(len(ds.frame)),
               "train_rows": str(int(ds.train.sum())),
               "validation_rows": str(int(ds.validation.sum())), "test_rows": str(int(ds.test.sum())),
               "data_hash": ds.data_hash, "trigger_batch_id": str(trigger["batch_id"]),
               "trigger_reason": trigger["retrain_reason"][:5000]}
    if training_id is not None:
        lineage.update(training_id=str(training_id), decision_batch_ids=json.dumps(covers or []))
    if job := ray_jobs.current_submission_id():
        lineage["ray_job_id"] = job  # the Dash app links the version to this job's logs
    name = f"train-{trigger['batch_id']}-{int(time.time())}"
    skip = ("xgboost",) if settings.xgb_distributed and "xgboost" in {c["family"] for c in searched(settings)} else ()
    with tracking_server(settings), mlflow.start_run(
            experiment_id=experiment_id, run_name=f"training-batch-{trigger['batch_id']}", tags=lineage) as parent:
        with phase("tune"):
            results, run_ids = tune_families(settings, arrays, parent.info.run_id, experiment_id, name, skip=skip)
            failed = [str(r.error)[:300] for r in results if r.error is not None]
            candidates = [_from_tune(r, run_ids) for r in results if r.error is None and r.metrics]
            if settings.xgb_distributed:
                candidates += _distributed_xgboost(settings, arrays, parent.info.run_id, experiment_id, name)
        finished = [c for c in candidates if c.finished]
        if not finished:
            raise RuntimeError(f"no trial finished; errors: {failed}")
        best = min(finished, key=lambda c: c.val_rmse_log)
        family_summary = {}  # every family's best trial, finished or stopped early by ASHA
        for c in sorted(candidates, key=lambda c: c.val_rmse_log):
            family_summary.setdefault(c.family, {"val_rmse": c.val_rmse, "val_rmse_log": c.val_rmse_log,
                                                 "steps": c.steps, "finished": c.finished,
                                                 "mlflow_run_id": c.mlflow_run_id})
        with phase("test_pricing"):
            model = PriceModel(features, best.load(), best.family)
            test_frame = ds.frame[ds.test]
            with threads_for_batch_work(model.regressor):
                test = price_metrics(np.log(test_frame["price"].to_numpy(dtype=float)),
                                     model.predict_log(test_frame[list(FEATURES)]))
        mlflow.log_metrics({f"best_{best.family}_{k}": v for k, v in test.items()})
        mlflow.log_dict(family_summary, "families.json")
    faults.point("train.before_register", settings)
    version = register(settings, model, best.mlflow_run_id, ds, test, best.params, lineage, phase)
    seconds = round(time.perf_counter() - started, 1)
    log.info("training v%s: %.1f s in all; phases %s", version, seconds, dict(phase))
    return {"version": version, "family": best.family, "test_metrics": test, "families": family_summary,
            "rows": len(ds.frame), "test_rows": int(ds.test.sum()), "batch_ids": ds.batch_ids,
            "parent_run_id": parent.info.run_id,
            "trials": len(candidates) + len(failed), "trials_failed": failed,
            "trials_stopped_early": sum(1 for c in candidates if not c.finished),
            "xgboost_distributed": settings.xgb_distributed, "seconds": seconds, "phases_s": dict(phase)}


def experiment(settings: Settings) -> str:
    """The id of the settings' MLflow experiment, created when missing."""
    client = mlflow_client(settings)
    found = client.get_experiment_by_name(settings.mlflow_experiment)
    return found.experiment_id if found else client.create_experiment(settings.mlflow_experiment)


def empty_run(settings: Settings, run_name: str) -> str:
    """A finished run with nothing logged, to register a model built outside ``train`` under (tests and
    benchmarks: a deliberately bad or tiny model)."""
    import mlflow

    with tracking_server(settings), mlflow.start_run(experiment_id=experiment(settings), run_name=run_name) as run:
        return run.info.run_id


# What a version needs to be loaded, priced and explained, pinned to this environment's versions, by
# distribution name. Declared rather than inferred: MLflow's inference imports the model in a subprocess
# (4.7 s of every registration at full size, profiled), listed ``tasador`` itself (which comes with the
# version's code, not from PyPI) and missed what a family loads lazily (XGBoost, Treelite, shap).
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", "scipy", "threadpoolctl")
FAMILY_REQUIREMENTS = {"xgboost": ("xgboost-cpu", "treelite"), "random_forest": ("shap",), "ridge": ()}


def pip_requirements(family: str) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in (*MODEL_REQUIREMENTS, *FAMILY_REQUIREMENTS[family])]


# rows the version's global SHAP importance is the mean |SHAP| over: exact TreeSHAP of 600 depth-10 trees
# costs about 45 ms a row on two threads here. 2,000 rows took 210 s of every XGBoost training's
# registration (most of what made in-stack training look 3.4x the benchmark; issue 18), 200 rows 9 s.
# Measured against 1,000 rows on the full-scale v1 (2026-12-05, third session): samples of 50 rows ranked
# the eleven features with Kendall's tau 0.96-1.00 (three seeds), 100 rows 0.96-1.00, 200 rows 0.96 (each
# swapped only the near-tied status, state and prev_sold_date, 0.032-0.035 apart): 64 rows, 2.7 s.
IMPORTANCE_ROWS = 64


def register(settings: Settings, model: PriceModel, run_id: str, ds: Dataset, test: dict, params: dict,
             lineage: dict, phase: Phases | None = None) -> str:
    """Log the whole pipeline under the best trial's run and register it as a new version, tagged."""
    import mlflow
    from mlflow.models import infer_signature

    from tasador import explain

    phase = phase if phase is not None else Phases()
    example = ds.frame[ds.test][list(FEATURES)].head(5)
    held_out = ds.frame[ds.test][list(FEATURES)]
    sample = held_out.sample(n=min(IMPORTANCE_ROWS, len(held_out)), random_state=0)
    with threads_for_batch_work(model.regressor):  # exact TreeSHAP of 64 rows: 2.7 s on two threads
        with phase("shap"):
            importance = explain.global_importance(model, sample)
        with phase("serving_check"):
            serving_check = compiled.check_at_registration(model, held_out)  # before pickling
    tags = {**lineage, "family": model.family, "params": json.dumps(params), "metrics": json.dumps(test),
            **{f"metric_{k}": f"{v:.6g}" for k, v in test.items()}, "shap_importance": json.dumps(importance),
            **serving_check}
    with tracking_server(settings), phase("log_and_register"):
        with mlflow.start_run(run_id=run_id):
            faults.point("train.before_log_model", settings)
            info = mlflow.sklearn.log_model(
                model, name="model", input_example=example,
                signature=infer_signature(example, model.predict(example)),
                code_paths=[str(PACKAGE_DIR)], serialization_format="cloudpickle",
                pip_requirements=pip_requirements(model.family))
            mlflow.log_metrics({f"test_{k}": v for k, v in test.items()})
            mlflow.log_dict(importance, "shap_importance.json")
        # the version and all its tags (the training_id among them) in one request: a version is never
        # without the tag that lets a re-run after a crash find it
        registered = mlflow.register_model(info.model_uri, settings.model_name, tags=tags)
    return str(registered.version)

