"""A real agent among fake peers that misbehave: a home that answers garbage, a holder that
trickles. The swarm only ever makes things faster: reads get exact bytes from the origin, soon,
without a traceback per request."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from dfagent.swarm.hashing import home_of
from tests.conftest import TOKEN
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.ports import free_port
from tests.support.registry import Registry

PIECE = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakePeer:
    """An aiohttp app on its own thread, so that blocking test code cannot stall it; each
    request it is sent is recorded (method, path)."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.port = free_port()
        self.asked: list[tuple[str, str]] = []
        self._routes = routes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakePeer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.asked.append((request.method, request.path))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in self._routes.items():
            app.router.add_route("*", path, handler)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def fake_peers() -> Iterator[Callable[[dict[str, Handler]], FakePeer]]:
    started: list[FakePeer] = []

    def start(routes: dict[str, Handler]) -> FakePeer:
        peer = FakePeer(routes).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def agent_among(tmp_path: Path) -> Iterator[Callable[[list[str]], AgentProcess]]:
    """`agent_among(others)` starts one agent whose swarm is itself and `others`."""
    started: list[AgentProcess] = []
    (tmp_path / "token").write_text(TOKEN)

    def start(others: list[str]) -> AgentProcess:
        me = f"127.0.0.1:{free_port()}"
        peer = {"listen": me, "token_file": str(tmp_path / "token"), "connect_timeout": "2s"}
        settings = {
            "storage": {"piece_size": "256KiB"},
            "peer": peer,
            "swarm": {"peers": [me, *others], "advertise": me},
        }
        started.append(AgentProcess(tmp_path / f"agent{len(started)}", settings).start())
        return started[-1]

    yield start
    for agent in started:
        agent.kill()


def url(origin: CountingOrigin, digest: str) -> str:
    return f"{origin.url}/v2/test/swarm/blobs/{digest}"


def timed_read(agent: AgentProcess, target: str, headers: dict[str, str]) -> tuple[bytes, float]:
    started = time.monotonic()
    return send(agent.proxy_port, target, headers).body, time.monotonic() - started


async def garbage(request: web.Request) -> web.Response:
    """What a broken home says to anything: sha256 values that are not hex, a size that is
    not a number."""
    if request.path.startswith("/v1/lookup"):
        asked = (await request.json())["pieces"]
        entry = {"sha256": "zz", "holders": [], "fetch": False, "fetching": None}
        return web.json_response({"pieces": {str(i): entry for i in asked}})
    if request.path.startswith("/v1/blobs/"):
        return web.json_response({"size": "big", "layout": 7})
    return web.json_response({})


def test_a_home_that_answers_garbage_leaves_reads_to_the_origin(
    fake_peers, agent_among, origin, registry: Registry
):
    home = fake_peers({"/v1/{tail:.*}": garbage})
    agent = agent_among([home.address])
    members = [f"127.0.0.1:{agent.peer_port}", home.address]
    data = os.urandom(4 * PIECE)
    while home_of(members, hashlib.sha256(data).hexdigest()) != home.address:
        data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    for first, last in ((0, 99), (2 * PIECE, 3 * PIECE + 5), (0, len(data) - 1)):
        body, took = timed_read(agent, url(origin, digest), {"Range": f"bytes={first}-{last}"})
        assert body == data[first : last + 1]
        assert took < 5, f"a read took {took:.1f} s"
    assert any(path == "/v1/lookup" for _, path in home.asked), "the home was asked"
    log = agent.log()
    assert "Traceback" not in log
    warned = [line for line in log.splitlines() if "home answered something unusable" in line]
    lookups = [line for line in warned if "malformed lookup" in line]
    assert len(lookups) == 1, "warned once of each kind of answer, not per read"
    assert len(warned) == 2, "the lookups', and the description's"


def trickling_holder(data: bytes, gap: float) -> Handler:
    """A holder that sends any piece of `data` one byte every `gap` seconds (each byte
    restarts a peer's read timeout)."""

    async def piece(request: web.Request) -> web.StreamResponse:
        index = int(request.match_info["index"])
        body = data[index * PIECE : (index + 1) * PIECE]
        response = web.StreamResponse()
        response.content_length = len(body)
        await response.prepare(request)
        for byte in body:
            await response.write(bytes([byte]))
            await asyncio.sleep(gap)
        return response

    return piece


def test_a_holder_that_trickles_is_given_up_like_a_stalled_one(
    fake_peers, agent_among, origin, registry: Registry
):
    """A holder announced with the right sha256 sends a byte every 1.5 s, within the 2 s
    read timeout: the reader gives it up within a few seconds and gets exact bytes (from the
    origin, the only other source)."""
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    holder = fake_peers({"/v1/pieces/{digest}/{index}": trickling_holder(data, 1.5)})
    agent = agent_among([])  # its own home
    sha256s = {
        str(i): hashlib.sha256(data[i * PIECE : (i + 1) * PIECE]).hexdigest() for i in range(4)
    }
    blob = {
        "digest": digest.removeprefix("sha256:"),
        "origin": origin.url,
        "size": len(data),
        "layout": f"fixed:{PIECE}",
        "verified": False,
        "pieces": sha256s,
    }
    announcement = urllib.request.Request(
        f"http://127.0.0.1:{agent.peer_port}/v1/announce",
        data=json.dumps({"holder": holder.address, "blobs": [blob]}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(announcement, timeout=5) as answer:
        assert json.load(answer) == {"refused": {}}
    reply: list[tuple[bytes, float]] = []
    reader = threading.Thread(
        target=lambda: reply.append(
            timed_read(agent, url(origin, digest), {"Range": "bytes=0-99"})
        ),
        daemon=True,
    )
    reader.start()
    reader.join(15)
    assert reply, "the reader is still held by the trickling holder"
    body, took = reply[0]
    assert body == data[:100]
    assert took < 8, f"the read took {took:.1f} s"
    assert any(path.startswith("/v1/pieces/") for _, path in holder.asked), "it was asked"
