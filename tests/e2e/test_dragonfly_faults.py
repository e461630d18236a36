"""dfagent in Dragonfly mode against real Dragonfly parts (scheduler v2.5.1, dfdaemon/dfget
1.5.10) that race, lie or die: a mixed cluster reading one blob at once, a parent serving
wrong bytes, a parent and a scheduler killed mid-download, a scheduler never there, and
dfagent as the cluster's seed peer. Every client's bytes are compared with the source."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import dragonfly
from tests.support.agent import AgentProcess
from tests.support.client import Reply, send
from tests.support.counting import CountingOrigin
from tests.support.dragonfly_mode import (
    REMOTE,
    SOURCE,
    blob_bytes,
    member,
    origin_readers,
    push,
)
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dragonfly.available() is not None, reason=str(dragonfly.available())),
]

MiB = 1024 * 1024
# dfdaemon's upload limit where a download must still be under way when something is killed:
# 64 MiB then take about 4 s to leave the parent.
SLOW_UPLOAD = {"upload": {"bandwidthLimit": "16MiB"}}
NO_SCHEDULER = "dragonfly: no scheduler answers; reads go to the origin"


def at_once(readers: dict[str, Callable[[], bytes]]) -> dict[str, bytes]:
    """Run every reader in a thread of its own, all released together; what each read."""
    start = threading.Barrier(len(readers))
    results: dict[str, bytes] = {}
    errors: dict[str, BaseException] = {}

    def run(name: str, read: Callable[[], bytes]) -> None:
        start.wait()
        try:
            results[name] = read()
        except BaseException as exc:  # reported by the caller, with the reader's name
            errors[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in readers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert results.keys() == readers.keys(), "a reader did not finish in 180 s"
    return results


def whole_read(agent: AgentProcess, url: str) -> Callable[[], bytes]:
    """A reader of the whole blob at `url` through `agent`."""

    def read() -> bytes:
        reply = send(agent.proxy_port, url)
        assert reply.status == 200
        return reply.body

    return read


def read_once_from_the_origin(
    readers: dict[str, Callable[[], bytes]],
    agents: list[AgentProcess],
    cluster: dragonfly.Cluster,
    origin: CountingOrigin,
    data: bytes,
    digest: str,
) -> None:
    """Run `readers` at once: each reads exactly `data`, the origin gives the blob once, and
    every dfagent of `agents` reports all its pieces as a peer's."""
    for name, output in at_once(readers).items():
        assert output == data, f"{name} read other bytes"
    # every dfdaemon (the seed too) probes the length with a 1-byte GET, left out here
    fetched = blob_bytes(origin, digest, len(data))
    assert fetched == len(data), (origin_readers(origin, digest), cluster.logs())
    for agent in agents:
        wait_for(lambda a=agent: metric(a, REMOTE) == len(data), "pieces reported", 20)


def in_background(read: Callable[[], Reply]) -> tuple[threading.Thread, list[Reply]]:
    """Start `read` in a thread; its reply lands in the list."""
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(read()))
    thread.start()
    return thread, replies


