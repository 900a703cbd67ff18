"""The listing schema, defined once: the 12 columns of realtor.com's "USA Real Estate" data."""

from __future__ import annotations

COLUMNS: tuple[str, ...] = (
    "brokered_by", "status", "price", "bed", "bath", "acre_lot",
    "street", "city", "state", "zip_code", "house_size", "prev_sold_date",
)
TARGET = "price"
FEATURES: tuple[str, ...] = tuple(c for c in COLUMNS if c != TARGET)
NUMERIC_FEATURES: tuple[str, ...] = ("bed", "bath", "acre_lot", "house_size")
ID_FEATURES: tuple[str, ...] = ("brokered_by", "street")
CATEGORICAL_FEATURES: tuple[str, ...] = ("status", "city", "state", "zip_code")
DATE_FEATURES: tuple[str, ...] = ("prev_sold_date",)

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
