from __future__ import annotations

import asyncio

import pytest

from dfagent.engine.inflight import InflightPiece
from dfagent.errors import OriginError


async def collect(piece: InflightPiece, start: int, end: int) -> bytes:
    return b"".join([bytes(view) async for view in piece.read(start, end)])


async def test_readers_follow_the_fill_and_see_exact_bytes():
    data = bytes(range(256)) * 40
    piece = InflightPiece(0, 0, len(data), None, "http://r:80")
    spans = [(0, len(data)), (100, 101), (5000, 10240)]
    readers = [asyncio.create_task(collect(piece, s, e)) for s, e in spans]
    completed = []
    for offset in range(0, len(data), 1000):
        completed.append(piece.write(offset, data[offset : offset + 1000]))
        await asyncio.sleep(0)
    assert completed == [False] * (len(completed) - 1) + [True]
    assert piece.whole
    assert await asyncio.gather(*readers) == [data, data[100:101], data[5000:10240]]


async def test_two_fillers_out_of_order():
    """The reader's part arrives first, the head of the piece afterwards."""
    data = bytes(range(200))
    piece = InflightPiece(3, 600, len(data), None, "http://r:80")
    tail_reader = asyncio.create_task(collect(piece, 120, 200))
    whole_reader = asyncio.create_task(collect(piece, 0, 200))
    assert piece.write(120, data[120:160]) is False
    assert piece.write(160, data[160:]) is False
    await asyncio.sleep(0)
    assert tail_reader.done() and tail_reader.result() == data[120:]
    assert not whole_reader.done()
    assert piece.write(0, data[:120]) is True
    assert await whole_reader == data
    assert piece.received == 200


async def test_received_from_waits_for_the_rest_of_the_piece_or_its_failure():
    """What the head of a piece entered part-way waits for (`Engine._fill_head`)."""
    piece = InflightPiece(0, 0, 100, None, "http://r:80")
    waiting = asyncio.create_task(piece.received_from(40))
    piece.write(40, bytes(59))
    await asyncio.sleep(0)
    assert not waiting.done(), "one byte short of the end"
    piece.write(99, b"x")
    await asyncio.wait_for(waiting, 1)
    failing = InflightPiece(1, 100, 100, None, "http://r:80")
    waiting = asyncio.create_task(failing.received_from(40))
    await asyncio.sleep(0)
    failing.fail(OriginError("gone"))
    await asyncio.wait_for(waiting, 1)  # returns: the caller looks at the piece's error


async def test_reader_gets_bytes_before_the_piece_is_whole():
    piece = InflightPiece(0, 0, 10, None, "http://r:80")
    piece.write(0, b"abc")
    reader = piece.read(0, 10)
    assert bytes(await anext(reader)) == b"abc"
    piece.write(3, b"defghij")
    assert bytes(await anext(reader)) == b"defghij"


async def test_failure_reaches_waiting_readers_but_not_finished_parts():
    piece = InflightPiece(0, 0, 10, None, "http://r:80")
    piece.write(0, b"abc")
    waiting = asyncio.create_task(collect(piece, 0, 10))
    await asyncio.sleep(0)
    piece.fail(OriginError("gone"))
    with pytest.raises(OriginError, match="gone"):
        await waiting
    assert await collect(piece, 0, 3) == b"abc"


def test_write_outside_the_piece_is_a_bug():
    piece = InflightPiece(0, 0, 2, None, "http://r:80")
    with pytest.raises(AssertionError):
        piece.write(1, b"ab")


async def relayed(piece: InflightPiece) -> bytes:
    return b"".join([bytes(view) async for view in piece.relay()])


async def test_a_peers_bytes_are_relayed_as_they_arrive_but_read_here_only_once_written():
    """Bytes from a peer are unchecked while they arrive: peers taking the piece from this
    agent get them at once (they check the piece themselves), readers here do not."""
    data = bytes(range(250)) * 4
    piece = InflightPiece(0, 0, len(data), None, "http://r:80")
    relay = piece.relay()
    reader = asyncio.create_task(collect(piece, 0, len(data)))
    piece.arriving(0, data[:300])
    assert bytes(await anext(relay)) == data[:300]
    piece.arriving(0, data[:300])  # a hedged second copy repeating the start: ignored
    piece.arriving(200, data[200:700])  # overlapping the end of the run: its new part kept
    assert bytes(await anext(relay)) == data[300:700]
    piece.arriving(800, data[800:])  # not joined to the run: nothing to relay yet
    assert piece.passed == 700
    await asyncio.sleep(0)
    assert not reader.done(), "unchecked bytes never reach a reader here"
    piece.write(0, data)  # the whole piece passed its checks
    assert bytes(await anext(relay)) == data[700:]
    assert await reader == data


async def test_a_relay_follows_origin_bytes_and_fails_with_the_fetch():
    piece = InflightPiece(0, 0, 10, None, "http://r:80")
    piece.write(0, b"abcd")
    relay = asyncio.create_task(relayed(piece))
    await asyncio.sleep(0)
    piece.fail(OriginError("gone"))
    with pytest.raises(OriginError, match="gone"):
        await relay
    whole = InflightPiece(0, 0, 4, None, "http://r:80")
    whole.write(0, b"abcd")
    assert await relayed(whole) == b"abcd"
