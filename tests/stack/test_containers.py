"""Containers started by containerd and nydus-snapshotter from a nydus image, lazily, with
dfagent as nydusd's proxy or as the snapshotter's mirror. Every scenario compares a file read
inside the container with the bytes the image was built from, and checks where the blob bytes
came from: the counting origin in front of the registry and dfagent's metrics."""

from __future__ import annotations

import json
import time

import pytest

from tests.stack.conftest import StackImage
from tests.support.agent import AgentProcess
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, metrics
from tests.support.ports import free_port
from tests.support.stack import (
    Node,
    mirrors_dir,
    nydusd_base_config,
    nydusd_proxy_config,
    pull_hosts_dir,
    stack_missing,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(stack_missing() is not None, reason=stack_missing() or ""),
]

BLOB_REQUESTS = 'dfagent_proxy_requests_total{kind="blob",status="2xx"}'


def proxy_node(node_factory, name: str, agent: AgentProcess) -> Node:
    config = nydusd_proxy_config(agent.proxy_url, f"{agent.health_url}/healthy")
    return node_factory(name, nydusd_config=config)


def cat(node: Node, image: StackImage, origin: CountingOrigin, path: str) -> None:
    """Run the image on `node` (pulled through the counting origin) to copy `path` out, and
    compare the copy with the file the image was built from."""
    copied = node.copy_out(image.nydus.reference(origin.host), path)
    assert copied == image.files[path], f"{path} read inside the container differs"


def blob_bytes(origin: CountingOrigin, image: StackImage) -> int:
    return origin.blob_bytes(image.nydus.blob_digest, image.nydus.blob_size)


def test_proxy_mode_starts_lazily_through_dfagent(agent, origin, stack_image, node_factory):
    node = proxy_node(node_factory, "node", agent)
    cat(node, stack_image, origin, "/data/greeting")
    fetched = blob_bytes(origin, stack_image)
    assert metric(agent, BLOB_REQUESTS) > 0, "nydusd read the blob through dfagent"
    assert fetched == metric(agent, "dfagent_origin_bytes_total"), "only dfagent went to it"
    assert 0 < fetched < stack_image.nydus.blob_size / 2, (
        f"lazy: {fetched} of {stack_image.nydus.blob_size} blob bytes"
    )


def test_containerd_pulling_through_dfagent_gets_every_chunk_nydusd_reads_proven(
    agent_factory, origin, stack_image, node_factory, tmp_path
):
    """containerd pulls the image (manifest, config, the bootstrap layer) through dfagent as
    its mirror, nydusd reads through it as its proxy: the data blob is cut along its chunks
    and every chunk nydusd reads is proven against the image's digests."""
    agent = agent_factory(proxy={"rules": [{"regex": ".*", "use_tls": False}]})
    hosts = pull_hosts_dir(tmp_path / "hosts", origin.host, agent.proxy_url)
    config = nydusd_proxy_config(agent.proxy_url, f"{agent.health_url}/healthy")
    node = node_factory("node", nydusd_config=config, pull_hosts=hosts)
    cat(node, stack_image, origin, "/data/greeting")
    assert metric(agent, 'dfagent_chunk_maps_total{how="bootstrap"}') == 1
    assert metric(agent, 'dfagent_chunks_verified_total{algorithm="blake3"}') > 0
    failures = {k: v for k, v in metrics(agent).items() if "chunk_verify_failures" in k}
    assert not any(failures.values()), failures
    status = json.loads(agent.cli("status", "--json").stdout)
    entries = {b["digest"]: b for b in status["largest"]}
    assert entries[stack_image.nydus.blob_digest]["chunk_mapped"], "cut along its chunks"
    fetched = blob_bytes(origin, stack_image)
    assert 0 < fetched < stack_image.nydus.blob_size / 2, (
        f"lazy: {fetched} of {stack_image.nydus.blob_size} blob bytes"
    )


