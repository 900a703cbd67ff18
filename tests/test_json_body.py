"""``json_body.loads``: orjson's speed, the standard library's values and errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasador import json_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


def same(a, b) -> bool:
    """Equal, types included (1 is not 1.0 here), NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_any_document_reads_as_the_standard_library_reads_it(value):
    text = json.dumps(value)
    assert same(json_body.loads(text.encode()), json.loads(text))
    assert same(json_body.loads(text), json.loads(text))


@pytest.mark.parametrize("body", [b"99999999999999999999", b"-9223372036854775809", b'{"street": 18446744073709551616}',
                                  b"[1e400, -1e400]", b'"\\ud800"', b"NaN", b"[Infinity]"])
def test_what_orjson_reads_otherwise_reads_as_the_standard_library_does(body):
    """orjson reads an integer past 64 bits as a float without a word (99999999999999999999 -> 1e+20):
    a street id or a price that long must be stored with every digit."""
    assert same(json_body.loads(body), json.loads(body))


@pytest.mark.parametrize("body", [b"", b"{", b"[1,]", b"\xff", b"{'a': 1}"])
def test_a_body_that_is_not_json_raises_the_standard_library_error(body):
    with pytest.raises(ValueError) as ours:
        json_body.loads(body)
    with pytest.raises(ValueError) as theirs:
        json.loads(body)
    assert str(ours.value) == str(theirs.value)
