from __future__ import annotations

import random
import socket

import pytest

from dfagent.swarm import directory as directory_module
from dfagent.swarm.config import PeerConfig, SwarmConfig
from dfagent.swarm.directory import (
    _HOLDERS_OFFERED,
    _READING_SECONDS,
    _RELAY_DEPTH,
    PARENT_WAIT,
    STALL_SECONDS,
    UNSEEN_PARENT_WAIT,
    Answer,
    Directory,
)
from dfagent.swarm.hashing import home_of, ranked
from dfagent.swarm.membership import Membership
from dfagent.swarm.trees import FEWEST_MEMBERS, StripeTrees


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


def _drawing_directory() -> tuple[Directory, list[list[str]]]:
    """A directory that ranks in the order given, and the random draws it makes (each kept)."""
    drawn: list[list[str]] = []

    def sample(peers: list[str], count: int) -> list[str]:
        picked = random.Random(len(drawn)).sample(peers, count)
        drawn.append(picked)
        return picked

    directory = Directory(
        holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None, sample=sample
    )
    return directory, drawn


def test_a_piece_with_many_holders_is_offered_from_the_best_of_a_random_few():
    """Ranking all of a thousand holders on every lookup cost a home more than the rest of
    the request: the answer ranks 32 of them, drawn at random, and offers the best of those
    (one that gave the piece least first)."""
    directory, drawn = _drawing_directory()
    for n in range(1000):
        _holds(directory, f"h:{n}")
    first = _ask(directory, "r:1")
    assert len(drawn) == 1 and len(drawn[0]) == 32
    assert set(first.holders) <= set(drawn[0]) and len(first.holders) == 8
    # The one it was sent to has given the piece once: among the next draw, any other is
    # ranked before it.
    second = _ask(directory, "r:2")
    assert set(second.holders) <= set(drawn[1])
    if first.holders[0] in drawn[1]:
        assert second.holders[0] != first.holders[0]
    # Few holders: all of them are ranked, nothing drawn.
    few = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    for n in range(32):
        _holds(few, f"h:{n}")
    assert _ask(few, "r:1").holders == tuple(f"h:{n}" for n in range(8))


def test_a_piece_with_many_relays_is_passed_on_by_the_best_of_a_random_few():
    """Ranking all of a thousand peers receiving a piece cost a home about 0.3 ms a lookup:
    with more than 32 line ends, or relays, those ranked are 32 drawn at random."""
    directory, drawn = _drawing_directory()
    assert _ask(directory, "r:0").fetch
    draws = 0
    for n in range(1, 200):
        before = len(drawn)
        relay = _ask(directory, f"r:{n}").fetching
        assert relay is not None
        if drawn[before:]:  # (a line with room at its end is found among few ends: no draw)
            draws += 1
            assert all(len(draw) == 32 for draw in drawn[before:])
            assert relay in {peer for draw in drawn[before:] for peer in draw} | {"r:0"}
    assert draws >= 10  # (one each time every line is full: at 48, 63, 77, ... here)


def test_a_requester_takes_a_piece_from_a_peer_receiving_it_once_every_holder_is_busy():
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    _holds(directory, "a:1", 0)
    _holds(directory, "a:1", 1)
    assert _ask(directory, "b:1").holders == ("a:1",)
    # a is sending piece 0 to b: c takes it from b as it arrives there, rather than share
    # a's upload link...
    relayed = _ask(directory, "c:1")
    assert (relayed.holders, relayed.fetching, relayed.fetch) == ((), "b:1", False)
    assert relayed.sha256 == b"sha0"  # ...and checks it against what a announced
    # ...but a piece nobody else is receiving still comes from a, busy or not.
    assert _ask(directory, "c:1", 1).holders == ("a:1",)
    # An idle holder comes before any relay: once b has piece 0 (and c has it from b), d gets
    # it from c, free and the one that gave it least (a is sending piece 1).
    _holds(directory, "b:1")
    _holds(directory, "c:1")
    assert _ask(directory, "d:1").holders == ("c:1", "b:1", "a:1")
    # Downloads never announced are forgotten: their holders are free again.
    clock.now = 6
    directory.prune()
    assert _ask(directory, "e:1").holders[0] == "a:1"


