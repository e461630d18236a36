"""A blob's home is asked patiently: on a loaded link a connection to it may take a lost SYN's
resend (a second), and a home not asked is pieces sent to the origin. A home that does not
connect even so is given up on at once for a while."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from dfagent.swarm import client as peer_client
from dfagent.swarm.client import PeerClient, PeerError
from dfagent.swarm.directory import Directory
from dfagent.swarm.server import PeerServer
from tests.support.peer_home import started_home

TOKEN = "cluster-token-for-unit-tests"
DIGEST = "cd" * 32
ORIGIN = "https://registry:443"
LAYOUT = "fixed:65536"
SIZE = 4 * 65536
HOLDER = "127.0.0.1:3"
FAST_FAIL = 0.1  # peer.connect_timeout's default


class LateDoor:
    """A port in front of a home whose accept queue is full, so the kernel drops every SYN
    sent to it: a connection comes only with a SYN's resend (after a second, then three),
    once `let_in` made room. Then it passes bytes both ways."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)  # room for one connection not yet accepted
        self._filler = socket.create_connection(self._listener.getsockname())
        self._server: asyncio.Server | None = None
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"

    async def let_in(self, after: float = 0.0) -> None:
        await asyncio.sleep(after)
        self._listener.setblocking(False)
        accepted, _ = await asyncio.get_running_loop().sock_accept(self._listener)
        accepted.close()
        self._server = await asyncio.start_server(self._pass, sock=self._listener)

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        home_reader, home_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, home_writer), pump(home_reader, writer))

    def close(self) -> None:
        self._filler.close()
        if self._server is not None:
            self._server.close()
        else:
            self._listener.close()


@pytest.fixture
async def home() -> AsyncIterator[PeerServer]:
    """A real home whose directory knows one holder of piece 3."""
    directory = Directory(holder_ttl=30, lease_ttl=15)
    directory.announce(
        DIGEST, ORIGIN, SIZE, LAYOUT, holder=HOLDER, pieces={3: b"\x01" * 32}, verified=False
    )
    server = await started_home(TOKEN, directory)
    yield server
    await server.stop()


LOOKUP = {
    "digest": DIGEST,
    "origin": ORIGIN,
    "size": SIZE,
    "layout": LAYOUT,
    "pieces": [3],
    "requester": "127.0.0.1:2",
    "stalled": None,
}


async def timed_lookup(client: PeerClient, home: str) -> tuple[float, object]:
    started = time.monotonic()
    try:
        answer: object = await client.lookup(home, LOOKUP)
    except PeerError as exc:
        answer = exc
    return time.monotonic() - started, answer


async def test_a_home_slow_to_accept_a_connection_is_still_asked(home):
    """Its SYN dropped once, the lookup connects with the resend and gets the home's answer,
    where a holder would have been passed over after FAST_FAIL."""
    door = LateDoor(home.port)
    try:
        async with PeerClient(TOKEN, FAST_FAIL, 2) as client:
            opening = asyncio.create_task(door.let_in(after=0.3))
            took, answer = await timed_lookup(client, door.address)
            await opening
    finally:
        door.close()
    assert not isinstance(answer, PeerError), f"the home was given up on after {took:.2f} s"
    assert answer[3].holders == (HOLDER,)
    assert took > 0.5, "the SYN was not dropped: this test shows nothing"


async def test_a_home_that_does_not_connect_even_patiently_is_given_up_on_at_once(
    home, monkeypatch
):
    """Given up on after its patience, a home fails fast for HOME_DOWN_SECONDS (a dead home
    would otherwise hold every read up), and is asked again as soon as it accepts."""
    monkeypatch.setattr(peer_client, "HOME_CONNECT_SECONDS", 0.6)  # before the SYN's resend
    monkeypatch.setattr(peer_client, "HOME_DOWN_SECONDS", 2.0)
    door = LateDoor(home.port)
    try:
        async with PeerClient(TOKEN, FAST_FAIL, 2) as client:
            first, answer = await timed_lookup(client, door.address)
            assert isinstance(answer, PeerError) and answer.unreachable
            assert first >= 0.55, f"gave up after {first:.2f} s, not patiently"
            second, answer = await timed_lookup(client, door.address)
            assert isinstance(answer, PeerError)
            assert second < 0.4, f"a home that failed just now was waited for {second:.2f} s"
            await door.let_in()
            _, answer = await timed_lookup(client, door.address)  # fast, and it answers
            assert not isinstance(answer, PeerError) and answer[3].holders == (HOLDER,)
    finally:
        door.close()
