"""dfagents in Dragonfly mode beside a real Dragonfly cluster: starting one, and counting what
the origin gave of a blob."""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.support import dragonfly
from tests.support.agent import AgentProcess
from tests.support.counting import CountingOrigin
from tests.support.registry import Registry

__all__ = ["REMOTE", "SOURCE", "blob_bytes", "member", "origin_readers", "push"]

REMOTE = 'dfagent_dragonfly_download_bytes_total{type="REMOTE_PEER"}'
SOURCE = 'dfagent_dragonfly_download_bytes_total{type="BACK_TO_SOURCE"}'


def member(
    agent_factory: Callable[..., AgentProcess],
    scheduler: dragonfly.Cluster | str,
    name: str,
    **dragonfly_config: object,
) -> AgentProcess:
    """A dfagent in Dragonfly mode on loopback, known to the scheduler (a cluster's, or one at
    an address) as host `name`."""
    address = scheduler if isinstance(scheduler, str) else scheduler.scheduler_address
    config = {
        "schedulers": [address],
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
    return origin.blob_bytes(digest, size) - probes(origin, digest)


def origin_readers(origin: CountingOrigin, digest: str) -> list[tuple[str | None, str | None]]:
    """Who asked the origin for the blob, and what part: (User-Agent, Range) of each GET, for a
    failing test's message."""
    return [(seen.user_agent, seen.range) for seen in origin.blob_gets(digest)]


def probes(origin: CountingOrigin, digest: str) -> int:
    """dfdaemon's one-byte `Range: bytes=0-0` GETs of the blob."""
    return sum(seen.range == "bytes=0-0" for seen in origin.blob_gets(digest))


def push(
    registry: Registry, origin: CountingOrigin, repo: str, size: int
) -> tuple[bytes, str, str]:
    """A new random blob of `size` bytes in the registry: its bytes, digest and URL through
    the origin."""
    data = os.urandom(size)
    digest = registry.push_blob(repo, data)
    return data, digest, f"{origin.url}/v2/{repo}/blobs/{digest}"