def test_an_answer_names_a_few_holders_the_best_first():
    """With a whole cluster holding a piece, an answer names only the few worth trying (an
    answer naming a thousand holders would cost the home more than the lookup)."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    for i in range(20):
        _holds(directory, f"h{i:02}:1")
    assert _ask(directory, "a:1").holders[0] == "h00:1"
    offered = _ask(directory, "b:1").holders
    assert len(offered) == _HOLDERS_OFFERED
    assert offered[0] == "h01:1" and "h00:1" not in offered  # h00 is sending to a


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


def test_a_new_piece_runs_down_a_line_of_relays_from_its_origin_fetcher():
    """Each requester takes the piece from the last one in line as it arrives there, so each
    uploads it once and the line moves at about the pace of one copy. A line is cut at
    _RELAY_DEPTH (each hop adds a little delay): the next requester starts a new branch."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    assert _ask(directory, "fetcher:1").fetch
    line = [f"n{i}:1" for i in range(_RELAY_DEPTH)]
    before = "fetcher:1"
    for peer in line:
        answer = _ask(directory, peer)
        assert (answer.fetch, answer.holders, answer.fetching) == (False, (), before)
        assert answer.sha256 is None  # nothing announced yet: the requester asks later
        before = peer
    # A branch starts at the peer uploading least: the fetcher, also passing piece 1 on to
    # someone, would carry two copies at once; n0 passes on only piece 0.
    assert _ask(directory, "fetcher:1", 1).fetch
    assert _ask(directory, "other:1", 1).fetching == "fetcher:1"
    assert _ask(directory, "branch:1").fetching == "n0:1"
    assert _ask(directory, "next:1").fetching == "branch:1"
    # Once the fetcher announces the piece, everyone in line can check what it received.
    assert directory.recorded("d", REGISTRY, 100, 10, [0, 1]) == {0: None, 1: None}
    _holds(directory, "fetcher:1")
    assert directory.recorded("d", REGISTRY, 100, 10, [0, 1]) == {0: b"sha0", 1: None}
    assert directory.recorded("d", LIAR, 100, 10, [0]) == {0: None}


def test_a_line_shortened_by_a_forgotten_download_grows_again_from_its_end():
    """The hops from the source are kept between lookups; a download forgotten at the head
    of a line (here its record expired) brings every peer after it a hop nearer the source,
    and the full line has room again: the next requester joins its end, not a branch at a
    busier peer."""
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    assert _ask(directory, "fetcher:1").fetch
    line = [f"n{i}:1" for i in range(_RELAY_DEPTH)]
    assert _ask(directory, line[0]).fetching == "fetcher:1"
    clock.now = 0.1
    for peer in line[1:]:
        _ask(directory, peer)
    assert _ask(directory, "fetcher:1", 1).fetch
    assert _ask(directory, "other:1", 1).fetching == "fetcher:1"  # the fetcher is busier now
    clock.now = 0.2
    branch = _ask(directory, "branch:1").fetching
    assert branch != line[-1]  # the line is full: a branch
    assert _ask(directory, "late:1").fetching == "branch:1"
    clock.now = 5.05  # n0's download expires, the rest of the line's do not
    again = directory.lookup(
        "d", REGISTRY, 100, 10, indices=[0], requester="late:1", stalled="branch:1"
    )[0]
    assert again.fetching == line[-1]


