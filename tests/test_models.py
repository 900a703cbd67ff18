"""How a trial grows its model: the reports ASHA sees, and a last report that is the whole model."""

from __future__ import annotations

import numpy as np
import pytest

from tasador.models import STEPS, fit_steps


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
    reports = [(step, model.booster.num_boosted_rounds()) for step, model in fit_steps(config, X, y, threads=1)]
    steps = [s for s, _ in reports]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS and len(steps) <= STEPS
    assert reports[-1][1] == rounds  # the model checkpointed at the last report has all its rounds


def test_forest_grows_its_trees_in_steps(data):
    X, y = data
    config = {"family": "random_forest", "n_estimators": 12, "max_depth": 4, "min_samples_leaf": 2,
              "max_features": 1.0, "max_samples": 0.5}
    sizes = [(step, len(model.estimators_)) for step, model in fit_steps(config, X, y, threads=1)]
    assert [s for s, _ in sizes] == list(range(1, STEPS + 1)) and sizes[-1][1] == 12
    assert all(a[1] < b[1] for a, b in zip(sizes, sizes[1:], strict=False))
