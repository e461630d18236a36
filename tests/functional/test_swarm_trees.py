"""Real agents in a swarm large enough for stripe trees (dfagent.swarm.trees): most of the
listed members never run, so a reader's parent in a piece's tree often never asks for it."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dfagent.swarm.hashing import home_of
from dfagent.swarm.trees import FAN_OUT, FEWEST_MEMBERS, StripeTrees
from tests.conftest import TOKEN
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port
from tests.support.tree_parents import FakeParents

PIECE = 256 * 1024
TREE_PIECES = 16  # a blob filled from tree parents, when read whole (4 pieces a stripe)


@pytest.fixture
def fake_parents() -> Iterator[FakeParents]:
    parents = FakeParents(PIECE)
    yield parents
    parents.stop()


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
    failed = 'dfagent_tree_fills_total{outcome="not_filled"}'
    assert sum(metric(a, failed) for a in agents) == len(agents)  # parents not running
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


class _TwoReaders:
    """Two agents among FEWEST_MEMBERS listed, every other member a FakeParents server, and a
    blob whose every piece both take from a tree parent: the first agent is the second's
    parent in one stripe (`shared`), fake servers are their parents in every other."""

    def __init__(self, tmp_path: Path, agent_factory, origin, registry, fakes: FakeParents):
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        first_at, second_at = (f"127.0.0.1:{free_port()}" for _ in range(2))
        members = [first_at, second_at, *fakes.start(FEWEST_MEMBERS - 2)]

        def wanted(trees: StripeTrees, digest_hex: str) -> bool:
            first, second = (_parents(trees, digest_hex, m) for m in (first_at, second_at))
            agents = (first_at, second_at)
            return (
                None not in first + second
                and not set(first) & set(agents)
                and [p in agents for p in second].count(True) == 1
                and first_at in second
            )

        fakes.data = self.data = _blob_where(members, wanted)
        self.digest = registry.push_blob("test/tree-fill", self.data)
        digest_hex = self.digest.removeprefix("sha256:")
        trees = StripeTrees()
        trees.set_members(members)
        self.shared = _parents(trees, digest_hex, second_at).index(first_at)
        self.agents = [
            _tree_agent(agent_factory, name, me, members, token_file)
            for name, me in (("first", first_at), ("second", second_at))
        ]
        self._url = f"{origin.url}/v2/test/tree-fill/blobs/{self.digest}"
        self.bodies: dict[int, bytes] = {}
        self._readers: list[threading.Thread] = []

    def read(self, i: int) -> None:
        """Agent `i` reads the whole blob, in a thread of its own."""

        def whole() -> None:
            self.bodies[i] = send(self.agents[i].proxy_port, self._url).body

        self._readers.append(threading.Thread(target=whole))
        self._readers[-1].start()

    def join(self) -> None:
        for reader in self._readers:
            reader.join(60)

    def both_served_exact_bytes_filled_from_tree_parents(self) -> None:
        self.join()
        assert self.bodies == {0: self.data, 1: self.data}
        for agent in self.agents:
            assert metric(agent, 'dfagent_tree_fills_total{outcome="verified"}') == 1
            assert metric(agent, "dfagent_tree_fill_pieces_total") == TREE_PIECES
        assert metric(self.agents[0], "dfagent_uploaded_bytes_total") == TREE_PIECES // 4 * PIECE


def test_a_member_reading_a_blob_alone_is_refused_by_its_parent_at_once_and_reads_it_usually(
    tmp_path: Path, agent_factory, origin: CountingOrigin, registry, fake_parents: FakeParents
):
    """The second agent reads the blob whole alone: the first, its parent in one stripe, does
    not read it and refuses the request after a moment (UNSEEN_PARENT_WAIT), before the fake
    parents send anything; the read goes the usual way (from the origin, once) and serves the
    exact blob."""
    readers = _TwoReaders(tmp_path, agent_factory, origin, registry, fake_parents)
    fake_parents.delay = 1.0
    readers.read(1)
    readers.join()
    assert readers.bodies == {1: readers.data}
    second = readers.agents[1]
    assert metric(second, 'dfagent_tree_fills_total{outcome="not_filled"}') == 1
    assert metric(second, "dfagent_tree_fill_pieces_total") == 0
    not_arrived = 'dfagent_peer_early_requests_total{outcome="not_arrived"}'
    assert metric(readers.agents[0], not_arrived) == 1
    assert origin.blob_bytes(readers.digest, len(readers.data)) == len(readers.data)


def test_a_tree_parent_passes_on_pieces_it_holds_staged(
    tmp_path: Path, agent_factory, origin: CountingOrigin, registry, fake_parents: FakeParents
):
    """The first agent has every piece of the blob staged but one, which its parent sends
    late (so the blob is not proven yet); the second, reading it whole meanwhile, takes the
    staged pieces of the stripe where the first is its parent. Both serve the exact blob,
    proven whole, and the origin sends none of it."""
    readers = _TwoReaders(tmp_path, agent_factory, origin, registry, fake_parents)
    late = max(i for i in range(TREE_PIECES) if i % FAN_OUT != readers.shared)  # (a last)
    fake_parents.delays = {late: 1.5}  # (within the agents' peer.read_timeout)
    readers.read(0)
    staged = "dfagent_tree_fill_pieces_total"
    wait_for(lambda: metric(readers.agents[0], staged) == TREE_PIECES - 1, "all staged but one")
    readers.read(1)
    readers.both_served_exact_bytes_filled_from_tree_parents()
    assert origin.blob_bytes(readers.digest, len(readers.data)) == 0


def test_a_blob_whose_tree_parents_lie_is_read_again_piece_by_piece_and_served_exact(
    tmp_path: Path, agent_factory, origin: CountingOrigin, registry, fake_parents: FakeParents
):
    """An agent among FEWEST_MEMBERS listed, every other member a server that sends pieces,
    one of them wrong: the blob filled from them fails its digest, its staged pieces are
    dropped, and the reader gets the exact blob from the origin (the homes, stand-ins too,
    answer nothing)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    me = f"127.0.0.1:{free_port()}"
    members = [me, *fake_parents.start(FEWEST_MEMBERS - 1)]
    data = _blob_where(members, lambda trees, d: None not in _parents(trees, d, me))
    fake_parents.data = data
    fake_parents.lies = {5: os.urandom(PIECE)}
    digest = registry.push_blob("test/tree-lies", data)
    agent = _tree_agent(agent_factory, "reader", me, members, token_file)
    url = f"{origin.url}/v2/test/tree-lies/blobs/{digest}"
    assert send(agent.proxy_port, url).body == data
    assert metric(agent, 'dfagent_tree_fills_total{outcome="not_proven"}') == 1
    assert metric(agent, "dfagent_tree_fill_pieces_total") == TREE_PIECES
    assert metric(agent, "dfagent_blob_verify_failures_total") == 1
    assert origin.blob_bytes(digest, len(data)) == len(data)  # every staged piece again


def _blob_where(members: list[str], wanted: Callable[[StripeTrees, str], bool]) -> bytes:
    """Random bytes of TREE_PIECES pieces whose digest's trees over `members` are `wanted`."""
    trees = StripeTrees()
    trees.set_members(members)
    body = os.urandom(TREE_PIECES * PIECE - 8)
    prefix = hashlib.sha256(body)
    for salt in itertools.count():
        tail = salt.to_bytes(8, "big")
        digest = prefix.copy()
        digest.update(tail)
        if wanted(trees, digest.hexdigest()):
            return body + tail
    raise AssertionError("unreachable")


def _parents(trees: StripeTrees, digest_hex: str, member: str) -> list[str | None]:
    return [trees.parent(digest_hex, stripe, member) for stripe in range(FAN_OUT)]


def _tree_agent(agent_factory, name: str, me: str, members: list[str], token_file: Path):
    return agent_factory(
        name,
        storage={"piece_size": "256KiB"},
        peer={"listen": me, "token_file": str(token_file), "connect_timeout": "2s"},
        swarm={"peers": members, "advertise": me, "refresh": "30s"},
    )
