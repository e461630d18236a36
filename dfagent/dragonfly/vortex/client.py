"""Fetching one piece from a Dragonfly peer over Vortex TCP.

One request per connection: dfdaemon keeps a connection open for more requests, but serves a
fresh one just as well. The piece's bytes can be used as they arrive; their CRC-32 is checked
against the peer's `crc32:<decimal>` digest once the last byte is in. Like dfdaemon, a peer
that sends an empty digest is taken at its word.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from types import TracebackType

from dfagent.dragonfly.vortex.wire import (
    MAX_ERROR_LENGTH,
    MAX_METADATA_LENGTH,
    DownloadPiece,
    ErrorCode,
    ErrorMessage,
    PieceMetadata,
    Tag,
    crc32_digest,
    read_header,
    read_value,
)
from dfagent.errors import VortexError

__all__ = ["PieceReply", "download_piece", "fetch_piece"]

_READ_SIZE = 1024 * 1024


class PieceReply:
    """A peer's answer with a piece: its metadata, then its bytes (iterate once, or call
    `read_all`). The connection closes when the bytes are all read, on any error, or on
    `close` / leaving `async with`."""

    def __init__(
        self,
        metadata: PieceMetadata,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        read_timeout: float,
    ) -> None:
        self.metadata = metadata
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._read_timeout = read_timeout
        self._started = False

    async def __aenter__(self) -> PieceReply:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise VortexError(f"the piece from {self._peer} was already read")
        self._started = True
        return self._chunks()

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The piece's bytes as they arrive; the digest check follows the last of them.
        Each read may wait up to the timeout."""
        length, received, crc = self.metadata.length, 0, 0
        try:
            while received < length:
                chunk = await self._read(min(length - received, _READ_SIZE))
                if not chunk:
                    raise VortexError(
                        f"{self._peer} closed after {received} of the piece's {length} bytes"
                    )
                received += len(chunk)
                crc = zlib.crc32(chunk, crc)
                yield chunk
            digest = self.metadata.digest
            if digest and digest != crc32_digest(crc):
                raise VortexError(
                    f"piece {self.metadata.number} from {self._peer} has {crc32_digest(crc)}, "
                    f"its digest says {digest}"
                )
        finally:
            self.close()

    async def _read(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                return await self._reader.read(size)
        except TimeoutError as exc:
            raise VortexError(f"{self._peer} sent nothing for {self._read_timeout} s") from exc
        except OSError as exc:
            raise VortexError(f"reading the piece from {self._peer}: {exc}") from exc


async def download_piece(
    host: str, port: int, task_id: str, number: int, *, read_timeout: float
) -> PieceReply:
    """Ask the peer at host:port for piece `number` of `task_id`. `read_timeout` bounds each
    wait for the peer: connecting, then the reply's metadata, then each wait for more bytes.
    Raises VortexError (`not_found` when the peer does not hold the piece)."""
    peer = f"{host}:{port}"
    request = DownloadPiece(task_id, number).encode()
    try:
        async with asyncio.timeout(read_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise VortexError(f"cannot connect to {peer}: {str(exc) or 'timed out'}") from exc
    try:
        async with asyncio.timeout(read_timeout):
            writer.write(request)
            await writer.drain()
            metadata = await _read_reply(reader, peer)
    except TimeoutError as exc:
        writer.close()
        raise VortexError(f"{peer} did not answer within {read_timeout} s") from exc
    except (OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise VortexError(f"{peer} closed the connection before its answer: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    if metadata.number != number:
        writer.close()
        raise VortexError(f"{peer} answered with piece {metadata.number}, not {number}")
    return PieceReply(metadata, reader, writer, peer=peer, read_timeout=read_timeout)


async def _read_reply(reader: asyncio.StreamReader, peer: str) -> PieceMetadata:
    header = await read_header(reader)
    if header.tag == Tag.PIECE_CONTENT:
        return PieceMetadata.decode(await read_value(reader, header, 4 + MAX_METADATA_LENGTH))
    if header.tag == Tag.ERROR:
        error = ErrorMessage.decode(await read_value(reader, header, MAX_ERROR_LENGTH))
        raise VortexError(
            f"{peer} answered {error.describe()}", not_found=error.code == ErrorCode.NOT_FOUND
        )
    raise VortexError(f"{peer} answered a DownloadPiece with a {header.describe()}")


async def fetch_piece(
    host: str, port: int, task_id: str, number: int, *, read_timeout: float
) -> tuple[PieceMetadata, bytes]:
    """The whole piece at once: its metadata and its checked bytes."""
    reply = await download_piece(host, port, task_id, number, read_timeout=read_timeout)
    async with reply:
        return reply.metadata, await reply.read_all()
