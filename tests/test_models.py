"""How a trial grows its model: the reports ASHA sees, and a last report that is the whole model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasador.models import SERVING_THREADS, STEPS, fit_steps, threads_for_batch_work
from tasador.tuning import NodeCores, threads_beside


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    return X, X[:, 0] * 2 + np.sin(X[:, 1]) + rng.normal(scale=0.1, size=2000)


@pytest.mark.parametrize("rounds", [600, 50, 3])
def test_boosting_reports_in_order_and_ends_with_every_round(data, rounds):
    X, y = data
    config = {"family": "xgboost", "n_estimators": rounds, "max_depth": 3, "learning_rate": 0.3,
              "min_child_weight": 1, "subsample": 1.0, "colsample_bytree": 1.0}
    reports = [(step, model.booster.num_boosted_rounds()) for step, model, _ in fit_steps(config, X, y, threads=1)]
    steps = [s for s, _ in reports]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS and len(steps) <= STEPS
    assert reports[-1][1] == rounds  # the model checkpointed at the last report has all its rounds


def test_forest_grows_its_trees_in_steps(data):
    X, y = data
    config = {"family": "random_forest", "n_estimators": 12, "max_depth": 4, "min_samples_leaf": 2,
              "max_features": 1.0, "max_samples": 0.5}
    sizes = [(step, len(model.estimators_)) for step, model, _ in fit_steps(config, X, y, threads=1)]
    assert [s for s, _ in sizes] == list(range(1, STEPS + 1)) and sizes[-1][1] == 12
    assert all(a[1] < b[1] for a, b in zip(sizes, sizes[1:], strict=False))


@pytest.mark.parametrize("family", ["xgboost", "random_forest", "ridge"])
def test_each_report_carries_the_models_own_predictions_of_the_evaluation_rows(data, family):
    """XGBoost's reports come from its prediction cache (only the rounds added since the last report):
    they must equal predicting the whole model again at every step."""
    X, y = data
    config = {"xgboost": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.3, "min_child_weight": 1,
                          "subsample": 0.8, "colsample_bytree": 1.0},
              "random_forest": {"n_estimators": 12, "max_depth": 4, "min_samples_leaf": 2,
                                "max_features": 1.0, "max_samples": 0.5},
              "ridge": {"alpha": 1.0}}[family]
    X_eval = X[:300] + 0.5
    reports = 0
    for _, model, predicted in fit_steps({"family": family, **config}, X, y, threads=1, X_eval=X_eval):
        np.testing.assert_allclose(predicted, model.predict(X_eval), rtol=1e-6)
        reports += 1
    assert reports == (1 if family == "ridge" else STEPS)


def test_a_fit_follows_the_threads_it_is_given_as_it_goes(data):
    X, y = data
    asked = []

    def threads():
        asked.append(2 if len(asked) % 2 else 1)
        return asked[-1]

    config = {"family": "xgboost", "n_estimators": 60, "max_depth": 3, "learning_rate": 0.3,
              "min_child_weight": 1, "subsample": 1.0, "colsample_bytree": 1.0}
    nthreads = [json.loads(model.booster.save_config())["learner"]["generic_param"]["nthread"]
                for _, model, _ in fit_steps(config, X, y, threads=threads)]
    assert len(asked) > STEPS and {"1", "2"} <= set(nthreads)


def test_batch_work_gets_its_threads_and_the_version_keeps_servings(data):
    X, y = data
    config = {"family": "xgboost", "n_estimators": 5, "max_depth": 3, "learning_rate": 0.3,
              "min_child_weight": 1, "subsample": 1.0, "colsample_bytree": 1.0}
    *_, (_, model, _) = fit_steps(config, X, y, threads=1)

    def nthread():
        return json.loads(model.booster.save_config())["learner"]["generic_param"]["nthread"]

    with threads_for_batch_work(model, 2):
        assert nthread() == "2"
    assert nthread() == str(SERVING_THREADS)


@pytest.mark.parametrize(("others", "threads"), [(0.0, 2), (0.3, 2), (0.6, 1), (1.0, 1), (3.0, 1)])
def test_a_trial_borrows_a_core_only_when_it_is_at_least_half_free(others, threads):
    assert threads_beside(2, others) == threads


def test_a_trial_stays_on_one_thread_while_another_process_keeps_the_other_core_busy():
    """A real busy process beside the trial (this machine has 2 cores): the second core is not free."""
    import subprocess
    import sys
    import time

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cores = NodeCores(2)
        assert cores() == 1  # before a window is long enough to judge: its reserved CPU only
        time.sleep(NodeCores.LOOK_S * 1.5)  # a window to measure, not a wait for a condition
        assert cores() == 1
    finally:
        busy.kill()
        busy.wait()
