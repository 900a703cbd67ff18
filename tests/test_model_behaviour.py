"""How a trained price model behaves, in the style of Made-With-ML's ``tests/model``: invariance (what
must not move the price), direction (what must move it which way) and minimum functionality. No
server: the model is trained here on the module's own data (the re-created API's generator, cleaned
by the real cleaning) and served through ``ProductionModel`` with an injected loader, the way every
replica serves the registry's versions."""

from __future__ import annotations

import copy
import threading
import time

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from data_api.generator import World, generate_batch
from data_api.plan import PLAN
from serve_app.model import LoadedModel, ProductionModel
from tasador import compiled
from tasador.cleaning import clean_frame
from tasador.features import ListingFeatures, PriceModel
from tasador.models import fit_steps, price_metrics
from tasador.schema import FEATURES
from tasador.settings import Settings

XGBOOST = {"family": "xgboost", "n_estimators": 150, "max_depth": 6, "learning_rate": 0.1, "min_child_weight": 4,
           "subsample": 0.8, "colsample_bytree": 0.9}


def cleaned(kind: int, scale: float) -> pd.DataFrame:
    raw = generate_batch(World(7), PLAN[kind], seed=7, group=3, day="Friday", scale=scale).astype(object)
    raw = raw.where(raw.notna(), None)
    raw["raw_id"], raw["batch_id"] = range(1, len(raw) + 1), 1
    out = clean_frame(raw, 10_000, 1e8)
    return out[out["reason"].isna()].reset_index(drop=True)


class FixedVersions:
    """The loader a replica is given, over models held in memory: ``versions`` by number, the alias
    on ``production``."""

    def __init__(self, versions: dict[str, PriceModel], production: str):
        self.versions, self.production = versions, production

    def production_version(self, max_age_s: float | None = None) -> str:
        return self.production

    def load(self, version: str) -> LoadedModel:
        return LoadedModel(version, self.versions[version], {"name": "behaviour-test", "version": version})


@pytest.fixture(scope="module")
def served():
    frame = pd.concat([cleaned(2, 0.05), cleaned(4, 0.03), cleaned(5, 0.02)], ignore_index=True)
    held_out = frame.index % 5 == 0
    train, test = frame[~held_out], frame[held_out]
    y = np.log(train["price"].to_numpy(dtype=float))
    features = ListingFeatures()
    X = features.fit_transform(train[list(FEATURES)], y)
    *_, (_, regressor, _) = fit_steps(XGBOOST, X.astype(np.float32), y, threads=2)
    model = PriceModel(features, regressor, "xgboost")
    loader = FixedVersions({"1": model}, "1")
    production = ProductionModel(Settings(serve_poll_s=3600), lambda _settings: loader)
    assert production.current is not None and production.current.version == "1"
    return {"production": production, "loader": loader, "test": test.reset_index(drop=True)}


def price(served, listings: list[dict]) -> np.ndarray:
    """Prices as the replica answers them (one request of column lists, as the ingress sends)."""
    columns = {f: [listing.get(f) for listing in listings] for f in FEATURES}
    answer = served["production"].predict([columns])[0]
    assert "error" not in answer, answer
    return np.asarray(answer["prices"])


def rows(served, n: int = 40) -> list[dict]:
    test = served["test"].head(n)[list(FEATURES)].astype(object)
    return test.where(test.notna(), None).to_dict("records")


def test_minimum_functionality_far_better_than_the_mean_on_unseen_rows(served):
    test = served["test"]
    y = np.log(test["price"].to_numpy(dtype=float))
    predicted = np.log(price(served, rows(served, len(test))))
    model, mean = price_metrics(y, predicted), price_metrics(y, np.full(len(y), y.mean()))
    assert model["rmse_log"] < 0.6 * mean["rmse_log"], (model, mean)


def test_minimum_functionality_a_listing_with_only_status_and_state_is_priced(served):
    bare = {"status": "for_sale", "state": "Ohio"}
    assert np.isfinite(price(served, [bare])).all() and price(served, [bare])[0] > 0


def test_invariance_the_street_id_and_the_zip_codes_spelling_do_not_move_the_price(served):
    listings = rows(served)
    moved = [{**r, "street": (r["street"] or 0) + 777} for r in listings]
    assert np.array_equal(price(served, listings), price(served, moved))  # a property's id, not a feature
    with_zip = [r for r in listings if r["zip_code"]][:10]
    as_number = [{**r, "zip_code": float(r["zip_code"])} for r in with_zip]  # 02108 written 2108.0
    assert np.array_equal(price(served, with_zip), price(served, as_number))


def test_invariance_a_city_or_broker_never_seen_is_priced_the_same_whatever_its_name(served):
    """Unseen values fall back to the training mean: the name of a city or broker the model never
    saw cannot move the price (no hash of the name leaks into it)."""
    listings = rows(served, 10)
    one = [{**r, "city": "Nowhere Springs", "brokered_by": 987_654_321.0} for r in listings]
    other = [{**r, "city": "Atlantis Falls", "brokered_by": 123_456_789.0} for r in listings]
    assert np.array_equal(price(served, one), price(served, other))


def test_direction_a_bigger_house_in_the_same_place_costs_more(served):
    listings = [r for r in rows(served) if r["house_size"]]
    small = price(served, [{**r, "house_size": 1_000.0} for r in listings])
    big = price(served, [{**r, "house_size": 4_000.0} for r in listings])
    assert (big > small).mean() >= 0.9, np.round(big / small, 2)


