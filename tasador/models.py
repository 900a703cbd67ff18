"""The three model families, their search spaces, and how a trial fits one (iteratively where the
family allows, so that ASHA can stop bad trials early: trees are added in steps)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasador import compiled

FAMILIES = ("ridge", "random_forest", "xgboost")

# Chosen for the budget (all rows, three families, 2 cores): a default random forest takes about two
# minutes a fit on 230k rows here, so forests are capped in depth and grown on half-size bootstraps.
SEARCH_SPACE: dict[str, list[dict]] = {
    "ridge": [{"alpha": a} for a in (0.3, 3.0, 30.0)],
    "random_forest": [{"n_estimators": 48, "max_depth": d, "min_samples_leaf": 4, "max_features": 0.5,
                       "max_samples": 0.5} for d in (14, 22)],
    "xgboost": [{"n_estimators": 600, "max_depth": d, "learning_rate": 0.08, "min_child_weight": 4,
                 "subsample": 0.8, "colsample_bytree": 0.9} for d in (6, 10)],
}
STEPS = 6  # reports per tree model: the rungs ASHA can stop a trial at


def expected_cost(config: dict) -> float:
    """A rough relative single-thread fit cost, to order the trials: trees x depth, where a forest
    tree (exact splits on its bootstrap) costs about what 15 histogram boosting rounds do (measured
    on 161k rows: 8.5 s for 600 rounds of depth 6, 14.7 s for 48 forest trees of depth 14)."""
    if config["family"] == "ridge":
        return 1.0
    if config["family"] == "random_forest":
        return config["n_estimators"] * config["max_depth"] * config["max_samples"]
    return config["n_estimators"] * config["max_depth"] / 15


def trials() -> list[dict]:
    """The search space in the order Tune starts it: the tree models cheapest first, because
    asynchronous successive halving judges a trial at each rung against the trials that reached the
    rung before it, so the quick ones set the bar early and the expensive ones below it stop at
    their first rungs; Ridge (sub-second fits) last: with actors reused, a stream of sub-second
    trials at the start makes Tune hand every next trial to the first actor and cancel the second
    while it is still starting (one core idle for the first 10 s, measured)."""
    grid = [{"family": family, **params} for family, grid in SEARCH_SPACE.items() for params in grid]
    return sorted(grid, key=lambda c: (c["family"] == "ridge", expected_cost(c)))


def xgboost_params(config: dict, threads: int) -> dict:
    """XGBoost's training parameters for an xgboost config of the search space (in one process, or
    across the cluster: tasador/distributed_xgb.py)."""
    return {"objective": "reg:squarederror", "tree_method": "hist", "nthread": threads, "seed": 0,
            "eta": config["learning_rate"], "max_depth": config["max_depth"],
            "min_child_weight": config["min_child_weight"], "subsample": config["subsample"],
            "colsample_bytree": config["colsample_bytree"]}


SERVING_THREADS = 1  # a replica prices one request at a time on one thread: replicas are packed one per core


def booster_threads(booster, threads: int) -> None:
    """XGBoost's ``nthread``, and OpenMP's limit with it: XGBoost uses at most OpenMP's thread limit,
    which a Ray worker has at its CPUs (Ray sets ``OMP_NUM_THREADS``), so ``nthread`` alone does not
    raise it (measured: 2 threads as slow as 1 in a Tune trial). threadpoolctl sets the limit of the
    OpenMP runtime XGBoost loaded."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="openmp")
    booster.set_param("nthread", threads)


def set_threads(regressor, threads: int) -> None:
    """How many threads the regressor's own work uses from now on: a booster's ``nthread``, a forest's
    ``n_jobs`` (Ridge has none). A pickled booster carries the setting it was last given."""
    booster = getattr(regressor, "booster", None)
    if booster is not None:
        booster_threads(booster, threads)
    elif "n_jobs" in regressor.get_params():
        regressor.set_params(n_jobs=threads)


def cpus_here() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def threads_for_batch_work(regressor, threads: int | None = None):
    """``threads`` (default: every core of this process, ``cpus_here``) for a batch job's pricing of many
    rows (a training's test rows and SHAP sample, promotion's held-out rows), back to ``SERVING_THREADS``
    after: the version is pickled and served so."""
    set_threads(regressor, threads or cpus_here())
    try:
        yield regressor
    finally:
        set_threads(regressor, SERVING_THREADS)


