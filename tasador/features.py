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

import datetime as dt
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.model_selection import KFold
from sklearn.preprocessing import TargetEncoder

from tasador.schema import FEATURES, NUMERIC_FEATURES, STATUSES

ENCODED = ("state", "city", "zip_code", "brokered_by")


def typed(X: pd.DataFrame | Mapping[str, list]) -> dict[str, np.ndarray]:
    """The 11 features with their model types, whatever came in (strings from JSON, typed clean rows),
    from a frame or from a mapping of each feature to a list of values (the API's validated columns,
    ``serve_app.schemas.to_columns``: no frame built per request, 184 us of a one-listing call).
    Numpy arrays, not a frame: a request of one listing must not pay pandas' per-column overhead. Up to
    ``FAST_ROWS`` rows of plain values are typed value by value: pandas' conversions cost about 2 ms a
    call whatever the rows, most of a single listing's transform (docs/benchmarks.md); anything else
    takes pandas' path, which ``tests/test_features.py`` holds the value-by-value one equal to."""
    rows = len(X[FEATURES[0]]) if isinstance(X, Mapping) else len(X)
    if rows <= FAST_ROWS:
        try:
            return typed_by_value(X)
        except Unusual:
            pass
    return typed_by_pandas(pd.DataFrame(X, columns=list(FEATURES)) if isinstance(X, Mapping) else X)


# value by value against pandas, one call on a mapping of columns (2026-12-06, the 10%-scale XGBoost
# model): typing 8 rows 54 us / 2,074 us, 64 rows 365 / 2,032, 256 rows 1,441 / 2,447; the target
# encoding's dicts against pandas' index: 64 rows 49 / 94 us, 128 rows 95 / 104, 256 rows 189 / 119
FAST_ROWS = 256
DICT_ROWS = 128
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class Unusual(Exception):
    """A value the value-by-value path leaves to pandas."""


def _number(v) -> float:
    if v is None or v is pd.NA:
        return np.nan
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return float(v)
    raise Unusual


def _text(v) -> str | None:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        return v
    raise Unusual


def _id(v) -> str | None:
    """An id as integer text, as pandas makes it: "02108", 2108.0 and "2108" are "2108"."""
    if isinstance(v, str):
        if not (v.isascii() and v.isdigit() and len(v) <= 15):
            raise Unusual
        return str(int(v))
    x = _number(v)
    if x != x:
        return None
    if not (x.is_integer() and abs(x) < 2**53):
        raise Unusual
    return str(int(x))


def _date(v) -> np.datetime64:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return np.datetime64("NaT", "ns")
    if type(v) is dt.date or (isinstance(v, str) and _ISO_DATE.fullmatch(v)):
        try:
            day = np.datetime64(v, "D")
        except ValueError:  # "2023-02-30": pandas makes it NaT
            raise Unusual from None
        if _NS_FIRST_DAY <= day <= _NS_LAST_DAY:  # numpy wraps nanoseconds past these silently
            return day.astype("datetime64[ns]")
    raise Unusual


_NS_FIRST_DAY, _NS_LAST_DAY = np.datetime64("1677-09-22", "D"), np.datetime64("2262-04-10", "D")


def typed_by_value(X: pd.DataFrame | Mapping[str, list]) -> dict[str, np.ndarray]:
    column = {col: list(X[col]) for col in FEATURES} if isinstance(X, Mapping) else {col: X[col].tolist()
                                                                                    for col in FEATURES}
    out = {col: np.array([_number(v) for v in column[col]], dtype="float64") for col in NUMERIC_FEATURES}
    status = [_text(v) for v in column["status"]]
    state = [_text(v) for v in column["state"]]
    city = [_text(v) for v in column["city"]]
    out["status"] = np.array([s.lower() if s is not None else None for s in status], dtype=object)
    out["state"] = np.array(state, dtype=object)
    out["city"] = np.array([f"{s}|{c}" if s is not None and c is not None else None for s, c in zip(state, city,
                                                                                                 strict=True)],
                           dtype=object)
    for col in ("zip_code", "brokered_by"):
        out[col] = np.array([_id(v) for v in column[col]], dtype=object)
    out["prev_sold_date"] = np.array([_date(v) for v in column["prev_sold_date"]], dtype="datetime64[ns]")
    return out


