from __future__ import annotations

import socket

import pytest

from dfagent.swarm.config import PeerConfig, SwarmConfig
from dfagent.swarm.directory import Answer, Directory
from dfagent.swarm.hashing import home_of, ranked
from dfagent.swarm.membership import Membership


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rendezvous_moves_only_the_leavers_share():
    members = [f"10.0.0.{i}:4000" for i in range(1, 9)]
    keys = [f"{i:064x}" for i in range(2000)]
    before = {k: home_of(members, k) for k in keys}
    gone = members[3]
    after = {k: home_of([m for m in members if m != gone], k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)
    assert 150 < len(moved) < 350  # about one eighth
    assert ranked(members, keys[0])[0] == before[keys[0]]


REGISTRY = "https://registry:443"
LIAR = "https://liar:443"


def test_directory_keeps_each_origins_word_apart_until_verified():
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    # A liar's copy, announced first, binds nobody else: not its sha256, not its size.
    assert (
        directory.announce("d", LIAR, 200, 10, holder="a:1", pieces={0: b"evil"}, verified=False)
        == []
    )
    assert directory.describe("d", REGISTRY) is None
    assert directory.describe("d", LIAR) == (200, 10)
    honest = directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0]
    assert (honest.holders, honest.fetch, honest.sha256) == ((), True, None)
    assert (
        directory.announce(
            "d", REGISTRY, 100, 10, holder="b:1", pieces={0: b"sha0"}, verified=False
        )
        == []
    )
    assert directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="c:1")[0].holders == (
        "b:1",
    )
    # Within one origin, a verified copy overrules that origin's earlier, different word.
    assert (
        directory.announce("d", LIAR, 200, 10, holder="c:1", pieces={0: b"good"}, verified=True)
        == []
    )
    liar = directory.lookup("d", LIAR, 200, 10, indices=[0], requester="e:1")[0]
    assert (liar.holders, liar.sha256) == (("c:1",), b"good")
    assert directory.announce(
        "d", LIAR, 200, 10, holder="a:1", pieces={0: b"evil"}, verified=False
    ) == [0]


def test_directory_leases_one_origin_fetch_then_points_at_the_holder():
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    first = directory.lookup("d", REGISTRY, 100, 10, indices=[0, 1], requester="a:1")
    assert first[0].fetch and first[1].fetch
    second = directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")
    assert not second[0].fetch and second[0].fetching == "a:1"
    assert (
        directory.announce(
            "d", REGISTRY, 100, 10, holder="a:1", pieces={0: b"sha0"}, verified=False
        )
        == []
    )
    third = directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")
    assert third[0].holders == ("a:1",) and third[0].sha256 == b"sha0"
    # A second holder must agree with the recorded sha256.
    assert directory.announce(
        "d", REGISTRY, 100, 10, holder="c:1", pieces={0: b"evil"}, verified=False
    ) == [0]
    assert directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0].holders == (
        "a:1",
    )
    # Soft state: holders expire unless re-announced; leases too.
    clock.now = 31
    assert directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0].fetch
    clock.now = 50
    directory.prune()
    assert directory.describe("d", REGISTRY) is None


def test_directory_keeps_blobs_of_another_piece_size_apart():
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock())
    directory.announce("d", REGISTRY, 100, 10, holder="a:1", pieces={0: b"x"}, verified=False)
    assert directory.lookup("d", REGISTRY, 100, 20, indices=[0], requester="b:1")[0].fetch
    assert directory.announce(
        "d", REGISTRY, 100, 20, holder="b:1", pieces={0: b"y"}, verified=False
    ) == [0]


async def test_membership_from_dns_formats_ipv4_and_ipv6_and_survives_failures():
    answers = [["10.0.0.2", "fd00::3", "10.0.0.2"], OSError("no such name")]

    async def resolver(name: str, port: int) -> list[str]:
        assert (name, port) == ("dfagent-peers", 4000)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    membership = Membership(
        SwarmConfig(dns="dfagent-peers", advertise="10.0.0.2:4000"),
        PeerConfig(),
        4000,
        resolver=resolver,
    )
    await membership.start()
    assert membership.members() == ["10.0.0.2:4000", "[fd00::3]:4000"]
    assert membership.others() == ["[fd00::3]:4000"]
    assert membership.changed.is_set()
    await membership.refresh()  # the name stops resolving: keep what we had
    assert membership.members() == ["10.0.0.2:4000", "[fd00::3]:4000"]


@pytest.mark.parametrize("family_host", ["127.0.0.1", "::1"])
async def test_membership_finds_its_own_address(family_host):
    peer = f"[{family_host}]:4000" if ":" in family_host else f"{family_host}:4000"
    membership = Membership(SwarmConfig(peers=(peer,)), PeerConfig(), 4123)
    await membership.start()
    host = membership.me.rsplit(":", 1)[0].strip("[]")
    assert socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    assert membership.me.endswith(":4123")


def _ask(directory: Directory, requester: str, index: int = 0) -> Answer:
    """What the home tells `requester` about piece `index` of blob "d" (100 bytes, cut in 10)."""
    return directory.lookup("d", REGISTRY, 100, 10, indices=[index], requester=requester)[index]


def _holds(directory: Directory, holder: str, index: int = 0) -> None:
    pieces = {index: f"sha{index}".encode()}
    directory.announce("d", REGISTRY, 100, 10, holder=holder, pieces=pieces, verified=False)


