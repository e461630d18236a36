"""A Dragonfly piece on its way from a parent, readable before all of it is here: a lazy
reader that needs the first 64 KiB of a 4 MiB piece waits for those, not for the piece."""

from __future__ import annotations

import asyncio

__all__ = ["Arrival"]


class Arrival:
    """The bytes of one piece as they arrive. A parent that fails part way is replaced by
    another, which sends the piece from its start again (`restart`)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._buffer = bytearray()
        self._ended = False
        self._whole = False
        self._grew = asyncio.Event()

    def add(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def restart(self) -> None:
        """Another parent sends the piece: what the last one sent is dropped."""
        self._buffer = bytearray()

    def end(self, *, whole: bool) -> None:
        """No more bytes will come: the piece is here whole (checked in transit), or no
        parent delivered it."""
        if self._ended:
            return
        self._ended = True
        self._whole = whole and len(self._buffer) == self.length
        self._wake()

    async def first(self, count: int) -> bytes | None:
        """The piece's first `count` bytes once they are here (None when no parent delivered
        them); like a slice, all of it when `count` is more. Bytes before the end of a piece
        are not yet checked in transit: a caller that uses them early proves them itself."""
        count = min(count, self.length)
        whole = count == self.length  # all of it: only once checked in transit
        while not self._ended and (whole or len(self._buffer) < count):
            await self._grew.wait()
        if len(self._buffer) < count or (self._ended and not self._whole):
            return None
        return bytes(memoryview(self._buffer)[:count])  # one copy, not two (a slice is one)

    def _wake(self) -> None:
        self._grew.set()
        self._grew = asyncio.Event()
