"""The swarm simulation: its network shares links max-min fairly and moves bytes on time, and
a small simulated cluster ends where the real one must (every node with every piece, the
origin sending at least one copy, nothing faster than the links allow)."""

from __future__ import annotations

import dataclasses

import pytest

from bench import sim
from bench.sim_events import Kernel, Step
from bench.sim_network import Link, Network
from bench.sim_swarm import Cluster, Params
from dfagent.swarm.trees import FEWEST_MEMBERS

MIB = 1024 * 1024


def test_two_flows_on_one_link_get_half_each() -> None:
    network = Network(Kernel())
    uplink = Link(100.0)
    first = network.start(uplink, Link(1000.0), 1e6)
    second = network.start(uplink, Link(1000.0), 1e6)
    assert (first.rate, second.rate) == (50.0, 50.0)


def test_a_flow_held_back_by_its_other_end_leaves_the_rest_to_the_others() -> None:
    network = Network(Kernel())
    uplink = Link(100.0)
    slow = network.start(uplink, Link(20.0), 1e6)
    fast = network.start(uplink, Link(1000.0), 1e6)
    assert slow.rate == pytest.approx(20.0)
    assert fast.rate == pytest.approx(80.0)
    network.cancel(slow)
    assert fast.rate == pytest.approx(100.0)


def test_a_flow_speeds_up_when_its_neighbour_ends() -> None:
    kernel = Kernel()
    network = Network(kernel)
    uplink = Link(100.0)
    ended: dict[str, float] = {}

    def transfer(name: str, size: float) -> Step:
        yield network.start(uplink, Link(1000.0), size).done
        ended[name] = kernel.now

    kernel.spawn(transfer("short", 100.0))
    kernel.spawn(transfer("long", 300.0))
    kernel.run()
    # Both at 50 B/s until the short one ends at 2 s; the long one's last 200 B at 100 B/s.
    assert ended["short"] == pytest.approx(2.0)
    assert ended["long"] == pytest.approx(4.0)


def test_a_mark_fires_when_its_byte_arrives() -> None:
    kernel = Kernel()
    network = Network(kernel)
    flow = network.start(Link(10.0), Link(10.0), 100.0)
    reached: list[float] = []
    network.reach(flow, 30.0).then(lambda _: reached.append(kernel.now))
    kernel.run()
    assert reached == [pytest.approx(3.0)]


def test_a_follower_runs_no_faster_than_its_leader_and_ends_after_it() -> None:
    """A relay's flow (a follower) cannot pass on bytes before they reach the relay: it runs
    at its leader's rate while the leader runs, then at its own links' pace."""
    kernel = Kernel()
    network = Network(kernel)
    leader = network.start(Link(10.0), Link(100.0), 100.0)
    follower = network.start(Link(100.0), Link(100.0), 100.0, leader=leader)
    assert (leader.rate, follower.rate) == (10.0, 10.0)
    assert follower.paced_by_leader and not leader.paced_by_leader
    ended: dict[str, float] = {}
    leader.done.then(lambda _: ended.setdefault("leader", kernel.now))
    follower.done.then(lambda _: ended.setdefault("follower", kernel.now))
    kernel.run()
    assert ended["leader"] == pytest.approx(10.0)
    assert ended["follower"] == pytest.approx(10.0)
    # A line of followers moves at the pace of its head, however long.
    kernel = Kernel()
    network = Network(kernel)
    head = network.start(Link(10.0), Link(100.0), 100.0)
    line = [head]
    for _ in range(50):
        line.append(network.start(Link(100.0), Link(100.0), 100.0, leader=line[-1]))
    assert {flow.rate for flow in line} == {10.0}
    network.cancel(head)
    assert line[1].rate == 100.0 and line[-1].rate == 100.0
    assert not any(flow.paced_by_leader for flow in line[1:])


def test_a_follower_held_back_catches_up_but_never_passes_its_leader() -> None:
    """A relay sends whatever has reached it: a follower that its own downlink held back runs
    faster than its leader once that link frees up, until it has caught up; never ahead."""
    kernel = Kernel()
    network = Network(kernel)
    leader = network.start(Link(10.0), Link(100.0), 100.0)
    downlink = Link(20.0)
    follower = network.start(Link(100.0), downlink, 100.0, leader=leader)
    for _ in range(3):  # until t = 5 s the follower gets a quarter of its downlink
        network.start(Link(100.0), downlink, 25.0)
    seen: dict[float, tuple[float, float]] = {}
    paced: dict[float, bool] = {}
    for at in (4.0, 6.0, 8.0):
        kernel.after(at, lambda _, at=at: seen.setdefault(at, (follower.rate, leader.rate)))
        kernel.after(at, lambda _, at=at: paced.setdefault(at, follower.paced_by_leader))
    ended: dict[str, float] = {}
    leader.done.then(lambda _: ended.setdefault("leader", kernel.now))
    follower.done.then(lambda _: ended.setdefault("follower", kernel.now))
    kernel.run()
    assert seen[4.0] == (pytest.approx(5.0), pytest.approx(10.0)), "held back: falls behind"
    assert seen[6.0] == (pytest.approx(20.0), pytest.approx(10.0)), "free: catches up"
    assert seen[8.0] == (pytest.approx(10.0), pytest.approx(10.0)), "caught up at 7.5 s"
    assert paced == {4.0: False, 6.0: False, 8.0: True}, "paced by the leader once caught up"
    assert ended == {"leader": pytest.approx(10.0), "follower": pytest.approx(10.0)}


