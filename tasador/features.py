"""The feature pipeline inside every logged model, so serving takes the raw 11 features.

``ListingFeatures`` turns listings (the 11 feature columns, raw or typed) into a numeric matrix:
- sizes: log house_size, log acre_lot, bed, bath, each with a missing flag (missing imputed by the
  training median: the flag carries the signal);
- previous sale: age in years at the training data's reference date, plus a missing flag;
- status: one-hot;
- location and broker (high cardinality: ~20k cities, ~30k zips, ~100k brokers): smoothed target
  encoding of log price, cross-fitted during training (sklearn's TargetEncoder), for state, city
  (within state), zip code and broker; unseen values fall back to the overall mean.
The street id identifies a single property and is not used as a feature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.model_selection import KFold
from sklearn.preprocessing import TargetEncoder

from tasador.schema import FEATURES, STATUSES

ENCODED = ("state", "city", "zip_code", "brokered_by")
SIZES = ("bed", "bath", "house_size", "acre_lot")


def typed(X: pd.DataFrame) -> pd.DataFrame:
    """The 11 features with their model types, whatever came in (strings from JSON, typed clean rows)."""
    out = pd.DataFrame(index=X.index)
    for col in SIZES:
        out[col] = pd.to_numeric(X[col], errors="coerce").astype("float64")
    out["status"] = X["status"].astype("string").str.lower()
    out["state"] = X["state"].astype("string")
    out["city"] = (X["state"].astype("string") + "|" + X["city"].astype("string"))
    zip_num = pd.to_numeric(X["zip_code"], errors="coerce")
    out["zip_code"] = zip_num.astype("Int64").astype("string")
    out["brokered_by"] = pd.to_numeric(X["brokered_by"], errors="coerce").astype("Int64").astype("string")
    out["prev_sold_date"] = pd.to_datetime(X["prev_sold_date"], errors="coerce")
    return out


class ListingFeatures(TransformerMixin, BaseEstimator):
    def __init__(self, smooth: float | str = "auto"):
        self.smooth = smooth

    def fit(self, X, y=None):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y=None, **_):
        t = typed(X)
        self.reference_date_ = t["prev_sold_date"].max() if t["prev_sold_date"].notna().any() else pd.Timestamp(
            "2024-01-01")
        numeric = self._numeric(t, fitting=True)
        self.encoder_ = TargetEncoder(target_type="continuous", smooth=self.smooth,
                                      cv=KFold(5, shuffle=True, random_state=0))
        encoded = self.encoder_.fit_transform(self._categories(t), np.asarray(y, dtype=float))
        self.feature_names_ = [*numeric.columns, *(f"{c}_encoded" for c in ENCODED)]
        return np.hstack([numeric.to_numpy(dtype=float), encoded])

    def transform(self, X):
        t = typed(X)
        numeric = self._numeric(t, fitting=False)
        return np.hstack([numeric.to_numpy(dtype=float), self.encoder_.transform(self._categories(t))])

    def _numeric(self, t: pd.DataFrame, fitting: bool) -> pd.DataFrame:
        out = pd.DataFrame(index=t.index)
        raw = {"bed": t["bed"], "bath": t["bath"], "house_size": np.log1p(t["house_size"]),
               "acre_lot": np.log1p(t["acre_lot"])}
        age = (self.reference_date_ - t["prev_sold_date"]).dt.days / 365.25
        raw["prev_sold_age"] = age
        if fitting:
            self.medians_ = {k: float(v.median()) if v.notna().any() else 0.0 for k, v in raw.items()}
        for name, values in raw.items():
            out[name] = values.fillna(self.medians_[name])
            out[f"{name}_missing"] = values.isna().astype(float)
        for status in STATUSES:
            out[f"status_{status}"] = (t["status"] == status).fillna(False).astype(float)
        return out

    @staticmethod
    def _categories(t: pd.DataFrame) -> np.ndarray:
        return t[list(ENCODED)].astype(object).where(t[list(ENCODED)].notna(), "<missing>").to_numpy()

    def get_feature_names_out(self, input_features=None):
        return np.array(self.feature_names_, dtype=object)


def source_feature(transformed_name: str) -> str:
    """The raw feature a transformed column comes from (for explanations)."""
    for raw in FEATURES:
        if transformed_name.startswith(raw):
            return raw
    if transformed_name.startswith("prev_sold_age"):
        return "prev_sold_date"
    raise KeyError(transformed_name)


class PriceModel(RegressorMixin, BaseEstimator):
    """What is logged and served: the fitted feature pipeline and a regressor of log price; predicts
    prices in dollars from the raw 11 features."""

    def __init__(self, features: ListingFeatures, regressor, family: str):
        self.features, self.regressor, self.family = features, regressor, family

    def fit(self, X, y):
        self.features.fit(X, np.log(y))
        self.regressor.fit(self.features.transform(X), np.log(y))
        return self

    def predict_log(self, X) -> np.ndarray:
        return np.asarray(self.regressor.predict(self.features.transform(X)), dtype=float)

    def predict(self, X) -> np.ndarray:
        return np.exp(self.predict_log(X))
