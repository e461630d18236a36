"""Serving pieces over Vortex TCP the way dfdaemon 1.5.10 does.

A connection carries DownloadPiece requests one after another until the client hangs up or
stays idle for 30 s. Each gets a PieceContent frame followed by the piece's bytes, or an Error
frame (NOT_FOUND when we do not hold the piece, INTERNAL when looking it up failed), after
which the connection stays open. Anything else (a Close frame, another tag, a malformed
request) ends the connection without an answer, as it does in dfdaemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

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

__all__ = ["IDLE_TIMEOUT", "Lookup", "ServedPiece", "serve_connection"]

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # dfdaemon's: a connection with no request for this long is closed


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


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: Lookup,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Answer the connection's requests until it ends; never raises for what the client
    does. `lookup(task_id, number)` gives the piece, or None when we do not hold it."""
    peer = writer.get_extra_info("peername")
    try:
        while await _serve_request(reader, writer, lookup, idle_timeout):
            pass
    except (OSError, asyncio.IncompleteReadError, VortexError) as exc:
        log.debug("vortex connection ended", extra={"peer": peer, "reason": str(exc)})
    except Exception:
        log.exception("vortex: serving a piece failed", extra={"peer": peer})
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _serve_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: Lookup,
    idle_timeout: float,
) -> bool:
    """Serve the next request; False when the connection should close."""
    request = await _read_request(reader, idle_timeout)
    if request is None:
        return False
    try:
        piece = await lookup(request.task_id, request.number)
    except Exception as exc:
        log.warning("vortex: looking up a piece failed", exc_info=True)
        failed = f"failed to get piece {piece_id(request.task_id, request.number)}: {exc}"
        await _send(writer, ErrorMessage(ErrorCode.INTERNAL, failed).encode())
        return True
    if piece is None:
        missing = f"piece {piece_id(request.task_id, request.number)} not found"
        await _send(writer, ErrorMessage(ErrorCode.NOT_FOUND, missing).encode())
        return True
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
        await _close(aiter(piece.content))
        await _send(writer, ErrorMessage(ErrorCode.INTERNAL, str(exc)).encode())
        return True
    await _send(writer, frame)
    await _send_content(writer, piece)
    return True


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


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _send_content(writer: asyncio.StreamWriter, piece: ServedPiece) -> None:
    """Exactly the piece's bytes; a source giving more or fewer breaks the framing, so the
    connection is closed (VortexError)."""
    sent = 0
    iterator = aiter(piece.content)
    try:
        async for chunk in iterator:
            sent += len(chunk)
            if sent > piece.length:
                raise VortexError(f"the piece's source gave more than {piece.length} bytes")
            await _send(writer, chunk)
    finally:
        await _close(iterator)
    if sent != piece.length:
        raise VortexError(f"the piece's source gave {sent} of its {piece.length} bytes")


async def _close(iterator: AsyncIterator[bytes]) -> None:
    """Let the piece's source (an async generator, say) release what it holds."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
