"""What the prediction API accepts: one listing (the 11 features of the schema) or ``{"listings": [...]}``.

Validated by the rules of a valid listing that the cleaning applies (tasador/schema.py), so a listing
the pipeline would reject is refused here with a 422 whose message names the field; the model never
sees NaN, text in a number or a negative size. Unknown keys (``price``, say, when a raw row is sent)
are ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from tasador.schema import (
    BOUNDS,
    EARLIEST_SALE,
    FEATURES,
    ID_FEATURES,
    ID_LIMIT,
    STATES,
    STATUSES,
    WHOLE_NUMBERS,
    ZIP_MAX,
    ZIP_WIDTH,
)

# Requests over LARGE_BODY_BYTES are priced by their own deployment (serve_app/app.py): HAProxy sends a
# /predict whose Content-Length is larger straight to BULK_ROUTE_PREFIX + /predict (cluster/ray_head.py,
# cluster/haproxy-rewrite-config); one that reaches the ingress anyway (chunked, or no HAProxy) is
# handed over there. About 100 listings.
LARGE_BODY_BYTES = 32_768
BULK_ROUTE_PREFIX = "/bulk"

# Unicode's categories Cc (control characters) and Cs (surrogates), exactly: one regex search instead of
# a category lookup per character (a tenth of a 1,000-listing request's validation)
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
Status = Literal[STATUSES]  # type: ignore[valid-type]


def _bounded(name: str, default=None):
    low, high = BOUNDS[name]
    return Annotated[float | None, Field(default=default, ge=low, le=high)]


class Listing(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_strip_whitespace=True)

    status: Status = Field(examples=["for_sale"])
    state: str = Field(examples=["Massachusetts"])
    city: str | None = Field(default=None, max_length=200, examples=["Boston"])
    zip_code: str | None = Field(default=None, examples=["02108"])
    bed: _bounded("bed") = Field(default=None, examples=[3])
    bath: _bounded("bath") = Field(default=None, examples=[2])
    house_size: _bounded("house_size") = Field(default=None, examples=[1800])
    acre_lot: _bounded("acre_lot") = Field(default=None, examples=[0.25])
    brokered_by: float | None = Field(default=None, ge=0, lt=ID_LIMIT, examples=[22611])
    street: float | None = Field(default=None, ge=0, lt=ID_LIMIT, examples=[1594530])
    prev_sold_date: dt.date | None = Field(default=None, examples=["2015-06-30"])

    @field_validator(*WHOLE_NUMBERS, *ID_FEATURES)
    @classmethod
    def whole(cls, value: float | None, info) -> float | None:
        if value is not None and not value.is_integer():  # a float by now (the fields are floats)
            raise ValueError(f"{info.field_name} is a whole number ({value} is not)")
        return value

    @field_validator("state")
    @classmethod
    def known_state(cls, value: str) -> str:
        if value not in STATES:
            raise ValueError(f"unknown state {value!r}: one of the 50 states, District of Columbia, "
                             "Puerto Rico, Virgin Islands or Guam, spelled out")
        return value

    @field_validator("city")
    @classmethod
    def printable_city(cls, value: str | None) -> str | None:
        """Text the raw database can store: no control characters (NUL included), no lone surrogates."""
        if value is not None and _CONTROL_OR_SURROGATE.search(value):
            raise ValueError("the city holds a control character or an unpaired surrogate")
        return value

    @field_validator("zip_code", mode="before")
    @classmethod
    def zip_as_text(cls, value):
        if value is None:
            return None
        if type(value) is str and len(value) == ZIP_WIDTH and value.isascii() and value.isdigit():
            return value  # already as the cleaning reads it (most requests): the rest would return it unchanged
        if isinstance(value, float) and not (value.is_integer() and 0 <= value <= ZIP_MAX):
            raise ValueError("a zip code is up to 5 digits")  # 2108.5, -1.0, 1e400 (inf) and NaN included
        text = str(int(value)) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
        digits = text.strip()
        if not (digits.isascii() and digits.isdigit()) or int(digits) > ZIP_MAX:
            raise ValueError("a zip code is up to 5 digits")
        return str(int(digits)).zfill(ZIP_WIDTH)  # as the cleaning reads it: "2108" and "002108" are 02108

    @field_validator("prev_sold_date")
    @classmethod
    def not_in_future(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and not (EARLIEST_SALE <= value <= dt.date.today()):
            raise ValueError(f"prev_sold_date lies before {EARLIEST_SALE} or in the future")
        return value


def listings_adapter(max_listings: int) -> TypeAdapter:
    """Validates ``{"listings": [...]}`` with 1 to ``max_listings`` items."""

    class ListingBatch(BaseModel):
        listings: Annotated[list[Listing], Field(min_length=1, max_length=max_listings)]

    return TypeAdapter(ListingBatch)


LISTING = TypeAdapter(Listing)


def to_columns(listings: list[Listing]) -> dict[str, list]:
    """Column lists of the 11 features (what the model deployment takes: cheap to ship, one frame)."""
    return {f: [getattr(item, f) for item in listings] for f in FEATURES}
