"""Blob reads through a real dfagent process from the real registry: exact bytes, exact
headers, the cache in front of the origin, and single-flight fetching."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import re
import socket
import threading
import time

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.registry import Registry

PIECE = 256 * 1024  # small pieces so that short blobs span many of them
SIZE = 5 * PIECE + 12345


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(SIZE)
    return registry.push_blob("test/reads", data), data


@pytest.fixture
def small_piece_agent(agent_factory, origin: CountingOrigin) -> AgentProcess:
    return agent_factory(storage={"piece_size": "256KiB"})


def blob_url(origin: CountingOrigin, digest: str, repo: str = "test/reads") -> str:
    return f"{origin.url}/v2/{repo}/blobs/{digest}"


def read(agent: AgentProcess, url: str, range_header: str | None = None):
    headers = {"Range": range_header} if range_header is not None else {}
    return send(agent.proxy_port, url, headers)


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        (f"bytes=0-{SIZE - 1}", 0, SIZE - 1),
        (f"bytes={PIECE - 1}-{PIECE}", PIECE - 1, PIECE),  # across a piece boundary
        (f"bytes={PIECE}-{3 * PIECE - 1}", PIECE, 3 * PIECE - 1),  # exactly two pieces
        (f"bytes={PIECE + 7}-", PIECE + 7, SIZE - 1),
        ("bytes=-1000", SIZE - 1000, SIZE - 1),
        (f"bytes=-{SIZE * 2}", 0, SIZE - 1),
        (f"bytes=100-{SIZE * 10}", 100, SIZE - 1),  # end clamped
    ],
)
def test_ranges_are_byte_exact(small_piece_agent, origin, blob, spec, first, last):
    digest, data = blob
    for attempt in ("cold", "warm"):
        reply = read(small_piece_agent, blob_url(origin, digest), spec)
        assert reply.status == 206, (attempt, reply.body[:200])
        assert reply.headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
        assert int(reply.headers["Content-Length"]) == last - first + 1
        assert reply.body == data[first : last + 1], attempt
        assert reply.headers["X-Dragonfly-Task-ID"] == digest.removeprefix("sha256:")
        assert reply.headers["Docker-Content-Digest"] == digest


def test_whole_blob_without_range_is_200(small_piece_agent, origin, blob):
    digest, data = blob
    for _ in range(2):
        reply = read(small_piece_agent, blob_url(origin, digest))
        assert reply.status == 200
        assert "Content-Range" not in reply.headers
        assert reply.body == data


def test_head_gives_length_without_body(small_piece_agent, origin, blob):
    digest, _ = blob
    reply = send(small_piece_agent.proxy_port, blob_url(origin, digest), method="HEAD")
    assert reply.status == 200
    assert int(reply.headers["Content-Length"]) == SIZE
    assert reply.body == b""


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_ranges_match_the_source(small_piece_agent, origin, blob, data):
    digest, source = blob
    first = data.draw(st.integers(0, SIZE - 1))
    last = data.draw(st.integers(first, min(SIZE - 1, first + 3 * PIECE)))
    reply = read(small_piece_agent, blob_url(origin, digest), f"bytes={first}-{last}")
    assert reply.status == 206
    assert reply.body == source[first : last + 1]


def test_second_read_does_not_reach_origin(small_piece_agent, origin, blob):
    digest, data = blob
    url = blob_url(origin, digest)
    spec = f"bytes={PIECE // 2}-{2 * PIECE + 5}"
    assert read(small_piece_agent, url, spec).body == data[PIECE // 2 : 2 * PIECE + 6]
    before = len(origin.requests)
    for _ in range(3):
        assert read(small_piece_agent, url, spec).body == data[PIECE // 2 : 2 * PIECE + 6]
    assert len(origin.requests) == before


async def test_concurrent_cold_reads_fetch_each_piece_once(small_piece_agent, origin, registry):
    data = os.urandom(3 * PIECE + 99)
    digest = registry.push_blob("test/flight", data)
    url = blob_url(origin, digest, "test/flight")
    first, last = PIECE - 10, 3 * PIECE + 50  # touches pieces 0..3

    async with aiohttp.ClientSession() as session:

        async def one() -> bytes:
            async with session.get(
                url, proxy=small_piece_agent.proxy_url, headers={"Range": f"bytes={first}-{last}"}
            ) as response:
                assert response.status == 206
                return await response.read()

        bodies = await asyncio.gather(*(one() for _ in range(100)))
    assert all(body == data[first : last + 1] for body in bodies)
    # Every byte of the pieces touched left the origin exactly once. (A read that starts
    # mid-piece fetches that piece in two parts: from the reader's first byte, and its head.)
    parts = []
    for seen in origin.blob_gets(digest):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", seen.range or "")
        assert match, seen
        parts.append((int(match.group(1)), min(int(match.group(2)), len(data) - 1) + 1))
    parts.sort()
    assert parts[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts)), parts
    assert parts[-1][1] == len(data)  # pieces 0..3; the last piece is the blob's end


def test_a_piece_entered_part_way_has_its_head_fetched_after_the_readers_part(
    small_piece_agent, origin, registry
):
    """A read that starts inside a piece gets its own bytes first: the piece's head is asked
    for only once the reader's part of that piece is in, so the two requests never split the
    link while the reader waits. Then every byte left the origin once."""
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob("test/head", data)
    first, last = PIECE // 2, PIECE + 999  # the tail of piece 0, the head of piece 1
    resume = threading.Event()

    async def resumed() -> None:
        while not resume.is_set():
            await asyncio.sleep(0.05)

    async def slow_reader_part(request):
        if request.method == "GET" and request.headers.get("Range", "").startswith(
            f"bytes={first}-"
        ):
            return await origin.forward_pausing(request, lambda _: PIECE // 4, resumed)
        return None

    origin.faults.append(slow_reader_part)
    bodies = []
    reader = threading.Thread(
        target=lambda: bodies.append(
            read(small_piece_agent, blob_url(origin, digest, "test/head"), f"bytes={first}-{last}")
        )
    )
    reader.start()
    try:
        wait_for(lambda: origin.blob_gets(digest), "the reader's request")
        time.sleep(0.5)
        ranges = [seen.range for seen in origin.blob_gets(digest)]
        assert f"bytes=0-{first - 1}" not in ranges, "the head waits for the reader's part"
    finally:
        resume.set()
        reader.join(30)
    assert bodies[0].status == 206
    assert bodies[0].body == data[first : last + 1]
    head = f"bytes=0-{first - 1}"
    wait_for(lambda: head in [seen.range for seen in origin.blob_gets(digest)], "the head")
    assert origin.blob_bytes(digest, len(data)) == 2 * PIECE


def test_the_head_of_a_piece_outlives_a_request_that_fails_after_it(
    small_piece_agent, origin, registry
):
    """A read entered piece 0 part-way; its request brought the rest of piece 0, then broke
    off inside piece 1 for good (the registry refuses to resume it). The head of piece 0 has a
    request of its own, still on its way: a reader waiting for that head gets it, exact, and
    piece 0 is kept whole."""
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob("test/head", data)
    first, last = PIECE // 2, PIECE + PIECE // 2
    head_range = f"bytes=0-{first - 1}"
    head_may_go = threading.Event()

    async def faults(request: web.BaseRequest) -> web.StreamResponse | None:
        spec = request.headers.get("Range", "")
        if request.method != "GET" or digest not in request.path:
            return None
        if spec.startswith(f"bytes={first}-"):  # the reader's: piece 0's rest, then it dies
            response, body = await origin.forward_headers(request)
            await response.write(body[: PIECE - first + 1000])
            await asyncio.sleep(1.0)  # the head's request goes out, its reader comes
            request.transport.close()
            return response
        if spec == head_range:
            while not head_may_go.is_set():
                await asyncio.sleep(0.05)
            return None
        return web.Response(status=500, text="cannot resume")

    url = blob_url(origin, digest, "test/head")
    # The agent learns the blob first (its first request for a blob is a discovery of its own).
    assert read(small_piece_agent, url, f"bytes={2 * PIECE}-{3 * PIECE - 1}").body == data[-PIECE:]
    origin.faults.append(faults)
    replies: dict[str, object] = {}

    def attempt(name: str, spec: str) -> None:
        try:
            replies[name] = read(small_piece_agent, url, spec)
        except http.client.HTTPException as exc:  # cut after its headers
            replies[name] = exc

    readers = {
        name: threading.Thread(target=attempt, args=(name, spec))
        for name, spec in (("broken", f"bytes={first}-{last}"), ("head", head_range))
    }
    readers["broken"].start()
    try:
        wait_for(lambda: head_range in [s.range for s in origin.blob_gets(digest)], "the head")
        readers["head"].start()
        readers["broken"].join(30)
        broken = replies["broken"]
        assert isinstance(broken, Exception) or broken.status >= 500, "its request broke off"
    finally:
        head_may_go.set()
        for reader in readers.values():
            reader.join(30)
    assert replies["head"].status == 206
    assert replies["head"].body == data[:first]
    gets = len(origin.blob_gets(digest))
    assert read(small_piece_agent, url, f"bytes=0-{PIECE - 1}").body == data[:PIECE]
    assert len(origin.blob_gets(digest)) == gets, "piece 0 was kept whole"


def test_unsatisfiable_range_is_416_with_size(small_piece_agent, origin, blob):
    digest, _ = blob
    for attempt in ("cold", "warm"):
        reply = read(small_piece_agent, blob_url(origin, digest), f"bytes={SIZE}-{SIZE + 10}")
        assert reply.status == 416, attempt
        assert reply.headers["Content-Range"] == f"bytes */{SIZE}"
        assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("bytes=5-2", "before its start"),
        ("bytes=0-1,4-5", "single byte range"),
        ("0-1", "bytes=first-last"),
        ("bytes=-", "first byte or a suffix"),
        ("bytes=99999999999999999999-", "too large"),
    ],
)
def test_malformed_range_is_400_with_reason(small_piece_agent, origin, blob, spec, reason):
    digest, _ = blob
    reply = read(small_piece_agent, blob_url(origin, digest), spec)
    assert reply.status == 400
    assert reason in reply.body.decode()
    assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {"Range": "items=0-1"}, 200),  # another unit: ignored (RFC 9110 §14.2)
        ("HEAD", {"Range": "bytes=5-2"}, 200),  # no range for a HEAD, malformed or not
        ("HEAD", {"Range": "bytes=0-1"}, 200),
        ("GET", {"Range": "bytes=10-19", "If-Range": '"sha256:{hex}"'}, 206),  # this blob
        ("GET", {"Range": "bytes=10-19", "If-Range": '"sha256:' + "0" * 64 + '"'}, 200),
        ("GET", {"Range": "bytes=10-19", "If-Range": 'W/"sha256:{hex}"'}, 200),  # weak: no match
        ("GET", {"Range": "bytes=10-19", "If-Range": "Sun, 06 Dec 2026 10:00:00 GMT"}, 200),
    ],
)
@pytest.mark.parametrize("path", ["cached", "passed-through"])
def test_a_range_applies_only_to_a_get_in_bytes_of_this_blob(
    small_piece_agent, origin, registry, blob, method, headers, status, path
):
    """Alike whether the agent serves the blob or passes the read to the registry (which, left
    to itself, answers a HEAD with a range 206 and `items=` 416, and judges If-Range by its own
    tag, which need not be the agent's)."""
    digest, data = blob
    if path == "passed-through":  # cached from another registry, unverified: not shared
        other = CountingOrigin(registry.url).start()
        try:
            assert read(small_piece_agent, blob_url(other, digest), "bytes=0-0").status == 206
        finally:
            other.stop()
    headers = {k: v.replace("{hex}", digest.removeprefix("sha256:")) for k, v in headers.items()}
    uncached = 'dfagent_proxy_requests_total{kind="uncached",status="2xx"}'
    before = metric(small_piece_agent, uncached)
    reply = send(small_piece_agent.proxy_port, blob_url(origin, digest), headers, method)
    assert metric(small_piece_agent, uncached) - before == (path == "passed-through")
    if path == "passed-through":
        assert "if-range" not in {name.lower() for name in origin.received_headers[-1]}
    assert reply.status == status
    expected = data[10:20] if status == 206 else data
    assert reply.body == (b"" if method == "HEAD" else expected)
    assert int(reply.headers["Content-Length"]) == len(expected)


def test_two_if_range_fields_void_the_range(small_piece_agent, origin, blob):
    digest, data = blob
    connection = http.client.HTTPConnection("127.0.0.1", small_piece_agent.proxy_port, timeout=30)
    try:
        connection.putrequest("GET", blob_url(origin, digest), skip_accept_encoding=True)
        connection.putheader("Range", "bytes=10-19")
        for _ in range(2):  # the blob's own tag, twice: still not one validator
            connection.putheader("If-Range", f'"{digest}"')
        connection.endheaders()
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, data)
    finally:
        connection.close()


