"""Several real agents on loopback as a swarm, the real registry behind a counting proxy."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import signal
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from dfagent.swarm.hashing import home_of
from tests.conftest import TOKEN
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port

PIECE = 256 * 1024


def pieces_fetched(origin: CountingOrigin, digest: str, size: int) -> dict[int, int]:
    """Bytes fetched from the origin per piece."""
    per_piece: dict[int, int] = {}
    for seen in origin.blob_gets(digest):
        first, last = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", seen.range).groups())
        last = min(last, size - 1)
        for index in range(first // PIECE, last // PIECE + 1):
            lo, hi = max(first, index * PIECE), min(last, (index + 1) * PIECE - 1)
            per_piece[index] = per_piece.get(index, 0) + hi - lo + 1
    return per_piece


def url(origin: CountingOrigin, digest: str) -> str:
    return f"{origin.url}/v2/test/swarm/blobs/{digest}"


def test_nodes_one_after_another_take_the_blob_from_the_origin_once(swarm, origin, registry):
    agents = swarm(3)
    data = os.urandom(40 * PIECE + 123)
    digest = registry.push_blob("test/swarm", data)
    for agent in agents:
        assert send(agent.proxy_port, url(origin, digest)).body == data
    assert origin.blob_bytes(digest, len(data)) == len(data)
    # Nodes 2 and 3 served nothing from the origin: every byte came from peers (or from
    # their own disk, for pieces that read-ahead brought in from peers and stored first).
    for agent in agents[1:]:
        assert metric(agent, 'dfagent_served_bytes_total{source="origin"}') == 0
        assert metric(agent, 'dfagent_served_bytes_total{source="peer"}') > 0


def test_all_nodes_at_once_take_about_one_copy_from_the_origin(swarm, origin, registry):
    agents = swarm(4)
    data = os.urandom(64 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    bodies: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda a=a: bodies.append(send(a.proxy_port, url(origin, digest)).body)
        )
        for a in agents
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert bodies == [data] * len(agents)
    assert origin.blob_bytes(digest, len(data)) <= 1.05 * len(data)


def test_random_lazy_ranges_never_fetch_a_piece_twice(swarm, origin, registry):
    agents = swarm(4)
    data = os.urandom(48 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    rng = random.Random(7)
    plans = [
        [
            (
                first := rng.randrange(len(data)),
                min(len(data) - 1, first + rng.randrange(2 * PIECE)),
            )
            for _ in range(12)
        ]
        for _ in agents
    ]
    wrong: list[tuple[int, int]] = []

    def reads(agent: AgentProcess, plan: list[tuple[int, int]]) -> None:
        for first, last in plan:
            reply = send(agent.proxy_port, url(origin, digest), {"Range": f"bytes={first}-{last}"})
            if reply.body != data[first : last + 1]:
                wrong.append((first, last))

    threads = [
        threading.Thread(target=reads, args=pair) for pair in zip(agents, plans, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert wrong == []
    over = {i: n for i, n in pieces_fetched(origin, digest, len(data)).items() if n > PIECE}
    assert over == {}, "pieces that left the origin more than once"


def test_a_peer_with_corrupt_bytes_is_caught_and_never_served(swarm, origin, registry):
    holder, reader = swarm(2)
    data = os.urandom(8 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    assert send(holder.proxy_port, url(origin, digest)).body == data
    wait_for(lambda: metric(holder, "dfagent_blob_verify_seconds_count") == 1, "verification")
    holder.flip_stored_bit(digest, 3 * PIECE + 77)  # the holder's disk goes bad under it
    assert send(reader.proxy_port, url(origin, digest)).body == data
    assert metric(reader, "dfagent_peer_bad_pieces_total") == 1
    assert (
        pieces_fetched(origin, digest, len(data)).get(3) == 2 * PIECE
    )  # piece 3 again, from origin


def test_a_peer_killed_mid_transfer(swarm, origin, registry):
    """The only holder dies while it is sending (its uploads are paced, so the transfer takes
    seconds): the reader, which has had bytes from it, still gets the exact blob (the rest
    from the origin), and so does a third node afterwards."""
    first, second, third = swarm(3, peer={"upload_bandwidth": "2MiB"})
    data = os.urandom(32 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    assert send(first.proxy_port, url(origin, digest)).body == data
    wait_for(lambda: metric(first, "dfagent_cache_pieces") == 32, "stored")
    time.sleep(0.3)  # and announced
    done: list[bytes] = []
    reader = threading.Thread(
        target=lambda: done.append(send(second.proxy_port, url(origin, digest)).body)
    )
    reader.start()
    wait_for(lambda: metric(first, "dfagent_uploaded_bytes_total") >= 2 * PIECE, "uploads")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    reader.join(60)
    assert done == [data]
    from_peer = metric(second, 'dfagent_served_bytes_total{source="peer"}')
    assert 0 < from_peer < len(data), "part came from the holder before it died, not all"
    assert send(third.proxy_port, url(origin, digest)).body == data


def test_a_paced_holder_answers_at_once_and_spreads_its_bytes(swarm, origin, registry):
    """Under an upload cap a holder sends a piece's headers at once and its bytes over the time
    the cap allows: a requester never waits in silence (it would ask a second holder after the
    hedge delay, and the piece would be sent twice), and the link never takes a whole piece in
    one burst."""
    (holder,) = swarm(1, peer={"upload_bandwidth": "1MiB"})
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    assert send(holder.proxy_port, url(origin, digest)).body == data
    wait_for(lambda: metric(holder, "dfagent_cache_pieces") == 4, "stored")
    started = time.monotonic()
    answers: dict[int, tuple[float, bytes, float]] = {}

    def fetch(index: int) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{holder.peer_port}/v1/pieces/{digest}/{index}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            headers_at = time.monotonic() - started
            body = response.read()
        answers[index] = (headers_at, body, time.monotonic() - started)

    readers = [threading.Thread(target=fetch, args=(index,)) for index in (1, 2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    for index in (1, 2):
        headers_at, body, _ = answers[index]
        assert body == data[index * PIECE : (index + 1) * PIECE]
        assert headers_at < 0.2, f"piece {index}: no answer for {headers_at:.2f} s"
    # 512 KiB at 1 MiB/s: the last slice cannot leave before 7/16 s (the first goes at once).
    assert max(done for _, _, done in answers.values()) >= 0.4


def test_a_frozen_holder_is_passed_over(swarm, origin, registry):
    """A holder that accepts connections but never answers (SIGSTOP): the other holder serves
    every piece (asked after the hedge delay), and nothing goes to the origin again."""
    agents = swarm(3)
    data = os.urandom(16 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    home = home_of([f"127.0.0.1:{a.peer_port}" for a in agents], digest[7:])
    frozen, reader = (a for a in agents if f"127.0.0.1:{a.peer_port}" != home)
    holder = next(a for a in agents if a not in (frozen, reader))
    for first_reader in (frozen, holder):  # pieces are stored, then announced
        assert send(first_reader.proxy_port, url(origin, digest)).body == data
        wait_for(lambda a=first_reader: metric(a, "dfagent_cache_pieces") == 16, "stored")
        time.sleep(0.2)
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        assert send(reader.proxy_port, url(origin, digest)).body == data
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    assert origin.blob_bytes(digest, len(data)) == len(data)


def stalling_first_get(
    origin: CountingOrigin, digest: str, until: threading.Event, head: int = 1000
):
    """An origin fault: the first GET of the blob sends its headers and `head` bytes, then
    nothing until `until` is set; later GETs are served as usual."""
    stalled: list[str] = []

    async def fault(request: web.BaseRequest) -> web.StreamResponse | None:
        if request.method != "GET" or digest not in request.path or stalled:
            return None
        stalled.append(request.headers.get("Range", ""))
        return await origin.forward_pausing(request, lambda _: head, resumed)

    async def resumed() -> None:
        while not until.is_set():
            await asyncio.sleep(0.05)

    return fault


def test_readers_stop_waiting_for_a_peer_whose_origin_fetch_stalls(swarm, origin, registry):
    """The peer holding a piece's lease gets a few bytes from the origin, then nothing. Two
    other nodes wait for that piece: once no byte has reached that peer for a second (not
    after the 15 s a lease lasts), one of them takes its fetch over and the other gets the
    piece from it: one more origin request, not one per waiter."""
    first, *waiters = swarm(3)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    resume = threading.Event()
    origin.faults.append(stalling_first_get(origin, digest, resume))
    wanted = {"Range": f"bytes=0-{PIECE - 1}"}
    stalled: list[bytes] = []
    stalled_reader = threading.Thread(
        target=lambda: stalled.append(send(first.proxy_port, url(origin, digest), wanted).body)
    )
    stalled_reader.start()
    replies: dict[int, tuple[bytes, float]] = {}

    def wait_and_read(agent: AgentProcess) -> None:
        started = time.monotonic()
        body = send(agent.proxy_port, url(origin, digest), wanted).body
        replies[agent.proxy_port] = (body, time.monotonic() - started)

    readers = [threading.Thread(target=wait_and_read, args=(agent,)) for agent in waiters]
    try:
        wait_for(lambda: len(origin.blob_gets(digest)) == 1, "the first node's stalling fetch")
        time.sleep(0.3)  # its first bytes arrived
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
    finally:
        resume.set()
        stalled_reader.join(30)
    for body, waited in replies.values():
        assert body == data[:PIECE]
        assert waited < 5, f"waited {waited:.1f} s for a peer whose fetch made no progress"
    assert len(replies) == 2
    took_over = [metric(a, 'dfagent_peer_fallbacks_total{reason="stalled"}') for a in waiters]
    assert sorted(took_over) == [0, 1], "one waiter took the fetch over"
    assert len(origin.blob_gets(digest)) == 2, "one more origin request, not one per waiter"
    assert stalled == [data[:PIECE]], "the stalled fetch, resumed, still served exact bytes"


def test_a_peer_stuck_on_one_piece_is_taken_over_while_its_other_fetches_move(
    swarm, origin, registry
):
    """The lease holder's request for piece 0 stalls while its request for piece 2 trickles
    on, so bytes of the blob keep reaching it. A node waiting for piece 0 watches that piece,
    not the blob: it takes the fetch over within seconds, not after the 15 s a lease lasts."""
    first, waiter = swarm(2)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    resume = threading.Event()

    async def trickle(request: web.BaseRequest) -> web.StreamResponse | None:
        if not request.headers.get("Range", "").startswith(f"bytes={2 * PIECE}-"):
            return None
        response, body = await origin.forward_headers(request)
        sent = 0
        while sent < len(body) and not resume.is_set():
            await response.write(body[sent : sent + 2048])
            sent += 2048
            await asyncio.sleep(0.1)
        await response.write(body[sent:])
        return response

    origin.faults += [stalling_first_get(origin, digest, resume), trickle]
    bodies: dict[str, bytes] = {}

    def read(name: str, agent: AgentProcess, index: int) -> None:
        wanted = {"Range": f"bytes={index * PIECE}-{(index + 1) * PIECE - 1}"}
        bodies[name] = send(agent.proxy_port, url(origin, digest), wanted).body

    stuck = threading.Thread(target=read, args=("stuck", first, 0))
    moving = threading.Thread(target=read, args=("moving", first, 2))
    stuck.start()
    try:
        wait_for(lambda: len(origin.blob_gets(digest)) == 1, "the first node's stalling fetch")
        moving.start()
        wait_for(lambda: len(origin.blob_gets(digest)) == 2, "the first node's trickling fetch")
        started = time.monotonic()
        read("waiter", waiter, 0)
        waited = time.monotonic() - started
        assert progress(first, digest) > 1000 + 4096, "the first node's other fetch moved on"
    finally:
        resume.set()
        stuck.join(30)
        moving.join(30)
    assert bodies["waiter"] == data[:PIECE]
    assert waited < 8, f"waited {waited:.1f} s for a peer stuck on the piece"
    assert metric(waiter, 'dfagent_peer_fallbacks_total{reason="stalled"}') == 1
    assert bodies["stuck"] == data[:PIECE] and bodies["moving"] == data[2 * PIECE : 3 * PIECE]


def progress(agent: AgentProcess, digest: str) -> int:
    """Bytes of the blob that have reached `agent` so far (its peer endpoint)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{agent.peer_port}/v1/progress/{digest}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.load(response)["arrived"])