def test_direction_a_lot_to_build_on_costs_less_than_a_house_for_sale(served):
    listings = rows(served)
    for_sale = price(served, [{**r, "status": "for_sale"} for r in listings])
    to_build = price(served, [{**r, "status": "ready_to_build"} for r in listings])
    assert (to_build < for_sale).mean() >= 0.9, np.round(to_build / for_sale, 2)


def test_a_version_pricing_nan_is_refused_and_the_working_one_keeps_serving(served):
    """The injected loader's alias moves to a version that prices NaN: the replica refuses it."""

    class NaNPrices:
        family = "broken"

        def predict(self, X):
            return np.full(len(X), np.nan)

    production, loader = served["production"], served["loader"]
    loader.versions["2"], loader.production = NaNPrices(), "2"
    try:
        production.refresh()
        assert production.current.version == "1" and production.last_error["version"] == "2"
        assert np.isfinite(price(served, rows(served, 3))).all()
    finally:
        loader.production = "1"
        production.refresh()



class GatedLoader(FixedVersions):
    """Holds every load until ``release`` is set: a replica's first load, which takes seconds."""

    def __init__(self, versions: dict[str, PriceModel], production: str | None):
        super().__init__(versions, production)
        self.release = threading.Event()

    def load(self, version: str) -> LoadedModel:
        assert self.release.wait(30)
        return super().load(version)


def test_a_replica_loading_its_first_version_passes_serves_health_check(served):
    """Serve replaces a replica whose ``check_health`` fails three times in a row: a replica still
    loading the registry's version must not fail it (it did, and was replaced mid-load), one that has
    no model while the registry names one, and is not loading it, must."""
    model = served["production"].current.model
    loader = GatedLoader({"1": model}, None)
    production = ProductionModel(Settings(serve_poll_s=3600), lambda _settings: loader)
    assert production.current is None and production.alive()  # no version in the registry yet
    loader.production = "1"
    refresh = threading.Thread(target=production.refresh)
    refresh.start()
    deadline = time.monotonic() + 10
    while production.loading != "1":
        assert time.monotonic() < deadline, "the load never started"
        time.sleep(0.01)
    assert production.current is None and production.alive()  # loading: alive
    loader.release.set()
    refresh.join(30)
    assert production.current.version == "1" and production.alive()
    production.current, production.loading = None, None  # a model lost while the registry names one
    assert not production.alive()



def test_small_requests_are_priced_by_gtil_as_xgboost_prices_them(served, monkeypatch):
    """``tasador.compiled``: checked at registration, carried in the pickle, checked again at load, then
    up to SMALL_ROWS rows go through Treelite's GTIL with XGBoost's predictions (log price, 1e-5 relative)."""
    model = copy.deepcopy(served["production"].current.model)
    tags = compiled.check_at_registration(model, served["test"][list(FEATURES)])
    assert tags["compiled"] == "true" and float(tags["compiled_max_rel_diff"]) <= compiled.MAX_REL_DIFF
    loaded = cloudpickle.loads(cloudpickle.dumps(model))  # as MLflow stores and loads a version
    assert len(loaded.check_rows_) == min(compiled.CHECK_ROWS, len(served["test"]))
    report = compiled.attach_at_load(loaded)
    assert report["compiled"] is True and report["max_rel_diff"] <= compiled.MAX_REL_DIFF
    assert "small_batch_trees" not in cloudpickle.loads(cloudpickle.dumps(loaded)).regressor.__dict__

    calls = []
    monkeypatch.setattr(compiled, "gtil_predict", lambda trees, X, real=compiled.gtil_predict: (
        calls.append(len(X)), real(trees, X))[1])
    rows = served["test"][list(FEATURES)].sample(200, random_state=3)
    by_xgboost = model.predict_log(rows)  # the registered model: no GTIL attached
    for size in (1, 2, compiled.SMALL_ROWS, compiled.SMALL_ROWS + 1, 64):
        got = np.concatenate([loaded.predict_log(rows.iloc[i:i + size]) for i in range(0, 64, size)])[:64]
        np.testing.assert_allclose(got, by_xgboost[:len(got)], rtol=compiled.MAX_REL_DIFF)
        np.testing.assert_allclose(np.exp(got), np.exp(by_xgboost[:len(got)]), rtol=5e-5)  # dollars
    assert calls and max(calls) == compiled.SMALL_ROWS  # small batches by GTIL, larger ones by XGBoost


def test_a_version_that_fails_the_gtil_check_is_priced_by_xgboost_alone(served, monkeypatch):
    model = copy.deepcopy(served["production"].current.model)
    compiled.check_at_registration(model, served["test"][list(FEATURES)])
    other = copy.deepcopy(model)
    other.regressor.booster = other.regressor.booster[:20]  # another model: its first 20 trees
    monkeypatch.setattr(compiled, "compile_trees", lambda _model, real=compiled.compile_trees: real(other))
    report = compiled.attach_at_load(model)
    assert report["compiled"] is False and "differs from XGBoost" in report["why"]
    assert "small_batch_trees" not in model.regressor.__dict__

    del model.check_rows_  # a version registered before the check: XGBoost alone
    assert compiled.attach_at_load(model) == {"compiled": False, "why": "registered without held-out check rows"}