_PARAMS = Params(nodes=6, size=24 * MIB, link=25e6, origin=25e6, rtt=0.002, seed=3)


def test_a_simulated_fill_ends_with_every_piece_everywhere_and_no_faster_than_a_link() -> None:
    result = sim.fill(_PARAMS)
    assert result.complete
    assert result.origin_bytes >= _PARAMS.size
    assert result.seconds >= _PARAMS.size / _PARAMS.link
    assert sum(result.uploads) >= _PARAMS.nodes * _PARAMS.size - result.origin_bytes
    assert result.home_lookups > 0
    # The links were sampled every SAMPLE_EVERY of S/B until the fill ended.
    every = sim.SAMPLE_EVERY * _PARAMS.size / _PARAMS.link
    assert len(result.links) == int(result.seconds / every)
    assert all(0 < sample.use <= 1 + 1e-9 and 0 <= sample.paced <= 1 for sample in result.links)
    assert any(sample.paced > 0 for sample in result.links)  # pieces move on as they arrive


def test_a_busy_home_answers_one_request_at_a_time_and_sets_the_pace() -> None:
    """Every request from another node holds the home's loop for its cost, one after
    another: a home too slow for its swarm slows the whole fill down."""
    free = sim.fill(_PARAMS)
    cost = 0.03
    busy = sim.fill(dataclasses.replace(_PARAMS, home_request_seconds=cost))
    assert busy.complete
    assert free.home_busy_seconds == 0
    # (requests still in line when the last reader ends were never answered; the one being
    # answered then counts whole)
    assert busy.home_busy_seconds <= busy.home_requests * cost
    assert busy.seconds + cost >= busy.home_busy_seconds > 1.5 * free.seconds


def test_the_busier_the_home_the_more_pieces_each_request_asks_about() -> None:
    """A node asks the home one lookup and one sha256 query at a time (Rounds): the longer
    the home takes to answer, the fewer requests it gets for the same fill; each piece in a
    request beyond its first costs the home its own time."""
    requests = [
        sim.fill(dataclasses.replace(_PARAMS, home_request_seconds=cost)).home_requests
        for cost in (0.0, 0.003, 0.03)
    ]
    assert requests[0] > requests[1] > requests[2]
    cost, piece = 0.01, 0.005
    charged = sim.fill(
        dataclasses.replace(_PARAMS, home_request_seconds=cost, home_piece_seconds=piece)
    )
    assert charged.complete
    assert charged.home_busy_seconds > charged.home_requests * cost + piece


def test_whole_reads_in_a_swarm_with_trees_ask_the_home_only_where_a_tree_starts() -> None:
    """With FEWEST_MEMBERS nodes or more, a whole read takes every piece from the node's
    parent in its stripe tree (Swarm.prove_whole): besides each node's describe, the home is
    asked only about the pieces the trees' roots fetch from the origin, once each. Every node
    ends with every piece, and the origin sends one copy."""
    params = Params(
        nodes=FEWEST_MEMBERS + 8,
        size=8 * MIB,
        link=25e6,
        origin=25e6,
        rtt=0.002,
        seed=3,
        home_describe_seconds=0.001,
    )
    result = sim.fill(params)
    assert result.complete
    assert result.origin_bytes == params.size
    assert 0 < result.home_lookups <= params.size // params.piece
    assert result.home_busy_seconds == pytest.approx((params.nodes - 1) * 0.001)


def test_a_simulated_lazy_trace_reads_everything_once_per_node() -> None:
    orders = sim.traces(_PARAMS, 0.2)
    result = sim.lazy(_PARAMS, 0.2, readers=2)
    assert len(result.latencies_ms) == sum(len(order) for order in orders)
    assert min(result.latencies_ms) > 0
    assert result.origin_piece_fetches >= result.distinct_pieces


def test_direct_reads_share_the_origin() -> None:
    assert sim.direct_fill(_PARAMS) == pytest.approx(
        _PARAMS.nodes * _PARAMS.size / _PARAMS.origin + _PARAMS.rtt
    )


@pytest.mark.timeout(30)
def test_a_read_of_a_pieces_head_waits_for_the_second_request() -> None:
    """A read starting mid-piece fetches from its first byte, and the piece's head by a
    second request; another read wanting that head gets it once the piece is whole."""
    cluster = Cluster(_PARAMS)
    node = cluster.nodes[0]
    kernel = cluster.kernel
    ended: list[float] = []

    def read(first: int, last: int) -> Step:
        yield from cluster.read(node, first, last, sequential=False)
        ended.append(kernel.now)

    tail = kernel.spawn(read(MIB + MIB // 2, 2 * MIB - 1))
    head = kernel.spawn(read(MIB, MIB + MIB // 4))
    kernel.run(until=sim.all_of(kernel, [tail, head]))
    assert len(ended) == 2
    assert 1 in node.received


def test_the_full_blob_is_simulated_up_to_the_node_count_asked() -> None:
    """Every count runs with the small blob; the full one only up to `full_up_to` nodes (the
    1,000-node fill of 512 MiB takes minutes), and never twice when the two are the same."""
    assert sim.runs((4, 100, 1000), 512, 16, 100) == [
        (4, 512),
        (100, 512),
        (4, 16),
        (100, 16),
        (1000, 16),
    ]
    assert sim.runs((4, 1000), 512, 16, 1000) == [(4, 512), (1000, 512), (4, 16), (1000, 16)]
    assert sim.runs((4, 16), 16, 16, 1000) == [(4, 16), (16, 16)]
