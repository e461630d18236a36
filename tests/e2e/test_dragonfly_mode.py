"""dfagent as a member of a real Dragonfly cluster (scheduler v2.5.1, dfdaemon/dfget 1.5.10):
pieces move both ways between dfagent and dfdaemons, the origin gives each blob once, and a
parent's bytes reach a client only once dfagent's own proofs hold."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from tests.support import dragonfly
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.registry import Registry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dragonfly.available() is not None, reason=str(dragonfly.available())),
]

MiB = 1024 * 1024
REMOTE = 'dfagent_dragonfly_download_bytes_total{type="REMOTE_PEER"}'
SOURCE = 'dfagent_dragonfly_download_bytes_total{type="BACK_TO_SOURCE"}'


def member(
    agent_factory, cluster: dragonfly.Cluster, name: str, **dragonfly_config
) -> AgentProcess:
    """A dfagent in Dragonfly mode on loopback, known to the scheduler as host `name`."""
    config = {
        "schedulers": [cluster.scheduler_address],
        "ip": "127.0.0.1",
        "hostname": name,
        "upload": "127.0.0.1:0",
        "vortex": "127.0.0.1:0",
        **dragonfly_config,
    }
    return agent_factory(name, swarm={"mode": "dragonfly"}, dragonfly=config)


def blob_bytes(origin: CountingOrigin, digest: str, size: int) -> int:
    """Blob bytes the origin gave, leaving out dfdaemon's one-byte probes for the length
    (`Range: bytes=0-0` before each download)."""
    probes = sum(seen.range == "bytes=0-0" for seen in origin.blob_gets(digest))
    return origin.blob_bytes(digest, size) - probes


def push(
    registry: Registry, origin: CountingOrigin, repo: str, size: int
) -> tuple[bytes, str, str]:
    data = os.urandom(size)
    digest = registry.push_blob(repo, data)
    return data, digest, f"{origin.url}/v2/{repo}/blobs/{digest}"


def test_a_blob_dfget_fetched_comes_to_dfagent_from_the_dfdaemon(
    agent_factory, registry, origin, tmp_path: Path
):
    data, digest, url = push(registry, origin, "dragonfly/dfget-first", 9 * MiB + 123)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        out = tmp_path / "out"
        cluster.daemons[0].dfget(url, out)
        assert out.read_bytes() == data
        from_origin = blob_bytes(origin, digest, len(data))
        # dfget names a task by its URL; so does this member
        agent = member(agent_factory, cluster, "agent-a", task_id="url")
        reply = send(agent.proxy_port, url)
        assert reply.status == 200
        assert reply.body == data
        assert blob_bytes(origin, digest, len(data)) == from_origin  # no blob byte again
        # reported to the scheduler as the dfdaemon's pieces once the blob proved whole
        wait_for(lambda: metric(agent, REMOTE) == len(data), "every piece reported", 20)
        assert cluster.daemons[0].metric("dragonfly_client_upload_traffic") >= len(data)


def test_a_blob_dfagent_fetched_goes_to_a_dfdaemon_from_dfagent(
    agent_factory, registry, origin, tmp_path: Path
):
    data, digest, url = push(registry, origin, "dragonfly/dfagent-first", 6 * MiB + 7)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        agent = member(agent_factory, cluster, "agent-a", task_id="url")
        assert send(agent.proxy_port, url).body == data
        wait_for(lambda: metric(agent, SOURCE) == len(data), "every piece reported", 20)
        assert blob_bytes(origin, digest, len(data)) == len(data)
        out = tmp_path / "out"
        cluster.daemons[0].dfget(url, out)
        assert out.read_bytes() == data
        assert blob_bytes(origin, digest, len(data)) == len(data)  # the dfdaemon asked dfagent
        daemon = cluster.daemons[0]
        assert daemon.metric("dragonfly_client_download_traffic", type="REMOTE_PEER") == len(data)
        assert metric(agent, "dfagent_dragonfly_upload_bytes_total") == len(data)


def test_dfdaemons_proxy_and_dfagent_share_a_blob_by_its_digest(
    agent_factory, registry, origin, tmp_path: Path
):
    """dfdaemon's proxy names a registry blob by its digest; so does dfagent by default."""
    data, digest, url = push(registry, origin, "dragonfly/by-digest", 5 * MiB)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        daemon = cluster.daemons[0]
        proxy = urllib.request.ProxyHandler({"http": daemon.proxy_url})
        with urllib.request.build_opener(proxy).open(url, timeout=60) as response:
            assert response.read() == data
        from_origin = blob_bytes(origin, digest, len(data))
        agent = member(agent_factory, cluster, "agent-a")
        assert send(agent.proxy_port, url).body == data
        assert blob_bytes(origin, digest, len(data)) == from_origin
        wait_for(lambda: metric(agent, REMOTE) == len(data), "every piece reported", 20)
