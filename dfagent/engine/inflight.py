"""A piece on its way in: bytes land in a buffer that readers (and peers relaying it) follow as
it fills."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

__all__ = ["InflightPiece"]


class InflightPiece:
    """Piece `index` of a blob, `[start, start + length)` in blob offsets, being fetched.

    One or more fetches `write` parts of it (a read that starts mid-piece fetches from its own
    first byte while another fetch fills the head of the piece). Readers iterate `read(...)` and
    get each part of their range as soon as it is in, without waiting for the whole piece. The
    buffer is allocated once and never resized, so the memoryviews handed out stay valid.

    A `gated` piece (one made of nydus chunks) is read only once it is whole and `release`d:
    its bytes are proven together, before anyone is served.

    A piece coming from a peer is checked only once it is whole, so its bytes reach readers
    here only then (`write`). While they arrive (`arriving`) they are passed on at once to
    peers that take the piece from this agent (`relay`): each of those checks the whole piece
    itself before its own readers see a byte.
    """

    __slots__ = (
        "_changed",
        "_parts",
        "authorization",
        "buffer",
        "error",
        "gated",
        "index",
        "length",
        "origin",
        "passed",
        "received",
        "released",
        "sha256",
        "source",
        "start",
        "started_at",
    )

    def __init__(
        self,
        index: int,
        start: int,
        length: int,
        authorization: str | None,
        origin: str,
        *,
        gated: bool = False,
    ) -> None:
        self.index = index
        self.start = start
        self.length = length
        self.authorization = authorization
        self.origin = origin  # the registry whose word these bytes are (provenance)
        self.buffer = bytearray(length)
        self.received = 0
        self.passed = 0  # bytes from the start that arrived from a peer, unchecked
        self.gated = gated
        self.released = False
        self.source = "origin"  # or "peer": where the bytes came from, for metrics
        self.sha256: bytes | None = None  # the whole piece's, once a check computed it
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self._parts: list[tuple[int, int]] = []  # disjoint, sorted [begin, end) ranges received
        self._changed = asyncio.Event()

    @property
    def whole(self) -> bool:
        return self.received == self.length

    def write(self, offset: int, data: bytes | memoryview) -> bool:
        """Put `data` at piece-relative `offset`; True when this write made the piece whole."""
        end = offset + len(data)
        assert offset >= 0 and end <= self.length, "write outside the piece"
        was_whole = self.whole
        self.buffer[offset:end] = data
        self._cover(offset, end)
        self._wake()
        return self.whole and not was_whole

    def _cover(self, begin: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for part in sorted([*self._parts, (begin, end)]):
            if merged and part[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], part[1]))
            else:
                merged.append(part)
        self._parts = merged
        self.received = sum(e - b for b, e in merged)

    def arriving(self, offset: int, data: bytes) -> None:
        """Bytes of a peer's copy at piece-relative `offset`, as they arrive and before any
        check: kept only where they continue the unbroken run from the piece's start, for
        `relay` (readers here get the piece from `write`, once it passed its checks)."""
        end = offset + len(data)
        if offset <= self.passed < end <= self.length:
            self.buffer[self.passed : end] = data[self.passed - offset :]
            self.passed = end
            self._wake()

    def forget_arrivals(self) -> None:
        """The peer's copy failed its checks: relay nothing more of it."""
        self.passed = 0

    def available_until(self, position: int) -> int:
        """The end of the received part that holds `position`, or `position` if none does."""
        for begin, end in self._parts:
            if begin <= position < end:
                return end
        return position

    async def received_from(self, position: int) -> None:
        """Return once bytes `[position, length)` are in, or the piece failed."""
        while self.available_until(position) < self.length and self.error is None:
            await self._changed.wait()

    def release(self) -> None:
        """A whole gated piece was proven: its readers may have it."""
        assert self.whole
        self.released = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Readers still waiting get `error` (a gated piece fails until it is released)."""
        if self.error is None and not (self.released if self.gated else self.whole):
            self.error = error
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def relay(self) -> AsyncIterator[memoryview]:
        """The whole piece for a peer, as it arrives (from the origin, or unchecked from
        another peer); raises the piece's error if its fetch fails first."""
        position = 0
        view = memoryview(self.buffer)
        while position < self.length:
            stop = max(self.available_until(position), self.passed)
            if stop <= position:
                if self.error is not None:
                    raise self.error
                await self._changed.wait()
                continue
            yield view[position:stop]
            position = stop

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Bytes `[start, end)` of the piece (piece-relative offsets), as they arrive."""
        position = start
        view = memoryview(self.buffer)
        while self.gated and not self.released:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        while position < end:
            while (stop := self.available_until(position)) <= position:
                if self.error is not None:
                    raise self.error
                await self._changed.wait()
            stop = min(stop, end)
            yield view[position:stop]
            position = stop
