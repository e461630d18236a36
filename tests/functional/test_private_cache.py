"""The cache is private on disk: another user of the node reads no blob, no index and cannot
reach the control socket, whatever the umask, and a cache left readable is tightened at start.

The agent runs as root here; the other user is `nobody`, through `runuser`. Every check first
shows that `nobody` does read a world-readable file next to the cache, so a refusal is the
cache's permissions and not an unreachable path.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys

import pytest

from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import wait_for
from tests.support.registry import Registry


def _other_user() -> str | None:
    try:
        return pwd.getpwuid(65534).pw_name  # nobody
    except KeyError:
        return None


OTHER_USER = _other_user()
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or OTHER_USER is None,
    reason="needs root, runuser and the user nobody to act as another user",
)

_UMASK_0 = ["sh", "-c", 'umask 000 && exec "$0" "$@"']  # the agent under the loosest umask
_CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def as_nobody(*command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", str(OTHER_USER), "--", *command],
        capture_output=True,
        timeout=30,
    )


def assert_private(agent: AgentProcess, blob_hex: str) -> None:
    """`nobody` reads a readable file beside the cache, but nothing in the cache; every mode in
    it is owner-only."""
    beside = agent.root / "readable"
    beside.write_bytes(b"anyone may read this")
    beside.chmod(0o644)
    agent.root.chmod(0o755)
    assert as_nobody("cat", str(beside)).stdout == b"anyone may read this", "the path is open"

    cache = agent.storage_dir
    blob = cache / "blobs" / blob_hex[:2] / blob_hex
    for target in (blob, cache / "index.sqlite", cache / "index.sqlite-wal"):
        read = as_nobody("cat", str(target))
        assert read.returncode != 0, f"nobody read {target}"
        assert read.stdout == b""
    assert as_nobody("ls", str(cache)).returncode != 0
    assert as_nobody(sys.executable, "-c", _CONNECT, str(cache / "dfagent.sock")).returncode != 0

    seen = []
    for path in (cache, *cache.rglob("*")):
        mode = os.lstat(path).st_mode
        seen.append(path.name)
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert stat.S_IMODE(mode) == expected, f"{path} is {oct(stat.S_IMODE(mode))}"
    assert {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "lock", "dfagent.sock"} <= set(
        seen
    )
    assert {"tmp", "blobs", blob_hex[:2], blob_hex} <= set(seen)


def cache_a_blob(
    agent: AgentProcess, origin: CountingOrigin, registry: Registry
) -> tuple[str, bytes]:
    """A verified blob in the agent's cache: its digest's hex and its bytes."""
    data = os.urandom(300_000)
    digest = registry.push_blob("test/private-disk", data)
    reply = send(agent.proxy_port, f"{origin.url}/v2/test/private-disk/blobs/{digest}")
    assert reply.body == data

    def verified() -> bool:
        status = agent.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        return json.loads(status.stdout)["verified_blobs"] == 1

    wait_for(verified, "the blob to be verified")
    return digest.removeprefix("sha256:"), data


def test_nobody_else_reads_the_cache_whatever_the_umask(
    open_dir, origin: CountingOrigin, registry: Registry
):
    agent = AgentProcess(open_dir / "agent", command_prefix=_UMASK_0).start()
    try:
        blob_hex, _ = cache_a_blob(agent, origin, registry)
        assert_private(agent, blob_hex)
        assert "made it owner-only" not in agent.log(), "a new cache is private from the start"
    finally:
        agent.kill()


def test_a_cache_readable_by_others_is_tightened_at_start(
    open_dir, origin: CountingOrigin, registry: Registry
):
    agent = AgentProcess(open_dir / "agent").start()
    try:
        blob_hex, data = cache_a_blob(agent, origin, registry)
    finally:
        assert agent.stop() == 0
    cache = agent.storage_dir
    for path in (cache, *cache.rglob("*")):  # as an older agent under umask 022 left it
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert as_nobody("cat", str(cache / "blobs" / blob_hex[:2] / blob_hex)).returncode == 0

    agent.start()
    try:
        lines = [line for line in agent.log().splitlines() if "made it owner-only" in line]
        assert len(lines) == 1, lines
        assert "level=warning" in lines[0]
        assert "index.sqlite" in lines[0]
        digest = f"sha256:{blob_hex}"
        reply = send(agent.proxy_port, f"{origin.url}/v2/test/private-disk/blobs/{digest}")
        assert reply.status == 200
        assert reply.body == data
        assert_private(agent, blob_hex)
    finally:
        agent.kill()
