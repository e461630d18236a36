"""Stored bytes sent with sendfile, from sender threads when sends run side by side: exact for
slow clients, never holding a thread for a client that stalls, and leaving no descriptor
behind when a client hangs up."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from aiohttp import web

from dfagent.engine.fetcher import FileSegment
from dfagent.sendfile import send_segment

MIB = 1024 * 1024
OFFSET = 1000
COUNT = 6 * MIB


@dataclass
class _Blob:
    """The two things sending needs of a stored blob: its open data file and its name."""

    file: IO[bytes]
    digest: str = "sha256:test"


@pytest.fixture
def data() -> bytes:
    return os.urandom(8 * MIB)


@pytest.fixture
async def server(tmp_path: Path, data: bytes) -> AsyncIterator[tuple[int, list[BaseException]]]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    failures: list[BaseException] = []
    with path.open("rb") as file:
        blob = _Blob(file)

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.content_length = COUNT
            await response.prepare(request)
            try:
                await send_segment(request, response, FileSegment(blob, OFFSET, COUNT))  # type: ignore[arg-type]
            except OSError as exc:
                failures.append(exc)
                raise
            return response

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield port, failures
        finally:
            await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # the sender fills it often
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    return reader, writer


async def _body(reader: asyncio.StreamReader, *, pause: float = 0.0) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = bytearray()
    while len(body) < COUNT:
        body += await reader.read(min(256 * 1024, COUNT - len(body)))
        if pause:
            await asyncio.sleep(pause)
    return bytes(body)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_slow_readers_side_by_side_get_exact_bytes(server, data):
    """Beside each other, sends go to the sender threads, which stop and resume as each
    client's socket fills and drains."""
    port, failures = server
    clients = [await _connect(port) for _ in range(3)]
    async with asyncio.timeout(30):
        bodies = await asyncio.gather(*(_body(reader, pause=0.01) for reader, _ in clients))
    assert all(body == data[OFFSET : OFFSET + COUNT] for body in bodies)
    for _, writer in clients:
        writer.close()
    assert not failures


async def test_clients_that_stop_reading_hold_no_sender_thread(server, data):
    """More stalled clients than sender threads: a reading client is still served at once."""
    port, _ = server
    stalled = [await _connect(port) for _ in range(8)]
    await asyncio.sleep(0.5)  # their sockets are full by now
    reader, writer = await _connect(port)
    async with asyncio.timeout(10):
        assert await _body(reader) == data[OFFSET : OFFSET + COUNT]
    writer.close()
    for _, stalled_writer in stalled:
        stalled_writer.close()


async def test_a_client_that_hangs_up_leaves_no_descriptor(server):
    port, failures = server
    before = _open_descriptors()
    clients = [await _connect(port) for _ in range(5)]
    for reader, _ in clients:
        await reader.readexactly(64 * 1024)
    for _, writer in clients:
        writer.transport.abort()
    async with asyncio.timeout(10):
        while len(failures) < 5 or _open_descriptors() > before:
            await asyncio.sleep(0.05)
    assert all(isinstance(failure, OSError) for failure in failures)