def test_an_agent_that_cuts_blobs_otherwise_says_so_once_and_reads_exact_bytes(
    swarm, origin, registry
):
    """An agent whose storage.piece_size differs from the swarm's shares no piece with it (a
    home keeps blobs cut differently apart). It says so once, naming the setting, not once per
    blob, and its readers still get exact bytes (from the origin)."""
    first, second = swarm(2, each=[{}, {"storage": {"piece_size": "512KiB"}}])
    blobs = [os.urandom(4 * PIECE + 5) for _ in range(2)]
    digests = [registry.push_blob("test/swarm", data) for data in blobs]
    for read, (digest, data) in enumerate(zip(digests, blobs, strict=True), 1):
        assert send(first.proxy_port, url(origin, digest)).body == data
        assert send(second.proxy_port, url(origin, digest)).body == data
        for agent in (first, second):  # each took every byte from the origin: nothing shared
            assert metric(agent, "dfagent_origin_bytes_total") == read * len(data)
    said = "pieces of another size than storage.piece_size here"
    assert second.log().count(said) == 1
    assert said not in first.log()
    line = next(line for line in second.log().splitlines() if said in line)
    assert "swarm_piece_size=262144" in line and " piece_size=524288" in line


def test_a_piece_moves_on_to_other_nodes_while_it_arrives(swarm, origin, registry):
    """The origin sends the first node half a piece, then pauses. The nodes that ask for the
    piece meanwhile are not left waiting for the whole of it: the half already there reaches
    them (down a line: node 3 gets it through node 2). Once the origin goes on, everyone gets
    exact bytes, from one origin request."""
    first, *others = swarm(3)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    resume = threading.Event()
    origin.faults.append(stalling_first_get(origin, digest, resume, head=PIECE // 2))
    wanted = {"Range": f"bytes=0-{PIECE - 1}"}
    bodies: dict[int, bytes] = {}

    def read(agent: AgentProcess) -> None:
        bodies[agent.proxy_port] = send(agent.proxy_port, url(origin, digest), wanted).body

    readers = [threading.Thread(target=read, args=(agent,)) for agent in (first, *others)]
    try:
        readers[0].start()
        wait_for(lambda: progress(first, digest) >= PIECE // 2, "half a piece at the first node")
        for reader in readers[1:]:
            reader.start()
        for agent in others:
            wait_for(lambda a=agent: progress(a, digest) >= PIECE // 2, "the half passed on")
        assert not bodies, "nobody has the whole piece yet"
    finally:
        resume.set()
        for reader in readers:
            reader.join(30)
    assert list(bodies.values()) == [data[:PIECE]] * 3
    assert len(origin.blob_gets(digest)) == 1
    for agent in others:
        assert metric(agent, 'dfagent_served_bytes_total{source="origin"}') == 0
    relayed = [metric(a, 'dfagent_peer_requests_total{kind="relay"}') for a in (first, *others)]
    assert relayed[0] >= 1 and sum(relayed) >= 2, f"passed on while arriving: {relayed}"
    # Each node that took the piece as it arrived asked the blob's home for its recorded
    # sha256 (the home itself looks it up without a request): at least one query was counted.
    queried = [metric(a, 'dfagent_peer_requests_total{kind="recorded"}') for a in (first, *others)]
    assert sum(queried) >= 1, f"sha256 queries the home counted: {queried}"


def ask_for_piece(agent: AgentProcess, path: str, *, hang_up_after: float) -> int:
    """Ask `agent`'s peer endpoint for `path` as a peer would, read what comes for
    `hang_up_after` seconds, then hang up; the status it answered."""
    connection = http.client.HTTPConnection("127.0.0.1", agent.peer_port, timeout=5)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        if response.status == 200:
            connection.sock.settimeout(hang_up_after)
            with contextlib.suppress(TimeoutError):
                while response.read(64 * 1024):
                    pass
        return response.status
    finally:
        connection.close()


def test_a_peer_that_hangs_up_on_a_relay_frees_its_upload_slot(swarm, origin, registry):
    """A node passing on a piece that stopped arriving (its origin connection stalled) is
    asked for it by peers that give up after a while and hang up. Each hang-up frees the
    upload slot at once: the node must not answer "busy" to every peer until the stalled
    fetch ends."""
    (first,) = swarm(1, peer={"max_uploads": 1})
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    resume = threading.Event()
    origin.faults.append(stalling_first_get(origin, digest, resume, head=PIECE // 2))
    wanted = {"Range": f"bytes=0-{PIECE - 1}"}
    bodies: list[bytes] = []
    reader = threading.Thread(
        target=lambda: bodies.append(send(first.proxy_port, url(origin, digest), wanted).body)
    )
    reader.start()
    piece = f"/v1/pieces/{digest}/0?" + urllib.parse.urlencode({"origin": origin.url})
    try:
        wait_for(lambda: progress(first, digest) >= PIECE // 2, "half a piece at the node")
        statuses = []
        for _ in range(3):
            statuses.append(ask_for_piece(first, piece, hang_up_after=0.3))
            time.sleep(1.0)  # the node notices the hang-up (at once; this is slack)
        assert statuses == [200] * 3, f"answers while the piece is stalled: {statuses}"
    finally:
        resume.set()
        reader.join(30)
    assert bodies == [data[:PIECE]]
    assert metric(first, 'dfagent_peer_requests_total{kind="busy"}') == 0


def test_the_swarm_survives_a_home_restart(swarm, origin, registry):
    agents = swarm(3)
    data = os.urandom(16 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    members = sorted(f"127.0.0.1:{a.peer_port}" for a in agents)
    home = next(a for a in agents if f"127.0.0.1:{a.peer_port}" == home_of(members, digest[7:]))
    holder = next(a for a in agents if a is not home)
    reader = next(a for a in agents if a not in (home, holder))
    assert send(holder.proxy_port, url(origin, digest)).body == data
    assert home.stop() == 0
    home.start()  # its directory starts empty; holders re-announce within swarm.refresh
    wait_for(
        lambda: metric(home, 'dfagent_peer_requests_total{kind="announce"}') >= 1, "re-announce"
    )
    fetched = origin.blob_bytes(digest, len(data))
    assert send(reader.proxy_port, url(origin, digest)).body == data
    assert origin.blob_bytes(digest, len(data)) == fetched
    assert metric(reader, 'dfagent_served_bytes_total{source="origin"}') == 0
    assert metric(reader, 'dfagent_served_bytes_total{source="peer"}') > 0


def test_requests_without_the_token_are_refused(swarm):
    (agent,) = swarm(1)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        request = urllib.request.Request(
            f"http://127.0.0.1:{agent.peer_port}/v1/blobs/sha256:{'a' * 64}", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
    assert metric(agent, 'dfagent_peer_requests_total{kind="refused"}') == 2


def pair(root: Path, host: str, peer: dict) -> list[AgentProcess]:
    """Two agents on `host` (an IPv4 or bracketed IPv6 address) with `peer` settings."""
    members = [f"{host}:{free_port()}" for _ in range(2)]
    return [
        AgentProcess(
            root / f"agent{i}",
            {
                "storage": {"piece_size": "256KiB"},
                "peer": {"listen": members[i], **peer},
                "swarm": {"peers": members, "advertise": members[i]},
            },
        ).start()
        for i in range(2)
    ]


def share_one_blob(agents: list[AgentProcess], origin, registry) -> None:
    """The first agent reads a blob from the origin, the second gets it all from the first."""
    data = os.urandom(6 * PIECE)
    digest = registry.push_blob("test/swarm", data)
    for agent in agents:
        assert send(agent.proxy_port, url(origin, digest)).body == data
    assert origin.blob_bytes(digest, len(data)) == len(data)
    assert metric(agents[1], 'dfagent_served_bytes_total{source="origin"}') == 0
    assert metric(agents[1], 'dfagent_served_bytes_total{source="peer"}') > 0


def test_swarm_over_ipv6(tmp_path, origin, registry):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    agents = pair(tmp_path, "[::1]", {"token_file": str(token)})
    try:
        share_one_blob(agents, origin, registry)
    finally:
        for agent in agents:
            agent.kill()


def test_mutual_tls_between_agents(tmp_path, origin, registry):
    ca, stranger = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "ca": str(tmp_path / "ca.pem"),
    }
    agents = pair(tmp_path / "tls", "127.0.0.1", {"tls": tls})  # no token: certificates only
    try:
        share_one_blob(agents, origin, registry)

        peer = f"https://127.0.0.1:{agents[0].peer_port}/v1/blobs/sha256:{'a' * 64}"
        no_client_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        no_client_cert.check_hostname = False
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(peer, timeout=5, context=no_client_cert).read()
        wrong_ca = stranger.issue_cert("127.0.0.1")
        other = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        other.check_hostname = False
        wrong_ca.configure_cert(other)
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(peer, timeout=5, context=other).read()
        member_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        member_cert.check_hostname = False
        leaf.configure_cert(member_cert)
        with pytest.raises(urllib.error.HTTPError) as unknown:  # admitted: 404, no such blob
            urllib.request.urlopen(peer, timeout=5, context=member_cert)
        assert unknown.value.code == 404
    finally:
        for agent in agents:
            agent.kill()
