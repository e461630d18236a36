"""The peer server's upload slots: a limit, and a short first-come queue in front of it."""

from __future__ import annotations

import asyncio

import pytest

from dfagent.swarm.slots import UploadSlots


async def settle() -> None:
    """Let every task that can run, run (a handed slot wakes its waiter a few steps later)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_freed_slots_go_to_waiting_requests_in_arrival_order():
    slots = UploadSlots(2, wait=5.0)
    assert await slots.take() and await slots.take()
    served: list[str] = []

    async def request(name: str) -> None:
        if await slots.take():
            served.append(name)

    first = asyncio.create_task(request("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(request("second"))
    await asyncio.sleep(0)
    late = asyncio.create_task(request("late"))  # arrives as a slot frees: must queue too
    slots.give()
    await settle()
    assert served == ["first"]
    slots.give()
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert served == ["first", "second"]
    assert not late.done(), "both slots are taken again"
    slots.give()
    await asyncio.wait_for(late, 1)
    assert served == ["first", "second", "late"]


async def test_a_request_that_waits_too_long_is_turned_away_and_leaves_the_queue():
    slots = UploadSlots(1, wait=0.05)
    assert await slots.take()
    assert not await slots.take(), "no slot freed within the wait"
    slots.give()
    # The turned-away request holds nothing: the one slot is free again, once.
    assert await slots.take()
    assert not await slots.take()


async def test_a_request_gone_while_it_waits_holds_no_slot():
    slots = UploadSlots(1, wait=5.0)
    assert await slots.take()
    gone = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.give()
    assert await slots.take(), "the slot was not handed to the request that went away"

    # Handed the slot in the same moment it was cancelled: it gives the slot back.
    handed = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # the waiter's future is done, its task not yet resumed...
    handed.cancel()  # ...when its client hangs up
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert await asyncio.wait_for(slots.take(), 1), "the handed slot came back"
