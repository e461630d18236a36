from __future__ import annotations

import asyncio
import hashlib

import pytest

from dfagent.engine.inflight import InflightPiece
from dfagent.errors import OriginError


async def collect(piece: InflightPiece, start: int, end: int) -> bytes:
    return b"".join([bytes(view) async for view in piece.read(start, end)])


async def test_readers_follow_the_fill_and_see_exact_bytes():
    data = bytes(range(256)) * 40
    piece = InflightPiece(0, 0, len(data), None)
    readers = [
        asyncio.create_task(collect(piece, s, e))
        for s, e in [(0, len(data)), (100, 101), (5000, 10240)]
    ]
    for offset in range(0, len(data), 1000):
        piece.append(data[offset : offset + 1000])
        await asyncio.sleep(0)
    assert piece.finish() == hashlib.sha256(data).digest()
    assert await asyncio.gather(*readers) == [data, data[100:101], data[5000:10240]]


async def test_reader_gets_bytes_before_the_piece_is_whole():
    piece = InflightPiece(0, 0, 10, None)
    piece.append(b"abc")
    reader = piece.read(0, 10)
    assert bytes(await anext(reader)) == b"abc"
    piece.append(b"defghij")
    assert bytes(await anext(reader)) == b"defghij"


async def test_failure_reaches_waiting_readers():
    piece = InflightPiece(0, 0, 10, None)
    piece.append(b"abc")
    reader = asyncio.create_task(collect(piece, 0, 10))
    await asyncio.sleep(0)
    piece.fail(OriginError("gone"))
    with pytest.raises(OriginError, match="gone"):
        await reader


def test_overfill_is_a_bug():
    piece = InflightPiece(0, 0, 2, None)
    with pytest.raises(AssertionError):
        piece.append(b"abc")
