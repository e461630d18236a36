"""The Vortex client and server side, talking over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from dfagent.dragonfly.vortex import (
    MAX_PIECE_LENGTH,
    DownloadPiece,
    ErrorCode,
    ErrorMessage,
    PieceMetadata,
    ServedPiece,
    Tag,
    TrafficType,
    download_piece,
    fetch_piece,
    serve_connection,
)
from dfagent.dragonfly.vortex.wire import encode_close, encode_header, read_header
from dfagent.errors import VortexError
from dfagent.swarm.slots import UploadSlots

TASK = "a" * 64
DATA = os.urandom(3 * 1024 * 1024 + 17)
PIECE = 4 * 1024 * 1024


def digest(data: bytes) -> str:
    return f"crc32:{zlib.crc32(data)}"


async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def holding(pieces: dict[int, bytes], **overrides: object) -> Callable:
    """A lookup for task TASK holding `pieces` (number -> bytes)."""

    async def lookup(task_id: str, number: int) -> ServedPiece | None:
        if task_id != TASK or number not in pieces:
            return None
        data = pieces[number]
        fields = {
            "offset": number * PIECE,
            "length": len(data),
            "digest": digest(data),
            "parent_id": "127.0.0.1-parent",
            "content": chunks(data),
            "created_at": 1_800_000_000,
            "cost": 2,
        }
        return ServedPiece(**(fields | overrides))

    return lookup


@asynccontextmanager
async def serving(lookup: Callable, **options: object) -> AsyncIterator[tuple[int, list]]:
    """A Vortex server on loopback; yields its port and the list of serve_connection
    outcomes (None, or the exception it raised)."""
    outcomes: list[BaseException | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_connection(reader, writer, lookup, **options)
        except BaseException as exc:
            outcomes.append(exc)
            raise
        outcomes.append(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], outcomes


@asynccontextmanager
async def answering(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A fake peer: `respond` writes whatever it likes after reading the request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6 + 68)
        await respond(reader, writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def settle(outcomes: list, count: int = 1) -> None:
    async with asyncio.timeout(5):
        while len(outcomes) < count:
            await asyncio.sleep(0.01)


async def test_piece_arrives_byte_exact_with_its_metadata():
    async with serving(holding({3: DATA})) as (port, outcomes):
        metadata, data = await fetch_piece("127.0.0.1", port, TASK, 3, read_timeout=5)
        await settle(outcomes)
    assert data == DATA
    assert metadata == PieceMetadata(
        number=3,
        offset=3 * PIECE,
        length=len(DATA),
        digest=digest(DATA),
        parent_id="127.0.0.1-parent",
        traffic_type=TrafficType.REMOTE_PEER,
        cost=2,
        created_at=1_800_000_000,
    )
    assert outcomes == [None]


async def test_first_bytes_arrive_before_the_last_are_sent():
    release = asyncio.Event()

    async def held_back() -> AsyncIterator[bytes]:
        yield DATA[:1000]
        await release.wait()
        yield DATA[1000:]

    async with serving(holding({0: DATA}, content=held_back())) as (port, _):
        reply = await download_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        async with reply:
            received = []
            async for chunk in reply:
                received.append(chunk)
                release.set()
    assert received[0] == DATA[:1000]
    assert b"".join(received) == DATA


async def test_an_empty_piece():
    async with serving(holding({0: b""})) as (port, _):
        metadata, data = await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
    assert (metadata.length, metadata.digest, data) == (0, "crc32:0", b"")


async def test_crc_mismatch_is_detected_after_the_last_byte():
    wrong = digest(DATA[:-1] + b"?")
    async with serving(holding({0: DATA}, digest=wrong)) as (port, _):
        reply = await download_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        received = bytearray()
        with pytest.raises(VortexError, match=f"crc32:{zlib.crc32(DATA)}, its digest says"):
            async for chunk in reply:
                received += chunk
    assert received == DATA
    assert reply.metadata.digest == wrong


async def test_an_empty_digest_is_taken_at_its_word():
    async with serving(holding({0: DATA}, digest="")) as (port, _):
        metadata, data = await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
    assert (metadata.digest, data) == ("", DATA)


async def test_not_found_and_failed_lookups():
    async def failing(task_id: str, number: int) -> ServedPiece | None:
        raise OSError("disk on fire")

    async with serving(holding({0: DATA})) as (port, _):
        with pytest.raises(VortexError, match=f"NOT_FOUND: piece {TASK}-1 not found") as missing:
            await fetch_piece("127.0.0.1", port, TASK, 1, read_timeout=5)
        with pytest.raises(VortexError) as other_task:
            await fetch_piece("127.0.0.1", port, "b" * 64, 0, read_timeout=5)
    async with serving(failing) as (port, outcomes):
        with pytest.raises(VortexError, match=r"INTERNAL: .*disk on fire") as failed:
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        await settle(outcomes)
    assert missing.value.not_found and other_task.value.not_found
    assert not failed.value.not_found
    assert outcomes == [None]


async def test_a_piece_that_cannot_be_described_is_an_internal_error():
    async with serving(holding({0: DATA}, length=MAX_PIECE_LENGTH + 1)) as (port, _):
        with pytest.raises(VortexError, match="INTERNAL: a piece of") as failed:
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
    assert not failed.value.not_found


async def test_short_source_breaks_the_connection_and_the_client_says_so():
    async with serving(holding({0: DATA}, length=len(DATA) + 10)) as (port, outcomes):
        with pytest.raises(VortexError, match=f"closed after {len(DATA)} of the piece's"):
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        await settle(outcomes)
    assert outcomes == [None]


async def test_long_source_is_cut_off():
    async with serving(holding({0: DATA}, length=len(DATA) - 10)) as (port, outcomes):
        with pytest.raises(VortexError, match="closed after"):
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        await settle(outcomes)
    assert outcomes == [None]


async def exchange(port: int, *frames: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(frames))
    await writer.drain()
    return reader, writer


async def test_one_connection_serves_requests_one_after_another():
    pieces = {0: DATA[:5000], 1: DATA[5000:9000]}
    async with serving(holding(pieces)) as (port, outcomes):
        requests = [DownloadPiece(TASK, n).encode() for n in (0, 7, 1)]
        reader, writer = await exchange(port, *requests)
        for number in (0, 7, 1):
            header = await read_header(reader)
            value = await reader.readexactly(header.length)
            if number == 7:
                assert header.tag == Tag.ERROR
                assert ErrorMessage.decode(value).code == ErrorCode.NOT_FOUND
                continue
            assert header.tag == Tag.PIECE_CONTENT
            metadata = PieceMetadata.decode(value)
            assert metadata.number == number
            assert await reader.readexactly(metadata.length) == pieces[number]
        writer.write(encode_close())
        async with asyncio.timeout(5):  # well before the idle timeout
            assert await reader.read() == b""  # the server closed after Close
        writer.close()
        await settle(outcomes)
    assert outcomes == [None]


@pytest.mark.parametrize(
    ("frame", "then_hang_up"),
    [
        (encode_header(Tag.DOWNLOAD_PIECE, 67) + b"a" * 67, False),
        (encode_header(Tag.DOWNLOAD_PIECE, 1 << 31), False),
        (encode_header(Tag.DOWNLOAD_PERSISTENT_PIECE, 68) + TASK.encode() + bytes(4), False),
        (encode_header(Tag.PIECE_CONTENT, 0), False),
        (bytes([0, 99, 0, 0, 0, 0]), False),
        (DownloadPiece(TASK, 0).encode()[:40], True),
    ],
    ids=["short-request", "huge-request", "persistent-piece", "piece-content", "tag-99", "cut"],
)
async def test_anything_but_a_request_closes_the_connection_unanswered(frame, then_hang_up):
    async with serving(holding({0: DATA})) as (port, outcomes):
        reader, writer = await exchange(port, frame)
        if then_hang_up:
            writer.write_eof()
        async with asyncio.timeout(5):  # well before the idle timeout
            assert await reader.read() == b""
        writer.close()
        await settle(outcomes)
    assert outcomes == [None]


async def test_client_hanging_up_mid_piece_is_not_an_error():
    big = os.urandom(16 * 1024 * 1024)
    async with serving(holding({0: big})) as (port, outcomes):
        reader, writer = await exchange(port, DownloadPiece(TASK, 0).encode())
        await reader.readexactly(64 * 1024)
        writer.transport.abort()
        await settle(outcomes)
    assert outcomes == [None]


async def test_idle_connection_is_closed():
    async with serving(holding({0: DATA}), idle_timeout=0.2) as (port, outcomes):
        reader, writer = await exchange(port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        await settle(outcomes)
    assert outcomes == [None]


async def test_a_client_that_takes_nothing_is_cut_off():
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(64):  # 64 MiB, far more than the sockets buffer
            yield bytes(1024 * 1024)

    lookup = holding({0: b""}, length=64 * 1024 * 1024, digest="", content=endless())
    async with serving(lookup, send_timeout=0.2) as (port, outcomes):
        _, writer = await exchange(port, DownloadPiece(TASK, 0).encode())
        await settle(outcomes)  # well before the idle timeout, and reading nothing
        writer.close()
    assert outcomes == [None]


async def test_requests_beyond_the_upload_slots_are_answered_busy():
    release = asyncio.Event()

    async def held_back() -> AsyncIterator[bytes]:
        await release.wait()
        yield DATA

    lookup = holding({0: DATA}, content=held_back())
    async with serving(lookup, slots=UploadSlots(1, 0.05)) as (port, outcomes):
        first = asyncio.create_task(fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5))
        await asyncio.sleep(0.1)  # the first upload holds the only slot
        with pytest.raises(VortexError, match="INTERNAL: too many uploads") as busy:
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        release.set()
        assert (await asyncio.wait_for(first, 5))[1] == DATA
        await settle(outcomes, 2)
    assert not busy.value.not_found
    assert outcomes == [None, None]


async def test_client_refuses_other_answers():
    metadata = PieceMetadata(5, 0, 3, digest(b"abc"), "")

    async def wrong_piece(reader, writer):
        writer.write(metadata.encode() + b"abc")

    async def wrong_tag(reader, writer):
        writer.write(DownloadPiece(TASK, 0).encode())

    async def oversized(reader, writer):
        writer.write(encode_header(Tag.PIECE_CONTENT, 1 << 20) + bytes(1 << 20))

    async def hang_up(reader, writer):
        writer.write(metadata.encode()[:10])

    cases = [
        (wrong_piece, "answered with piece 5, not 0"),
        (wrong_tag, "answered a DownloadPiece with a DOWNLOAD_PIECE frame"),
        (oversized, "over the"),
        (hang_up, "closed the connection before its answer"),
    ]
    for respond, reason in cases:
        async with answering(respond) as port:
            with pytest.raises(VortexError, match=reason) as raised:
                await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
            assert not raised.value.not_found


async def test_client_timeouts_and_refused_connections():
    async def silent(reader, writer):
        await reader.read()  # until the client gives up

    async def stalls(reader, writer):
        writer.write(PieceMetadata(0, 0, 10, "", "").encode() + b"12345")
        await reader.read()

    async with answering(silent) as port:
        with pytest.raises(VortexError, match=r"did not answer within 0\.2 s"):
            await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=0.2)
    async with answering(stalls) as port:
        reply = await download_piece("127.0.0.1", port, TASK, 0, read_timeout=0.2)
        with pytest.raises(VortexError, match=r"sent nothing for 0\.2 s"):
            await reply.read_all()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(VortexError, match="cannot connect"):
        await fetch_piece("127.0.0.1", port, TASK, 0, read_timeout=1)


async def test_a_reply_is_read_once():
    async with serving(holding({0: DATA})) as (port, _):
        reply = await download_piece("127.0.0.1", port, TASK, 0, read_timeout=5)
        assert await reply.read_all() == DATA
        with pytest.raises(VortexError, match="already read"):
            await reply.read_all()