@pytest.mark.parametrize(
    "reference",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        "sha256:" + "a" * 64 + "%00",
    ],
)
def test_hostile_digest_is_400_and_touches_nothing(small_piece_agent, origin, reference):
    reply = read(small_piece_agent, f"{origin.url}/v2/test/reads/blobs/{reference}", "bytes=0-1")
    assert reply.status == 400
    assert "digest must be sha256" in reply.body.decode()
    assert origin.requests == []
    blobs = small_piece_agent.storage_dir / "blobs"
    assert not any(blobs.rglob("*")) if blobs.exists() else True


def test_other_digest_algorithms_pass_through_uncached(small_piece_agent, origin):
    """The default rule (`blobs/sha256.*`) leaves other algorithms to the registry."""
    reply = read(
        small_piece_agent, f"{origin.url}/v2/test/reads/blobs/sha512:{'a' * 128}", "bytes=0-1"
    )
    assert reply.status == 404
    assert len(origin.requests) == 1
    assert "X-Dragonfly-Task-ID" not in reply.headers


def test_unknown_blob_passes_registry_404(small_piece_agent, origin):
    reply = read(small_piece_agent, blob_url(origin, "sha256:" + "0" * 64), "bytes=0-10")
    assert reply.status == 404
    assert reply.headers["X-Dragonfly-Error-Type"] == "backend"
    assert b"BLOB_UNKNOWN" in reply.body


