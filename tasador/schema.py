"""The listing schema, defined once: the 12 columns of realtor.com's "USA Real Estate" data."""

from __future__ import annotations

import datetime as dt

COLUMNS: tuple[str, ...] = (
    "brokered_by", "status", "price", "bed", "bath", "acre_lot",
    "street", "city", "state", "zip_code", "house_size", "prev_sold_date",
)
TARGET = "price"
FEATURES: tuple[str, ...] = tuple(c for c in COLUMNS if c != TARGET)
NUMERIC_FEATURES: tuple[str, ...] = ("bed", "bath", "acre_lot", "house_size")
ID_FEATURES: tuple[str, ...] = ("brokered_by", "street")

STATUSES: tuple[str, ...] = ("for_sale", "sold", "ready_to_build")

# 50 states, the District of Columbia and the three territories present in the real data.
STATES: tuple[str, ...] = (
    "Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut", "Delaware",
    "District of Columbia", "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa",
    "Kansas", "Kentucky", "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota",
    "Mississippi", "Missouri", "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey",
    "New Mexico", "New York", "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon",
    "Pennsylvania", "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah",
    "Vermont", "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming",
    "Puerto Rico", "Virgin Islands", "Guam",
)

# A valid listing, one definition for the cleaning (a row breaking a rule is rejected with its reason,
# tasador/cleaning.py) and the prediction API (a listing breaking one is refused with a 422 naming the
# field, serve_app/schemas.py); tests/test_cleaning.py checks both give the same verdicts.
BOUNDS = {"bed": (0, 50), "bath": (0, 50), "house_size": (100, 100_000), "acre_lot": (0, 100_000)}
WHOLE_NUMBERS: tuple[str, ...] = ("bed", "bath")  # counts: 2.5 baths is not a value of this data
# ID_FEATURES are non-negative integer ids (the raw data writes some as "103378.0") below BIGINT's bound
# (a raw row with brokered_by "1e30" once failed its whole batch at the cast to int64, every time)
ID_LIMIT = 2.0 ** 63
ZIP_MAX = 99_999  # a zip code is up to 5 digits; unpadded ones ("2108") are padded ("02108")
ZIP_WIDTH = len(str(ZIP_MAX))  # the padded form's digits
EARLIEST_SALE = dt.date(1900, 1, 1)  # prev_sold_date lies between this and the day it is checked
