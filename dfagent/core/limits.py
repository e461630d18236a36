"""Bounds on what a registry, a peer or image metadata may claim, and on how slowly bytes may
come: beyond them an answer is broken or hostile, whoever gave it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["MAX_BLOB_BYTES", "PaceWatch", "Pacer"]

# Larger than any image layer, and than most file systems' largest file.
MAX_BLOB_BYTES = 1 << 44


class PaceWatch:
    """The pace of one transfer, in windows of `window` seconds: TimeoutError once a whole
    window brought fewer than `least` bytes. Each byte restarts a read timeout, so a sender
    that trickles would otherwise hold the transfer (and everyone waiting on it) for as long
    as it likes."""

    def __init__(self, window: float, least: int) -> None:
        self._window = window
        self._least = least
        self._start = time.monotonic()
        self._bytes = 0

    def arrived(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        if now - self._start < self._window:
            return
        if self._bytes < self._least:
            raise TimeoutError(f"trickled {self._bytes} bytes in {self._window:g} s")
        self._start, self._bytes = now, 0


class Pacer:
    """Keeps bytes moved under `rate` per second (None: no cap). `take(count)` before moving
    `count` bytes waits until the bytes taken before them fit the budget; time spent idle
    earns no credit, so a pacer never bursts."""

    def __init__(
        self, rate: int | None, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self._rate = rate
        self._sleep = sleep
        self._next = time.monotonic()

    @property
    def rate(self) -> int | None:
        return self._rate or None

    async def take(self, count: int) -> None:
        if not self._rate:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + count / self._rate
        if start > now:
            await self._sleep(start - now)