def readiness(agent: AgentProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{agent.health_url}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_mixed_cluster_reading_one_blob_at_once_takes_it_from_the_origin_once(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: a seed dfdaemon, two dfdaemons (dfget) and two dfagents (a whole GET each)
    reading one blob at the same moment each get its exact bytes, and the origin gives the
    blob's bytes once: the scheduler sends the seed to the origin and every other peer to
    the seed (or to a peer that has the pieces), dfagents included."""
    data, digest, url = push(registry, origin, "dragonfly/mixed", 24 * MiB)
    with dragonfly.cluster(tmp_path / "df", daemons=2, seed=True) as cluster:
        # dfget names a task by its URL; so do these members
        agents = [member(agent_factory, cluster, f"agent-{n}", task_id="url") for n in "ab"]

        def dfget(daemon: dragonfly.Daemon) -> Callable[[], bytes]:
            def read() -> bytes:
                out = tmp_path / f"out-{daemon.name}"
                daemon.dfget(url, out)
                return out.read_bytes()

            return read

        readers = {daemon.name: dfget(daemon) for daemon in cluster.daemons}
        readers.update({agent.root.name: whole_read(agent, url) for agent in agents})
        read_once_from_the_origin(readers, agents, cluster, origin, data, digest)


def test_members_wait_for_a_seed_slow_to_start_rather_than_go_to_the_origin(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: a whole read waits for the scheduler's answer, not only
    dragonfly.schedule_timeout (1 s here). The origin answers the seed's probe of the blob's
    length 1.5 s late, so the seed, sent to the origin by the first registration, registers
    late too, and the scheduler (trying again every second, five times) names it to the
    members only then: the two dfagents reading the blob whole at once take it from the
    seed, and the origin gives it once. (Under load a seed is slow like this on its own.)"""
    data, digest, url = push(registry, origin, "dragonfly/cold", 12 * MiB)

    async def slow_to_start(request) -> None:
        probe = request.headers.get("Range") == "bytes=0-0"
        if request.method == "GET" and request.path.endswith(digest) and probe:
            await asyncio.sleep(1.5)

    origin.faults.append(slow_to_start)
    with dragonfly.cluster(tmp_path / "df", daemons=0, seed=True) as cluster:
        agents = [
            member(agent_factory, cluster, f"agent-{n}", task_id="url", schedule_timeout="1s")
            for n in "ab"
        ]
        readers = {agent.root.name: whole_read(agent, url) for agent in agents}
        read_once_from_the_origin(readers, agents, cluster, origin, data, digest)


def test_a_parent_serving_wrong_bytes_never_reaches_a_client(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: bytes a parent sends that only the blob's digest could prove serve no
    client when they do not match it. dfagent A fetched the blob from the origin, then one
    byte of its cached copy went bad; A still offers it (Dragonfly's crc32 is computed from
    A's disk, so it matches). dfagent B fills the blob from A, the whole-blob check fails,
    the staged pieces are dropped and B's client gets the origin's bytes, which B keeps;
    B never reports A's pieces as where its bytes came from."""
    data, digest, url = push(registry, origin, "dragonfly/liar", 12 * MiB)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        liar = member(agent_factory, cluster, "agent-liar", task_id="url")
        assert send(liar.proxy_port, url).body == data
        wait_for(lambda: metric(liar, SOURCE) == len(data), "every piece reported", 20)
        liar.flip_stored_bit(digest, 5 * MiB + 17)

        reader = member(agent_factory, cluster, "agent-reader", task_id="url")
        before = blob_bytes(origin, digest, len(data))
        reply = send(reader.proxy_port, url)
        assert reply.status == 200
        assert reply.body == data
        assert metric(liar, "dfagent_dragonfly_upload_bytes_total") == len(data)  # it lied
        assert metric(reader, "dfagent_blob_verify_failures_total") == 1
        # all three Dragonfly pieces (4 MiB) were filled from the liar and rejected together
        assert metric(reader, 'dfagent_dragonfly_bad_pieces_total{reason="proof"}') == 3
        assert blob_bytes(origin, digest, len(data)) - before == len(data)  # B's fallback
        # kept, verified and reported as the origin's; read again, from B's cache
        wait_for(lambda: metric(reader, SOURCE) == len(data), "every piece reported", 20)
        assert metric(reader, REMOTE) == 0
        assert send(reader.proxy_port, url).body == data
        assert blob_bytes(origin, digest, len(data)) - before == len(data)


def test_a_parent_killed_mid_download_leaves_the_reader_exact_bytes(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: a dfdaemon parent that dies (SIGKILL) while dfagent B fills a blob from it
    costs B's client nothing but time: B drops the parent and its client gets the exact
    bytes from the origin; what B staged from the dead parent is neither served nor
    credited to it."""
    data, digest, url = push(registry, origin, "dragonfly/parent-killed", 64 * MiB)
    with dragonfly.cluster(tmp_path / "df", daemons=1, daemon_config=SLOW_UPLOAD) as cluster:
        parent = cluster.daemons[0]
        parent.dfget(url, tmp_path / "out")
        reader = member(agent_factory, cluster, "agent-reader", task_id="url")
        thread, replies = in_background(lambda: send(reader.proxy_port, url))
        wait_for(lambda: parent.metric("dragonfly_client_upload_traffic") > 0, "an upload", 30)
        assert thread.is_alive(), "the read ended before the parent was killed"
        parent.kill()
        thread.join(120)
        assert replies, "the read did not finish in 120 s"
        assert replies[0].status == 200
        assert replies[0].body == data
        # dfget's copy, then B's: the blob whole, as the staged pieces are not served
        assert blob_bytes(origin, digest, len(data)) == 2 * len(data)
        wait_for(lambda: metric(reader, SOURCE) == len(data), "every piece reported", 20)
        assert metric(reader, REMOTE) == 0


def test_a_scheduler_killed_mid_download_is_named_by_readiness(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: the scheduler dying (SIGKILL) while dfagent B reads a blob from a dfdaemon
    parent leaves B's client the exact bytes (the parent still sends them: pieces move
    without the scheduler); B stays ready, and /readyz says no scheduler answers; the next
    new blob goes to the origin at once."""
    data, digest, url = push(registry, origin, "dragonfly/scheduler-killed", 64 * MiB)
    with dragonfly.cluster(tmp_path / "df", daemons=1, daemon_config=SLOW_UPLOAD) as cluster:
        parent = cluster.daemons[0]
        parent.dfget(url, tmp_path / "out")
        reader = member(agent_factory, cluster, "agent-reader", task_id="url")
        assert readiness(reader) == (200, "ready\n")
        thread, replies = in_background(lambda: send(reader.proxy_port, url))
        wait_for(lambda: parent.metric("dragonfly_client_upload_traffic") > 0, "an upload", 30)
        assert thread.is_alive(), "the read ended before the scheduler was killed"
        cluster.scheduler.process.kill()
        cluster.scheduler.process.wait()
        thread.join(120)
        assert replies, "the read did not finish in 120 s"
        assert replies[0].body == data
        assert blob_bytes(origin, digest, len(data)) == len(data)  # dfget's copy only
        # the broken stream shows when B reports the blob's pieces
        wait_for(lambda: NO_SCHEDULER in readiness(reader)[1], "readiness to say so", 20)
        assert readiness(reader) == (200, f"ready\n{NO_SCHEDULER}\n")

        fresh, fresh_digest, fresh_url = push(registry, origin, "dragonfly/after", 5 * MiB)
        started = time.monotonic()
        assert send(reader.proxy_port, fresh_url).body == fresh
        assert time.monotonic() - started < 5  # not waiting on the scheduler
        assert blob_bytes(origin, fresh_digest, len(fresh)) == len(fresh)


def test_a_scheduler_never_there_leaves_reads_to_the_origin(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: with no scheduler answering from the start (a closed port), dfagent starts
    ready, says why it reads from the origin, and serves exact bytes from the origin."""
    data, digest, url = push(registry, origin, "dragonfly/no-scheduler", 9 * MiB)
    agent = member(agent_factory, f"127.0.0.1:{free_port()}", "agent-alone")
    assert readiness(agent) == (200, f"ready\n{NO_SCHEDULER}\n")
    started = time.monotonic()
    reply = send(agent.proxy_port, url)
    assert reply.status == 200
    assert reply.body == data
    assert time.monotonic() - started < 5  # not waiting on the scheduler
    assert blob_bytes(origin, digest, len(data)) == len(data)
    assert readiness(agent) == (200, f"ready\n{NO_SCHEDULER}\n")


def test_dfagent_as_the_only_seed_fetches_first_for_a_dfdaemon(
    agent_factory, registry, origin, tmp_path: Path
):
    """Guarantee: a dfagent with `dragonfly.seed` is a seed peer the scheduler uses: for a
    blob no peer has, dfget through a dfdaemon makes the scheduler ask the dfagent
    (DownloadTask, after its health check), which fetches it from the origin under the task
    dfget named (by URL, though the dfagent names its own reads by digest); the dfdaemon's
    bytes are exact, all of them from the dfagent, and the origin gives the blob once."""
    data, digest, url = push(registry, origin, "dragonfly/dfagent-seed", 20 * MiB + 5)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        seed_up = time.monotonic()
        seed = member(agent_factory, cluster, "agent-seed", seed=True)
        dragonfly.wait_for_seed_refresh(cluster.scheduler, seed_up)
        daemon = cluster.daemons[0]
        out = tmp_path / "out"
        daemon.dfget(url, out)
        assert out.read_bytes() == data
        assert daemon.metric("dragonfly_client_download_traffic", type="REMOTE_PEER") == len(data)
        assert metric(seed, "dfagent_dragonfly_upload_bytes_total") == len(data)
        registered = 'dfagent_scheduler_calls_total{call="register_peer",result="back_to_source"}'
        assert metric(seed, registered) == 1  # its only download: the scheduler's request
        assert blob_bytes(origin, digest, len(data)) == len(data)