def test_empty_blob(small_piece_agent, origin, registry):
    digest = registry.push_blob("test/empty", b"")
    url = blob_url(origin, digest, "test/empty")
    whole = read(small_piece_agent, url)
    assert (whole.status, whole.body, whole.headers["Content-Length"]) == (200, b"", "0")
    ranged = read(small_piece_agent, url, "bytes=0-")
    assert ranged.status == 416
    assert ranged.headers["Content-Range"] == "bytes */0"
    head = send(small_piece_agent.proxy_port, url, method="HEAD")
    assert (head.status, head.headers["Content-Length"]) == (200, "0")


def test_a_client_that_stops_reading_is_cut_off(agent_factory, registry):
    """A reader that takes no byte for proxy.idle_timeout no longer holds its connection, nor
    the blob's pin (which keeps eviction away), for good."""
    agent = agent_factory(proxy={"idle_timeout": "2s"})
    data = os.urandom(48 << 20)  # far more than the socket buffers on both sides hold
    digest = registry.push_blob("test/stalled", data)
    url = f"{registry.url}/v2/test/stalled/blobs/{digest}"
    assert send(agent.proxy_port, url).body == data  # cached
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", agent.proxy_port))
        client.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(6)  # reads nothing: three times the limit
        client.settimeout(10)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(1 << 20):
                received += len(chunk)
    assert received < len(data), "the connection was cut, not held until the client read on"
    assert "client took no bytes; response cut off" in agent.log()
