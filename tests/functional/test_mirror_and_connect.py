"""Registry-mirror (origin-form) requests pick their upstream three ways; CONNECT tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.registry import Registry


@pytest.fixture(scope="module")
def mirror_blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(700_000)
    return registry.push_blob("test/mirror", data), data


def test_upstream_from_dragonfly_registry_header(agent, origin: CountingOrigin, mirror_blob):
    digest, data = mirror_blob
    reply = send(
        agent.proxy_port,
        f"/v2/test/mirror/blobs/{digest}",
        {"X-Dragonfly-Registry": origin.url, "Range": "bytes=5-600000"},
    )
    assert reply.status == 206
    assert reply.body == data[5:600001]
    assert origin.blob_gets(digest), "the header named the upstream"
    assert "X-Dragonfly-Registry" not in origin.received_headers[-1]


def test_upstream_from_containerd_ns_query(agent_factory, origin: CountingOrigin, mirror_blob):
    digest, data = mirror_blob
    agent = agent_factory(proxy={"rules": [{"regex": "blobs/sha256.*", "use_tls": False}]})
    reply = send(agent.proxy_port, f"/v2/test/mirror/blobs/{digest}?ns={origin.host}")
    assert reply.status == 200
    assert reply.body == data
    gets = origin.blob_gets(digest)
    assert gets, "?ns= named the upstream"
    # `ns` is for the mirror, not the registry
    assert all("ns=" not in seen.path for seen in origin.requests)


def test_upstream_from_configured_registry_mirror(
    agent_factory, origin: CountingOrigin, mirror_blob
):
    digest, data = mirror_blob
    agent = agent_factory(proxy={"registry_mirror": origin.url})
    reply = send(agent.proxy_port, f"/v2/test/mirror/blobs/{digest}", {"Range": "bytes=0-0"})
    assert reply.status == 206
    assert reply.body == data[:1]
    assert origin.blob_gets(digest)


@pytest.mark.parametrize("registry", ["ftp://nope", "http://127.0.0.1:99999", "http://[::1"])
def test_bad_registry_header_is_400(agent, registry):
    reply = send(agent.proxy_port, "/v2/x/manifests/latest", {"X-Dragonfly-Registry": registry})
    assert reply.status == 400
    assert "X-Dragonfly-Registry" in reply.body.decode()
    assert "Traceback" not in agent.log()


@pytest.mark.parametrize("host", ["a..b", "a" * 70 + ".example"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/x/blobs/sha256:" + "1" * 64])
def test_a_host_that_is_no_host_name_is_400(agent, host, path):
    """An empty DNS label, or one over 63 characters, failed in the IDNA codec: a 500 with a
    traceback, for a pass-through and for a blob alike."""
    reply = send(agent.proxy_port, f"http://{host}{path}", {"Range": "bytes=0-9"})
    assert reply.status == 400
    assert b"not a host name" in reply.body
    assert "Traceback" not in agent.log()


def test_use_tls_rule_upgrades_absolute_form_to_https(agent_factory, tls_registry: Registry):
    """nydusd with `use_http: true` sends http:// URLs; the rule sends them upstream as https."""
    data = os.urandom(100_000)
    digest = tls_registry.push_blob("test/tls", data)
    agent = agent_factory(
        proxy={"rules": [{"regex": "blobs/sha256.*", "use_tls": True}]},
    )
    plain_url = f"http://{tls_registry.host}/v2/test/tls/blobs/{digest}"
    reply = send(agent.proxy_port, plain_url, {"Range": "bytes=0-99"})
    # The test CA is not trusted by the agent: verification must fail rather than pass.
    assert reply.status == 502
    assert "certificate" in reply.body.decode().lower()
    trusting = agent_factory(
        "trusting",
        proxy={"rules": [{"regex": "blobs/sha256.*", "use_tls": True}]},
        origin={"ca_file": str(tls_registry.root / "ca.pem")},
    )
    reply = send(trusting.proxy_port, plain_url, {"Range": "bytes=0-99"})
    assert reply.status == 206
    assert reply.body == data[:100]


