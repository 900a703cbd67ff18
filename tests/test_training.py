"""Training, registry and promotion against the real MLflow server (PostgreSQL backend) and the real
Ray cluster of the session stack; S3 artifacts through moto's S3-compatible server (MinIO cannot be
installed here: moto's server mode is a real HTTP S3 endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psycopg2
import pytest
import requests
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cluster import mlflow_server, postgres, processes
from tasador import ray_jobs, registry, training
from tasador.features import PriceModel
from tasador.models import price_metrics
from tasador.promotion import load_model, promote
from tasador.retry import poll
from tasador.schema import FEATURES
from tests.conftest import module_data

settings = module_data()  # this module's own databases, model and experiment

GROUP = 88


def run(settings, job, *extra):
    outcome = ray_jobs.run(settings, job, ["--group", str(GROUP), "--day", "Monday", *extra], timeout_s=900)
    assert outcome.status == "SUCCEEDED", outcome.logs[-4000:]
    return outcome.summary


@pytest.fixture(scope="module")
def trained(settings):
    """One full cycle on the group's first batch: ingest, process, decide, train, promote."""
    for job in ("jobs.ingest", "jobs.process", "jobs.decide"):
        run(settings, job)
    return run(settings, "jobs.train"), run(settings, "jobs.promote")


def test_first_training_is_registered_and_promoted(settings, trained):
    train, promoted = trained
    assert train["status"] == "trained" and set(train["families"]) == {"ridge", "random_forest", "xgboost"}
    assert train["trials"] == 7 and not train["trials_failed"]
    prod = registry.production(settings)
    assert prod is not None and prod.version == train["version"] == promoted["version"]
    assert promoted["status"] == "promoted" and "no production model" in promoted["reason"]
    # the training covered every batch there is: its test scores are the held-out scores, not priced again
    assert promoted["scores"]["challenger"] == train["test_metrics"] and "its training measured" in promoted["reason"]
    tags = prod.tags
    assert json.loads(tags["batch_ids"]) == train["batch_ids"]
    assert tags["family"] == train["family"] and tags["promotion"] == "promoted"
    assert int(tags["rows"]) == train["rows"] and len(tags["data_hash"]) == 16
    assert "no production model" in tags["trigger_reason"]
    job = ray_jobs.JobsApi(settings).find(tags["ray_job_id"])  # the job whose logs the Dash app links to
    assert tags["ray_job_id"].startswith("tasador-train-") and job["status"] == "SUCCEEDED"
    assert set(json.loads(tags["metrics"])) >= {"rmse", "mae", "r2", "mape"}
    assert set(json.loads(tags["shap_importance"])) == set(FEATURES)


def test_every_trial_is_an_mlflow_run_under_one_parent(settings, trained):
    train, _ = trained
    client = registry.mlflow_client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{train['parent_run_id']}'")
    assert len(children) == train["trials"]
    assert {r.data.tags["family"] for r in children} == {"ridge", "random_forest", "xgboost"}
    assert all("val_rmse" in r.data.metrics for r in children)
    assert {r.info.status for r in children} == {"FINISHED"}  # finished or stopped early by ASHA: ended
    best = client.get_run(client.get_model_version(settings.model_name, train["version"]).run_id)
    assert best.data.tags["mlflow.parentRunId"] == train["parent_run_id"]
    assert "test_rmse" in best.data.metrics and best.data.params["family"] == train["family"]
    # the test rows judge only the chosen version: no other trial was priced on them
    assert [r.info.run_id for r in children if "test_rmse" in r.data.metrics] == [best.info.run_id]


def test_held_out_rows_never_share_a_property_with_training(settings, trained):
    ds = training.load_dataset(settings)
    train_props = set(ds.frame.loc[ds.train, "property_id"])
    assert train_props.isdisjoint(ds.frame.loc[ds.test, "property_id"])
    assert train_props.isdisjoint(ds.frame.loc[ds.validation, "property_id"])
    assert ds.train.sum() + ds.validation.sum() + ds.test.sum() == len(ds.frame)


def test_rows_read_as_arrow_are_the_rows_the_csv_copy_gave_and_promotion_reads_only_held_out(settings, trained):
    """``load_dataset`` reads through ADBC (Arrow); the frame is the one pandas made of a CSV COPY of the
    same rows (the reader before it: the model's features saw these values and kinds). Promotion's
    SQL selection of the held-out split is the split ``split_key`` makes."""
    import pandas as pd

    from bench.load_rows import csv_reader

    ds = training.load_dataset(settings)
    csv = csv_reader(settings, ds.batch_ids)
    assert len(ds.frame) == len(csv) > 1_000
    pd.testing.assert_frame_equal(ds.frame, csv, check_dtype=False)
    numbers = [c for c in csv.columns if pd.api.types.is_numeric_dtype(csv[c])]
    assert all(pd.api.types.is_numeric_dtype(ds.frame[c]) for c in numbers)
    assert all(ds.frame[c].dtype == csv[c].dtype for c in csv.columns if c not in numbers)
    held = training.load_dataset(settings, held_out_only=True)
    assert held.test.all() and list(held.frame["raw_id"]) == list(ds.frame.loc[ds.test, "raw_id"])


