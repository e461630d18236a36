"""A real peer server standing as a blob's home: its directory answers, no piece is stored
behind it. For tests that talk to a home the way agents do."""

from __future__ import annotations

from dfagent.configtypes import ListenAddress
from dfagent.core.digest import Digest
from dfagent.metrics import Metrics
from dfagent.swarm.directory import Directory
from dfagent.swarm.server import PeerServer


class NoStore:
    """A store that holds nothing (a home's requests never reach stored pieces)."""

    def loaded(self, digest_hex: str) -> None:
        return None

    async def open_blob(self, digest: Digest) -> None:
        return None


async def started_home(token: str, directory: Directory) -> PeerServer:
    """A peer server on a free loopback port, answering for `directory`; stop it when done."""
    server = PeerServer(
        ListenAddress("127.0.0.1", 0),
        token,
        NoStore(),  # type: ignore[arg-type]
        directory,
        Metrics(),
        max_uploads=4,
        slot_wait=0.05,
        upload_bandwidth=None,
    )
    await server.start()
    return server
