"""The real nydusd reads a whole tree through dfagent after the image's bootstrap layer went
through dfagent the way containerd pulls it: every byte exact, and every chunk nydusd read
proven against the image's own digest."""

from __future__ import annotations

import pytest

from tests.support.metrics import metric, metrics, wait_for
from tests.support.nydus import (
    Mount,
    compare_trees,
    make_tree,
    nydusd_config,
    nydusd_dragonfly_mirror,
)
from tests.support.nydus_registry import maps_learned, pull_bootstrap, push_nydus_image

pytestmark = pytest.mark.slow


def backend_config(mode: str, agent, origin, repo: str) -> dict:
    """nydusd reaching the registry through dfagent as its proxy, or as its mirror."""
    if mode == "proxy":
        proxy = {
            "url": agent.proxy_url,
            "ping_url": f"{agent.health_url}/healthy",
            "check_interval": 1,
        }
        return nydusd_config("proxy", host=origin.host, repo=repo, proxy=proxy)
    ping = f"{agent.health_url}/healthy"
    return nydusd_dragonfly_mirror(origin.host, repo, agent.proxy_url, origin.url, ping)


@pytest.mark.parametrize("mode", ["proxy", "mirror"])
def test_nydusd_reads_a_whole_tree_of_proven_chunks(agent, origin, registry, tmp_path, mode):
    tree = make_tree(tmp_path / "src", seed=9, bulk=4)
    image = push_nydus_image(registry, f"e2e/proofs-{mode}", tree, tmp_path / "image")
    pull_bootstrap(agent, origin.url, image)
    wait_for(lambda: maps_learned(agent) >= 1, "the chunk map learned from the bootstrap")
    config = backend_config(mode, agent, origin, image.repo)
    mount = Mount(tmp_path / "node", image.bootstrap, config)
    try:
        compare_trees(tree, mount.mountpoint)
    finally:
        mount.close()
    assert metric(agent, 'dfagent_proxy_requests_total{kind="blob",status="2xx"}') > 1
    assert origin.blob_gets(image.blob_digest), "nydusd's reads went through dfagent"
    proven = metric(agent, 'dfagent_chunks_verified_total{algorithm="blake3"}')
    assert proven >= len(image.chunks), f"{proven} of {len(image.chunks)} chunks proven"
    failed = {k: v for k, v in metrics(agent).items() if "chunk_verify_failures" in k}
    assert not any(failed.values()), failed
