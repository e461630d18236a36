from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfagent.core.ranges import (
    ByteRange,
    MalformedRange,
    RangeRequest,
    UnsatisfiableRange,
    if_range_holds,
    names_bytes,
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


@pytest.mark.parametrize(
    ("value", "in_bytes"),
    [
        ("bytes=0-1", True),
        ("BYTES = 0-1", True),
        ("items=0-1", False),
        ("lines=5-", False),
        ("0-1", True),  # no unit at all: malformed, not another unit
        ("bytes", True),
        ("=0-1", True),
        ("it ems=0-1", True),
    ],
)
def test_names_bytes(value, in_bytes):
    assert names_bytes(value) is in_bytes


@pytest.mark.parametrize(
    ("value", "holds"),
    [
        (None, True),
        ('"sha256:ab"', True),
        (' "sha256:ab" ', True),
        ('"sha256:cd"', False),
        ('W/"sha256:ab"', False),
        ("Sun, 06 Dec 2026 10:00:00 GMT", False),
        ("", False),
    ],
)
def test_if_range_holds_only_for_the_blobs_own_tag(value, holds):
    assert if_range_holds(value, '"sha256:ab"') is holds
