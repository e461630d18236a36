"""Little-endian fields read from untrusted buffers: every read is bounds-checked and a short
buffer is a NydusFormatError naming the field."""

from __future__ import annotations

import struct

from dfagent.nydus.errors import NydusFormatError

__all__ = ["align_up", "require_range", "u16", "u32", "u64", "unpack"]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def require_range(buf: bytes | memoryview, offset: int, size: int, what: str) -> None:
    """NydusFormatError unless `buf[offset:offset + size]` lies wholly inside `buf`."""
    if offset < 0 or size < 0 or offset + size > len(buf):
        raise NydusFormatError(
            f"{what}: needs bytes {offset}..{offset + size} but only {len(buf)} are present"
        )


def unpack(layout: struct.Struct, buf: bytes | memoryview, offset: int, what: str) -> tuple:
    require_range(buf, offset, layout.size, what)
    return layout.unpack_from(buf, offset)


def u16(buf: bytes | memoryview, offset: int, what: str) -> int:
    return unpack(_U16, buf, offset, what)[0]


def u32(buf: bytes | memoryview, offset: int, what: str) -> int:
    return unpack(_U32, buf, offset, what)[0]


def u64(buf: bytes | memoryview, offset: int, what: str) -> int:
    return unpack(_U64, buf, offset, what)[0]


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment
