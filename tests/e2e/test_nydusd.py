"""The real client: nydusd mounts a RAFS image over FUSE with its blobs read through dfagent,
and every file is compared byte for byte with the tree the image was built from."""

from __future__ import annotations

import errno
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.agent import AgentProcess
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric
from tests.support.nydus import (
    Image,
    Mount,
    build_image,
    compare_trees,
    make_tree,
    nydusd_config,
    nydusd_dragonfly_mirror,
)
from tests.support.ports import free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

REPO = "e2e/app"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "src")


def _pushed(registry: Registry, tree: Path, out: Path, fs_version: int) -> Image:
    image = build_image(tree, out, fs_version)
    for blob in image.blobs:
        assert registry.push_blob(REPO, blob.read_bytes()) == f"sha256:{blob.name}"
    return image


@pytest.fixture(scope="module")
def image(registry: Registry, tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return _pushed(registry, tree, tmp_path_factory.mktemp("rafs6"), 6)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Mount]]:
    opened: list[Mount] = []
    yield opened
    for mount in opened:
        mount.close()


def proxy_mount(
    root: Path, image: Image, origin: CountingOrigin, agent: AgentProcess, **changes
) -> Mount:
    config = nydusd_config(
        "proxy",
        host=origin.host,
        repo=REPO,
        proxy={
            "url": agent.proxy_url,
            "ping_url": f"{agent.health_url}/healthy",
            "check_interval": 1,
        },
        **changes,
    )
    return Mount(root, image.bootstrap, config)


def blob_requests(agent: AgentProcess) -> float:
    return metric(agent, 'dfagent_proxy_requests_total{kind="blob",status="2xx"}')


def test_proxy_mode_reads_the_whole_tree(agent, origin, image, tree, mounts, tmp_path):
    mounts.append(proxy_mount(tmp_path / "node", image, origin, agent))
    compare_trees(tree, mounts[0].mountpoint)
    assert blob_requests(agent) > 0, "nydusd's reads went through dfagent"
    assert origin.blob_gets(f"sha256:{image.blobs[0].name}")


def test_rafs_v5_with_digest_validation(agent, origin, registry, tree, mounts, tmp_path):
    """nydusd 2.2 validates chunk digests only for RAFS v5 images."""
    v5 = _pushed(registry, tree, tmp_path / "rafs5", 5)
    mounts.append(proxy_mount(tmp_path / "node", v5, origin, agent, digest_validate=True))
    compare_trees(tree, mounts[0].mountpoint)
    assert blob_requests(agent) > 0


def test_mirror_mode_with_dragonfly_registry_header(agent, origin, image, tree, mounts, tmp_path):
    ping = f"{agent.health_url}/healthy"
    config = nydusd_dragonfly_mirror(origin.host, REPO, agent.proxy_url, origin.url, ping)
    mounts.append(Mount(tmp_path / "node", image.bootstrap, config))
    compare_trees(tree, mounts[0].mountpoint)
    assert blob_requests(agent) > 0, "nydusd's reads went through dfagent as a mirror"


def test_second_node_reads_from_the_first(tmp_path, origin, image, tree, mounts):
    token = tmp_path / "token"
    token.write_text("e2e-cluster-token-0123456789")
    ports = [free_port(), free_port()]
    members = [f"127.0.0.1:{p}" for p in ports]
    agents = [
        AgentProcess(
            tmp_path / f"agent{i}",
            {
                "peer": {"listen": members[i], "token_file": str(token)},
                "swarm": {"peers": members, "advertise": members[i]},
            },
        ).start()
        for i in range(2)
    ]
    try:
        mounts.append(proxy_mount(tmp_path / "node1", image, origin, agents[0]))
        started = time.monotonic()
        compare_trees(tree, mounts[0].mountpoint)
        node1_seconds = time.monotonic() - started
        digest = f"sha256:{image.blobs[0].name}"
        fetched = len(origin.blob_gets(digest))
        mounts.append(proxy_mount(tmp_path / "node2", image, origin, agents[1]))
        started = time.monotonic()
        compare_trees(tree, mounts[1].mountpoint)
        node2_seconds = time.monotonic() - started
        assert len(origin.blob_gets(digest)) == fetched, "node 2 took nothing from the origin"
        assert metric(agents[1], 'dfagent_served_bytes_total{source="peer"}') > 0
        print(f"cold read: node 1 {node1_seconds:.3f}s, node 2 {node2_seconds:.3f}s")
    finally:
        for agent in agents:
            agent.kill()


def test_nydusd_falls_back_when_dfagent_dies_and_returns_after(tmp_path, origin, registry, mounts):
    tree = make_tree(tmp_path / "src", seed=2, bulk=40)  # big enough not to be read at once
    image = _pushed(registry, tree, tmp_path / "image", 6)
    proxy_port, health_port = free_port(), free_port()
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
            "health": {"listen": f"127.0.0.1:{health_port}"},
        },
    ).start()
    try:
        mounts.append(proxy_mount(tmp_path / "node", image, origin, agent))
        mnt = mounts[0].mountpoint
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait()
        # dfagent is gone: nydusd goes straight to the registry (fallback: true).
        assert (mnt / "bin" / "large-random").read_bytes() == (
            tree / "bin" / "large-random"
        ).read_bytes()
        agent.start()
        time.sleep(2.5)  # past nydusd's health check interval (1 s)
        compare_trees(tree, mnt)  # the rest is read through dfagent again
        assert blob_requests(agent) > 0
    finally:
        agent.kill()


class _Refusing:
    """A stand-in proxy that answers every request with one status: what the real agent
    answers when it throttles (429) or fails (5xx)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.seen = 0
        self.origin = CountingOrigin("http://unused")

    def start(self) -> _Refusing:
        async def refuse(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/healthy":
                return web.Response(text="ok\n")
            self.seen += 1
            return web.Response(status=self.status, headers={"X-Dragonfly-Error-Type": "proxy"})

        self.origin.faults.append(refuse)
        self.origin.start()
        return self

    @property
    def url(self) -> str:
        return self.origin.url


@pytest.mark.parametrize(("status", "reads"), [(500, True), (502, True), (429, False)])
def test_what_nydusd_2_2_does_with_proxy_errors(
    status, reads, origin, image, tree, mounts, tmp_path
):
    """nydusd 2.2 goes to the registry itself on 5xx; it fails the read on 429 (newer
    releases retry and limit their fallback; 2.2 does not know the throttling header)."""
    refusing = _Refusing(status).start()
    try:
        config = nydusd_config(
            "proxy",
            host=origin.host,
            repo=REPO,
            retry_limit=0,
            proxy={"url": refusing.url, "ping_url": f"{refusing.url}/healthy", "check_interval": 1},
        )
        mounts.append(Mount(tmp_path / "node", image.bootstrap, config))
        target = mounts[0].mountpoint / "bin" / "large-text"
        if reads:
            assert target.read_bytes() == (tree / "bin" / "large-text").read_bytes()
        else:
            with pytest.raises(OSError) as failed:
                target.read_bytes()
            assert failed.value.errno in (errno.EIO, errno.EINVAL)  # 2.2 reports EINVAL
        assert refusing.seen > 0
    finally:
        refusing.origin.stop()
