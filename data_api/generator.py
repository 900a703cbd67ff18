"""Seeded synthetic listings calibrated to the real realtor.com file (DESIGN 3.1).

The "world" (cities, zip codes, brokers, location price levels) depends on the seed only; each batch
draws properties from it with a generator seeded by (seed, group, day, kind), so the same request
always returns the same rows. Prices depend on the features non-linearly: location x size
interaction, lot-size saturation, status and previous-sale effects, heavy upper tail.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from data_api.plan import HIGH, LOW, MID, BatchKind, scaled_rows
from tasador.schema import COLUMNS, STATES

# state: (population weight in millions, first zip3, last zip3, price level relative to the US median)
STATE_PROFILE: dict[str, tuple[float, int, int, float]] = {
    "Alabama": (5.1, 350, 369, 0.65), "Alaska": (0.73, 995, 999, 1.0), "Arizona": (7.4, 850, 865, 1.2),
    "Arkansas": (3.0, 716, 729, 0.6), "California": (39.0, 900, 961, 2.2), "Colorado": (5.9, 800, 816, 1.6),
    "Connecticut": (3.6, 60, 69, 1.1), "Delaware": (1.0, 197, 199, 1.0),
    "District of Columbia": (0.68, 200, 205, 1.9), "Florida": (22.0, 320, 349, 1.1),
    "Georgia": (11.0, 300, 319, 0.95), "Hawaii": (1.4, 967, 968, 2.4), "Idaho": (1.9, 832, 838, 1.2),
    "Illinois": (12.5, 600, 629, 0.8), "Indiana": (6.8, 460, 479, 0.7), "Iowa": (3.2, 500, 528, 0.7),
    "Kansas": (2.9, 660, 679, 0.7), "Kentucky": (4.5, 400, 427, 0.65), "Louisiana": (4.6, 700, 714, 0.6),
    "Maine": (1.4, 39, 49, 1.0), "Maryland": (6.2, 206, 219, 1.2), "Massachusetts": (7.0, 10, 27, 1.8),
    "Michigan": (10.0, 480, 499, 0.7), "Minnesota": (5.7, 550, 567, 0.95), "Mississippi": (2.9, 386, 397, 0.55),
    "Missouri": (6.2, 630, 658, 0.7), "Montana": (1.1, 590, 599, 1.3), "Nebraska": (2.0, 680, 693, 0.8),
    "Nevada": (3.2, 889, 898, 1.3), "New Hampshire": (1.4, 30, 38, 1.3), "New Jersey": (9.3, 70, 89, 1.4),
    "New Mexico": (2.1, 870, 884, 0.85), "New York": (19.6, 100, 149, 1.3),
    "North Carolina": (10.8, 270, 289, 0.95), "North Dakota": (0.8, 580, 588, 0.8), "Ohio": (11.8, 430, 459, 0.65),
    "Oklahoma": (4.0, 730, 749, 0.6), "Oregon": (4.2, 970, 979, 1.4), "Pennsylvania": (13.0, 150, 196, 0.8),
    "Rhode Island": (1.1, 28, 29, 1.3), "South Carolina": (5.4, 290, 299, 0.9), "South Dakota": (0.9, 570, 577, 0.85),
    "Tennessee": (7.1, 370, 385, 0.95), "Texas": (30.0, 750, 799, 0.9), "Utah": (3.4, 840, 847, 1.4),
    "Vermont": (0.65, 50, 59, 1.0), "Virginia": (8.7, 220, 246, 1.1), "Washington": (7.8, 980, 994, 1.7),
    "West Virginia": (1.8, 247, 268, 0.5), "Wisconsin": (5.9, 530, 549, 0.85), "Wyoming": (0.58, 820, 831, 1.0),
    "Puerto Rico": (3.2, 6, 9, 0.45), "Virgin Islands": (0.1, 8, 8, 1.1), "Guam": (0.15, 969, 969, 0.9),
}
assert tuple(STATE_PROFILE) == STATES, "STATE_PROFILE must list schema.STATES in order"

SINGLE_STATE = "Vermont"  # the one-state batch of the plan
_PREFIXES = ("Oak", "Maple", "Cedar", "River", "Lake", "Spring", "Fair", "Green", "Pine", "Ash", "Elm",
             "Clear", "Rock", "Silver", "Glen", "Red", "North", "South", "East", "West", "Mill", "Bay")
_SUFFIXES = ("ville", "field", "ton", "wood", "dale", "port", " Park", " Falls", " Heights", "burg",
             " City", " Springs", "ford", "view", " Hills", "mont")
BASE_PRICE = 190_000.0
ZIP_DRAWS = 5  # a listing's zip: one of five draws over its city's one to five zip codes


class World:
    """Fixed per seed: the cities of each state, their zip codes and price levels, the brokers."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 0])
        profile = np.array([STATE_PROFILE[s] for s in STATES], dtype=float)
        self.state_weight = profile[:, 0] / profile[:, 0].sum()
        self.state_level = profile[:, 3]
        city_names, city_state, city_level, city_weight, city_rural, city_zips = [], [], [], [], [], []
        for s, (weight, zlo, zhi, _) in enumerate(STATE_PROFILE.values()):
            n_cities = int(12 + 6 * weight)
            picks = rng.choice(len(_PREFIXES) * len(_SUFFIXES), size=n_cities, replace=False)
            for rank, pick in enumerate(picks):
                city_names.append(_PREFIXES[pick // len(_SUFFIXES)] + _SUFFIXES[pick % len(_SUFFIXES)])
                city_state.append(s)
                city_weight.append(1.0 / (rank + 1) ** 0.9)  # a few big cities, many small towns
                city_level.append(rng.lognormal(0.0, 0.35))
                city_rural.append(rank > n_cities // 3)
                zip3 = rng.integers(zlo, zhi + 1)
                city_zips.append(zip3 * 100 + rng.choice(100, size=rng.integers(1, 6), replace=False))
        self.city_names = np.array(city_names, dtype=object)
        self.city_state = np.array(city_state)
        self.city_level = np.array(city_level)
        self.city_rural = np.array(city_rural)
        self.zip_level = {int(z): rng.lognormal(0.0, 0.12) for zs in city_zips for z in zs}
        # a city's zip for each of the five draws (``zs[i % len(zs)]``) and its level, as tables: the
        # per-row Python lookups they replace were 60% of a 361k-row batch's generation
        self.zip_table = np.array([[zs[i % len(zs)] for i in range(ZIP_DRAWS)] for zs in city_zips])
        self.zip_level_table = np.vectorize(lambda z: self.zip_level[int(z)], otypes=[float])(self.zip_table)
        self.cities_of_state = [np.flatnonzero(self.city_state == s) for s in range(len(STATES))]
        self.city_weight_in_state = [
            np.array(city_weight)[idx] / np.array(city_weight)[idx].sum() for idx in self.cities_of_state
        ]

    def draw_properties(self, rng: np.random.Generator, n: int, state: int | None) -> dict[str, np.ndarray]:
        """``n`` properties (every column but status-dependent ones), vectorised."""
        states = (np.full(n, state) if state is not None
                  else rng.choice(len(STATES), size=n, p=self.state_weight))
        cities = np.empty(n, dtype=np.int64)
        for s in np.unique(states):
            mask = states == s
            cities[mask] = rng.choice(self.cities_of_state[s], size=mask.sum(), p=self.city_weight_in_state[s])
        draw = rng.integers(0, ZIP_DRAWS, size=n)
        zips = self.zip_table[cities, draw]
        rural = self.city_rural[cities]
        house_size = np.clip(rng.lognormal(np.log(1750) + 0.15 * rural, 0.42, size=n), 350, 25_000).round()
        bed = np.clip(np.round(house_size / 620 + rng.normal(0.4, 0.7, size=n)), 1, 12)
        bath = np.clip(np.round(bed * 0.65 + rng.normal(0.2, 0.55, size=n)), 1, 10)
        acre_lot = np.clip(rng.lognormal(np.where(rural, -0.2, -1.9), np.where(rural, 1.3, 0.8), size=n),
                           0.01, 2_000).round(2)
        location = self.state_level[states] * self.city_level[cities] * self.zip_level_table[cities, draw]
        return {"state": states, "city": cities, "zip_code": zips, "house_size": house_size, "bed": bed,
                "bath": bath, "acre_lot": acre_lot, "location": location,
                "brokered_by": rng.integers(1, 110_000, size=n).astype(float),
                "street": rng.integers(1, 2_000_000, size=n).astype(float)}


def price_of(rng: np.random.Generator, p: dict[str, np.ndarray], status: np.ndarray,
             years_since_sale: np.ndarray) -> np.ndarray:
    """The price model: multiplicative in location, with a size elasticity that grows with the
    location's level (location x size), a saturating lot-size premium, status and previous-sale
    effects, and log-normal noise with a rare heavy upper tail (luxury estates)."""
    log_loc = np.log(p["location"])
    log_size = np.log(p["house_size"] / 1750)
    elasticity = 0.45 + 0.45 * np.tanh(2.0 * log_loc)  # big houses are worth far more where land is dear
    age = np.nan_to_num(years_since_sale, nan=30.0)
    log_price = (np.log(BASE_PRICE) + 1.1 * log_loc
                 + elasticity * log_size + 0.25 * np.maximum(log_size, 0) ** 2  # mansions: convex
                 + 0.6 * (1 - np.exp(-p["acre_lot"] / 1.2)) * (1 + 0.5 * (log_loc > 0))  # lot premium saturates
                 - 0.25 * (p["bed"] > 2 * p["bath"] + 1)  # too few baths for the bedrooms
                 + np.where(status == "sold", -0.06, 0.0) + np.where(status == "ready_to_build", -0.35, 0.0)
                 + np.where(np.isnan(years_since_sale), 0.0, 0.15 * np.exp(-age / 4) - 0.1 * (age > 25))
                 + rng.normal(0, 0.18, size=len(status)))
    tail = rng.random(len(status)) < 0.0005  # a few listings far off any model (estates, errors)
    log_price[tail] += rng.exponential(0.8, size=tail.sum())
    return np.round(np.exp(log_price), -2)


def generate_batch(world: World, kind: BatchKind, seed: int, group: int, day: str, scale: float) -> pd.DataFrame:
    """The rows of one batch, in the raw API format (ids as floats, zip codes as integers)."""
    target = scaled_rows(kind, scale)
    rng = np.random.default_rng([seed, int(group) & 0xFFFFFFFF, zlib.crc32(day.encode()), kind.index, 1])
    state = STATES.index(SINGLE_STATE) if kind.index == 3 else None
    parts, have = [], 0
    while have < target:
        n = max(2_000, int((target - have) * 2.5))
        p = world.draw_properties(rng, n, state)
        status = _statuses(rng, kind, n)
        years = np.where(status == "sold", rng.exponential(9, size=n), rng.exponential(12, size=n))
        years[(status == "ready_to_build") | ((status == "for_sale") & (rng.random(n) < 0.55))] = np.nan
        price = price_of(rng, p, status, years)
        keep = _in_band(kind, price)
        frame = _to_frame(world, rng, {k: v[keep] for k, v in p.items()}, status[keep], price[keep], years[keep])
        parts.append(frame)
        have += len(frame)
    df = pd.concat(parts, ignore_index=True).iloc[:target].copy()
    _relist(rng, df)
    df["price"] = _clip_to_band(kind, df["price"].to_numpy())
    _blank_missing(rng, df)
    zero = rng.random(len(df)) < 0.000126
    if kind.index in (0, 1, 2, 3):
        df.loc[zero, "price"] = 0.0  # the real file has about 280 listings at $0
    return df[list(COLUMNS)]


def _statuses(rng: np.random.Generator, kind: BatchKind, n: int) -> np.ndarray:
    if kind.index in (0, 1):
        return np.full(n, "for_sale", dtype=object)
    if kind.index == 2:
        return np.full(n, "sold", dtype=object)
    return rng.choice(np.array(["for_sale", "sold", "ready_to_build"], dtype=object), size=n, p=[0.62, 0.36, 0.02])


def _in_band(kind: BatchKind, price: np.ndarray) -> np.ndarray:
    if kind.index in (0, 1, 2):
        return price <= LOW
    if kind.index == 4:
        return (price > LOW) & (price <= MID)
    if kind.index == 5:
        return (price > MID) & (price <= HIGH)
    return np.ones(len(price), dtype=bool)


def _clip_to_band(kind: BatchKind, price: np.ndarray) -> np.ndarray:
    if kind.index in (0, 1, 2):
        return np.minimum(price, LOW)
    if kind.index == 4:
        return np.clip(price, LOW + 100, MID)
    if kind.index == 5:
        return np.clip(price, MID + 100, HIGH)
    return price


def _to_frame(world: World, rng, p, status, price, years) -> pd.DataFrame:
    today = np.datetime64("2024-04-01")
    sold_on = today - (np.nan_to_num(years) * 365.25).astype("timedelta64[D]")
    dates = np.where(np.isnan(years), None, np.datetime_as_string(sold_on, unit="D").astype(object))
    return pd.DataFrame({
        "brokered_by": p["brokered_by"], "status": status, "price": price, "bed": p["bed"],
        "bath": p["bath"], "acre_lot": p["acre_lot"], "street": p["street"],
        "city": world.city_names[p["city"]], "state": np.array(STATES, dtype=object)[p["state"]],
        "zip_code": p["zip_code"], "house_size": p["house_size"], "prev_sold_date": dates,
    })


def _relist(rng: np.random.Generator, df: pd.DataFrame) -> None:
    """About 10% of listings are the same property listed again (another broker, another price)."""
    n = len(df)
    k = int(n * 0.10)
    if n < 2 or k == 0:
        return
    dst = rng.choice(n, size=k, replace=False)
    src = rng.choice(n, size=k)
    prop = ["bed", "bath", "acre_lot", "street", "city", "state", "zip_code", "house_size"]
    df.loc[dst, prop] = df.loc[src, prop].to_numpy()
    df.loc[dst, "price"] = np.round(df.loc[src, "price"].to_numpy() * rng.uniform(0.93, 1.05, size=k), -2)


def _blank_missing(rng: np.random.Generator, df: pd.DataFrame) -> None:
    """Missing values at the real rates: bed/bath/house_size about a quarter, acre_lot an eighth."""
    n = len(df)
    together = rng.random(n) < 0.18
    for col in ("bed", "bath", "house_size"):
        df.loc[together | (rng.random(n) < 0.07), col] = np.nan
    df.loc[rng.random(n) < 0.125, "acre_lot"] = np.nan
    df.loc[rng.random(n) < 0.002, "brokered_by"] = np.nan