def test_warm_node_takes_no_blob_bytes_from_the_registry(agent, origin, stack_image, node_factory):
    """nydusd's cache is gone (a new node), dfagent's is kept."""
    first = proxy_node(node_factory, "first", agent)
    cat(first, stack_image, origin, "/data/greeting")
    first.stop()
    fetched = blob_bytes(origin, stack_image)
    assert fetched > 0
    served_locally = metric(agent, 'dfagent_served_bytes_total{source="local"}')
    second = proxy_node(node_factory, "second", agent)
    cat(second, stack_image, origin, "/data/greeting")
    after = blob_bytes(origin, stack_image)
    assert after == fetched, "no blob bytes from the registry"
    assert metric(agent, 'dfagent_served_bytes_total{source="local"}') > served_locally


def test_mirror_mode_through_dfagent(agent_factory, origin, stack_image, node_factory, tmp_path):
    """The snapshotter makes dfagent nydusd's registry host; dfagent sends every blob to
    proxy.registry_mirror (the snapshotter passes no header naming the registry)."""
    agent = agent_factory(proxy={"registry_mirror": origin.url})
    mirrors = mirrors_dir(
        tmp_path / "certs.d", origin.host, agent.proxy_url, f"{agent.health_url}/healthy"
    )
    node = node_factory("node", nydusd_config=nydusd_base_config(), mirrors=mirrors)
    cat(node, stack_image, origin, "/data/greeting")
    assert metric(agent, BLOB_REQUESTS) > 0, "nydusd read the blob through dfagent"
    fetched = blob_bytes(origin, stack_image)
    assert fetched == metric(agent, "dfagent_origin_bytes_total") > 0, "only dfagent went to it"


def test_container_starts_while_dfagent_is_down_and_goes_through_it_again_after(
    tmp_path, origin, stack_image, node_factory
):
    ports = {"proxy": free_port(), "health": free_port()}
    agent = AgentProcess(
        tmp_path / "agent",
        {name: {"listen": f"127.0.0.1:{port}"} for name, port in ports.items()},
    ).start()
    try:
        node = proxy_node(node_factory, "node", agent)
        agent.stop()
        cat(node, stack_image, origin, "/data/one")  # nydusd falls back to the registry
        assert blob_bytes(origin, stack_image) > 0
        agent.start()
        time.sleep(1.5)  # past nydusd's proxy health check interval (1 s)
        cat(node, stack_image, origin, "/data/two")
        assert metric(agent, BLOB_REQUESTS) > 0, "back through dfagent"
    finally:
        agent.kill()


def test_preheated_image_starts_without_blob_bytes_from_the_registry(
    agent, origin, stack_image, node_factory
):
    preheat = agent.cli("preheat", "--plain-http", stack_image.nydus.reference(origin.host))
    assert preheat.returncode == 0, preheat.stderr
    before = blob_bytes(origin, stack_image)
    assert before == stack_image.nydus.blob_size, "preheat fetched the whole blob"
    node = proxy_node(node_factory, "node", agent)
    cat(node, stack_image, origin, "/data/two")
    after = blob_bytes(origin, stack_image)
    assert after == before, "no blob bytes at start"
    assert metric(agent, BLOB_REQUESTS) > 0


def test_second_node_of_the_swarm_takes_no_blob_bytes_from_the_registry(
    swarm, origin, stack_image, node_factory
):
    agents = swarm(2)
    first = proxy_node(node_factory, "first", agents[0])
    cat(first, stack_image, origin, "/data/one")
    fetched = blob_bytes(origin, stack_image)
    assert fetched > 0
    second = proxy_node(node_factory, "second", agents[1])
    cat(second, stack_image, origin, "/data/one")
    after = blob_bytes(origin, stack_image)
    assert after == fetched, "node 2 took nothing from the registry"
    assert metric(agents[1], 'dfagent_served_bytes_total{source="peer"}') > 0
