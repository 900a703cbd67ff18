"""The feature pipeline inside every model, with no server: the same listing in every form a client or
the API sends it gives the same row; unseen and missing values are handled; the matrix is finite."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasador.features import ListingFeatures
from tasador.schema import FEATURES


def listings(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "brokered_by": rng.integers(1, 50, n).astype(float), "status": rng.choice(["for_sale", "sold"], n),
        "bed": rng.integers(1, 6, n).astype(float), "bath": rng.integers(1, 4, n).astype(float),
        "acre_lot": rng.exponential(0.3, n), "street": rng.integers(1, 10**6, n).astype(float),
        "city": rng.choice(["Boston", "Salem"], n), "state": rng.choice(["Massachusetts", "Texas"], n),
        "zip_code": rng.choice(["02108", "01970", "75001"], n), "house_size": rng.normal(1800, 300, n),
        "prev_sold_date": rng.choice(["2015-06-01", "2020-01-15", None], n)})
    y = 12 + np.log(frame["house_size"]) * 0.5 + (frame["state"] == "Massachusetts") * 0.8
    return frame[list(FEATURES)], y.to_numpy()


def test_the_matrix_is_finite_with_a_column_per_name():
    X, y = listings()
    features = ListingFeatures().fit(X, y)
    out = features.transform(X)
    assert out.shape == (len(X), len(features.feature_names_)) and np.isfinite(out).all()


def test_a_listing_as_text_with_an_unpadded_zip_and_float_ids_is_the_same_listing():
    X, y = listings()
    features = ListingFeatures().fit(X, y)
    one = X.head(5)
    as_api = one.astype(object).map(lambda v: None if v is None else str(v))
    as_api["zip_code"] = as_api["zip_code"].str.lstrip("0")  # as the raw CSV has it: 2108 for 02108
    assert np.allclose(features.transform(one), features.transform(as_api))


def test_unseen_and_missing_values_still_give_finite_features():
    X, y = listings()
    features = ListingFeatures().fit(X, y)
    odd = X.head(3).astype(object)
    odd.loc[:, ["city", "zip_code", "bed", "house_size", "prev_sold_date"]] = ["Nowhere", "99999", None, None, None]
    out = features.transform(odd)
    assert np.isfinite(out).all()
