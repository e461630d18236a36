"""Upload slots of the peer server: at most `limit` uploads at once, handed out first come,
first served."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["UploadSlots"]


class UploadSlots:
    """A request that finds every slot taken waits up to `wait` seconds for one, in arrival
    order, before it is turned away (answered busy). Without the queue, a requester backing
    off between tries can lose every freed slot to requests that happen to arrive just then,
    and wait far longer than the uploads ahead of it take."""

    def __init__(self, limit: int, wait: float) -> None:
        self._limit = limit
        self._wait = wait
        self._taken = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self) -> bool:
        """A slot (True), or False once none freed up within the wait. Each True must be
        matched by one `give`."""
        if self._taken < self._limit:  # (requests wait only while every slot is taken)
            self._taken += 1
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=self._wait)
        except asyncio.CancelledError:
            if waiter.done():
                self.give()  # handed a slot just as the request went away
            else:
                self._withdraw(waiter)
            raise
        if not waiter.done():
            self._withdraw(waiter)
            return False
        return True

    def _withdraw(self, waiter: asyncio.Future[None]) -> None:
        self._waiters.remove(waiter)
        waiter.cancel()

    def give(self) -> None:
        """Free a slot: it goes to the longest waiting request, if any."""
        if self._waiters:
            self._waiters.popleft().set_result(None)  # the slot passes on, still taken
        else:
            self._taken -= 1
