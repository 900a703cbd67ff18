"""``db.CsvRows``: the CSV a COPY reads chunk by chunk is the CSV the whole rows render to."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasador.db import CsvRows

values = st.one_of(st.none(), st.text(max_size=12), st.floats(allow_nan=False), st.integers(), st.booleans(),
                   st.sampled_from(["", '"', ",", "\n", "\r\n", "\\N", "a,b", 'say "hi"']))
rows = st.lists(st.lists(values, min_size=1, max_size=5).map(tuple), max_size=60)


def whole(rows_, null: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(tuple(null if v is None else v for v in r) for r in rows_)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(rows=rows, size=st.integers(1, 300), per_render=st.integers(1, 7))
def test_reading_in_chunks_of_any_size_gives_the_whole_rendering(rows, size, per_render):
    source = CsvRows(iter(rows))
    source.ROWS_PER_RENDER = per_render  # renders of a few rows: chunks cut rows anywhere
    chunks = []
    while chunk := source.read(size):
        assert len(chunk) <= size
        chunks.append(chunk)
    assert "".join(chunks) == whole(rows, source.null)
    assert source.count == len(rows)
    assert source.read(size) == ""


def test_a_failing_row_source_is_kept_to_be_raised_as_itself():
    def failing():
        yield ("a", 1)
        raise ValueError("row 2 is bad")

    source = CsvRows(failing())
    with pytest.raises(ValueError, match="row 2 is bad"):
        source.read(1 << 20)
    assert isinstance(source.error, ValueError)


def test_each_copy_has_a_null_marker_of_its_own():
    """A fixed marker (``\\N``) would store a text value equal to it as NULL."""
    markers = {CsvRows([]).null for _ in range(100)}
    assert len(markers) == 100 and all(m.startswith("\\N") and len(m) > 2 for m in markers)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(0, 40).flatmap(lambda n: st.lists(st.lists(values, min_size=n, max_size=n), min_size=1,
                                                           max_size=5)))
def test_rows_given_column_by_column_render_as_the_same_rows(rows):
    """``CsvRows.of_columns`` (the prediction log) renders what the rows, zipped, render to."""
    columns = rows  # each inner list is one column, all of one length
    source = CsvRows.of_columns(columns)
    text = source.read(-1)
    assert text == whole(list(zip(*columns, strict=True)), source.null)
    assert source.count == len(columns[0])


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        CsvRows.of_columns([[1, 2], [3]]).read(-1)


@given(text=st.text())
def test_storable_text_is_what_postgresql_can_hold_and_changes_nothing_else(text):
    from tasador.db import storable_text

    stored = storable_text(text)
    stored.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in stored and len(stored) == len(text)
    if "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text):
        assert stored == text
    assert storable_text("a\x00b\ud800c\U0001f600") == "a\ufffdb\ufffdc\U0001f600"
