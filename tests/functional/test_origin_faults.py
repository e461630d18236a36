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
from tests.support.metrics import wait_for
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


def test_a_login_page_a_redirect_leads_to_answers_no_access_check(agent, auth_registry: Registry):
    """A registry that sends strangers to a login page (302 to another host, whose HEAD is
    200 with the page's length): the check of a cached private blob must not take that 200
    for the registry's yes, and the blob must not turn public."""
    data = os.urandom(300_000)
    digest = auth_registry.push_blob("test/sso", data)
    registry = CountingOrigin(auth_registry.url).start()
    login = CountingOrigin(auth_registry.url).start()
    page = b"<html>please log in</html>"

    async def to_login(request: web.BaseRequest):
        if request.headers.get("Authorization") != auth_registry.auth_header:
            raise web.HTTPFound(f"{login.url}/login")

    async def login_page(request: web.BaseRequest):
        return web.Response(body=page, content_type="text/html")

    registry.faults.append(to_login)
    login.faults.append(login_page)
    target = f"{registry.url}/v2/test/sso/blobs/{digest}"
    spec = {"Range": "bytes=0-99999"}
    try:
        owner = send(agent.proxy_port, target, {**spec, "Authorization": auth_registry.auth_header})
        assert owner.body == data[:100_000]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {}):
            stranger = send(agent.proxy_port, target, {**spec, **headers})
            assert stranger.status not in (200, 206), stranger.status
            assert data[:1000] not in stranger.body
        assert b"has 26 bytes" in stranger.body  # the page's length, not the blob's
    finally:
        registry.stop()
        login.stop()


def test_an_empty_size_for_a_blob_that_is_not_empty_is_refused(agent, origin, blob):
    """A proxy in front of a registry that once answers a HEAD with Content-Length: 0 must
    not fix the blob's size at 0 (every read would then be 416, or an empty 200)."""
    digest, data = blob

    async def zero(request: web.BaseRequest):
        if request.method == "HEAD":
            return web.Response(status=200, headers={"Content-Length": "0"})
        return None

    origin.faults.append(zero)
    assert send(agent.proxy_port, url(origin, digest), {}, "HEAD").status == 502
    origin.faults.clear()
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=1000-1999"})
    assert reply.body == data[1000:2000]
    assert send(agent.proxy_port, url(origin, digest)).body == data


def test_a_size_the_origin_contradicts_is_forgotten_and_learned_again(agent, origin, blob):
    """The first HEAD gives a size 5 MiB too large; the ranged GETs that follow give the
    real one. The read that finds out fails (502, the record dropped); the next is exact."""
    digest, data = blob

    async def too_large(request: web.BaseRequest):
        if request.method == "HEAD":
            return web.Response(status=200, headers={"Content-Length": str(len(data) + 5 << 20)})
        return None

    origin.faults.append(too_large)
    send(agent.proxy_port, url(origin, digest), {}, "HEAD")
    origin.faults.clear()
    spec = {"Range": f"bytes={PIECE}-{PIECE + 99}"}
    first = send(agent.proxy_port, url(origin, digest), spec)
    assert first.status == 502 and b"bytes" in first.body
    wait_for(lambda: "purging blob" in agent.log(), "the record to go")
    again = send(agent.proxy_port, url(origin, digest), spec)
    assert again.body == data[PIECE : PIECE + 100]
    whole = send(agent.proxy_port, url(origin, digest))
    assert whole.headers["Content-Length"] == str(len(data)) and whole.body == data


@pytest.mark.parametrize(
    "content_range", ["bytes {first}-99/100", "bytes {first}-{last}/4611686018427387904"]
)
def test_a_content_range_that_cannot_be_the_blobs_is_refused(agent, origin, blob, content_range):
    """A negative length, or a blob larger than any file system holds: a clear 502, not a
    500, and no file descriptor left behind."""
    digest, _ = blob
    first, last = 500, 599

    async def odd(request: web.BaseRequest):
        if request.method == "GET" and "/blobs/" in request.path:
            header = content_range.format(first=first, last=last)
            return web.Response(status=206, body=b"x" * 100, headers={"Content-Range": header})
        return None

    origin.faults.append(odd)
    fds = len(os.listdir(f"/proc/{agent.process.pid}/fd"))
    for _ in range(20):
        reply = send(agent.proxy_port, url(origin, digest), {"Range": f"bytes={first}-{last}"})
        assert reply.status == 502, reply.body
        assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"
    assert len(os.listdir(f"/proc/{agent.process.pid}/fd")) <= fds + 2


