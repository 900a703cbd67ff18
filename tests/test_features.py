"""The feature pipeline inside every model, with no server: the same listing in every form a client or
the API sends it gives the same row; unseen and missing values are handled; the matrix is finite."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tasador.features import DICT_ROWS, FAST_ROWS, ListingFeatures, typed, typed_by_pandas, typed_by_value
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



def test_the_encoder_fitted_on_codes_is_the_encoder_fitted_on_the_values():
    """``fit_on_codes``: same cross-fitted matrix, same fitted encoder (categories in sklearn's sorted
    order, encodings, mean), same transform of unseen and missing values, as sklearn fitted on the text."""
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import TargetEncoder

    from tasador.features import fit_on_codes

    X, y = listings(3_000, seed=3)
    rng = np.random.default_rng(4)
    X = X.assign(city=rng.choice(["Boston", "Salem", "Ávila", "b", "B", "10"], len(X)),
                 brokered_by=rng.integers(1, 400, len(X)).astype(float))
    X.loc[rng.random(len(X)) < 0.1, ["zip_code", "city"]] = None
    categories = ListingFeatures._categories(typed(X))
    fresh = lambda: TargetEncoder(target_type="continuous", smooth="auto", cv=KFold(5, shuffle=True, random_state=0))  # noqa: E731
    on_values, on_codes = fresh(), fresh()
    expected = on_values.fit_transform(categories, y)
    assert np.array_equal(fit_on_codes(on_codes, categories, y), expected)
    for ours, theirs in zip(on_codes.categories_, on_values.categories_, strict=True):
        assert ours.dtype == theirs.dtype and ours.tolist() == theirs.tolist()
    for ours, theirs in zip(on_codes.encodings_, on_values.encodings_, strict=True):
        assert np.array_equal(ours, theirs)
    assert on_codes.target_mean_ == on_values.target_mean_
    unseen = categories[:50].copy()
    unseen[::3, 1] = "Nowhere|Nowhere"
    assert np.array_equal(on_codes.transform(unseen), on_values.transform(unseen))

ROWS = 24  # rows per generated frame: a frame's columns mix their values' kinds as soon as it has a few
assert ROWS <= FAST_ROWS

# values as the API hands them over (plain), and odd ones the value-by-value path must leave to pandas
_plain_numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
_plain_texts = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["Boston", "SOLD", "for_sale", ""]))
_plain_ids = st.one_of(st.none(), st.sampled_from(["02108", "00760", "2108", "7", "0"]), st.integers(0, 10**6),
                       st.floats(0, 1e6).map(round).map(float), st.just(float("nan")))
_plain_dates = st.one_of(st.none(), st.dates(dt.date(1700, 1, 1), dt.date(2200, 12, 31)),
                         st.dates(dt.date(1700, 1, 1), dt.date(2200, 12, 31)).map(str))
_odd = st.sampled_from(["3", " 4", "1e3", "x", True, "021 08", "-5", "٣", "1.5", 2.5e17, 1.5, "2023-02-30",
                        "2023-3-30", "30/03/2023", "0001-01-01", "9999-12-31", dt.date(1, 1, 1), dt.date(9999, 1, 1),
                        "1677-09-21", "2262-04-12", float("nan"), 7, "99999999999999999999"])
_PLAIN = {**dict.fromkeys(("bed", "bath", "acre_lot", "house_size", "street"), _plain_numbers),
          **dict.fromkeys(("status", "city", "state"), _plain_texts), "zip_code": _plain_ids,
          "brokered_by": _plain_ids, "prev_sold_date": _plain_dates}


def same_typed(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for col in a:
        if a[col].dtype.kind in "fM":
            np.testing.assert_array_equal(a[col], b[col], err_msg=col)  # NaN and NaT equal themselves here
            assert a[col].dtype == b[col].dtype, col
        else:
            assert a[col].tolist() == b[col].tolist(), col


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries(_PLAIN), min_size=1, max_size=ROWS))
def test_plain_values_are_typed_by_value_exactly_as_pandas_types_them(rows):
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    same_typed(typed_by_value(frame), typed_by_pandas(frame))  # never left to pandas: plain values


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({f: st.one_of(_PLAIN[f], _odd) for f in FEATURES}), min_size=1,
                max_size=ROWS))
def test_any_small_frame_is_typed_as_pandas_types_it(rows):
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    try:
        by_pandas = typed_by_pandas(frame)
    except (TypeError, ValueError, OverflowError) as exc:  # pandas refuses it: so must typed()
        with pytest.raises(type(exc)):
            typed(frame)
        return
    same_typed(typed(frame), by_pandas)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries(_PLAIN), min_size=1, max_size=ROWS))
def test_the_api_columns_are_typed_as_the_same_rows_in_a_frame(rows):
    """The serving path hands the model a mapping of column lists (no frame per request): typed the
    same as the frame of those rows."""
    columns = {f: [r[f] for r in rows] for f in FEATURES}
    same_typed(typed(columns), typed_by_pandas(pd.DataFrame(rows, columns=list(FEATURES))))


def test_small_batches_are_encoded_as_large_ones_and_the_lookups_are_not_pickled():
    """Up to ``DICT_ROWS`` rows are target-encoded through dicts, more through pandas' index: the same
    numbers, unseen and missing values included. The lookups are derived, so not pickled; a version
    pickled with only ``_lookups`` (before the dicts) still transforms."""
    import pickle

    X, y = listings()
    features = ListingFeatures().fit(X, y)
    odd = X.head(6).astype(object)
    odd.loc[:3, ["city", "zip_code", "brokered_by", "state"]] = ["Nowhere", "99999", None, None]
    rows = pd.concat([odd, X], ignore_index=True)
    assert len(rows) > DICT_ROWS
    whole = features.transform(rows)  # pandas' index
    for start in range(0, len(rows), DICT_ROWS):
        part = rows.iloc[start:start + DICT_ROWS]
        np.testing.assert_array_equal(features.transform(part), whole[start:start + len(part)])
    copy = pickle.loads(pickle.dumps(features))
    assert "_tables" not in copy.__dict__ and "_lookups" not in copy.__dict__
    copy._lookups = [pd.Index(known) for known in copy.encoder_.categories_]  # as versions pickled before
    np.testing.assert_array_equal(copy.transform(odd), whole[:6])


def test_what_the_api_hands_over_takes_the_value_by_value_path():
    """The ingress's columns (``serve_app.schemas.to_columns``: floats, str, date or None) never need
    pandas' conversions."""
    listing = {"brokered_by": 22611.0, "status": "for_sale", "bed": 3.0, "bath": None, "acre_lot": 0.25,
               "street": 1594530.0, "city": "Boston", "state": "Massachusetts", "zip_code": "02108",
               "house_size": 1800.0, "prev_sold_date": dt.date(2015, 6, 30)}
    empty = dict.fromkeys(FEATURES)
    frame = pd.DataFrame({f: [listing[f], empty[f]] for f in FEATURES})
    same_typed(typed_by_value(frame), typed_by_pandas(frame))
    assert typed_by_value(frame)["zip_code"].tolist() == ["2108", None]


def test_contributions_sum_into_the_raw_feature_each_column_comes_from():
    """``explain.by_raw_feature`` (one vectorised sum) against the per-column sum it replaced."""
    from tasador.explain import by_raw_feature
    from tasador.features import source_feature

    X, y = listings()
    names = list(ListingFeatures().fit(X, y).get_feature_names_out())
    values = np.random.default_rng(1).normal(size=(7, len(names)))
    expected = pd.DataFrame(0.0, index=range(7), columns=list(FEATURES))
    for j, name in enumerate(names):
        expected[source_feature(name)] += values[:, j]
    summed = by_raw_feature(values, names)
    assert summed.shape == (7, len(FEATURES)) and len({source_feature(n) for n in names}) > 3
    np.testing.assert_allclose(summed, expected.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(summed.sum(axis=1), values.sum(axis=1))  # additivity kept
