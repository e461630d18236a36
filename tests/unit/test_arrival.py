"""A Dragonfly piece on its way: its first bytes are readable before the rest arrive; the
whole piece only once it ended whole; a parent that fails part way starts it again."""

from __future__ import annotations

import asyncio

from dfagent.swarm.dragonfly.arrival import Arrival


async def test_a_reader_of_the_first_bytes_does_not_wait_for_the_rest():
    arrival = Arrival(10)
    reader = asyncio.create_task(arrival.first(3))
    arrival.add(b"ab")
    await asyncio.sleep(0)
    assert not reader.done()
    arrival.add(b"cde")
    assert await asyncio.wait_for(reader, 1) == b"abc"


async def test_the_whole_piece_waits_for_its_end_even_when_every_byte_is_here():
    arrival = Arrival(4)
    whole = asyncio.create_task(arrival.first(4))
    arrival.add(b"abcd")
    await asyncio.sleep(0.01)
    assert not whole.done(), "served before the transfer's check"
    arrival.end(whole=True)
    assert await asyncio.wait_for(whole, 1) == b"abcd"


async def test_a_restart_drops_what_the_failed_parent_sent():
    arrival = Arrival(4)
    arrival.add(b"XY")
    arrival.restart()
    reader = asyncio.create_task(arrival.first(2))
    await asyncio.sleep(0)
    assert not reader.done()
    arrival.add(b"ab")
    assert await asyncio.wait_for(reader, 1) == b"ab"


async def test_a_piece_nobody_delivered_gives_nothing_even_to_late_readers():
    arrival = Arrival(4)
    reader = asyncio.create_task(arrival.first(4))
    arrival.add(b"abcd")
    arrival.end(whole=False)
    arrival.end(whole=True)  # an end is final
    assert await asyncio.wait_for(reader, 1) is None
    assert await arrival.first(2) is None


async def test_asking_for_more_than_the_piece_gives_the_whole_piece():
    arrival = Arrival(4)  # as a slice of the piece would
    whole = asyncio.create_task(arrival.first(6))
    arrival.add(b"abcd")
    await asyncio.sleep(0.01)
    assert not whole.done(), "served before the transfer's check"
    arrival.end(whole=True)
    assert await asyncio.wait_for(whole, 1) == b"abcd"
