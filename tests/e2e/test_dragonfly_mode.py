"""dfagent as a member of a real Dragonfly cluster (scheduler v2.5.1, dfdaemon/dfget 1.5.10):
pieces move both ways between dfagent and dfdaemons, the origin gives each blob once, and a
parent's bytes reach a client only once dfagent's own proofs hold."""

from __future__ import annotations

import random
import urllib.request
from pathlib import Path

import pytest

from tests.support import dragonfly
from tests.support.client import send
from tests.support.dragonfly_mode import REMOTE, SOURCE, blob_bytes, member, push
from tests.support.metrics import metric, metrics, wait_for
from tests.support.nydus import make_tree
from tests.support.nydus_registry import NydusImage, maps_learned, pull_bootstrap, push_nydus_image
from tests.support.registry import Registry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dragonfly.available() is not None, reason=str(dragonfly.available())),
]

MiB = 1024 * 1024
VERIFIED = "dfagent_chunks_verified_total"


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


@pytest.fixture(scope="module")
def nydus_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> NydusImage:
    tree = make_tree(tmp_path_factory.mktemp("dragonfly-nydus") / "src", seed=16, bulk=8)
    return push_nydus_image(registry, "dragonfly/nydus", tree, tmp_path_factory.mktemp("image"))


def test_nydus_chunks_from_a_dfdaemon_are_proven_before_a_lazy_reader_gets_them(
    agent_factory, origin, nydus_image: NydusImage, tmp_path: Path
):
    """A lazy reader's ranges of a nydus data blob come from a dfdaemon that holds it, each
    chunk proven against the image's digests, and the origin gives no byte of the data blob."""
    image = nydus_image
    url = image.blob_url(origin.url)
    with dragonfly.cluster(tmp_path / "df", daemons=1) as cluster:
        proxy = urllib.request.ProxyHandler({"http": cluster.daemons[0].proxy_url})
        with urllib.request.build_opener(proxy).open(url, timeout=60) as response:
            assert response.read() == image.blob
        from_origin = blob_bytes(origin, image.blob_digest, len(image.blob))
        agent = member(agent_factory, cluster, "agent-a")
        pull_bootstrap(agent, origin.url, image)  # as a node's containerd pulls it
        wait_for(lambda: maps_learned(agent) >= 1, "the chunk map learned from the bootstrap")
        rng = random.Random(5)
        chunks = rng.sample(image.chunks, min(12, len(image.chunks)))
        for chunk in chunks:
            start, end = chunk.compressed_offset, chunk.compressed_offset + chunk.compressed_size
            reply = send(agent.proxy_port, url, {"Range": f"bytes={start}-{end - 1}"})
            assert reply.status == 206
            assert reply.body == image.blob[start:end]
        gets = [seen.range for seen in origin.blob_gets(image.blob_digest)]
        assert blob_bytes(origin, image.blob_digest, len(image.blob)) == from_origin, gets
        assert metric(agent, 'dfagent_served_bytes_total{source="peer"}') > 0
        assert sum(v for k, v in metrics(agent).items() if k.startswith(VERIFIED)) >= len(chunks)
