"""A piece on its way in: bytes land in a buffer that readers follow as it fills."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

__all__ = ["InflightPiece"]


class InflightPiece:
    """Piece `index` of a blob, `[start, start + length)` in blob offsets, being fetched.

    The fetcher `append`s bytes in order and then calls `finish` or `fail`. Any number of
    readers iterate `read(...)` and get each part of their range as soon as it has arrived,
    without waiting for the whole piece. The buffer is allocated once and never resized, so
    the memoryviews handed out stay valid.
    """

    __slots__ = (
        "_changed",
        "_hasher",
        "authorization",
        "buffer",
        "error",
        "filled",
        "index",
        "length",
        "sha256",
        "start",
        "started_at",
    )

    def __init__(self, index: int, start: int, length: int, authorization: str | None) -> None:
        self.index = index
        self.start = start
        self.length = length
        self.authorization = authorization
        self.buffer = bytearray(length)
        self.filled = 0
        self.error: BaseException | None = None
        self.sha256: bytes | None = None
        self.started_at = time.monotonic()
        self._hasher = hashlib.sha256()
        self._changed = asyncio.Event()

    @property
    def complete(self) -> bool:
        return self.sha256 is not None

    def append(self, data: bytes | memoryview) -> None:
        end = self.filled + len(data)
        assert end <= self.length, "more bytes than the piece holds"
        self.buffer[self.filled : end] = data
        self._hasher.update(data)
        self.filled = end
        self._wake()

    def finish(self) -> bytes:
        assert self.filled == self.length, "piece finished short"
        self.sha256 = self._hasher.digest()
        self._wake()
        return self.sha256

    def fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Bytes `[start, end)` of the piece (piece-relative offsets), as they arrive."""
        position = start
        view = memoryview(self.buffer)
        while position < end:
            while self.filled <= position:
                if self.error is not None:
                    raise self.error
                await self._changed.wait()
            stop = min(self.filled, end)
            yield view[position:stop]
            position = stop
