"""Serving pieces over Vortex TCP the way dfdaemon 1.5.10 does.

A connection carries DownloadPiece requests one after another until the client hangs up or
stays idle for 30 s. Each gets a PieceContent frame followed by the piece's bytes, or an Error
frame (NOT_FOUND when we do not hold the piece, INTERNAL when looking it up failed or every
upload slot is taken), after which the connection stays open. Anything else (a Close frame,
another tag, a malformed request) ends the connection without an answer, as it does in
dfdaemon. A client that does not take what is sent within the send timeout is cut off: its
answer would otherwise sit in memory for as long as it likes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from dfagent.dragonfly.ids import piece_id
from dfagent.dragonfly.vortex.wire import (
    DOWNLOAD_PIECE_LENGTH,
    DownloadPiece,
    ErrorCode,
    ErrorMessage,
    PieceMetadata,
    Tag,
    TrafficType,
    read_header,
    read_value,
)
from dfagent.errors import VortexError

__all__ = ["IDLE_TIMEOUT", "SEND_TIMEOUT", "Lookup", "ServedPiece", "Slots", "serve_connection"]

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # dfdaemon's: a connection with no request for this long is closed
SEND_TIMEOUT = 30.0  # a client that takes none of a send's bytes for this long is cut off
_SEND_SIZE = 256 * 1024  # bytes of a piece sent (and given the send timeout) at a time


@dataclass(frozen=True)
class ServedPiece:
    """A piece we hold: where it sits in the task, its digest (`crc32:<decimal>`), the peer
    we got it from (empty for the origin), and its bytes, exactly `length` of them."""

    offset: int
    length: int
    digest: str
    parent_id: str
    content: AsyncIterable[bytes]
    cost: int = 0  # seconds it took us to get the piece
    created_at: int = field(default_factory=lambda: int(time.time()))


Lookup = Callable[[str, int], Awaitable[ServedPiece | None]]


class Slots(Protocol):
    """Upload slots (dfagent.swarm.slots.UploadSlots): `take` gives a slot, or False when
    none freed up in time; each slot taken is given back once."""

    async def take(self) -> bool: ...

    def give(self) -> None: ...


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: Lookup,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    send_timeout: float = SEND_TIMEOUT,
    slots: Slots | None = None,
) -> None:
    """Answer the connection's requests until it ends; never raises for what the client
    does. `lookup(task_id, number)` gives the piece, or None when we do not hold it. With
    `slots`, a piece is looked up and sent only in one of them."""
    peer = writer.get_extra_info("peername")
    connection = _Connection(reader, writer, lookup, idle_timeout, send_timeout, slots)
    try:
        while await connection.serve_request():
            pass
    except (OSError, asyncio.IncompleteReadError, VortexError) as exc:
        log.debug("vortex connection ended", extra={"peer": peer, "reason": str(exc)})
    except Exception:
        log.exception("vortex: serving a piece failed", extra={"peer": peer})
    finally:
        writer.close()  # sends what is buffered first: only for as long as a send may take
        try:
            async with asyncio.timeout(send_timeout):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
        except OSError:
            pass


@dataclass(frozen=True, slots=True)
class _Connection:
    """One client's connection, and what its requests are held to."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lookup: Lookup
    idle_timeout: float
    send_timeout: float
    slots: Slots | None

    async def serve_request(self) -> bool:
        """Serve the next request; False when the connection should close."""
        request = await _read_request(self.reader, self.idle_timeout)
        if request is None:
            return False
        if self.slots is None:
            await self._answer(request)
        elif await self.slots.take():
            try:
                await self._answer(request)
            finally:
                self.slots.give()
        else:
            busy = f"too many uploads; piece {piece_id(request.task_id, request.number)} not sent"
            await self._send(ErrorMessage(ErrorCode.INTERNAL, busy).encode())
        return True

    async def _answer(self, request: DownloadPiece) -> None:
        try:
            piece = await self.lookup(request.task_id, request.number)
        except Exception as exc:
            log.warning("vortex: looking up a piece failed", exc_info=True)
            failed = f"failed to get piece {piece_id(request.task_id, request.number)}: {exc}"
            await self._send(ErrorMessage(ErrorCode.INTERNAL, failed).encode())
            return
        if piece is None:
            missing = f"piece {piece_id(request.task_id, request.number)} not found"
            await self._send(ErrorMessage(ErrorCode.NOT_FOUND, missing).encode())
            return
        iterator = aiter(piece.content)
        try:
            try:
                frame = PieceMetadata(
                    number=request.number,
                    offset=piece.offset,
                    length=piece.length,
                    digest=piece.digest,
                    parent_id=piece.parent_id,
                    traffic_type=TrafficType.REMOTE_PEER,
                    cost=piece.cost,
                    created_at=piece.created_at,
                ).encode()
            except ValueError as exc:
                log.warning("vortex: cannot describe a piece", extra={"error": str(exc)})
                await self._send(ErrorMessage(ErrorCode.INTERNAL, str(exc)).encode())
                return
            await self._send(frame)
            await self._send_content(iterator, piece.length)
        finally:
            await _close(iterator)

    async def _send(self, data: bytes | memoryview) -> None:
        """Send `data`; VortexError (and the connection cut off) when the client takes none
        of what is waiting to go for send_timeout."""
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.writer.transport.abort()  # what is buffered would never go
            raise VortexError(f"the client took nothing for {self.send_timeout:g} s") from None

    async def _send_content(self, iterator: AsyncIterator[bytes], length: int) -> None:
        """Exactly the piece's bytes, a slice at a time; a source giving more or fewer breaks
        the framing, so the connection is closed (VortexError)."""
        sent = 0
        async for chunk in iterator:
            sent += len(chunk)
            if sent > length:
                raise VortexError(f"the piece's source gave more than {length} bytes")
            view = memoryview(chunk)
            for start in range(0, len(view), _SEND_SIZE):
                await self._send(view[start : start + _SEND_SIZE])
        if sent != length:
            raise VortexError(f"the piece's source gave {sent} of its {length} bytes")


async def _read_request(reader: asyncio.StreamReader, idle_timeout: float) -> DownloadPiece | None:
    """The next request; None when the client hung up, went idle or sent another frame."""
    try:
        async with asyncio.timeout(idle_timeout):
            header = await read_header(reader)
            if header.tag != Tag.DOWNLOAD_PIECE:
                log.debug("vortex connection closed", extra={"frame": header.describe()})
                return None
            return DownloadPiece.decode(await read_value(reader, header, DOWNLOAD_PIECE_LENGTH))
    except TimeoutError:
        return None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None  # the client hung up between requests


async def _close(iterator: AsyncIterator[bytes]) -> None:
    """Let the piece's source (an async generator, say) release what it holds."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