def test_a_trickling_origin_is_dropped_and_the_read_resumed(agent, origin, blob):
    """206 headers, then a few bytes a second: each byte restarts the read timeout, so only
    a minimum rate frees the connection (and every reader of its pieces). The resumed read is
    exact."""
    digest, data = blob

    async def trickle(request: web.BaseRequest):
        response, body = await origin.forward_headers(request)
        for offset in range(0, len(body), 16):
            await response.write(body[offset : offset + 16])
            await asyncio.sleep(0.1)
        return response

    origin.faults.append(once(trickle))
    started = time.monotonic()
    reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-99999"})
    assert reply.body == data[:100_000]
    assert time.monotonic() - started < 6, "dropped after about one read timeout (1 s)"


def test_a_post_through_the_proxy_is_sent_once(agent, origin):
    """Starting an upload is not idempotent: a 503 or a dropped connection must not make the
    proxy start a second (and third) upload session."""
    posts = 0

    async def busy(request: web.BaseRequest):
        nonlocal posts
        if request.method == "POST":
            posts += 1
            return web.Response(status=503, text="busy")
        return None

    origin.faults.append(busy)
    reply = send(agent.proxy_port, f"{origin.url}/v2/test/faults/blobs/uploads/", {}, "POST")
    assert reply.status == 503
    assert posts == 1


def test_a_challenge_from_the_storage_a_redirect_leads_to_is_not_passed_on(
    agent, origin, registry, blob
):
    """The blob's storage host answering 401 with a token realm of its own: the client must
    not be sent there with its registry credentials; it gets a 502."""
    digest, _ = blob
    storage = CountingOrigin(registry.url).start()
    try:

        async def redirect(request: web.BaseRequest):
            if request.method == "GET" and "/blobs/sha256:" in request.path:
                raise web.HTTPTemporaryRedirect(f"{storage.url}{request.path}?signature=abc")

        async def challenge(request: web.BaseRequest):
            realm = 'Bearer realm="https://storage-host.example/token"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})

        origin.faults.append(redirect)
        storage.faults.append(challenge)
        reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-10"})
        assert reply.status == 502
        assert "WWW-Authenticate" not in reply.headers
        assert b"storage" in reply.body
    finally:
        storage.stop()


def test_a_redirect_a_head_got_is_not_reused_for_a_get(agent, origin, registry, blob):
    """Storage signs a redirect target for one method: the target a HEAD (an access check)
    was sent to is not where the GETs go."""
    digest, data = blob
    storage = CountingOrigin(registry.url).start()
    try:

        async def redirect(request: web.BaseRequest):
            if "/blobs/sha256:" in request.path:
                signed = f"{storage.url}{request.path}?signature={request.method}"
                raise web.HTTPTemporaryRedirect(signed)

        async def per_method(request: web.BaseRequest):
            if request.query.get("signature") != request.method:
                return web.Response(status=403, text="signature does not match")
            return None

        origin.faults.append(redirect)
        storage.faults.append(per_method)
        assert send(agent.proxy_port, url(origin, digest), {}, "HEAD").status == 200
        reply = send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-99"})
        assert reply.body == data[:100]
        assert [s.method for s in storage.requests] == ["HEAD", "GET"], "no GET with HEAD's URL"
    finally:
        storage.stop()


def test_blob_reads_ask_for_the_bytes_as_they_are(agent, origin, blob):
    """No Accept-Encoding at all lets a proxy on the way compress the body (RFC 9110), which a
    ranged read then refuses: blob reads say identity."""
    digest, data = blob
    assert send(agent.proxy_port, url(origin, digest), {"Range": "bytes=0-99"}).body == data[:100]
    assert send(agent.proxy_port, url(origin, digest), {}, "HEAD").status == 200
    asked = [h.get("Accept-Encoding") for h in origin.received_headers]
    assert asked and all(value == "identity" for value in asked), asked