async def test_connect_tunnels_tls_end_to_end(agent, tls_registry: Registry):
    data = os.urandom(200_000)
    digest = tls_registry.push_blob("test/tunnel", data)
    context = ssl.create_default_context(cafile=str(tls_registry.root / "ca.pem"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{tls_registry.url}/v2/test/tunnel/blobs/{digest}", proxy=agent.proxy_url, ssl=context
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == data


def _raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_connect_to_a_closed_port_is_502(agent):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    answer = _raw(agent.proxy_port, f"CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"X-Dragonfly-Error-Type: proxy" in answer


@pytest.mark.parametrize(
    "target", [b"nohost", b"host:99999", b"host:", b"[::1:80", b"a..b:443", b"a" * 70 + b".x:443"]
)
def test_malformed_connect_is_400(agent, target):
    answer = _raw(agent.proxy_port, b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_a_client_too_slow_with_its_request_head_gets_408(agent_factory):
    agent = agent_factory(proxy={"head_timeout": "500ms"})
    answer = _raw(agent.proxy_port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_request_head_in_many_small_packets_still_works(agent, origin, registry):
    data = os.urandom(1000)
    digest = registry.push_blob("test/mirror", data)
    target = f"{origin.url}/v2/test/mirror/blobs/{digest}"
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", agent.proxy_port), timeout=10) as sock:
        for i in range(0, len(request), 7):
            sock.sendall(request[i : i + 7])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(data)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(header=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_no_range_header_makes_the_agent_fail(agent, origin, mirror_blob, header):
    digest, data = mirror_blob
    reply = send(agent.proxy_port, f"{origin.url}/v2/test/mirror/blobs/{digest}", {"Range": header})
    assert reply.status in (200, 206, 400, 416), (header, reply.status)
    if reply.status == 206:
        first, last = (int(x) for x in reply.headers["Content-Range"][6:].split("/")[0].split("-"))
        assert reply.body == data[first : last + 1]
    assert "Traceback" not in agent.log()


def test_over_the_rate_limit_is_429_from_the_proxy(agent_factory, origin, mirror_blob):
    digest, data = mirror_blob
    agent = agent_factory(proxy={"rate_limit": 5})
    statuses = []
    for _ in range(30):
        reply = send(
            agent.proxy_port, f"{origin.url}/v2/test/mirror/blobs/{digest}", {"Range": "bytes=0-9"}
        )
        statuses.append(reply.status)
        if reply.status == 429:
            assert reply.headers["X-Dragonfly-Error-Type"] == "proxy"
        else:
            assert reply.body == data[:10]
    assert 206 in statuses and 429 in statuses
    assert statuses.count(206) <= 12  # about one second's burst plus what refilled meanwhile


def _intercepting(agent_factory, tmp_path, pattern: str, **settings):
    """An agent that terminates TLS for CONNECTs to hosts matching `pattern`, and a client
    context that trusts the certificates it makes."""
    proxy_ca = trustme.CA()
    proxy_ca.cert_pem.write_to_path(str(tmp_path / "proxy-ca.pem"))
    proxy_ca.private_key_pem.write_to_path(str(tmp_path / "proxy-ca.key"))
    proxy = {
        "intercept": [pattern],
        "ca_cert": str(tmp_path / "proxy-ca.pem"),
        "ca_key": str(tmp_path / "proxy-ca.key"),
    }
    agent = agent_factory(proxy=proxy | settings.pop("proxy", {}), **settings)
    return agent, ssl.create_default_context(cafile=str(tmp_path / "proxy-ca.pem"))


async def test_intercepted_connect_is_served_and_cached(
    agent_factory, tls_registry: Registry, tmp_path
):
    """nydusd with use_http: false tunnels to https registries; with the host intercepted,
    those reads go through the cache like any other, and the decrypted connection lives on past
    the deadline for the CONNECT head."""
    agent, trust_proxy = _intercepting(
        agent_factory,
        tmp_path,
        r"^127\.0\.0\.1$",
        proxy={"head_timeout": "1s"},
        origin={"ca_file": str(tls_registry.root / "ca.pem")},
    )
    data = os.urandom(300_000)
    digest = tls_registry.push_blob("test/intercept", data)
    url = f"{tls_registry.url}/v2/test/intercept/blobs/{digest}"
    async with aiohttp.ClientSession() as session:
        for attempt in range(2):
            async with session.get(
                url, proxy=agent.proxy_url, ssl=trust_proxy, headers={"Range": "bytes=10-200009"}
            ) as response:
                assert response.status == 206
                assert response.headers["X-Dragonfly-Task-ID"] == digest[7:]
                assert await response.read() == data[10:200010]
            if not attempt:  # the piece is stored just after the response: then read again
                await asyncio.to_thread(
                    wait_for, lambda: metric(agent, "dfagent_cache_bytes") == len(data), "storing"
                )
                await asyncio.sleep(1.5)  # the same kept-alive connection, past head_timeout
    assert metric(agent, 'dfagent_served_bytes_total{source="local"}') == 200_000
    assert metric(agent, 'dfagent_proxy_requests_total{kind="connect",status="2xx"}') == 1
    assert metric(agent, 'dfagent_proxy_requests_total{kind="blob",status="2xx"}') == 2


async def test_intercepted_tunnel_presents_a_certificate_for_the_host(
    agent_factory, tmp_path, monkeypatch
):
    temporary = tmp_path / "agent-tmp"  # where the agent's temporary files go
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    agent, trust = _intercepting(agent_factory, tmp_path, "registry.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.proxy_port)
    writer.write(b"CONNECT registry.example:443 HTTP/1.1\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await writer.start_tls(trust, server_hostname="registry.example")  # verifies the name
    peer = writer.get_extra_info("peercert")
    assert ("DNS", "registry.example") in peer["subjectAltName"]
    writer.close()
    assert not list(temporary.rglob("*")), "the leaf key stays on disk"


async def test_a_request_sent_with_the_last_handshake_bytes_is_served(
    agent_factory, tls_registry: Registry, tmp_path
):
    """A TLS client may put its first request in the same packet as its Finished message; the
    decrypted request then arrives before the handshake is reported done, and must not be lost."""
    agent, trust = _intercepting(
        agent_factory,
        tmp_path,
        r"^127\.0\.0\.1$",
        origin={"ca_file": str(tls_registry.root / "ca.pem")},
    )
    authority = tls_registry.url.removeprefix("https://")
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.proxy_port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = trust.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    async with asyncio.timeout(10):
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await reader.read(65536))
        tls.write(f"GET /v2/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        writer.write(outgoing.read())  # Finished and the request: one write
        answer = b""
        while b"\r\n\r\n" not in answer:
            incoming.write(await reader.read(65536))
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


def test_oversized_request_heads_are_refused(agent):
    huge = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _raw(agent.proxy_port, huge)[9:12] == b"400"  # a field over 8190 bytes
    endless = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: a\r\n" * 2000  # never ends
    assert _raw(agent.proxy_port, endless).startswith(b"HTTP/1.1 431 ")
    many = (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"
        + b"".join(f"X-H{i}: v\r\n".encode() for i in range(200))
        + b"\r\n"
    )
    answer = _raw(agent.proxy_port, many)
    assert answer[9:12] == b"400", answer[:100]  # more than 128 header fields
    assert "Traceback" not in agent.log()


@contextlib.contextmanager
def _server(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on loopback running `serve` on each connection (in a thread); its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        listener.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _tunnel(proxy_port: int, target_port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    return sock


IDLE = {"proxy": {"tunnel_idle_timeout": "1s"}}


def test_a_tunnel_through_which_nothing_moves_is_cut_off(agent_factory):
    agent = agent_factory(**IDLE)
    with (
        _server(_echo) as port,
        _tunnel(agent.proxy_port, port) as idle,
        _tunnel(agent.proxy_port, port) as busy,
    ):
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # the busy one talks every 0.3 s
            busy.sendall(b"ping")
            assert busy.recv(16) == b"ping"
            time.sleep(0.3)
        idle.settimeout(5)
        assert idle.recv(16) == b""  # closed by the agent, not by a timeout here
        busy.sendall(b"still there")
        assert busy.recv(16) == b"still there"
    assert "nothing moved through a tunnel; cut off" in agent.log()


def test_a_tunnel_whose_client_stopped_reading_is_cut_off(agent_factory):
    """The agent's buffers towards the client are full, so nothing moves: the tunnel goes, its
    unsent bytes with it, and the server's next send fails."""
    agent = agent_factory(**IDLE)
    outcome: list[BaseException] = []

    def flood(conn: socket.socket) -> None:
        conn.settimeout(20)
        try:
            with conn:
                while True:
                    conn.sendall(b"x" * 65536)
        except (OSError, TimeoutError) as exc:  # reset by the agent, or (the bug) stuck
            outcome.append(exc)

    with _server(flood) as port, _tunnel(agent.proxy_port, port):
        wait_for(lambda: outcome, "the flooding server's connection ended", timeout=15)
    assert not isinstance(outcome[0], TimeoutError), "the agent never let go of the tunnel"


def test_a_tunnel_read_slowly_is_not_idle(agent_factory):
    """A client that takes bytes slowly, while the agent has long stopped reading the server
    (its buffers towards the client are full), is moving: the tunnel stays."""
    agent = agent_factory(**IDLE)
    data = os.urandom(8 * 1024 * 1024)

    def send_all(conn: socket.socket) -> None:
        with conn:
            conn.sendall(data)

    received = bytearray()
    with _server(send_all) as port, _tunnel(agent.proxy_port, port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        started = time.monotonic()
        while chunk := sock.recv(32 * 1024):
            received += chunk
            time.sleep(0.01)  # about 3 MB/s: the whole takes longer than the idle timeout
    assert time.monotonic() - started > 2
    assert received == data
    assert "nothing moved through a tunnel" not in agent.log()
