"""The cache across a blob's life: whole-blob verification, scrub, eviction, full disks,
crashes, status; with real files, the real registry and real agent processes."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

from aiohttp import web

from tests.support.agent import AgentProcess
from tests.support.cache import synthetic_cache
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.registry import Registry

PIECE = 256 * 1024
SMALL_PIECES = {"storage": {"piece_size": "256KiB"}}


def status(agent: AgentProcess) -> dict:
    result = agent.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def blob_url(origin: CountingOrigin, repo: str, digest: str) -> str:
    return f"{origin.url}/v2/{repo}/blobs/{digest}"


def stored_pieces(agent: AgentProcess) -> list[tuple[str, int, bytes]]:
    with sqlite3.connect(agent.storage_dir / "index.sqlite") as db:
        return db.execute("SELECT digest, idx, sha256 FROM pieces ORDER BY digest, idx").fetchall()


def test_whole_blob_is_verified_and_marked(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(3 * PIECE + 500)
    digest = registry.push_blob("test/verify", data)
    url = blob_url(origin, "test/verify", digest)
    partial = send(agent.proxy_port, url, {"Range": "bytes=0-99"})
    assert "X-Dragonfly-Task-Download-Finished" not in partial.headers
    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "the blob to be verified")
    again = send(agent.proxy_port, url, {"Range": "bytes=10-20"})
    assert again.body == data[10:21]
    assert again.headers["X-Dragonfly-Task-Download-Finished"] == "true"
    assert metric(agent, "dfagent_blob_verify_seconds_count") == 1
    assert metric(agent, "dfagent_blob_verify_failures_total") == 0


def test_blob_that_fails_its_digest_is_purged(agent_factory, origin, registry: Registry):
    """An origin that serves wrong bytes under a digest: the cache does not keep them."""
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(2 * PIECE + 10)
    digest = registry.push_blob("test/liar", data)

    async def corrupt(request: web.BaseRequest):
        if request.method != "GET" or digest not in request.path:
            return None
        upstream = await origin.forward(request)
        body = bytearray(upstream.body)
        body[len(body) // 2] ^= 0xFF  # every response is wrong in one byte
        return web.Response(status=upstream.status, body=bytes(body), headers=upstream.headers)

    origin.faults.append(corrupt)
    send(agent.proxy_port, blob_url(origin, "test/liar", digest))
    wait_for(lambda: metric(agent, "dfagent_blob_verify_failures_total") == 1, "a verify failure")
    wait_for(lambda: status(agent)["blobs"] == 0, "the blob to be purged")
    assert stored_pieces(agent) == []
    assert not list((agent.storage_dir / "blobs").rglob("*" + digest[-8:]))
    assert "purging blob" in agent.log()


def test_scrub_finds_a_flipped_bit_and_repair_drops_it(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(4 * PIECE)
    digest = registry.push_blob("test/scrub", data)
    url = blob_url(origin, "test/scrub", digest)
    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")
    assert agent.stop() == 0

    agent.flip_stored_bit(digest, 2 * PIECE + 1234)
    found = agent.cli("verify", "--json")  # no agent runs: the CLI opens the cache itself
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["bad"] == [{"digest": digest, "piece": 2}]
    assert report["pieces"] == 4
    assert len(stored_pieces(agent)) == 4, "without --repair nothing changes"

    repaired = agent.cli("verify", "--repair")
    assert repaired.returncode == 1
    assert [p[1] for p in stored_pieces(agent)] == [0, 1, 3]
    assert agent.cli("verify").returncode == 0

    agent.start()
    before = len(origin.blob_gets(digest))
    assert (
        send(agent.proxy_port, url, {"Range": f"bytes={2 * PIECE}-{3 * PIECE - 1}"}).body
        == (data[2 * PIECE : 3 * PIECE])
    )
    assert len(origin.blob_gets(digest)) == before + 1, "the dropped piece came from the origin"


def test_verify_through_a_running_agent(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(2 * PIECE)
    digest = registry.push_blob("test/online", data)
    url = blob_url(origin, "test/online", digest)
    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")  # then corrupt it
    agent.flip_stored_bit(digest, 5)
    result = agent.cli("verify", "--repair", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["bad"] == [{"digest": digest, "piece": 0}]
    assert metric(agent, "dfagent_scrub_bad_pieces_total") == 1
    # The running agent forgot the piece too: the next read fetches it again, exact.
    assert send(agent.proxy_port, url, {"Range": "bytes=0-99"}).body == data[:100]


def test_verify_reads_never_serve_a_flipped_bit(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"piece_size": "256KiB", "verify_reads": True})
    data = os.urandom(2 * PIECE)
    digest = registry.push_blob("test/paranoid", data)
    url = blob_url(origin, "test/paranoid", digest)
    assert send(agent.proxy_port, url).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")  # then corrupt it
    agent.flip_stored_bit(digest, PIECE + 7)
    assert (
        send(agent.proxy_port, url, {"Range": f"bytes={PIECE}-{PIECE + 99}"}).body
        == (data[PIECE : PIECE + 100])
    )
    assert send(agent.proxy_port, url).body == data
    assert "does not match its recorded sha256" in agent.log()


def test_quota_evicts_least_recently_used_down_to_the_low_watermark(
    agent_factory, origin, registry: Registry
):
    # quota 2MiB: high watermark 1.8MiB, low 1.4MiB; each blob stores 600,000 bytes.
    agent = agent_factory(storage={"piece_size": "256KiB", "quota": "2MiB"})
    blobs = [os.urandom(600_000) for _ in range(4)]
    digests = [registry.push_blob("test/quota", data) for data in blobs]
    for digest, data in zip(digests[:3], blobs[:3], strict=True):
        assert send(agent.proxy_port, blob_url(origin, "test/quota", digest)).body == data
    wait_for(lambda: metric(agent, "dfagent_cache_bytes") == 1_800_000, "three blobs stored")
    assert metric(agent, 'dfagent_evicted_blobs_total{reason="quota"}') == 0  # not above high
    # Blob 0 is read again, so blob 1 is now the least recently used.
    assert send(agent.proxy_port, blob_url(origin, "test/quota", digests[0])).body == blobs[0]
    assert send(agent.proxy_port, blob_url(origin, "test/quota", digests[3])).body == blobs[3]
    # Crossing the high watermark (while blob 3 lands) evicts down to the low one: blob 1 goes.
    wait_for(lambda: metric(agent, 'dfagent_evicted_blobs_total{reason="quota"}') >= 1, "eviction")
    wait_for(
        lambda: len([p for p in stored_pieces(agent) if p[0] == digests[3][7:]]) == 3, "blob 3"
    )
    held = {d for d, _, _ in stored_pieces(agent)}
    assert digests[1].removeprefix("sha256:") not in held
    assert {digests[0][7:], digests[3][7:]} <= held
    assert metric(agent, "dfagent_cache_bytes") <= 0.9 * 2 * 1024 * 1024
    # An evicted blob is still served, fetched again.
    assert send(agent.proxy_port, blob_url(origin, "test/quota", digests[1])).body == blobs[1]


def test_max_age_and_gc_command(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"max_age": "1s", "gc_interval": "1h"})
    data = os.urandom(100_000)
    digest = registry.push_blob("test/age", data)
    assert send(agent.proxy_port, blob_url(origin, "test/age", digest)).body == data
    wait_for(lambda: len(stored_pieces(agent)) == 1, "the piece stored")
    time.sleep(1.2)
    result = agent.cli("gc", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["evicted_for_age"] == 1
    assert stored_pieces(agent) == []
    assert metric(agent, 'dfagent_evicted_blobs_total{reason="age"}') == 1


def test_status_human_and_json(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    whole, partial = os.urandom(PIECE + 1), os.urandom(3 * PIECE)
    d_whole = registry.push_blob("test/status", whole)
    d_partial = registry.push_blob("test/status", partial)
    send(agent.proxy_port, blob_url(origin, "test/status", d_whole))
    send(agent.proxy_port, blob_url(origin, "test/status", d_partial), {"Range": "bytes=0-10"})
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")
    report = status(agent)
    assert (report["blobs"], report["partial_blobs"], report["pieces"]) == (2, 1, 3)
    assert report["stored"] == len(whole) + PIECE
    assert report["largest"][0]["digest"] == d_whole
    human = agent.cli("status")
    assert human.returncode == 0
    assert "2 (1 verified, 1 partial)" in human.stdout
    assert agent.stop() == 0
    offline = status(agent)  # no agent: read from the directory
    assert offline["pieces"] == 3


def test_second_agent_on_the_same_directory_is_refused(agent_factory, tmp_path):
    agent = agent_factory()
    other = AgentProcess(tmp_path / "other", {"storage": {"dir": str(agent.storage_dir)}})
    other.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "dfagent", "run", "--config", str(other.config_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "in use by another dfagent" in result.stderr


def test_full_disk_still_serves_and_damages_nothing(agent_factory, origin, registry, small_disk):
    agent = agent_factory(storage={"dir": str(small_disk / "cache"), "piece_size": "256KiB"})
    first = os.urandom(300_000)
    d_first = registry.push_blob("test/full", first)
    assert send(agent.proxy_port, blob_url(origin, "test/full", d_first)).body == first
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "the first blob stored")
    big = os.urandom(4 * 1024 * 1024)
    d_big = registry.push_blob("test/full", big)
    for _ in range(2):  # the disk cannot hold it: served anyway, twice
        assert send(agent.proxy_port, blob_url(origin, "test/full", d_big)).body == big
    assert metric(agent, "dfagent_storage_full_total") > 0
    assert agent.log().count("cannot store pieces") == 1  # logged once a minute at most
    assert send(agent.proxy_port, blob_url(origin, "test/full", d_first)).body == first
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()
    checked = AgentProcess(agent.root, agent.overrides).cli("verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_sigkill_under_load_never_leaves_a_bad_piece(agent_factory, origin, registry: Registry):
    blobs = {}
    for _ in range(3):
        data = os.urandom(12 * PIECE + 777)
        blobs[registry.push_blob("test/crash", data)] = data
    agent = agent_factory(**SMALL_PIECES)
    wrong: list[tuple[str, int, int]] = []
    for _ in range(6):
        stop = threading.Event()

        def reader(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                digest, data = random.choice(list(blobs.items()))
                first = random.randrange(len(data))
                last = min(len(data) - 1, first + random.randrange(3 * PIECE))
                try:
                    reply = send(
                        agent.proxy_port,
                        blob_url(origin, "test/crash", digest),
                        {"Range": f"bytes={first}-{last}"},
                    )
                except (OSError, http.client.HTTPException):
                    continue  # the agent was killed mid-response
                if reply.status == 206 and reply.body != data[first : last + 1]:
                    wrong.append((digest, first, last))

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(0.2, 0.8))
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait()
        stop.set()
        for thread in threads:
            thread.join()
        agent.start()
    assert wrong == [], "a complete response carried wrong bytes"
    assert agent.stop() == 0
    verified = agent.cli("verify")
    assert verified.returncode == 0, verified.stdout
    pieces = stored_pieces(agent)
    assert pieces, "the load stored something"
    for digest, index, _ in pieces:
        data = blobs[f"sha256:{digest}"]
        path = agent.storage_dir / "blobs" / digest[:2] / digest
        with path.open("rb") as file:
            file.seek(index * PIECE)
            assert file.read(PIECE) == data[index * PIECE : (index + 1) * PIECE]


def test_prefetch_completes_the_blob_in_the_background(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"piece_size": "256KiB"}, origin={"prefetch_bandwidth": "4MiB"})
    data = os.urandom(6 * PIECE + 3)
    digest = registry.push_blob("test/prefetch", data)
    url = blob_url(origin, "test/prefetch", digest)
    reply = send(agent.proxy_port, url, {"Range": "bytes=0-9", "X-Dragonfly-Prefetch": "true"})
    assert reply.body == data[:10]
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "background completion")
    fetched = 0
    for seen in origin.blob_gets(digest):
        first, last = (int(x) for x in seen.range.removeprefix("bytes=").split("-"))
        fetched += min(last, len(data) - 1) - first + 1
    assert fetched == len(data), "every byte left the origin once"
    before = len(origin.requests)
    assert send(agent.proxy_port, url).body == data
    assert len(origin.requests) == before


def test_unverified_bytes_from_one_registry_never_reach_another(
    agent_factory, origin, registry: Registry
):
    """Blob identity is the digest, but until a blob is verified its bytes are only the word of
    the registry that sent them: a lying host cannot poison reads meant for the real one."""
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob("test/poison", data)
    liar = CountingOrigin(registry.url).start()
    try:

        async def lie(request: web.BaseRequest):
            if request.method != "GET" or digest not in request.path:
                return None
            upstream = await liar.forward(request)
            return web.Response(
                status=upstream.status, body=b"\0" * len(upstream.body), headers=upstream.headers
            )

        liar.faults.append(lie)
        spec = {"Range": f"bytes=0-{PIECE - 1}"}
        poisoned = send(agent.proxy_port, blob_url(liar, "test/poison", digest), spec)
        assert poisoned.body == b"\0" * PIECE  # the liar's own client gets the liar's bytes
        honest = send(agent.proxy_port, blob_url(origin, "test/poison", digest), spec)
        assert honest.status == 206
        assert honest.body == data[:PIECE]
        assert origin.blob_gets(digest), "served straight from the real registry"
        assert metric(agent, 'dfagent_proxy_requests_total{kind="uncached",status="2xx"}') == 1
    finally:
        liar.stop()


def test_a_verified_blob_serves_registries_that_prove_they_hold_it(
    agent_factory, origin, registry: Registry
):
    """A verified private blob (first read with credentials) serves a client naming another
    registry only once that registry, asked with the client's credentials, serves a random
    range of the blob matching the cached copy; one that merely says 200 gets nothing."""
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(2 * PIECE)
    digest = registry.push_blob("test/shared", data)
    url = blob_url(origin, "test/shared", digest)
    assert send(agent.proxy_port, url, {"Authorization": "Bearer owner"}).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")
    mirror = CountingOrigin(registry.url).start()
    yes_man = CountingOrigin(registry.url).start()

    async def say_yes(request: web.BaseRequest):
        if request.method == "HEAD":
            response = web.Response(status=200)
            response.headers["Content-Length"] = str(len(data))
            return response
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        return web.Response(
            status=206,
            body=os.urandom(last - first + 1),
            headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"},
        )

    yes_man.faults.append(say_yes)
    try:
        client = {"Authorization": "Bearer client", "Range": "bytes=5-9"}
        reply = send(agent.proxy_port, blob_url(mirror, "test/shared", digest), client)
        assert reply.body == data[5:10]
        # The mirror was asked for four random 64-byte ranges with the client's credentials
        # (its proof), not for the bytes served: those came from the cache.
        proofs = mirror.blob_gets(digest)
        assert len(proofs) == 4
        for proof in proofs:
            first, last = (int(x) for x in proof.range.removeprefix("bytes=").split("-"))
            assert (last - first + 1, proof.authorization) == (64, "Bearer client")
        refused = send(agent.proxy_port, blob_url(yes_man, "test/shared", digest), client)
        assert refused.status == 403
        assert data[5:10] not in refused.body
    finally:
        mirror.stop()
        yes_man.stop()


def test_prefetch_fills_the_gaps_between_earlier_reads(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(8 * PIECE)
    digest = registry.push_blob("test/gaps", data)
    url = blob_url(origin, "test/gaps", digest)
    for piece in (1, 4, 6):
        spec = {"Range": f"bytes={piece * PIECE}-{piece * PIECE + 9}"}
        assert send(agent.proxy_port, url, spec).body == data[piece * PIECE : piece * PIECE + 10]
    wait_for(lambda: len(stored_pieces(agent)) == 3, "three pieces stored")
    send(agent.proxy_port, url, {"Range": "bytes=0-0", "X-Dragonfly-Prefetch": "true"})
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "background completion")
    assert "background completion stopped" not in agent.log()


def test_start_up_reads_the_index_only(tmp_path, origin, registry: Registry):
    """100,000 recorded pieces and not one data file: the agent is ready at once (it scans
    nothing), reports them, and forgets a blob whose file turns out to be gone."""
    storage = tmp_path / "cache"
    digests = synthetic_cache(storage, 100_000, per_blob=1000, piece_size=PIECE, data_files=False)
    agent = AgentProcess(tmp_path / "agent", {"storage": {"dir": str(storage), "quota": "1TiB"}})
    agent.start()
    try:
        with urllib.request.urlopen(f"{agent.health_url}/readyz", timeout=5) as ready:
            assert ready.status == 200
        assert metric(agent, "dfagent_cache_pieces") == 100_000
        url = blob_url(origin, "test/startup", f"sha256:{digests[0]}")
        reply = send(agent.proxy_port, url, {"Range": "bytes=0-0"})
        assert reply.status == 404  # unknown to the registry: asked there, not served stale
        assert "data file of an indexed blob is gone" in agent.log()
        assert metric(agent, "dfagent_cache_pieces") == 99_000
    finally:
        assert agent.stop() == 0


def test_background_scrub_finds_a_flipped_bit(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"piece_size": "256KiB", "scrub_interval": "500ms"})
    data = os.urandom(2 * PIECE)
    digest = registry.push_blob("test/bgscrub", data)
    assert send(agent.proxy_port, blob_url(origin, "test/bgscrub", digest)).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")  # then corrupt it
    agent.flip_stored_bit(digest, PIECE + 3)
    wait_for(lambda: metric(agent, "dfagent_scrub_bad_pieces_total") == 1, "the scrub")
    wait_for(lambda: metric(agent, "dfagent_scrub_passes_total") >= 1, "a whole pass")
    assert [p[1] for p in stored_pieces(agent)] == [0]


def test_prefetch_keeps_to_its_bandwidth(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"piece_size": "256KiB"}, origin={"prefetch_bandwidth": "1MiB"})
    data = os.urandom(8 * PIECE)  # 2 MiB: two seconds at 1 MiB/s
    digest = registry.push_blob("test/paced", data)
    asked_at: list[float] = []

    async def note_when_asked(request: web.BaseRequest) -> None:
        if request.method == "GET" and digest in request.path:
            asked_at.append(time.monotonic())

    origin.faults.append(note_when_asked)
    send(
        agent.proxy_port,
        blob_url(origin, "test/paced", digest),
        {"Range": "bytes=0-0", "X-Dragonfly-Prefetch": "true"},
    )
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "background completion", timeout=20)
    # The read fetched piece 0; completion fetches the other seven a piece (a quarter of a
    # second's budget) at a time, each only once the budget of those before it is spent.
    completion = asked_at[1:]
    assert len(completion) == 7
    for earlier, at in enumerate(completion):
        assert at - completion[0] >= 0.25 * earlier - 0.05, [t - asked_at[0] for t in asked_at]


def test_eviction_skips_a_blob_being_read(agent_factory, origin, registry: Registry):
    agent = agent_factory(storage={"piece_size": "256KiB", "quota": "1MiB"})
    slow_data = os.urandom(4 * PIECE)
    slow = registry.push_blob("test/pinned", slow_data)
    others = [os.urandom(3 * PIECE) for _ in range(2)]
    other_digests = [registry.push_blob("test/pinned", data) for data in others]
    release = threading.Event()

    async def hold_last_piece(request: web.BaseRequest):
        if slow in request.path and request.headers.get("Range", "").startswith(
            f"bytes={3 * PIECE}"
        ):
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 20)

    origin.faults.append(hold_last_piece)
    first_three = send(
        agent.proxy_port,
        blob_url(origin, "test/pinned", slow),
        {"Range": f"bytes=0-{3 * PIECE - 1}"},
    )
    assert first_three.body == slow_data[: 3 * PIECE]
    replies = []
    reader = threading.Thread(
        target=lambda: replies.append(send(agent.proxy_port, blob_url(origin, "test/pinned", slow)))
    )
    reader.start()
    wait_for(lambda: len([p for p in stored_pieces(agent) if p[0] == slow[7:]]) == 3, "3 pieces")
    for digest, data in zip(other_digests, others, strict=True):  # push the cache over quota
        assert send(agent.proxy_port, blob_url(origin, "test/pinned", digest)).body == data
    wait_for(lambda: metric(agent, 'dfagent_evicted_blobs_total{reason="quota"}') >= 1, "eviction")
    assert slow[7:] in {d for d, _, _ in stored_pieces(agent)}, "the blob being read stayed"
    release.set()
    reader.join(20)
    assert replies[0].body == slow_data