def test_a_requester_is_never_told_to_take_a_piece_through_itself():
    """A requester asking again (its stream broke off) may have followers of its own; taking
    the piece from one of them would be a loop in which no byte ever arrives."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    assert _ask(directory, "fetcher:1").fetch
    assert _ask(directory, "a:1").fetching == "fetcher:1"
    assert _ask(directory, "b:1").fetching == "a:1"
    assert _ask(directory, "c:1").fetching == "b:1"
    # a asks again: b and c receive the piece through a, so a goes back to the fetcher.
    assert _ask(directory, "a:1").fetching == "fetcher:1"


def test_a_holder_that_asks_for_its_piece_again_is_no_longer_offered():
    """An agent asks only for pieces it does not hold: one on record as a holder that asks
    lost its copy. Others are told to take the piece from it as it arrives again, not to
    fetch a held copy it no longer has (nor to be taken into a line through it: the
    randomized test below sees such lines loop otherwise)."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=Clock(), shuffle=lambda _: None)
    _holds(directory, "h:1")
    assert _ask(directory, "h:1").fetch  # its copy was evicted: nobody else holds the piece
    again = _ask(directory, "b:1")
    assert (again.holders, again.fetching) == ((), "h:1")
    assert _ask(directory, "h:1", 1).fetch  # its record for another piece is untouched
    _holds(directory, "b:1")
    _holds(directory, "h:1")  # holds it again: offered again
    assert _ask(directory, "c:1").holders == ("b:1", "h:1")


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
    new origin fetch), the others then take the piece from that one, not each go to the
    origin."""
    clock = Clock()
    directory = Directory(holder_ttl=30, lease_ttl=15, clock=clock, shuffle=lambda _: None)
    assert _ask(directory, "a:1").fetch
    assert _ask(directory, "b:1").fetching == "a:1"
    assert _ask(directory, "c:1").fetching == "b:1"
    assert _ask(directory, "d:1").fetching == "c:1"
    clock.now = STALL_SECONDS  # a's lease is old enough to have been seen stalling
    assert _report(directory, "b:1", stalled="a:1").fetch
    late = _report(directory, "d:1", stalled="a:1")  # c still receives it, now through b
    assert (late.fetch, late.fetching) == (False, "c:1")
    # c saw its source b stall too (b had the bytes a sent it, then nothing) and says so: but
    # b has held the lease for less than the watch's window, so it keeps it.
    assert _report(directory, "c:1", stalled="b:1").fetching == "b:1"
    # The stalled peer asking again is told to take the piece from the new line, and nobody
    # can hand itself a lease it holds already.
    assert _ask(directory, "a:1").fetching in {"c:1", "d:1"}
    assert _report(directory, "b:1", stalled="b:1").fetch
    # Once b's lease is old enough, a report that it stalls passes the lease on.
    clock.now += STALL_SECONDS
    assert _report(directory, "c:1", stalled="b:1").fetch


def test_a_stalled_download_is_forgotten_and_the_piece_offered_afresh():
    directory = Directory(holder_ttl=30, lease_ttl=15, clock=Clock(), shuffle=lambda _: None)
    _holds(directory, "a:1")
    assert _ask(directory, "b:1").holders == ("a:1",)  # b downloads from a...
    assert _ask(directory, "c:1").fetching == "b:1"  # ...so c waits for b
    assert _report(directory, "c:1", stalled="b:1").holders == ("a:1",)


MEMBERS = [f"m{i}:1" for i in range(40)]


def _family(index: int = 0) -> tuple[str, str, str]:
    """A root, one of its children and one of that child's children in piece `index`'s tree
    over MEMBERS."""
    trees = StripeTrees()
    trees.set_members(MEMBERS)
    assert len(MEMBERS) >= FEWEST_MEMBERS
    parent = {m: trees.parent("d", index, m) for m in MEMBERS}
    root = next(m for m in MEMBERS if parent[m] is None)
    child = next(m for m in MEMBERS if parent[m] == root and root in parent.values())
    grandchild = next(m for m in MEMBERS if parent[m] == child)
    return root, child, grandchild


def _members_directory(clock: Clock, family: tuple[str, ...] = ()) -> Directory:
    """A home that knows MEMBERS; with `family`, another member has begun to read blob "d"
    (so the members read it at once)."""
    directory = Directory(holder_ttl=30, lease_ttl=10, clock=clock, shuffle=lambda _: None)
    directory.set_members(MEMBERS)
    if family:
        _ask(directory, next(m for m in MEMBERS if m not in family), 1)
    return directory


def test_with_its_members_known_the_home_sends_a_piece_down_its_stripe_tree():
    """Each member takes the piece from its parent in the piece's tree: the root from the
    origin, the others as it arrives at their parent (then from their parent's copy), a
    requester early for its parent waiting a moment for it rather than taking the lease."""
    clock = Clock()
    root, child, grandchild = _family()
    directory = _members_directory(clock, (root, child, grandchild))
    early = _ask(directory, grandchild)
    assert (early.wait, early.fetch, early.holders, early.fetching) == (True, False, (), None)
    assert _ask(directory, root).fetch  # the lease went to the root, not the early one
    clock.now += PARENT_WAIT / 2
    assert _ask(directory, child).fetching == root
    assert _ask(directory, grandchild).fetching == child
    _holds(directory, child)
    _holds(directory, root)
    assert _ask(directory, grandchild).holders == (child, root)  # root, should child not answer
    # A peer that is not a member gets the usual answer: the idle holder first (child is
    # sending the piece to grandchild).
    assert _ask(directory, "stranger:1").holders == (root, child)


def test_a_requester_waits_for_its_parent_only_a_moment():
    clock = Clock()
    root, child, grandchild = _family()
    directory = _members_directory(clock, (root, child, grandchild))
    assert _ask(directory, grandchild).wait  # its parent has not asked yet
    clock.now += PARENT_WAIT
    assert _ask(directory, grandchild).fetch  # then the usual answer: the lease
    assert _ask(directory, root).fetching == grandchild


def test_a_requester_early_for_a_parent_that_reads_nearby_is_sent_to_it_at_once():
    """The parent reads that part of the blob but has not asked for this piece: the requester
    is sent to it all the same (the parent's server waits for the piece; nobody asks the home
    again), counted as taking the piece from it, so the parent is never sent the other way.
    A parent that does not take the piece up within PARENT_WAIT is not waited for longer."""
    clock = Clock()
    root, child, grandchild = _family()
    directory = _members_directory(clock, (root, child, grandchild))
    _ask(directory, child, 1)  # the child reads next to piece 0
    early = _ask(directory, grandchild)
    assert (early.wait, early.fetch, early.holders, early.fetching) == (False, False, (), child)
    assert _ask(directory, root).fetch
    assert _ask(directory, child).fetching == root  # not the grandchild, which waits on it
    assert _ask(directory, grandchild).fetching == child

    late = Clock()
    directory = _members_directory(late, (root, child, grandchild))
    _ask(directory, child, 1)
    assert _ask(directory, grandchild).fetching == child
    late.now += PARENT_WAIT / 2
    assert _ask(directory, grandchild).fetching == child  # asking again does not reset it
    late.now += PARENT_WAIT / 2
    assert _ask(directory, grandchild).fetch  # then the usual answer: the lease


def test_a_parent_not_seen_yet_is_waited_for_only_briefly():
    """A node that starts a container by itself, the only reader of a new blob: its parents
    will not come. It waits UNSEEN_PARENT_WAIT for them, not PARENT_WAIT."""
    clock = Clock()
    directory = _members_directory(clock)
    _, _, grandchild = _family()
    assert _ask(directory, grandchild).wait
    clock.now += UNSEEN_PARENT_WAIT
    assert _ask(directory, grandchild).fetch
    assert UNSEEN_PARENT_WAIT < PARENT_WAIT


def test_a_parent_not_seen_yet_is_waited_for_once_per_blob():
    """The lone node's next pieces in the same stripe do not wait for that parent again."""
    clock = Clock()
    directory = _members_directory(clock)
    _, _, grandchild = _family()
    assert _ask(directory, grandchild, 0).wait
    clock.now += UNSEEN_PARENT_WAIT
    assert _ask(directory, grandchild, 0).fetch
    assert _ask(directory, grandchild, 4).fetch  # (same stripe, same parent)


def test_a_parent_that_does_not_read_the_blob_is_not_waited_for():
    """Once the book is older than _READING_SECONDS, a parent that asked for no piece of the
    blob for that long is gone, or reads other parts of it (a lazy reader)."""
    clock = Clock()
    directory = _members_directory(clock)
    _, child, grandchild = _family()
    assert _ask(directory, "stranger:1", 1).fetch  # the book is begun
    clock.now += _READING_SECONDS + 1
    assert _ask(directory, grandchild).fetch
    assert _ask(directory, child).fetching == grandchild


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("members", [False, True], ids=["no-members", "members"])
def test_what_the_home_keeps_between_lookups_matches_its_book(seed, members, monkeypatch):
    """The ends of lines, when each download began and the hops kept between lookups are
    derived from the downloads; after any mix of lookups, stalls, announcements, dropped
    holders and expiries they must say what the downloads say, and no line of downloads may
    loop. And a relay found among the ends of lines is the one ranking every peer receiving
    the piece would choose. With members known, the trees' answers mix in."""
    ends_chosen = 0
    line_end = directory_module._RelayChoice.line_end

    def checked(choice):
        nonlocal ends_chosen
        chosen = line_end(choice)
        if chosen is not None:
            ends_chosen += 1
            assert chosen == choice.ranked()
        return chosen

    monkeypatch.setattr(directory_module._RelayChoice, "line_end", checked)
    tree_answers = 0
    from_parent = Directory._from_parent

    def counted(*args, **kwargs):
        nonlocal tree_answers
        answer = from_parent(*args, **kwargs)
        tree_answers += answer is not None
        return answer

    monkeypatch.setattr(Directory, "_from_parent", counted)
    rng = random.Random(seed)
    clock = Clock()
    directory = Directory(holder_ttl=8, lease_ttl=6, clock=clock, shuffle=rng.shuffle)
    peers = [f"p{i}:1" for i in range(12)]
    if members:  # some of them: the others take no part in the trees
        directory._trees = StripeTrees(fewest_members=1)  # trees over so few, to mix them in
        directory.set_members(peers[:9])
    for _ in range(1500):
        peer, index, roll = rng.choice(peers), rng.randrange(3), rng.random()
        if roll < 0.6:
            stalled = rng.choice(peers) if rng.random() < 0.1 else None
            directory.lookup(
                "d", REGISTRY, 100, 10, indices=[index], requester=peer, stalled=stalled
            )
        elif roll < 0.8:
            _holds(directory, peer, index)
        elif roll < 0.85:
            directory.drop_holder("d", index, peer)
        elif roll < 0.9:
            directory.prune()
        else:
            clock.now += rng.uniform(0, 2)
        book = directory._blobs.get("d", {}).get(REGISTRY)
        for piece in book.pieces.values() if book is not None else ():
            idle = {who for who in piece.downloads if not piece.followers.get(who)}
            assert piece.ends.keys() == idle
            assert piece.since.keys() == piece.downloads.keys()
            assert list(piece.downloads) == sorted(piece.downloads, key=piece.since.get)
            for who, hops in piece.hops.items():
                assert hops == _hops_from_source(piece.downloads, piece.hops_held, who)
    assert ends_chosen > 100
    assert tree_answers > 200 if members else not tree_answers


def _hops_from_source(downloads, held, peer) -> int:
    """Hops from the source to `peer`, walked afresh; a line never loops."""
    hops = 0
    seen = set()
    while (record := downloads.get(peer)) is not None and record[0] not in held:
        assert peer not in seen, f"the downloads of a piece loop through {peer}"
        seen.add(peer)
        hops, peer = hops + 1, record[0]
    return hops