def test_directory_spreads_uploads_over_requesters_that_have_the_piece_coming():
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    _holds(directory, "a:1", 0)
    _holds(directory, "a:1", 1)
    assert _ask(directory, "b:1").holders == ("a:1",)
    # a is sending piece 0 to b: c waits for b rather than share a's upload link...
    waiting = _ask(directory, "c:1")
    assert (waiting.holders, waiting.fetching, waiting.fetch) == ((), "b:1", False)
    # ...but a piece nobody else is downloading still comes from a, busy or not.
    assert _ask(directory, "c:1", 1).holders == ("a:1",)
    # Once b has it, b is offered first: a is still sending piece 1 to c.
    _holds(directory, "b:1")
    assert _ask(directory, "d:1").holders == ("b:1", "a:1")
    # Downloads never announced are forgotten: their holders are free again (and each has
    # given piece 0 once).
    clock.now = 6
    directory.prune()
    assert _ask(directory, "e:1").holders == ("a:1", "b:1")


def test_directory_offers_a_piece_first_by_those_that_gave_it_least():
    """The node that fetched a piece from the origin is idle between two sends; were it
    offered first whenever idle, its uplink would carry the piece to most of the swarm while
    the nodes that already received it upload nothing (and set the pace of a fill)."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    _holds(directory, "a:1")
    assert _ask(directory, "b:1").holders == ("a:1",)
    _holds(directory, "b:1")
    # a is idle again, and so is b: b, which has not given piece 0 yet, comes first.
    assert _ask(directory, "c:1").holders == ("b:1", "a:1")
    _holds(directory, "c:1")
    assert _ask(directory, "e:1").holders[0] == "c:1"
    # Copies are counted per piece: for another piece a is as good as anyone.
    _holds(directory, "a:1", 1)
    assert _ask(directory, "b:1", 1).holders == ("a:1",)


def test_a_relay_takes_a_few_waiters_and_the_rest_spread_as_a_tree():
    """Were every newcomer told to wait for the one requester downloading a piece, a swarm
    would get each piece one node after another; past a few waiters per relay, a newcomer
    downloads at once (and is itself a relay the next ones may wait for)."""
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    _holds(directory, "a:1")
    assert _ask(directory, "b:1").holders
    for waiter in ("c:1", "d:1", "e:1", "f:1"):
        answer = _ask(directory, waiter)
        assert (answer.holders, answer.fetching) == ((), "b:1")
    # b has its share of waiters: g downloads from a, busy or not...
    assert _ask(directory, "g:1").holders == ("a:1",)
    # ...and the next newcomer waits for g, which nobody waits for yet.
    assert _ask(directory, "h:1").fetching == "g:1"
    # A waiter asking again keeps one place, not two; one that stopped asking is forgotten.
    assert _ask(directory, "c:1").fetching == "g:1"
    clock.now = 2
    assert _ask(directory, "i:1").fetching == "b:1"


def test_a_released_lease_goes_to_the_next_requester_at_once():
    directory = Directory(holder_ttl=30, lease_ttl=15, clock=Clock(), shuffle=lambda _: None)
    assert directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="a:1")[0].fetch
    waiting = directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0]
    assert (waiting.fetch, waiting.fetching) == (False, "a:1")
    directory.release("d", LIAR, [0], "a:1")  # another origin's book: nothing to give back
    assert not directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0].fetch
    directory.release("d", REGISTRY, [0], "a:1")
    assert directory.lookup("d", REGISTRY, 100, 10, indices=[0], requester="b:1")[0].fetch


def _report(directory: Directory, requester: str, stalled: str, index: int = 0) -> Answer:
    """`requester` asks again about piece `index`, reporting that no byte reaches `stalled`."""
    return directory.lookup(
        "d", REGISTRY, 100, 10, indices=[index], requester=requester, stalled=stalled
    )[index]


def test_a_stalled_lease_passes_to_the_first_waiter_that_reports_it():
    """Every waiter sees the lease holder stall; the first to report it takes the lease (one
    new origin fetch), the others then wait for that one, not each go to the origin."""
    directory = Directory(holder_ttl=30, lease_ttl=15, clock=Clock(), shuffle=lambda _: None)
    assert _ask(directory, "a:1").fetch
    assert _ask(directory, "b:1").fetching == "a:1"
    assert _ask(directory, "c:1").fetching == "a:1"
    assert _report(directory, "b:1", stalled="a:1").fetch
    late = _report(directory, "c:1", stalled="a:1")
    assert (late.fetch, late.fetching) == (False, "b:1")
    # The stalled peer asking again is told to wait for its successor, and nobody can hand
    # itself a lease it holds already.
    assert _ask(directory, "a:1").fetching == "b:1"
    assert _report(directory, "b:1", stalled="b:1").fetch


def test_a_stalled_download_is_forgotten_and_the_piece_offered_afresh():
    directory = Directory(holder_ttl=30, lease_ttl=15, clock=Clock(), shuffle=lambda _: None)
    _holds(directory, "a:1")
    assert _ask(directory, "b:1").holders == ("a:1",)  # b downloads from a...
    assert _ask(directory, "c:1").fetching == "b:1"  # ...so c waits for b
    assert _report(directory, "c:1", stalled="b:1").holders == ("a:1",)
