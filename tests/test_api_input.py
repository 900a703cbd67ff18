"""The price API's pure parts: the ids it answers with and its rule for a city's characters."""

from __future__ import annotations

import unicodedata
import uuid

import pytest
from pydantic import ValidationError

from serve_app.app import prediction_ids, random_uuids
from serve_app.schemas import _CONTROL_OR_SURROGATE, LISTING


@pytest.mark.parametrize("count", [0, 1, 2, 1000])
def test_random_ids_are_version_4_uuids_as_uuid4_writes_them(count):
    ids = random_uuids(count)
    assert len(ids) == len(set(ids)) == count
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_from_an_idempotency_key_repeat_and_others_do_not():
    assert prediction_ids(3, "retry-me") == prediction_ids(3, "retry-me")
    assert set(prediction_ids(3, None)).isdisjoint(prediction_ids(3, None))


def test_the_city_rule_is_unicodes_control_and_surrogate_categories_at_every_code_point():
    """The rule (one regex search) refuses exactly the characters of categories Cc and Cs, which the
    raw database cannot store."""
    disagree = [p for p in range(0x110000)
                if (_CONTROL_OR_SURROGATE.search(chr(p)) is not None) != (unicodedata.category(chr(p)) in ("Cc", "Cs"))]
    assert disagree == []


def test_every_control_character_and_surrogate_is_refused():
    for point in [*range(0x20), *range(0x7F, 0xA0), 0xD800, 0xDBFF, 0xDC00, 0xDFFF]:
        with pytest.raises(ValidationError, match="control character|unicode"):
            LISTING.validate_python({"status": "for_sale", "state": "Ohio", "city": f"a{chr(point)}b"})
