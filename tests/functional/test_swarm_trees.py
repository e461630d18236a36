"""Real agents in a swarm large enough for stripe trees (dfagent.swarm.trees): most of the
listed members never run, so a reader's parent in a piece's tree often never asks for it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from dfagent.swarm.hashing import home_of
from dfagent.swarm.trees import FEWEST_MEMBERS
from tests.conftest import TOKEN
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric
from tests.support.ports import free_port

PIECE = 256 * 1024


def test_readers_whose_tree_parents_never_come_wait_then_read_the_exact_blob(
    tmp_path: Path, agent_factory, origin: CountingOrigin, registry
):
    """Three running agents among FEWEST_MEMBERS listed read one blob at once (its home is
    one of them): told to wait for parents that never ask, each takes its pieces from the
    origin or a peer after the wait, and every reader gets the exact blob, the origin sending
    it about once."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    running = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    members = running + [f"127.0.0.1:{free_port()}" for _ in range(FEWEST_MEMBERS - 3)]
    while True:  # a blob whose home runs
        data = os.urandom(16 * PIECE)
        if home_of(members, hashlib.sha256(data).hexdigest()) in running:
            break
    digest = registry.push_blob("test/trees", data)
    agents = [
        agent_factory(
            f"agent{i}",
            storage={"piece_size": "256KiB"},
            peer={"listen": me, "token_file": str(token_file), "connect_timeout": "2s"},
            swarm={"peers": members, "advertise": me, "refresh": "1s"},
        )
        for i, me in enumerate(running)
    ]
    url = f"{origin.url}/v2/test/trees/blobs/{digest}"
    bodies: dict[int, bytes] = {}

    def read(i: int) -> None:
        bodies[i] = send(agents[i].proxy_port, url).body

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(agents))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert bodies == dict.fromkeys(range(len(agents)), data)
    assert sum(metric(a, "dfagent_peer_waits_total") for a in agents) > 0
    late = 'dfagent_peer_fallbacks_total{reason="parent_late"}'
    assert sum(metric(a, late) for a in agents) > 0
    assert origin.blob_bytes(digest, len(data)) <= len(data) + PIECE  # a race may cost one
