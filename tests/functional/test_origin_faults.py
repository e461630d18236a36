"""An origin that misbehaves in ways the real registry does not: the agent must stay exact."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time

import pytest
from aiohttp import web

from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.registry import Registry

PIECE = 256 * 1024


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(4 * PIECE + 1000)
    return registry.push_blob("test/faults", data), data


@pytest.fixture
def agent(agent_factory):
    return agent_factory(storage={"piece_size": "256KiB"}, origin={"read_timeout": "1s"})


def url(origin: CountingOrigin, digest: str) -> str:
    return f"{origin.url}/v2/test/faults/blobs/{digest}"


def once(fault):
    """Apply `fault` to the first matching blob GET only."""
    fired = False

    async def wrapper(request: web.BaseRequest):
        nonlocal fired
        if fired or request.method != "GET" or "/blobs/sha256:" not in request.path:
            return None
        fired = True
        return await fault(request)

    return wrapper


def test_origin_ignoring_range_is_refused_and_not_cached(agent, origin, blob):
    digest, data = blob

    async def ignore_range(request):
        if request.method == "GET" and request.headers.get("Range", "").startswith("bytes=0-"):
            return None
        return await origin.forward(request, drop_range=True) if request.method == "GET" else None

    origin.faults.append(ignore_range)
    reply = send(
        agent.proxy_port, url(origin, digest), {"Range": f"bytes={PIECE + 1}-{PIECE + 10}"}
    )
    assert reply.status == 502
    assert "ignored the Range" in reply.body.decode()
    origin.faults.clear()
    good = send(agent.proxy_port, url(origin, digest), {"Range": f"bytes={PIECE + 1}-{PIECE + 10}"})
    assert good.body == data[PIECE + 1 : PIECE + 11]


def test_body_broken_off_is_resumed_byte_exact(agent, origin, blob):
    digest, data = blob

    async def break_off(request: web.BaseRequest):
        response, body = await origin.forward_headers(request)
        await response.write(body[: len(body) // 3])
        await asyncio.sleep(0.3)  # let the agent take in what it got
        request.transport.close()  # the connection dies a third of the way in
        return response

    origin.faults.append(once(break_off))
    reply = send(agent.proxy_port, url(origin, digest))
    assert reply.status == 200
    assert reply.body == data
    starts = [
        int(re.match(r"bytes=(\d+)-", seen.range or "").group(1))
        for seen in origin.blob_gets(digest)
    ]
    # Piece-aligned requests, plus one that resumes where the broken body stopped.
    assert [start for start in starts if start % PIECE], starts


def test_origin_5xx_is_retried(agent, origin, blob):
    digest, data = blob

    async def unavailable(request):
        return web.Response(status=503, text="try later")

    origin.faults.append(once(unavailable))
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-1000"})
    assert reply.status == 206
    assert reply.body == data[:1001]
    assert len(origin.blob_gets(digest)) == 2


def test_origin_that_stays_down_gives_5xx_for_fallback(agent, origin, blob):
    digest, _ = blob

    async def down(request):
        return web.Response(status=500, text="broken")

    origin.faults.append(down)
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-10"})
    assert reply.status == 500  # the origin's own answer, passed back as it was
    assert reply.headers["X-Dragonfly-Error-Type"] == "backend"
    assert len(origin.blob_gets(digest)) == 3  # first try + origin.retries (2)


def test_unreachable_origin_is_502_for_fallback(agent):
    reply = send(
        agent.proxy_port, f"http://127.0.0.1:9/v2/a/blobs/sha256:{'1' * 64}", {"Range": "bytes=0-1"}
    )
    assert reply.status == 502
    assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"


def test_stalled_origin_times_out(agent, origin, blob):
    digest, _ = blob

    async def stall(request):
        await asyncio.sleep(5)

    origin.faults.append(stall)
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-10"})
    assert reply.status == 504
    assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"


def test_redirect_is_followed_remembered_and_keeps_credentials_home(agent, origin, registry, blob):
    """A 307 to another host (like a registry's storage backend): followed with a relative
    path resolved, reused for later pieces, and the client's Authorization never goes there."""
    digest, data = blob
    storage = CountingOrigin(registry.url).start()
    try:

        async def redirect(request: web.BaseRequest):
            if request.method == "GET" and "/blobs/sha256:" in request.path:
                raise web.HTTPTemporaryRedirect(f"{storage.url}{request.path}?signature=abc")

        origin.faults.append(redirect)
        headers = {"Authorization": "Bearer client-token"}
        first = send(agent.proxy_port, url(origin, digest), {**headers, "Range": "bytes=0-10"})
        assert first.body == data[:11]
        later = send(
            agent.proxy_port,
            url(origin, digest),
            {**headers, "Range": f"bytes={3 * PIECE}-{3 * PIECE + 9}"},
        )
        assert later.body == data[3 * PIECE : 3 * PIECE + 10]
        assert len(origin.blob_gets(digest)) == 1, "the second piece went straight to storage"
        assert len(storage.blob_gets(digest)) == 2
        assert all(seen.authorization is None for seen in storage.requests)
        assert origin.requests[0].authorization == "Bearer client-token"
    finally:
        storage.stop()


def test_relative_redirect_location_is_resolved(agent, origin, blob):
    digest, data = blob

    async def relative(request: web.BaseRequest):
        if request.path.startswith("/moved"):
            request = request.clone(
                rel_url=request.rel_url.with_path(request.path.removeprefix("/moved"))
            )
            return await origin.forward(request)
        if request.method == "GET" and "/blobs/sha256:" in request.path:
            raise web.HTTPTemporaryRedirect(f"/moved{request.path}")
        return None

    origin.faults.append(relative)
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=100-200"})
    assert reply.status == 206
    assert reply.body == data[100:201]


def test_a_client_that_hangs_up_does_not_fail_others_waiting_on_its_fetch(agent, origin, blob):
    """The first reader's request starts the (slow) origin fetch, a second waits on it, the
    first hangs up: the fetch goes on and the second gets exact bytes."""
    digest, data = blob

    async def slow(request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method == "GET" and digest in request.path:
            await asyncio.sleep(0.6)
        return None

    origin.faults.append(slow)
    target = url(origin, digest)
    leaving = socket.create_connection(("127.0.0.1", agent.proxy_port))
    leaving.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-999\r\n\r\n".encode())
    time.sleep(0.2)  # its fetch is under way
    replies = []
    staying = threading.Thread(
        target=lambda: replies.append(send(agent.proxy_port, target, {"Range": "bytes=0-999"}))
    )
    staying.start()
    time.sleep(0.1)
    leaving.close()
    staying.join(30)
    assert replies[0].status == 206
    assert replies[0].body == data[:1000]
    assert len(origin.blob_gets(digest)) == 1, "one fetch, shared"
