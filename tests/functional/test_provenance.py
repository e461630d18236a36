"""Until a blob is checked whole against its digest, its bytes are only the word of the registry
they came from: a lying registry's bytes never reach a client that named another registry, on
one node under concurrency or anywhere in a swarm."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest
from aiohttp import web

from dfagent.swarm.hashing import home_of
from tests.conftest import TOKEN
from tests.support.agent import AgentProcess
from tests.support.client import Reply, send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port
from tests.support.registry import Registry

PIECE = 256 * 1024
REPO = "test/provenance"


def url(origin: CountingOrigin, digest: str) -> str:
    return f"{origin.url}/v2/{REPO}/blobs/{digest}"


def lie_about(digest: str, size: int, delay: float = 0.0):
    """A fault that answers for `digest` as if it were `size` bytes of zeros, after `delay`."""

    async def lie(request: web.BaseRequest) -> web.StreamResponse | None:
        if digest not in request.path:
            return None
        await asyncio.sleep(delay)
        if request.method == "HEAD":
            response = web.Response(status=200)
            response.headers["Content-Length"] = str(size)
            return response
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        assert match is not None, "the agent always asks for a range"
        first, last = int(match.group(1)), min(int(match.group(2)), size - 1)
        return web.Response(
            status=206,
            body=b"\0" * (last - first + 1),
            headers={"Content-Range": f"bytes {first}-{last}/{size}"},
        )

    return lie


@pytest.fixture
def liar(registry: Registry):
    counting = CountingOrigin(registry.url).start()
    yield counting
    counting.stop()


def in_thread(target) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(target()))
    thread.start()
    return thread, replies


def test_a_late_answer_from_a_liar_never_fills_the_honest_registrys_blob(
    agent_factory, origin, liar, registry
):
    """The liar's answer arrives a second after the honest registry's read created the blob:
    its bytes go to the liar's client only, never into the blob."""
    agent = agent_factory(storage={"piece_size": "256KiB"})
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob(REPO, data)
    liar.faults.append(lie_about(digest, len(data), delay=1.0))
    third = {"Range": f"bytes={2 * PIECE}-{3 * PIECE - 1}"}
    thread, lied = in_thread(lambda: send(agent.proxy_port, url(liar, digest), third))
    time.sleep(0.3)  # the liar's first sight is under way
    first = send(agent.proxy_port, url(origin, digest), {"Range": f"bytes=0-{PIECE - 1}"})
    assert first.body == data[:PIECE]
    thread.join(30)
    assert lied[0].body == b"\0" * PIECE  # the liar's own client gets the liar's word
    time.sleep(0.3)  # anything the late answer could have stored is stored by now
    assert send(agent.proxy_port, url(origin, digest)).body == data
    wait_for(lambda: metric(agent, "dfagent_blob_verify_seconds_count") >= 1, "verification")
    assert metric(agent, "dfagent_blob_verify_failures_total") == 0


def roles(agents: list[AgentProcess], digest: str) -> tuple[AgentProcess, ...]:
    """(home, the node that reads through the liar, the other node)."""
    members = [f"127.0.0.1:{a.peer_port}" for a in agents]
    home = next(a for a in agents if f"127.0.0.1:{a.peer_port}" == home_of(members, digest[7:]))
    fooled, honest = (a for a in agents if a is not home)
    return home, fooled, honest


@pytest.mark.parametrize("claimed", ["same size", "longer"])
def test_a_lying_registry_on_a_swarm_of_three(swarm, origin, liar, registry, claimed):
    """Node A reads part of a blob through a registry that lies (zeros, and maybe another
    size): the home records A's pieces under the liar only, so the other nodes, whose
    clients name the real registry, neither take A's bytes nor the liar's size."""
    agents = swarm(3)
    data = os.urandom(6 * PIECE + 100)
    digest = registry.push_blob(REPO, data)
    size = len(data) if claimed == "same size" else len(data) + 3 * PIECE
    liar.faults.append(lie_about(digest, size))
    home, fooled, honest = roles(agents, digest)
    lied = send(fooled.proxy_port, url(liar, digest), {"Range": f"bytes=0-{3 * PIECE - 1}"})
    assert lied.body == b"\0" * 3 * PIECE
    wait_for(lambda: metric(fooled, "dfagent_cache_pieces") == 3, "the liar's pieces stored")
    time.sleep(0.3)  # and announced
    for reader in (honest, home):  # a remote directory, then the home's own
        reply = send(reader.proxy_port, url(origin, digest))
        assert reply.status == 200
        assert int(reply.headers["Content-Length"]) == len(data)
        assert reply.body == data
    assert metric(honest, "dfagent_peer_bad_pieces_total") == 0


def test_concurrent_readers_of_two_registries_on_a_swarm_of_three(swarm, origin, liar, registry):
    """All at once: one node reads through a slow liar while two read through the real
    registry; the real registry's clients get exact bytes, the liar's client zeros."""
    agents = swarm(3)
    data = os.urandom(8 * PIECE)
    digest = registry.push_blob(REPO, data)
    liar.faults.append(lie_about(digest, len(data), delay=0.3))
    home, fooled, honest = roles(agents, digest)
    lying, lied = in_thread(lambda: send(fooled.proxy_port, url(liar, digest)))
    time.sleep(0.1)
    readers = [
        in_thread(lambda a=a: send(a.proxy_port, url(origin, digest))) for a in (home, honest)
    ]
    for thread, _ in [*readers, (lying, lied)]:
        thread.join(60)
    assert [replies[0].body == data for _, replies in readers] == [True, True]
    assert lied[0].body == b"\0" * len(data)
    # The fooled node reads through the real registry afterwards: never the liar's bytes.
    later = send(fooled.proxy_port, url(origin, digest), {"Range": f"bytes={PIECE}-{PIECE + 9}"})
    assert later.body == data[PIECE : PIECE + 10]


