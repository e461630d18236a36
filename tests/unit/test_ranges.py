from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfagent.core.ranges import (
    ByteRange,
    MalformedRange,
    RangeRequest,
    UnsatisfiableRange,
    parse_range_header,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=0-100", 10, (0, 9)),
        ("bytes=3-", 10, (3, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes = 2 - 4", 10, (2, 4)),
        ("bytes=9-9", 10, (9, 9)),
    ],
)
def test_resolve(header, size, expected):
    resolved = parse_range_header(header).resolve(size)
    assert (resolved.first, resolved.last) == expected
    assert resolved.length == expected[1] - expected[0] + 1
    assert resolved.content_range() == f"bytes {expected[0]}-{expected[1]}/{size}"


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_unsatisfiable(header, size):
    with pytest.raises(UnsatisfiableRange) as info:
        parse_range_header(header).resolve(size)
    assert info.value.size == size


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=5-4",
        "bytes=1-2,3-4",
        "lines=1-2",
        "bytes=1-2-3",
        "bytes=0x10-20",
        "bytes=" + "9" * 20 + "-",
    ],
)
def test_malformed(header):
    with pytest.raises(MalformedRange):
        parse_range_header(header)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_malformed(text):
    try:
        request = parse_range_header(text)
    except MalformedRange:
        return
    assert isinstance(request, RangeRequest)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_resolved_range_lies_inside_the_blob(first, length, size):
    try:
        resolved = parse_range_header(f"bytes={first}-{first + length}").resolve(size)
    except UnsatisfiableRange:
        assert first >= size
        return
    assert 0 <= resolved.first <= resolved.last < size
    assert resolved == ByteRange(first, min(first + length, size - 1), size)


@pytest.mark.parametrize("unit", ["BYTES", "Bytes", "bYtEs"])
def test_the_range_unit_is_case_insensitive(unit):
    resolved = parse_range_header(f"{unit}=0-4").resolve(10)
    assert (resolved.first, resolved.last) == (0, 4)


@pytest.mark.parametrize("header", ["byte\u017f=0-4", "bytes=\u0661-\u0664"])
def test_only_ascii_letters_and_digits(header):
    with pytest.raises(MalformedRange):
        parse_range_header(header)
