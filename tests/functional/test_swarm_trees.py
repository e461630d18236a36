"""Real agents in a swarm large enough for stripe trees (dfagent.swarm.trees): most of the
listed members never run, so a reader's parent in a piece's tree often never asks for it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from dfagent.swarm.hashing import home_of
from dfagent.swarm.trees import FEWEST_MEMBERS, StripeTrees
from tests.conftest import TOKEN
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
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


def test_a_member_early_for_its_parent_is_held_there_until_the_piece_arrives(
    tmp_path: Path, agent_factory, origin: CountingOrigin, registry
):
    """Two running agents among FEWEST_MEMBERS listed, one the other's parent for piece 0 of a
    blob, one of them its home. The parent reads piece 1; the child, asking for piece 0 right
    after, is sent to the parent, whose peer server holds the request (the parent has not asked
    for piece 0); once the parent reads piece 0 the child gets it as it arrives there: the
    exact bytes, which the origin sent once."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    parent_at, child_at = (f"127.0.0.1:{free_port()}" for _ in range(2))
    members = [parent_at, child_at] + [
        f"127.0.0.1:{free_port()}" for _ in range(FEWEST_MEMBERS - 2)
    ]
    trees = StripeTrees()
    trees.set_members(members)
    salt = 0
    while True:  # a blob homed at a running agent, piece 0 passing from parent to child
        data = salt.to_bytes(8, "big") + os.urandom(4 * PIECE - 8)
        digest_hex = hashlib.sha256(data).hexdigest()
        if home_of(members, digest_hex) in (parent_at, child_at) and (
            trees.parent(digest_hex, 0, child_at) == parent_at
        ):
            break
        salt += 1
    digest = registry.push_blob("test/early", data)
    parent, child = (
        agent_factory(
            name,
            storage={"piece_size": "256KiB"},
            peer={"listen": me, "token_file": str(token_file), "connect_timeout": "2s"},
            swarm={"peers": members, "advertise": me, "refresh": "30s"},
        )
        for name, me in (("parent", parent_at), ("child", child_at))
    )
    url = f"{origin.url}/v2/test/early/blobs/{digest}"

    def piece(agent, index: int) -> bytes:
        last = (index + 1) * PIECE - 1
        return send(agent.proxy_port, url, {"Range": f"bytes={index * PIECE}-{last}"}).body

    assert piece(parent, 1) == data[PIECE : 2 * PIECE]  # the parent reads next to piece 0
    got: dict[str, bytes] = {}
    early = threading.Thread(target=lambda: got.setdefault("child", piece(child, 0)))
    early.start()
    waiting = "dfagent_peer_early_requests_waiting"
    wait_for(lambda: metric(parent, waiting) == 1, "the child's request held at its parent")
    assert piece(parent, 0) == data[:PIECE]
    early.join(30)
    assert got == {"child": data[:PIECE]}
    assert metric(parent, 'dfagent_peer_early_requests_total{outcome="arrived"}') == 1
    assert metric(child, "dfagent_origin_fetches_avoided_total") == 1
    assert origin.blob_bytes(digest, len(data)) == 2 * PIECE  # pieces 0 and 1, once each
