"""The Dragonfly cluster harness with the real programs: a standalone scheduler, dfdaemons and
dfget move a blob of the real registry from peer to peer, and the registry serves it once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dragonfly
from tests.support.counting import CountingOrigin
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

REPO = "e2e/dragonfly"
MIB = 1024 * 1024
SIZE = 20 * MIB  # five 4 MiB pieces
TRAFFIC = "dragonfly_client_download_traffic"  # bytes a daemon downloaded, by where from


def _pushed(registry: Registry, origin: CountingOrigin) -> tuple[bytes, str, str]:
    """A random blob in the registry: (its bytes, its digest, its URL through `origin`)."""
    blob = os.urandom(SIZE)
    digest = registry.push_blob(REPO, blob)
    return blob, digest, f"{origin.url}/v2/{REPO}/blobs/{digest}"


def _served_once(origin: CountingOrigin, digest: str) -> bool:
    """The origin's answers to the blob's GETs cover each byte exactly once, leaving aside the
    one-byte `Range: bytes=0-0` requests with which each dfdaemon learns the blob's length."""
    spans = []
    for seen in origin.blob_gets(digest):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", seen.range or "")
        assert match is not None, f"a GET without a closed range: {seen}"
        if seen.range != "bytes=0-0":
            spans.append((int(match.group(1)), int(match.group(2)) + 1))
    spans.sort()
    starts = [start for start, _ in spans]
    ends = [0] + [end for _, end in spans[:-1]]
    return starts == ends and spans[-1][1] == SIZE


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dragonfly.Cluster]:
    with dragonfly.cluster(tmp_path / "df", daemons=2) as running:
        yield running


def test_second_daemon_gets_the_blob_from_the_first(
    registry: Registry, origin: CountingOrigin, cluster: dragonfly.Cluster, tmp_path: Path
):
    blob, digest, url = _pushed(registry, origin)
    first, second = cluster.daemons

    first.dfget(url, tmp_path / "first")
    assert (tmp_path / "first").read_bytes() == blob
    assert first.metric(TRAFFIC, type="BACK_TO_SOURCE") == SIZE, cluster.logs()

    second.dfget(url, tmp_path / "second")
    assert (tmp_path / "second").read_bytes() == blob
    assert second.metric(TRAFFIC, type="REMOTE_PEER") == SIZE, cluster.logs()
    assert second.metric(TRAFFIC, type="BACK_TO_SOURCE") == 0, cluster.logs()
    assert first.metric("dragonfly_client_upload_traffic") == SIZE, cluster.logs()
    assert _served_once(origin, digest), origin.requests


def test_seed_peer_fetches_for_the_daemons(
    registry: Registry, origin: CountingOrigin, tmp_path: Path
):
    """With a seed peer known to the scheduler (after its first seed refresh), a daemon's
    download is fetched by the seed from the registry and reaches the daemon from the seed."""
    blob, digest, url = _pushed(registry, origin)
    with dragonfly.cluster(tmp_path / "df", daemons=1, seed=True) as cluster:
        assert cluster.seed is not None
        (daemon,) = cluster.daemons

        daemon.dfget(url, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == blob
        assert cluster.seed.metric(TRAFFIC, type="BACK_TO_SOURCE") == SIZE, cluster.logs()
        assert daemon.metric(TRAFFIC, type="REMOTE_PEER") == SIZE, cluster.logs()
        assert daemon.metric(TRAFFIC, type="BACK_TO_SOURCE") == 0, cluster.logs()
    assert _served_once(origin, digest), origin.requests
