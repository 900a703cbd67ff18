"""The operator's commands through Typer's runner against the real stack (PostgreSQL, the MLflow
registry, Ray Serve over HTTP): production history from the project's own records, a rollback
recorded like a promotion and followed by serving, a prediction walked back to its data, status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import psycopg2
import pytest
from typer.testing import CliRunner

from cli.main import app
from cluster import serve
from tasador import history, ray_jobs, registry, training
from tasador.promotion import promote
from tasador.retry import poll
from tests.conftest import module_data
from tests.serving import first_listing, register_ridge, wait_for_version

settings = module_data()  # this module's own databases, model and experiment
GROUP = 45


@pytest.fixture(scope="module")
def served(settings):
    """One processed batch; v1 (a poor Ridge) promoted as the first production model, v2 (a good one)
    promoted over it, a third version rejected; Serve following this module's model."""
    s = settings.replace(model_name="tasador-operator-test")
    for job in ("jobs.ingest", "jobs.process", "jobs.decide"):
        outcome = ray_jobs.run(s, job, ["--group", str(GROUP), "--day", "Monday"], timeout_s=600)
        assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    ds = training.load_dataset(s)
    features, arrays = training.prepare(ds)
    serve.deploy(s)  # left following this module's model (tests/serving.py: each module deploys its own)
    v1 = register_ridge(s, ds, arrays, features, alpha=1e6)
    assert promote(s, v1)["status"] == "promoted"
    v2 = register_ridge(s, ds, arrays, features, alpha=1.0)
    assert promote(s, v2)["status"] == "promoted"
    v3 = register_ridge(s, ds, arrays, features, alpha=1e7)
    assert promote(s, v3)["status"] == "rejected"
    wait_for_version(s, v2)
    return {"s": s, "ds": ds, "v1": v1, "v2": v2, "v3": v3, "runner": CliRunner()}


def cli(ctx, *args: str, input: str | None = None):
    return ctx["runner"].invoke(app, list(args), env=ctx["s"].as_env(), input=input)


def test_models_lists_every_promotion_with_its_reason_and_answers_what_served_when(served):
    done = cli(served, "models", "--json")
    assert done.exit_code == 0, done.output
    moves = json.loads(done.stdout)
    assert [(m["version"], m["kind"]) for m in moves] == [(served["v1"], "promotion"), (served["v2"], "promotion")]
    assert "no production model" in moves[0]["reason"] and "beats" in moves[1]["reason"]
    first, second = (datetime.fromisoformat(m["moved_at"]) for m in moves)
    for when, version in ((first - timedelta(seconds=1), None), (first, served["v1"]),
                          (second - timedelta(microseconds=1), served["v1"]),
                          (second + timedelta(days=1), served["v2"])):
        done = cli(served, "models", "--at", when.strftime("%Y-%m-%dT%H:%M:%S.%f%z"), "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["version"] == version, (when, done.output)
    table = cli(served, "models")
    assert table.exit_code == 0 and f"v{served['v2']}" in table.output and "promotion" in table.output


def test_rollback_is_refused_without_a_reason_or_to_a_version_that_never_served(served):
    for args, words in ((["rollback", served["v1"], "--reason", "  "], "needs a written reason"),
                        (["rollback", served["v3"], "--reason", "try it"], "never served as production"),
                        (["rollback", "999", "--reason", "try it"], "never served as production")):
        done = cli(served, *args)
        assert done.exit_code == 1, done.output
        assert words in done.output and "log:" in done.output, done.output
    assert registry.production(served["s"]).version == served["v2"]


def test_rollback_moves_the_alias_records_it_and_serving_follows(served):
    s = served["s"]
    before = datetime.now().astimezone()
    done = cli(served, "rollback", served["v1"], "--reason", "v2 misprices condos (operator's test)")
    assert done.exit_code == 0, done.output
    assert f"serving answered with v{served['v1']}" in done.output  # asked at once, not left to the poll
    assert registry.production(s).version == served["v1"]
    last = history.moves(s)[-1]
    assert (last["kind"], last["version"], last["previous_version"]) == ("rollback", served["v1"], served["v2"])
    assert last["reason"] == "v2 misprices condos (operator's test)" and last["moved_at"] >= before
    tags = registry.mlflow_client(s).get_model_version(s.model_name, served["v1"]).tags
    assert tags["rollback_reason"] == last["reason"]
    assert history.serving_at(history.moves(s), datetime.now().astimezone())["version"] == served["v1"]
    wait_for_version(s, served["v1"])
    again = cli(served, "rollback", served["v1"], "--reason", "again")
    assert again.exit_code == 0 and "nothing moved" in again.output
    assert len(history.moves(s)) == 3
    promote(s, served["v2"])  # back, for the next test


def test_a_prediction_is_walked_back_to_its_version_run_batches_and_raw_rows(served):
    s = served["s"]
    promote(s, served["v2"])
    wait_for_version(s, served["v2"])
    listing = first_listing(served["ds"])
    done = cli(served, "predict", "-", "--json", input=json.dumps(listing))
    assert done.exit_code == 0, done.output
    answer = json.loads(done.stdout)
    (prediction_id,) = answer["prediction_ids"]
    poll(lambda: logged(s, prediction_id), bool, 30, f"prediction {prediction_id} logged",  # within a flush
         every_s=0.2)
    walk = cli(served, "lineage", prediction_id, "--json")
    assert walk.exit_code == 0, walk.output
    walk = json.loads(walk.stdout)
    assert walk["model_version"] == answer["model_version"] == served["v2"]
    assert walk["predicted_price"] == pytest.approx(answer["prices"][0])
    assert walk["trained_on"]["batch_ids"] == served["ds"].batch_ids
    assert walk["trained_on"]["rows"] == len(served["ds"].frame)
    assert walk["trained_on"]["data_hash"] == served["ds"].data_hash
    assert {b["batch_id"] for b in walk["trained_on"]["batches"]} == set(served["ds"].batch_ids)
    assert walk["trigger"]["decision"]["batch_id"] == served["ds"].batch_ids[-1]
    assert {r["batch_id"] for r in walk["sample_raw_rows"]} == set(served["ds"].batch_ids)
    assert walk["run_url"].startswith(s.mlflow_uri)
    table = cli(served, "lineage", prediction_id)
    assert table.exit_code == 0 and f"v{served['v2']}" in table.output
    unknown = cli(served, "lineage", "not-an-id")
    assert unknown.exit_code == 1 and "is not a prediction id" in unknown.output


def test_predict_names_a_bad_file(served, tmp_path):
    bad = tmp_path / "listing.json"
    bad.write_text("{not json")
    done = cli(served, "predict", str(bad))
    assert done.exit_code == 1 and "is not JSON" in done.output


def test_status_is_a_table_and_json(served):
    done = cli(served, "status", "--json")
    report = json.loads(done.stdout)
    assert {"postgres", "mlflow", "ray_head", "serve"} <= set(report)
    assert done.exit_code == (0 if all(c["state"] == "running" for c in report.values()) else 1)
    table = cli(served, "status")
    assert "postgres" in table.output and "running" in table.output


def logged(s, prediction_id: str) -> bool:
    with psycopg2.connect(s.raw_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM predictions WHERE prediction_id = %s", (prediction_id,))
        found = cur.fetchone() is not None
    conn.close()
    return found