def fit_steps(config: dict, X: np.ndarray, y: np.ndarray, threads: int | Callable[[], int],
              X_eval: np.ndarray | None = None):
    """Fit the regressor of ``config``; yields (step, model, the model's predictions for ``X_eval`` or
    None) after each growth step. ``threads``: a number, or a function asked as the fit goes how many
    threads it may use now (a Tune trial borrowing a core its node leaves idle: ``tuning.NodeCores``)."""
    threads_now = threads if callable(threads) else (lambda: threads)
    params = {k: v for k, v in config.items() if k != "family"}
    family = config["family"]
    if family == "ridge":
        model = make_pipeline(StandardScaler(), Ridge(alpha=params["alpha"])).fit(X, y)
        yield 1, model, None if X_eval is None else model.predict(X_eval)
    elif family == "random_forest":
        total = params.pop("n_estimators")
        model = RandomForestRegressor(n_estimators=0, warm_start=True, random_state=0, **params)
        for step in range(1, STEPS + 1):
            model.set_params(n_estimators=round(total * step / STEPS), n_jobs=threads_now())
            model.fit(X, y)
            yield step, model, None if X_eval is None else model.predict(X_eval)
    elif family == "xgboost":
        import xgboost as xgb

        total = params.pop("n_estimators")
        used = threads_now()
        dtrain = xgb.DMatrix(X, label=y, nthread=used)
        # the evaluation rows in the booster's prediction cache: each report predicts only the rounds
        # added since the last one (inplace_predict re-walks every tree: 12.6 s of a 600-round, depth-10
        # trial's reports on 109k validation rows, against about 3.6 s)
        deval = None if X_eval is None else xgb.DMatrix(X_eval, nthread=used)
        booster = xgb.Booster(xgboost_params(params, used), [dtrain] + ([deval] if deval is not None else []))
        booster_threads(booster, used)
        per_step = max(1, total // STEPS)
        ask_every = max(1, per_step // 4)
        # One booster updated round by round, as xgb.train does: its prediction cache stays warm.
        # (Continuing with xgb.train(xgb_model=...) per step re-predicts every earlier tree on the
        # training rows each time: 44 s instead of 22 s for 600 deep rounds on 161k rows.)
        for done in range(1, total + 1):
            if done % ask_every == 0 and (now := threads_now()) != used:
                used = now
                booster_threads(booster, used)
            booster.update(dtrain, done - 1)
            step = STEPS if done == total else done // per_step  # the last report is the whole model
            if done == total or (done % per_step == 0 and step < STEPS):
                # the same booster, grown after the yield
                yield step, BoosterRegressor(booster), None if deval is None else booster.predict(deval)
    else:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


class BoosterRegressor:
    """A trained XGBoost booster with the ``predict`` of a regressor (and TreeSHAP contributions)."""

    def __init__(self, booster):
        self.booster = booster

    def predict(self, X: np.ndarray) -> np.ndarray:
        trees = self.__dict__.get("small_batch_trees")  # set by compiled.attach_at_load in serving only
        if trees is not None and len(X) <= compiled.SMALL_ROWS:
            return compiled.gtil_predict(trees, X)
        return self.booster.inplace_predict(X)  # no DMatrix copy: what serving a few rows needs

    def __getstate__(self) -> dict:
        """Pickled without the serving-only Treelite trees (they are rebuilt and checked at each load)."""
        return {k: v for k, v in self.__dict__.items() if k != "small_batch_trees"}

    def contributions(self, X: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        return self.booster.predict(xgb.DMatrix(X), pred_contribs=True)


def price_metrics(y_log: np.ndarray, pred_log: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R2 and MAPE on the price scale (dollars), plus RMSE of log price."""
    price, pred = np.exp(y_log), np.exp(pred_log)
    return {"rmse": float(np.sqrt(np.mean((price - pred) ** 2))), "mae": float(mean_absolute_error(price, pred)),
            "r2": float(r2_score(price, pred)), "mape": float(mean_absolute_percentage_error(price, pred)),
            "rmse_log": float(np.sqrt(np.mean((y_log - pred_log) ** 2)))}