def test_registered_model_takes_the_raw_features_and_matches_its_metrics(settings, trained):
    train, _ = trained
    model = load_model(settings, train["version"])
    ds = training.load_dataset(settings)
    raw = ds.frame[ds.test][list(FEATURES)].astype(object).head(50)
    raw["zip_code"] = raw["zip_code"].astype(str).str.lstrip("0")  # as a raw API sends it
    prices = model.predict(raw)
    assert np.all(np.isfinite(prices)) and np.all(prices > 1_000)
    same = model.predict(ds.frame[ds.test][list(FEATURES)].head(50))
    assert np.allclose(prices, same)
    # the registered version, priced on promotion's held-out rows, scores what its training recorded (what
    # promotion takes instead of pricing them again)
    held = training.load_dataset(settings, held_out_only=True)
    assert held.batch_ids == train["batch_ids"] and len(held.frame) == train["test_rows"]
    y_log = np.log(held.frame["price"].to_numpy(dtype=float))
    priced = price_metrics(y_log, model.predict_log(held.frame[list(FEATURES)]))
    assert priced == pytest.approx(train["test_metrics"], rel=1e-9)
    # its environment is declared, pinned, for its family (not inferred: tasador itself is not on PyPI)
    with registry.tracking_server(settings):
        import mlflow.pyfunc

        listed = mlflow.pyfunc.get_model_dependencies(f"models:/{settings.model_name}/{train['version']}")
    with open(listed) as f:
        assert f.read().split() == training.pip_requirements(train["family"])
    assert train["phases_s"]["tune"] > 0 and set(train["phases_s"]) >= {"load", "prepare", "shap", "log_and_register"}


def test_a_worse_challenger_is_rejected_with_its_reason(settings, trained):
    train, _ = trained
    ds = training.load_dataset(settings)
    features, arrays = training.prepare(ds)
    flat = make_pipeline(StandardScaler(), Ridge(alpha=1e9)).fit(arrays["X_train"], arrays["y_train"])
    worse = PriceModel(features, flat, "ridge")  # regularised to a near-constant price
    client = registry.mlflow_client(settings)
    version = training.register(settings, worse, training.empty_run(settings, "constant-model"), ds,
                                {"rmse": 0.0}, {"alpha": 1e9},
                                {"batch_ids": "[]", "trigger_reason": "test: a worse model"})
    outcome = promote(settings, version)
    assert outcome["status"] == "rejected"
    assert f"does not beat production v{train['version']}" in outcome["reason"]
    assert registry.production(settings).version == train["version"]
    tags = client.get_model_version(settings.model_name, version).tags
    assert tags["promotion"] == "rejected" and "does not beat" in tags["promotion_reason"]


def test_the_decision_records_training_and_promotion(settings, trained):
    train, promoted = trained
    conn = psycopg2.connect(settings.clean_db)
    with conn.cursor() as cur:
        cur.execute("SELECT d.retrain, d.training->>'version', d.promoted, d.promotion_reason, t.version, t.verdict"
                    " FROM decisions d JOIN trainings t USING (training_id) WHERE d.batch_id = %s",
                    (train["batch_id"],))
        retrain, version, was_promoted, reason, trained, verdict = cur.fetchone()
    conn.close()
    assert retrain and version == trained == train["version"] and was_promoted and reason == promoted["reason"]
    assert verdict == "promoted" and promoted["training_id"] == train["training_id"]


def test_s3_artifacts_round_trip_through_an_s3_compatible_server(settings, trained, tmp_path):
    """An MLflow server with ``s3://`` artifacts on moto's S3 server: the bucket is created when
    missing, a model is logged through the server and loads back with the same predictions."""
    port = processes.free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ.update(env)
    postgres.create_database(settings, "mlflow_s3")
    s3 = settings.replace(state_dir=str(tmp_path / "state"), mlflow_port=processes.free_port(),
                          mlflow_artifacts="s3://tasador-models/artifacts",
                          mlflow_s3_endpoint_url=f"http://127.0.0.1:{port}",
                          mlflow_db_url=settings.pg_url("mlflow_s3"))
    pid = None
    try:
        # not listening yet, or too busy starting to answer: not yet
        poll(lambda: requests.get(f"http://127.0.0.1:{port}", timeout=5), lambda _any_answer: True, 30,
             "moto's S3 server answering", every_s=0.2, transient=(requests.RequestException,))
        pid = mlflow_server.start(s3)
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = s3.mlflow_s3_endpoint_url
        import boto3

        assert "tasador-models" in [b["Name"] for b in boto3.client(
            "s3", endpoint_url=s3.mlflow_s3_endpoint_url).list_buckets()["Buckets"]]
        model = load_model(settings, trained[0]["version"])
        ds = training.load_dataset(settings)
        version = training.register(s3, model, training.empty_run(s3, "s3-artifacts"), ds, {"rmse": 1.0}, {},
                                    {"batch_ids": "[]"})
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3.mlflow_s3_endpoint_url).list_objects_v2(
            Bucket="tasador-models")["Contents"]]
        assert any(k.endswith("model.pkl") for k in keys)
        back = load_model(s3, version)
        X = ds.frame[ds.test][list(FEATURES)].head(20)
        assert np.allclose(back.predict(X), model.predict(X))
    finally:
        os.environ.pop("MLFLOW_S3_ENDPOINT_URL", None)
        if pid:
            processes.stop_pid(pid)
        processes.stop_pid(moto.pid)