def test_a_lease_holder_whose_origin_fails_lets_the_others_go_at_once(swarm, origin, registry):
    """The node the home sends to the origin gets only errors there (its client's credentials
    are refused at every GET): it gives the pieces back at once, and a node waiting for them
    goes to the origin itself instead of waiting out the lease."""
    agents = swarm(3)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob(REPO, data)
    _, doomed, waiting = roles(agents, digest)  # neither is the home: releases go over the wire

    async def refuse_doomed(request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method != "GET" or request.headers.get("Authorization") != "Bearer doomed":
            return None
        await asyncio.sleep(1.0)  # long enough for the other node to ask and wait
        return web.Response(status=403, text="denied")

    origin.faults.append(refuse_doomed)
    failing, failed = in_thread(
        lambda: send(doomed.proxy_port, url(origin, digest), {"Authorization": "Bearer doomed"})
    )
    time.sleep(0.5)  # the doomed node holds the leases now
    started = time.monotonic()
    reply = send(waiting.proxy_port, url(origin, digest))
    took = time.monotonic() - started
    failing.join(30)
    assert failed[0].status == 403
    assert reply.body == data
    assert took < 5, f"waited {took:.1f}s for a lease its holder had given up (lease: 15s)"


def test_a_registry_that_merely_says_yes_gets_no_peers_copy(swarm, origin, liar, registry):
    """A node holds a verified private blob (read with credentials). On another node a client
    names a server of its own that answers every request for the digest (zeros): the swarm
    offers that node no peer's copy, because the server never proved it holds the blob, so
    the client gets only what its own server sent."""
    agents = swarm(3)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob(REPO, data)
    liar.faults.append(lie_about(digest, len(data)))
    _, owner, stranger = roles(agents, digest)
    assert (
        send(owner.proxy_port, url(origin, digest), {"Authorization": "Bearer owner"}).body == data
    )
    wait_for(lambda: metric(owner, "dfagent_blob_verify_seconds_count") == 1, "verification")
    time.sleep(0.3)  # announced as verified
    reply = send(stranger.proxy_port, url(liar, digest), {"Authorization": "Bearer stranger"})
    assert reply.body == b"\0" * len(data)
    assert metric(stranger, 'dfagent_served_bytes_total{source="peer"}') == 0
    assert metric(owner, "dfagent_uploaded_bytes_total") == 0


def test_a_lease_holder_whose_disk_is_full_lets_the_others_go_at_once(
    tmp_path, small_disk, origin, registry
):
    """The node sent to the origin serves its client but cannot store a piece (its disk is
    full), so it never announces them: it gives the lease back at once instead."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    members = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    agents = [
        AgentProcess(
            tmp_path / f"agent{i}",
            {
                "storage": {"piece_size": "256KiB", **({"dir": str(small_disk)} if i == 0 else {})},
                "peer": {"listen": members[i], "token_file": str(token)},
                "swarm": {"peers": members, "advertise": members[i], "refresh": "1s"},
            },
        ).start()
        for i in range(3)
    ]
    try:
        data = os.urandom(4 * PIECE)
        digest = registry.push_blob(REPO, data)
        full = agents[0]
        home = home_of(members, digest[7:])
        waiting = next(a for a, m in zip(agents[1:], members[1:], strict=True) if m != home)
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        (small_disk / "filler").write_bytes(b"\0" * max(0, free - 96 * 1024))

        async def slow(request: web.BaseRequest) -> web.StreamResponse | None:
            if request.method == "GET" and digest in request.path:
                await asyncio.sleep(0.5)
            return None

        origin.faults.append(slow)
        filling, filled = in_thread(lambda: send(full.proxy_port, url(origin, digest)))
        time.sleep(0.3)  # the full node holds the leases now
        started = time.monotonic()
        reply = send(waiting.proxy_port, url(origin, digest))
        took = time.monotonic() - started
        filling.join(30)
        assert filled[0].body == data  # served without caching
        assert metric(full, "dfagent_storage_full_total") > 0
        assert reply.body == data
        assert took < 5, f"waited {took:.1f}s for a lease its holder could not keep (lease: 15s)"
    finally:
        for agent in agents:
            agent.kill()


def test_a_registry_that_does_not_hold_a_public_blob_is_asked_once_not_per_read(
    agent, origin, liar, registry
):
    """A public, verified blob read naming another registry is served from the cache; that
    registry is asked in the background whether it holds the blob, once per auth.cache_ttl,
    not on every read."""
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob(REPO, data)
    assert send(agent.proxy_port, url(origin, digest)).body == data
    wait_for(lambda: metric(agent, "dfagent_blob_verify_seconds_count") == 1, "whole check")
    liar.faults.append(lie_about(digest, len(data)))  # the other name does not hold it
    for _ in range(5):
        reply = send(agent.proxy_port, url(liar, digest), {"Range": "bytes=10-99"})
        assert (reply.status, reply.body) == (206, data[10:100])
    wait_for(lambda: len(liar.blob_gets(digest)) >= 4, "the background proof")
    time.sleep(0.3)
    assert len(liar.blob_gets(digest)) == 4, "one proof of 4 ranges, not one per read"