def typed_by_pandas(X: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {col: pd.to_numeric(X[col], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
           for col in NUMERIC_FEATURES}
    state = X["state"].astype("string")
    out["status"] = X["status"].astype("string").str.lower().to_numpy(dtype=object, na_value=None)
    out["state"] = state.to_numpy(dtype=object, na_value=None)
    out["city"] = (state + "|" + X["city"].astype("string")).to_numpy(dtype=object, na_value=None)
    # ids as integer text: "02108", 2108.0 and "2108" are one zip. Not the 5-digit form the cleaning and
    # the API write (tasador/schema.py): this is the key format of every trained version's encoder,
    # and another would make every zip code unseen to the versions already in a registry
    for col in ("zip_code", "brokered_by"):
        out[col] = pd.to_numeric(X[col], errors="coerce").astype("Int64").astype("string").to_numpy(
            dtype=object, na_value=None)
    out["prev_sold_date"] = pd.to_datetime(X["prev_sold_date"], errors="coerce").to_numpy()
    return out


class ListingFeatures(TransformerMixin, BaseEstimator):
    def __init__(self, smooth: float | str = "auto"):
        self.smooth = smooth

    def fit(self, X, y=None):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y=None, **_):
        t = typed(X)
        dates = t["prev_sold_date"]
        self.reference_date_ = pd.Timestamp(np.nanmax(dates)) if (~np.isnat(dates)).any() else pd.Timestamp(
            "2024-01-01")
        names, numeric = self._numeric(t, fitting=True)
        self.encoder_ = TargetEncoder(target_type="continuous", smooth=self.smooth,
                                      cv=KFold(5, shuffle=True, random_state=0))
        encoded = fit_on_codes(self.encoder_, self._categories(t), np.asarray(y, dtype=float))
        self.feature_names_ = [*names, *(f"{c}_encoded" for c in ENCODED)]
        return np.hstack([numeric, encoded])

    def transform(self, X):
        t = typed(X)
        _, numeric = self._numeric(t, fitting=False)
        return np.hstack([numeric, self._encode(self._categories(t))])

    def _encode(self, categories: np.ndarray) -> np.ndarray:
        """The fitted target encoding (what ``encoder_.transform`` computes: unseen values get the
        overall mean), by one hash lookup per column instead of sklearn's per-call validation: a dict's
        for up to ``DICT_ROWS`` rows (``Index.get_indexer`` costs ~25 us a column whatever the rows),
        pandas' index for more."""
        enc = self.encoder_
        if "_tables" not in self.__dict__:  # built once per loaded model (tens of thousands of zips)
            self._lookups = [pd.Index(known) for known in enc.categories_]
            self._tables = [dict(zip(known.tolist(), values.tolist(), strict=True))
                            for known, values in zip(enc.categories_, enc.encodings_, strict=True)]
        if len(categories) <= DICT_ROWS:
            mean = float(enc.target_mean_)
            return np.array([[table.get(v, mean) for table, v in zip(self._tables, row, strict=True)]
                             for row in categories.tolist()], dtype=float).reshape(categories.shape)
        out = np.empty(categories.shape, dtype=float)
        for j, (lookup, values) in enumerate(zip(self._lookups, enc.encodings_, strict=True)):
            index = lookup.get_indexer(categories[:, j])
            out[:, j] = np.where(index >= 0, values[np.maximum(index, 0)], enc.target_mean_)
        return out

    def __getstate__(self) -> dict:
        """Pickled without the lookups ``_encode`` derives from the encoder (registration predicts
        before it logs the model; versions pickled before this carry ``_lookups`` only)."""
        return {k: v for k, v in super().__getstate__().items() if k not in ("_lookups", "_tables")}

    def _numeric(self, t: dict[str, np.ndarray], fitting: bool) -> tuple[list[str], np.ndarray]:
        with np.errstate(invalid="ignore"):
            raw = {"bed": t["bed"], "bath": t["bath"], "house_size": np.log1p(t["house_size"]),
                   "acre_lot": np.log1p(t["acre_lot"])}
        age = (np.datetime64(self.reference_date_) - t["prev_sold_date"]) / np.timedelta64(1, "D") / 365.25
        raw["prev_sold_age"] = np.asarray(age, dtype=float)
        if fitting:
            self.medians_ = {k: float(np.nanmedian(v)) if (~np.isnan(v)).any() else 0.0 for k, v in raw.items()}
        names, columns = [], []
        for name, values in raw.items():
            missing = np.isnan(values)
            names += [name, f"{name}_missing"]
            columns += [np.where(missing, self.medians_[name], values), missing.astype(float)]
        for status in STATUSES:
            names.append(f"status_{status}")
            columns.append((t["status"] == status).astype(float))
        return names, np.column_stack(columns)

    @staticmethod
    def _categories(t: dict[str, np.ndarray]) -> np.ndarray:
        return np.column_stack([np.where(pd.isna(t[c]), "<missing>", t[c]).astype(object) for c in ENCODED])

    def get_feature_names_out(self, input_features=None):
        return np.array(self.feature_names_, dtype=object)


def fit_on_codes(encoder: TargetEncoder, categories: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``encoder.fit_transform(categories, y)``, fitted on each column's integer codes: sklearn checks and
    sorts object values in Python (2.7 s of a 700k-row fit, most of the training's feature preparation),
    integers in numpy. Codes numbered in the values' sorted order give the same cross-fitted output and
    the same encodings in the same order; the encoder then holds the values themselves, as if it had been
    fitted on them (``tests/test_features.py`` compares the two fits attribute by attribute)."""
    codes, values = [], []
    for j in range(categories.shape[1]):
        code, uniques = pd.factorize(categories[:, j], sort=True)
        codes.append(code)
        values.append(np.asarray(uniques, dtype=object))
    encoded = encoder.fit_transform(np.column_stack(codes), y)
    encoder.categories_ = [values[j][known] for j, known in enumerate(encoder.categories_)]
    return encoded


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
    prices in dollars from the raw 11 features. It stays in this module: every version in a registry
    is a pickle that names ``tasador.features.PriceModel``, and moving the class would leave them
    unloadable."""

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
