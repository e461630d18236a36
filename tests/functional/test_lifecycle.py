"""Process lifecycle: clean shutdown with requests in flight (and none held by idle
connections), restart with a warm cache, and a clear failure when a port is taken."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from aiohttp import web

from tests.conftest import TOKEN
from tests.support.agent import AgentProcess
from tests.support.client import Reply, send


def test_sigterm_lets_an_inflight_response_finish(agent_factory, origin, registry):
    data = os.urandom(1_000_000)
    digest = registry.push_blob("test/life", data)
    agent = agent_factory()

    origin.faults.append(_pausing_halfway(origin, "/blobs/"))
    replies: list[Reply] = []
    reader = threading.Thread(
        target=lambda: replies.append(
            send(agent.proxy_port, f"{origin.url}/v2/test/life/blobs/{digest}")
        )
    )
    reader.start()
    time.sleep(0.7)  # the response is under way
    assert agent.stop(signal.SIGTERM) == 0
    reader.join(10)
    assert replies and replies[0].status == 200
    assert replies[0].body == data
    log = agent.log()
    assert "msg=stopped" in log
    assert "Traceback" not in log
    # The index was closed: sqlite folds the write-ahead log back in on the last close.
    assert not (agent.storage_dir / "index.sqlite-wal").exists()


def _idle_keepalive_connection(agent: AgentProcess, url: str, data: bytes):
    """A connection that has had its response and stays open, as nydusd leaves them."""
    connection = http.client.HTTPConnection("127.0.0.1", agent.proxy_port, timeout=30)
    connection.request("GET", url)
    response = connection.getresponse()
    assert response.read() == data
    assert not response.will_close, "the agent keeps the connection alive"
    return connection


def test_sigterm_is_not_held_by_an_idle_keepalive_connection(agent_factory, origin, registry):
    data = os.urandom(300_000)
    digest = registry.push_blob("test/idle", data)
    agent = agent_factory(proxy={"shutdown_grace": "10s"})
    idle = _idle_keepalive_connection(agent, f"{origin.url}/v2/test/idle/blobs/{digest}", data)
    try:
        assert_stops_at_once(agent)
    finally:
        idle.close()
    assert "msg=stopped" in agent.log()


def test_sigterm_gives_only_the_inflight_response_its_grace(agent_factory, origin, registry):
    """An idle connection and a response in flight: the response completes, byte for byte,
    and the agent exits as soon as it has, long before the grace runs out."""
    data = os.urandom(1_000_000)
    digest = registry.push_blob("test/mixed", data)
    small = os.urandom(1000)
    small_digest = registry.push_blob("test/mixed", small)
    agent = agent_factory(proxy={"shutdown_grace": "10s"})

    origin.faults.append(_pausing_halfway(origin, digest))
    idle = _idle_keepalive_connection(
        agent, f"{origin.url}/v2/test/mixed/blobs/{small_digest}", small
    )
    replies: list[Reply] = []
    reader = threading.Thread(
        target=lambda: replies.append(
            send(agent.proxy_port, f"{origin.url}/v2/test/mixed/blobs/{digest}")
        )
    )
    try:
        reader.start()
        time.sleep(0.7)  # the response is under way
        started = time.monotonic()
        assert agent.stop(signal.SIGTERM) == 0
        stopped_after = time.monotonic() - started
        reader.join(10)
    finally:
        idle.close()
    assert replies and replies[0].status == 200
    assert replies[0].body == data
    assert stopped_after < 3.0, f"exited {stopped_after:.1f} s after SIGTERM, grace is 10 s"


def test_restart_serves_from_the_cache(agent_factory, origin, registry):
    data = os.urandom(600_000)
    digest = registry.push_blob("test/restart", data)
    url = f"{origin.url}/v2/test/restart/blobs/{digest}"
    agent = agent_factory()
    assert send(agent.proxy_port, url).body == data
    assert agent.stop(signal.SIGINT) == 0
    fetched = len(origin.blob_gets(digest))
    agent.start()
    assert send(agent.proxy_port, url, {"Range": "bytes=1000-"}).body == data[1000:]
    assert len(origin.blob_gets(digest)) == fetched  # only a HEAD: may this client read it?


def test_port_in_use_fails_with_the_field_to_change(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        agent = AgentProcess(tmp_path, {"proxy": {"listen": f"127.0.0.1:{port}"}})
        agent.write_config()
        result = subprocess.run(
            [sys.executable, "-m", "dfagent", "run", "--config", str(agent.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"proxy: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "change proxy.listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_on_uvloop_too(tmp_path, origin, registry):
    """`--loop uvloop`: its transports are not asyncio's, and it has no sendfile."""
    data = os.urandom(900_000)
    digest = registry.push_blob("test/uvloop", data)
    agent = AgentProcess(tmp_path, {"storage": {"piece_size": "256KiB"}}, ["--loop", "uvloop"])
    agent.start()
    try:
        url = f"{origin.url}/v2/test/uvloop/blobs/{digest}"
        for _ in range(2):  # cold, then from the cache
            assert (
                send(agent.proxy_port, url, {"Range": "bytes=1000-800000"}).body
                == data[1000:800001]
            )
            assert send(agent.proxy_port, url).body == data
        with socket.create_connection(("127.0.0.1", agent.proxy_port), timeout=10) as sock:
            sock.sendall(f"CONNECT {origin.host} HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_sigterm_is_not_held_by_an_idle_peer_connection(swarm):
    """Agents keep connections to each other's peer servers open between requests: those
    close at once on SIGTERM too."""
    agent, _ = swarm(2)
    connection = http.client.HTTPConnection("127.0.0.1", agent.peer_port, timeout=30)
    connection.request(
        "GET", f"/v1/blobs/sha256:{'0' * 64}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 404 and not response.will_close
    try:
        assert_stops_at_once(agent)
    finally:
        connection.close()


def _pausing_halfway(origin, path_part: str):
    """An origin fault: blob GETs whose path holds `path_part` send half their body, pause
    1.5 s, then send the rest."""

    async def slow(request: web.BaseRequest):
        if request.method != "GET" or path_part not in request.path:
            return None
        return await origin.forward_pausing(
            request, lambda size: size // 2, lambda: asyncio.sleep(1.5)
        )

    return slow


def assert_stops_at_once(agent: AgentProcess) -> None:
    """SIGTERM with nothing in flight: the agent exits cleanly without waiting out a grace."""
    started = time.monotonic()
    assert agent.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 1.0, "nothing was in flight: no grace to wait"
