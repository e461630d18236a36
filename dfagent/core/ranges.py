"""HTTP Range requests (RFC 9110 §14) as pure values: parse, then resolve against a size."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ByteRange",
    "MalformedRange",
    "RangeRequest",
    "UnsatisfiableRange",
    "if_range_holds",
    "names_bytes",
    "parse_range_header",
]

# The range unit is case-insensitive (RFC 9110 §14.1); digits and letters are ASCII only.
_SPEC = re.compile(r"bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*", re.IGNORECASE | re.ASCII)
_MAX_DIGITS = 19  # fits a signed 64-bit offset; longer numbers are rejected, not parsed
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2


class MalformedRange(ValueError):
    """The Range header cannot be understood; the client gets 400 with the reason."""


class UnsatisfiableRange(ValueError):
    """The range lies wholly outside the blob; the client gets 416 with `bytes */size`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a blob of {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range `first..last` inside a blob of `size` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """One parsed range spec: `first-last`, `first-` (last None) or `-suffix` (first None)."""

    first: int | None
    last: int | None

    @property
    def is_suffix(self) -> bool:
        return self.first is None

    def resolve(self, size: int) -> ByteRange:
        """Clamp to a blob of `size` bytes, raising UnsatisfiableRange when nothing overlaps."""
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or size == 0:
                raise UnsatisfiableRange(size)
            return ByteRange(max(0, size - self.last), size - 1, size)
        if self.first >= size:
            raise UnsatisfiableRange(size)
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return ByteRange(self.first, last, size)


def names_bytes(value: str) -> bool:
    """Whether a Range header is in bytes, the only unit there is for blobs. A header in
    another unit (`items=0-9`) is ignored and the whole blob sent, as RFC 9110 §14.2 has it;
    one that names no unit is malformed, for parse_range_header to say why."""
    unit, equals, _ = value.partition("=")
    unit = unit.strip()
    return not equals or unit.lower() == "bytes" or _TOKEN.fullmatch(unit) is None


def if_range_holds(value: str | None, etag: str) -> bool:
    """Whether a Range applies, given the request's If-Range (RFC 9110 §13.1.5): none, or the
    blob's own strong entity tag `etag`. A date (blobs are sent without Last-Modified) or any
    other tag means the client's part is of something else: it gets the whole blob."""
    return value is None or value.strip() == etag


def parse_range_header(value: str) -> RangeRequest:
    """Parse a `Range` header holding exactly one byte range.

    Several ranges (multipart responses) are refused: no registry client sends them and nydusd
    reads exactly one range per request.
    """
    if "," in value:
        raise MalformedRange("only a single byte range is supported")
    match = _SPEC.fullmatch(value.strip())
    if match is None:
        raise MalformedRange(f"Range must look like bytes=first-last, got {value[:80]!r}")
    first_text, last_text = match.groups()
    if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
        raise MalformedRange("Range offset is too large")
    if not first_text:
        if not last_text:
            raise MalformedRange("Range needs a first byte or a suffix length")
        return RangeRequest(None, int(last_text))
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        raise MalformedRange(f"Range end {last} is before its start {first}")
    return RangeRequest(first, last)
