"""The builtin swarm in simulated time: N agents reading one blob, each a set of simulation
processes that follow the engine's fetch loops and call the real decision code.

Real code, called as the agents call it:
- `dfagent.swarm.directory.Directory`, one per agent, on the simulation's clock with a seeded
  shuffle: every lookup (holders, the origin lease, a peer receiving it to take it from),
  announce, sha256 query and prune goes through it, at the blob's home.
- `dfagent.swarm.hashing.home_of` over the member list: the blob's home (one per blob).
- `dfagent.swarm.trees.StripeTrees` over the member list: each node's parents in a whole read.
- `dfagent.engine.readahead.SequentialReads`: how far a reader's pattern is read ahead.
- The constants: hedge delay, uploads per holder (`peer.hedge_after`, `peer.max_uploads`),
  the announcement batching delay, the lease and lease-wait times, the read-ahead run size,
  `swarm.refresh` (re-announce and prune) and the holder expiry derived from it.

Modelled, following dfagent/engine/fetcher.py and dfagent/swarm/swarm.py (their I/O is
replaced by simulated time):
- A reader's window (`Engine._parts`): two runs of pieces requested ahead, topped up piece
  by piece; a piece nobody has claimed is claimed before it is fetched.
- `Engine._acquire`: one lookup per group of neighbouring pieces; pieces with the lease go to
  the origin as one ranged GET per run of neighbours (a run starting mid-piece fetches the
  piece's head by a second request, once the first has brought the rest of it), the others
  go to `Engine._from_peers`: fetch from the holders offered, or from the peer receiving the
  piece now (as it arrives there; a parent in the piece's stripe tree that has not begun to
  receive it holds the request up to PARENT_WAIT until it does, as `PeerServer._piece` does);
  else (busy, or told to wait for a parent not seen reading yet) wait 5 ms doubling to 100 ms
  and ask again;
  the lease or 15 s of waiting send it to the origin (so would a peer that stalls, which
  never happens here).
- `Swarm.fetch`: holders in the order offered, the next one asked too when the first has not
  begun to send within the hedge delay; a holder with `max_uploads` uploads holds a request
  in line for a slot up to the hedge delay, then answers busy. A relay's flow follows the
  flow bringing it the piece: it starts once _RELAY_LAG_BYTES are in and never gets closer
  than that to the bytes at the relay; held back by its own links, it catches up later
  (bench/sim_network.py). A piece taken from its origin fetcher is checked once the home
  has its sha256 (`Swarm._recorded`, polled), the home recording the node as its holder in
  that exchange (`Directory.check_in`).
- `Swarm.prove_whole`: a whole read in a swarm with stripe trees takes every piece from the
  node's parent in the piece's tree, each stripe a piece at a time and apart from the others
  (a stripe whose tree starts at the node the usual way); the parent holds the request up to
  PARENT_WAIT until the piece begins to arrive there (before it begins the blob, up to
  UNSEEN_PARENT_WAIT unless it begins meanwhile). Those pieces are staged (not announced); the
  whole blob is then checked (_VERIFY_SECONDS_PER_MIB) and announced. A stripe whose parent
  does not send a piece comes the usual way from that piece on.
- `Rounds` (dfagent/swarm/rounds.py): a node's lookups, and its sha256 queries, go to the
  home one request at a time; pieces asked about while one is on its way go together in the
  next.
- Storing a piece (hash and write) takes a fixed time; then it is announced (batched).
- Messages: a lookup, announcement, progress check or origin HEAD costs a round trip (the
  home acts half-way through it); a download starts its bytes one round trip after the
  request. Requests and answers carry no bytes on the links.
- The home's CPU (`Params.home_request_seconds`): its event loop answers one request at a
  time, in the order they arrive, each other node's request costing it that long, and
  `Params.home_piece_seconds` more for each piece beyond its first, a describe
  `Params.home_describe_seconds` (`bench home` measures all three on a real agent); its own
  lookups and announcements are calls on the same
  loop and wait their turn, but cost it nothing more. Zero: a home that is never busy.
- Every peer is honest and alive: no bad pieces (so `drop_holder` is never called), no lease
  released early.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.sim_events import Event, Kernel, Step
from bench.sim_network import Flow, Link, Network
from dfagent.agent import _LEASE_SECONDS
from dfagent.engine.fetcher import (
    _FIRST_POLL_SECONDS,
    _LAST_POLL_SECONDS,
    _LEASE_WAIT_SECONDS,
    _RUN_BYTES,
    _SEQUENTIAL_SLACK,
    _SEQUENTIAL_TRIGGER,
)
from dfagent.engine.readahead import SequentialReads
from dfagent.swarm.config import PeerConfig, SwarmConfig
from dfagent.swarm.directory import PARENT_WAIT, UNSEEN_PARENT_WAIT, Answer, Directory
from dfagent.swarm.hashing import home_of
from dfagent.swarm.swarm import (
    _ANNOUNCE_DELAY,
    _BUSY_PARENT_SECONDS,
    _FIRST_BUSY_POLL_SECONDS,
    _FIRST_RECORD_POLL_SECONDS,
    _LAST_BUSY_POLL_SECONDS,
    _LAST_RECORD_POLL_SECONDS,
    _REANNOUNCE_BATCH,
    _TREE_FILL_FEWEST_PIECES,
)
from dfagent.swarm.trees import FAN_OUT, StripeTrees

__all__ = ["Cluster", "Params"]

ORIGIN = "http://10.77.0.1:5000"
_PEER = PeerConfig()
_REFRESH = float(SwarmConfig().refresh)
_BUSY = "busy"  # a fetch where every holder answered busy
# A relay passes bytes on in the parts it receives them in: a follower's flow starts once this
# much of the piece has reached the relay and stays this far behind the relay's own (so each
# hop adds about 2.6 ms at 200 Mbit/s).
_RELAY_LAG_BYTES = 64 * 1024
# Hashing and writing a piece take this long per MiB in it (a piece's own cost, beside its
# bytes on the links).
_STORE_SECONDS_PER_MIB = 0.003
# Checking a whole blob against its digest (sha256 at about 1 GB/s, as on the machine the real
# runs are made on).
_VERIFY_SECONDS_PER_MIB = 0.001


@dataclass(frozen=True)
class Params:
    nodes: int
    size: int  # bytes of the blob
    link: float  # every node's uplink and downlink, bytes/s
    origin: float  # the origin's uplink, bytes/s
    rtt: float  # seconds
    piece: int = 1024 * 1024
    seed: int = 8
    # CPU the home spends on one request from another node (HTTP, JSON and its directory);
    # `bench home` measured 0.10-0.16 ms a request at 8 to 100 nodes, 0.20-0.26 ms at 1,000.
    home_request_seconds: float = 0.0
    # and on each piece a request asks about beyond its first (`bench home` measures both)
    home_piece_seconds: float = 0.0
    # on a node's first question about a blob, its size (`bench home` measured 0.05 ms)
    home_describe_seconds: float = 0.0

    @property
    def store_seconds(self) -> float:
        """Hashing and writing one piece."""
        return _STORE_SECONDS_PER_MIB * self.piece / (1024 * 1024)


@dataclass(eq=False)
class _Piece:
    """A piece on its way into one node (`InflightPiece`): whole once every part is in."""

    index: int
    parts: int = 1
    whole: Event | None = None
    streaming: Event | None = None  # fires once an origin flow carries it
    stream: tuple[Flow, int] | None = None  # (origin flow, blob offset where it starts)
    feed: Event | None = None  # fires with (flow, offset in it) once one flow carries it all


@dataclass(eq=False)
class _Attempt:
    holder: _Node
    done: Event
    flow: Flow | None = None
    counted: bool = False  # holds one of the holder's upload slots
    slot: Event | None = None  # in line for one of them
    cancelled: bool = False


@dataclass(eq=False)
class _Node:
    name: str
    up: Link
    down: Link
    directory: Directory
    held: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)  # whole (held, or being stored)
    inflight: dict[int, _Piece] = field(default_factory=dict)
    uploads: int = 0
    waiting: list[Event] = field(default_factory=list)  # requests in line for an upload slot
    uploaded: float = 0.0
    lookups: int = 0  # lookups this node answered as a home
    # requests other nodes sent this node as a home: lookups, sha256 queries, announcements
    requests: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)  # announcements not sent yet
    flushing: bool = False
    blob: Event | None = None  # fires once the blob's size is known here
    starts: dict[int, Event] = field(default_factory=dict)  # fire as pieces begin to arrive
    staged: set[int] = field(default_factory=set)  # whole, proven only with the blob
    checked_in: set[int] = field(default_factory=set)  # recorded as held when checked
    # `Rounds`: per kind of question, the pieces asked about while a request is on its way
    # (each with the events of its askers); a kind is here while a request is on its way.
    rounds: dict[str, dict[int, list[Event]]] = field(default_factory=dict)
    sequential: SequentialReads = field(
        default_factory=lambda: SequentialReads(
            slack=_SEQUENTIAL_SLACK, trigger=_SEQUENTIAL_TRIGGER, window=_RUN_BYTES, blobs=1
        )
    )


class _HomeLoop:
    """The home's event loop: calls run one at a time in the order they come, each holding
    the loop for its cost (see Params.home_request_seconds)."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._waiting: deque[tuple[Callable[[], object], float, Event]] = deque()
        self._running = False
        self.busy_seconds = 0.0

    def call(self, call: Callable[[], object], cost: float) -> Event:
        """Fires with `call`'s result once the loop has run it and spent `cost` on it."""
        done = self._kernel.event()
        self._waiting.append((call, cost, done))
        if not self._running:
            self._running = True
            self._kernel.spawn(self._run())
        return done

    def _run(self) -> Step:
        while self._waiting:
            call, cost, done = self._waiting.popleft()
            result = call()
            if cost:
                self.busy_seconds += cost
                yield cost
            done.fire(result)
        self._running = False


class Cluster:
    """N simulated agents, the origin and the network between them, sharing one blob."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.kernel = Kernel()
        self.network = Network(self.kernel)
        self._rng = random.Random(params.seed)
        self.digest = hashlib.sha256(f"sim-{params.seed}".encode()).hexdigest()
        self.layout = f"fixed:{params.piece}"
        self.pieces = -(-params.size // params.piece)
        self.origin = Link(params.origin, "origin")
        self.origin_bytes = 0.0
        self.origin_pieces = 0
        self.directory_seconds = 0.0  # wall time the home's Directory.lookup calls took here
        self.gave_up: Counter[str] = Counter()  # pieces peers were to give, gone to the origin
        names = [f"10.77.{i // 250}.{10 + i % 250}:4000" for i in range(params.nodes)]
        self.nodes = [
            _Node(
                name,
                Link(params.link, f"{name} up"),
                Link(params.link, f"{name} down"),
                Directory(
                    holder_ttl=3 * _REFRESH,
                    lease_ttl=_LEASE_SECONDS,
                    clock=self.kernel.clock,
                    shuffle=self._rng.shuffle,  # (32 peers at most: see _RANKED_AMONG)
                    sample=self._rng.sample,
                ),
            )
            for name in names
        ]
        self._by_name = {node.name: node for node in self.nodes}
        self.home = self._by_name[home_of(names, self.digest)]
        self.home.directory.set_members(names)
        self.home_loop = _HomeLoop(self.kernel)
        self.trees = StripeTrees()  # every member's, alike
        self.trees.set_members(names)
        for node in self.nodes:
            self.kernel.spawn(self._refresh(node, self._rng.uniform(0, _REFRESH)))

    # what a reader does ------------------------------------------------------------------

    def read(self, node: _Node, first: int, last: int, sequential: bool) -> Step:
        """Bytes `first..last` through `node`'s engine (`Engine.blob` then `Engine._parts`);
        returns when the last byte is in. `sequential`: wait piece by piece, topping up the
        window as the reader moves (a whole-blob read); else wait for the read's pieces."""
        if node.blob is None:
            node.blob = self.kernel.spawn(self._discover(node))
        yield node.blob
        whole = sequential and (first, last) == (0, self.params.size - 1)
        if whole and (yield from self._tree_fill(node)):
            return
        piece = self.params.piece
        firsts = list(range(first // piece, last // piece + 1))
        requested_until = 0
        for position, index in enumerate(firsts):
            if (
                position >= requested_until
                or (firsts[requested_until - 1] + 1) * piece - max(first, index * piece)
                < 2 * _RUN_BYTES
            ):
                ahead = firsts[position : position + max(1, 2 * _RUN_BYTES // piece)]
                requested_until = position + len(ahead)
                self._start(node, ahead, max(first, index * piece))
                if not position:
                    self._read_ahead(node, first, last)
            if sequential or position == len(firsts) - 1:
                for wanted in firsts[: position + 1] if not sequential else [index]:
                    low = max(first, wanted * piece)
                    high = min(last + 1, (wanted + 1) * piece)
                    yield from self._bytes(node, wanted, low, high)

    def _tree_fill(self, node: _Node) -> Step:
        """`Swarm.prove_whole`: every piece from the node's parent in its stripe tree (or the
        usual way, a piece at a time, in the stripes whose tree starts here and, once some
        parent sent a piece, from a piece the parent did not send), one stripe apart from the
        others; then the whole blob is checked (and announced, once verified). False: not a
        swarm with trees, a small blob, or a parent did not send before any did (the staged
        pieces are then fetched again the usual way)."""
        if not self.trees.includes(node.name) or self.pieces < _TREE_FILL_FEWEST_PIECES:
            return False
        parent_sent = self.kernel.event()
        stripes = [
            self.kernel.spawn(
                self._tree_stripe(node, range(stripe, self.pieces, FAN_OUT), parent_sent)
            )
            for stripe in range(FAN_OUT)
        ]
        filled = True
        for stripe in stripes:
            filled = (yield stripe) and filled
        if not filled:
            node.received -= node.staged
            node.held -= node.staged
            node.staged.clear()
            return False
        yield _VERIFY_SECONDS_PER_MIB * self.params.size / (1024 * 1024)
        node.staged.clear()
        self.kernel.spawn(self._announce(node, {i: _sha256(i) for i in range(self.pieces)}))
        return True

    def _tree_stripe(self, node: _Node, indices: range, parent_sent: Event) -> Step:
        """`Swarm._fill_stripe`: True once every piece of the stripe is in."""
        parent = self.trees.parent(self.digest, indices[0], node.name)
        for index in indices:
            if index in node.received:
                continue
            if parent is not None and index not in node.inflight:
                if (yield from self._from_parent(node, index, self._by_name[parent])):
                    parent_sent.fire()
                    continue
                if not parent_sent.fired:
                    return False
                parent = None
            self._start(node, [index], index * self.params.piece)  # the usual way (or coming)
            whole = node.inflight[index].whole
            assert whole is not None
            yield whole
        return True

    def _from_parent(self, node: _Node, index: int, parent: _Node) -> Step:
        """`Swarm._from_parent`: True once the piece is in (staged)."""
        node.inflight[index] = _Piece(
            index, 1, self.kernel.event(), self.kernel.event(), feed=self.kernel.event()
        )
        started = node.starts.pop(index, None)
        if started is not None:
            started.fire()
        waited_until = self.kernel.now + _BUSY_PARENT_SECONDS
        delay = _FIRST_BUSY_POLL_SECONDS
        while True:
            got = yield from self._attempts(node, index, [parent], tree=True)
            if got is True:
                node.staged.add(index)
                self._part_in(node, index, from_origin=False)
                return True
            if got is not _BUSY or self.kernel.now > waited_until:
                del node.inflight[index]
                return False
            yield delay
            delay = min(delay * 2, _LAST_BUSY_POLL_SECONDS)

    def _read_ahead(self, node: _Node, first: int, last: int) -> None:
        ahead = node.sequential.read(self.digest, first, last)
        end = min(last + 1 + ahead.bytes, self.params.size)
        if end > last + 1:
            piece = self.params.piece
            self._start(node, list(range((last + 1) // piece, (end - 1) // piece + 1)), last + 1)

    def _bytes(self, node: _Node, index: int, low: int, high: int) -> Step:
        """Wait until bytes `low..high-1` of piece `index` are in at `node` (streamed from an
        origin flow as they arrive, or the whole piece from a peer)."""
        while index not in node.received:
            piece = node.inflight.get(index)
            if piece is None:
                self._start(node, [index], low)
                continue
            assert piece.whole is not None and piece.streaming is not None
            if piece.stream is None:
                yield self.kernel.first_of([piece.whole, piece.streaming])
            elif piece.stream[1] <= low:
                flow, base = piece.stream
                yield self.network.reach(flow, high - base)
                return
            else:  # the piece's head, which a second request fetches
                yield piece.whole

    def _discover(self, node: _Node) -> Step:
        """`Engine._discover` with a swarm: ask the home; a blob it does not know costs a
        HEAD at the origin."""
        known = yield from self._at_home(
            node,
            lambda: self.home.directory.describe(self.digest, ORIGIN),
            count=False,
            cost=self.params.home_describe_seconds,
        )
        if known is None:
            yield self.params.rtt

    # fetching ----------------------------------------------------------------------------

    def _start(self, node: _Node, indices: list[int], from_byte: int) -> None:
        """`Engine._start`: claim what is neither held nor coming, one acquire per group of
        neighbours."""
        group: list[int] = []
        for index in indices:
            if index in node.received or index in node.inflight:
                continue
            if group and group[-1] + 1 != index:
                self.kernel.spawn(self._acquire(node, group, from_byte))
                group = []
            node.inflight[index] = _Piece(
                index, 1, self.kernel.event(), self.kernel.event(), feed=self.kernel.event()
            )
            started = node.starts.pop(index, None)
            if started is not None:
                started.fire()
            group.append(index)
        if group:
            self.kernel.spawn(self._acquire(node, group, from_byte))

    def _acquire(self, node: _Node, group: list[int], from_byte: int) -> Step:
        answers = yield from self._lookup(node, group)
        to_origin = []
        for index in group:
            answer = answers[index]
            if answer.fetch:
                to_origin.append(index)
            else:
                self.kernel.spawn(self._from_peers(node, index, answer))
        runs: list[list[int]] = []
        for index in to_origin:
            if runs and runs[-1][-1] + 1 == index:
                runs[-1].append(index)
            else:
                runs.append([index])
        for run in runs:
            self._origin_run(node, run, from_byte)

    def _lookup(self, node: _Node, indices: list[int]) -> Step:
        def ask(pieces: list[int]) -> dict[int, Answer]:
            started = time.perf_counter()
            answers = self.home.directory.lookup(
                self.digest,
                ORIGIN,
                self.params.size,
                self.layout,
                indices=pieces,
                requester=node.name,
            )
            self.directory_seconds += time.perf_counter() - started
            return answers

        if node is self.home:
            return (yield from self._at_home(node, lambda: ask(indices)))
        return (yield from self._in_rounds(node, "lookup", indices, ask))

    def _in_rounds(
        self,
        node: _Node,
        kind: str,
        indices: list[int],
        ask: Callable[[list[int]], dict[int, Any]],
        *,
        count: bool = True,
    ) -> Step:
        """`Rounds.ask`: the answers for `indices` from the next request of this kind (at
        once when none is on its way; else together with whatever else is asked meanwhile,
        once the one on its way is answered)."""
        sending = kind in node.rounds
        waiting = node.rounds.setdefault(kind, {})
        events = {index: self.kernel.event() for index in indices}
        for index, event in events.items():
            waiting.setdefault(index, []).append(event)
        if not sending:
            self.kernel.spawn(self._rounds(node, kind, ask, count))
        answers = {}
        for index, event in events.items():
            answers[index] = yield event
        return answers

    def _rounds(
        self, node: _Node, kind: str, ask: Callable[[list[int]], dict[int, Any]], count: bool
    ) -> Step:
        """`Rounds._rounds`: one request at a time, each with what waited for it."""
        while node.rounds[kind]:
            waiting, node.rounds[kind] = node.rounds[kind], {}
            pieces = list(waiting)
            answers = yield from self._at_home(
                node, lambda pieces=pieces: ask(pieces), count=count, pieces=len(pieces)
            )
            for index, events in waiting.items():
                for event in events:
                    event.fire(answers[index])
        del node.rounds[kind]

    def _at_home(
        self,
        node: _Node,
        call: Callable[[], object],
        *,
        count: bool = True,
        pieces: int = 1,
        cost: float | None = None,
    ) -> Step:
        """Run `call` on the home's loop once it is free: at once for the home itself, half a
        round trip away (and the answer back after the other half) for everyone else; a
        request about `pieces` pieces (costing the home `cost`, if not the usual)."""
        if count:
            self.home.lookups += 1
        if node is self.home:
            return (yield self.home_loop.call(call, 0.0))
        self.home.requests += 1
        if cost is None:
            cost = self.params.home_request_seconds
            cost += self.params.home_piece_seconds * (pieces - 1)
        yield self.params.rtt / 2
        result = yield self.home_loop.call(call, cost)
        yield self.params.rtt / 2
        return result

    def _origin_run(self, node: _Node, run: list[int], from_byte: int) -> None:
        """`Engine._origin_runs` and `_fill`: one ranged GET for neighbouring pieces, from
        `from_byte` when it falls inside the first one (its head then comes by a second GET,
        once the first has brought the rest of that piece: `Engine._fill_head`)."""
        piece = self.params.piece
        first = run[0] * piece
        last = min(self.params.size, (run[-1] + 1) * piece)
        head = None
        if first < from_byte < first + piece:
            node.inflight[run[0]].parts = 2
            head = (first, from_byte)
            first = from_byte
        self.kernel.spawn(self._get(node, run, first, last, head=head))

    def _get(
        self,
        node: _Node,
        run: list[int],
        first: int,
        end: int,
        *,
        head: tuple[int, int] | None = None,
    ) -> Step:
        """One ranged GET of blob bytes `first..end-1` into the pieces of `run`; `head`, the
        bytes of the first piece before `first`, is asked for once that piece's rest is in."""
        yield self.params.rtt
        flow = self.network.start(self.origin, node.down, end - first)
        self.origin_bytes += end - first
        piece = self.params.piece
        for index in run:
            inflight = node.inflight[index]
            if inflight.stream is None and end >= min(self.params.size, (index + 1) * piece):
                inflight.stream = (flow, first)
                assert inflight.streaming is not None
                inflight.streaming.fire()
                if first <= index * piece and inflight.feed is not None:
                    inflight.feed.fire((flow, index * piece - first))
            offset = min(end, (index + 1) * piece) - first
            self.network.reach(flow, offset).then(lambda _, i=index: self._part_in(node, i))
        if head is not None:
            low, high = head
            self.network.reach(flow, min(end, (run[0] + 1) * piece) - first).then(
                lambda _: self.kernel.spawn(self._get(node, [run[0]], low, high))
            )

    def _part_in(self, node: _Node, index: int, *, from_origin: bool = True) -> None:
        piece = node.inflight[index]
        piece.parts -= 1
        if piece.parts:
            return
        if from_origin:
            self.origin_pieces += 1
        node.received.add(index)
        assert piece.whole is not None
        piece.whole.fire()
        self.kernel.spawn(self._persist(node, index))

    def _persist(self, node: _Node, index: int) -> Step:
        yield self.params.store_seconds
        node.held.add(index)
        del node.inflight[index]
        if index in node.staged:
            return
        if index in node.checked_in:  # its home recorded it when this node checked it
            node.checked_in.discard(index)
            return
        node.pending[index] = _sha256(index)
        if not node.flushing:
            node.flushing = True
            self.kernel.spawn(self._flush(node))

    def _flush(self, node: _Node) -> Step:
        """`Swarm._flush_soon`: announcements made within the delay go together."""
        yield _ANNOUNCE_DELAY
        node.flushing = False
        pieces, node.pending = node.pending, {}
        yield from self._announce(node, pieces)

    def _announce(self, node: _Node, pieces: dict[int, bytes]) -> Step:
        """An announcement batch, taken in by the home's loop in its turn (nothing waits for
        its answer)."""
        cost = 0.0
        if node is not self.home:
            self.home.requests += 1
            cost = self.params.home_request_seconds
            yield self.params.rtt / 2
        self.home_loop.call(
            lambda: self.home.directory.announce(
                self.digest,
                ORIGIN,
                self.params.size,
                self.layout,
                holder=node.name,
                pieces=pieces,
                verified=False,
            ),
            cost,
        )

    def _refresh(self, node: _Node, phase: float) -> Step:
        """`Swarm.run`: every refresh, announce everything held again and prune the book."""
        yield phase
        while True:
            held = sorted(node.held)
            for at in range(0, len(held), _REANNOUNCE_BATCH):
                batch = held[at : at + _REANNOUNCE_BATCH]
                self.kernel.spawn(self._announce(node, {i: _sha256(i) for i in batch}))
            node.directory.prune()
            yield _REFRESH

    def _from_peers(self, node: _Node, index: int, answer: Answer) -> Step:
        """`Engine._from_peers`; why a piece went to the origin after all is counted."""
        waited_until = self.kernel.now + _LEASE_WAIT_SECONDS
        delay = _FIRST_POLL_SECONDS
        why = "no holder delivered"
        while True:
            if answer.wait:
                if self.kernel.now > waited_until:
                    why = "waited the lease wait out"
                    break
                answer, delay = yield from self._ask_again(node, index, delay)
                if answer.fetch:
                    why = "the peer to take it from did not come"
                    break
                continue
            if answer.holders or answer.fetching is not None:
                got = yield from self._fetch(node, index, answer)
                if got is _BUSY:
                    if self.kernel.now > waited_until:
                        why = "every holder stayed busy"
                        break
                    answer, delay = yield from self._ask_again(node, index, delay)
                    continue
                if got:
                    self._part_in(node, index, from_origin=False)
                    return
            if answer.fetching is None:
                why = "no holder, and no peer fetching it"
                break
            if self.kernel.now > waited_until:
                why = "waited the lease wait out"
                break
            yield self.params.rtt  # how far did the fetching peer get? (it never stalls here)
            answer, delay = yield from self._ask_again(node, index, delay)
            if answer.fetch:
                why = "the home handed this agent the origin fetch"
                break
        self.gave_up[why] += 1
        self._origin_run(node, [index], index * self.params.piece)

    def _ask_again(self, node: _Node, index: int, delay: float) -> Step:
        """`Engine._ask_again`: (the home's answer for the piece after `delay`, the next
        delay)."""
        yield delay
        answer = (yield from self._lookup(node, [index]))[index]
        return answer, min(delay * 2, _LAST_POLL_SECONDS)

    def _recorded(self, node: _Node, index: int) -> Step:
        """`Swarm._recorded`: ask the home until the piece's sha256 is recorded. Another
        node's query says which copy it received, and the home records it as the piece's
        holder then (`Directory.check_in`): it is not announced again once stored."""
        delay = _FIRST_RECORD_POLL_SECONDS
        book = (self.digest, ORIGIN, self.params.size, self.layout)

        def ask(pieces: list[int]) -> dict[int, bool]:
            held = self.home.directory.check_in(
                *book, holder=node.name, pieces={i: _sha256(i) for i in pieces}
            )
            return {i: i in held for i in pieces}

        while True:
            if node is self.home:
                recorded = yield from self._at_home(
                    node,
                    lambda: self.home.directory.recorded(*book, [index])[index] is not None,
                    count=False,
                )
            else:
                answers = yield from self._in_rounds(node, "recorded", [index], ask, count=False)
                recorded = answers[index]
                if recorded:
                    node.checked_in.add(index)
            if recorded:
                return
            yield delay
            delay = min(delay * 2, _LAST_RECORD_POLL_SECONDS)

    def _fetch(self, node: _Node, index: int, answer: Answer) -> Step:
        """`Swarm.fetch`: True (the piece is in), None (no peer delivered) or _BUSY. With no
        holders, from the peer receiving the piece, as it arrives there."""
        peers = answer.holders or (answer.fetching,)
        got = yield from self._attempts(node, index, [self._by_name[peer] for peer in peers])
        if got is True and answer.sha256 is None:
            yield from self._recorded(node, index)
        return got

    def _attempts(
        self, node: _Node, index: int, waiting: list[_Node], *, tree: bool = False
    ) -> Step:
        """The hedged attempts of `Swarm.fetch`."""
        asked = len(waiting)
        running: list[_Attempt] = []
        sending = self.kernel.event()
        busy = 0
        while waiting or running:
            if waiting and not (running and sending.fired):
                attempt = _Attempt(waiting.pop(0), self.kernel.event())
                running.append(attempt)
                self.kernel.spawn(self._attempt(node, index, attempt, sending, tree))
            hedge = bool(waiting) and not sending.fired
            events = [attempt.done for attempt in running]
            if hedge:
                events.append(self.kernel.timeout(_PEER.hedge_after))
            yield self.kernel.first_of(events)
            for attempt in [a for a in running if a.done.fired]:
                running.remove(attempt)
                if attempt.done.value is _BUSY:
                    busy += 1
                elif attempt.done.value:
                    for other in running:
                        self._cancel(other)
                    return True
        if busy and busy == asked:
            return _BUSY
        return None

    def _attempt(
        self, node: _Node, index: int, attempt: _Attempt, sending: Event, tree: bool
    ) -> Step:
        """One piece download (`PeerClient.piece` against `PeerServer._piece`)."""
        holder = attempt.holder
        yield self.params.rtt / 2
        if attempt.cancelled:
            return
        yield from self._begins(holder, index, tree)
        if attempt.cancelled:
            return
        if holder.uploads < _PEER.max_uploads:
            holder.uploads += 1
        elif not (yield from self._wait_for_slot(holder, attempt)):
            return
        attempt.counted = True
        yield self.params.rtt / 2
        if attempt.cancelled:
            return
        leader, base = None, 0.0
        if index not in holder.received:  # a relay: it passes the piece on as it arrives
            fed = holder.inflight.get(index)
            if fed is None or fed.feed is None or fed.whole is None:
                self._free_slot(holder)  # it gave the piece up: 404
                attempt.counted = False
                attempt.done.fire(None)
                return
            first = yield self.kernel.first_of([fed.feed, fed.whole])
            if first is fed.feed and fed.feed.value[0].running:
                leader, offset = fed.feed.value
                base = min(offset + _RELAY_LAG_BYTES, leader.size)
                lag = self.network.reach(leader, base)
                yield self.kernel.first_of([lag, fed.whole])  # (a cancelled flow never reaches)
                if not leader.running:
                    leader = None
            else:  # whole before one flow carried it all (a head fetched apart): sent whole
                yield fed.whole
        if attempt.cancelled:
            return
        sending.fire()
        size = min(self.params.piece, self.params.size - index * self.params.piece)
        attempt.flow = self.network.start(holder.up, node.down, size, leader=leader, base=base)
        mine = node.inflight.get(index)
        if mine is not None and mine.feed is not None:
            mine.feed.fire((attempt.flow, 0))
        yield attempt.flow.done
        self._free_slot(holder)
        attempt.counted = False
        holder.uploaded += size
        attempt.done.fire(True)

    def _wait_for_slot(self, holder: _Node, attempt: _Attempt) -> Step:
        """`UploadSlots.take` with every slot taken: wait in line for one, a while. True once
        the attempt holds one; False when it was cancelled meanwhile or answered busy."""
        attempt.slot = self.kernel.event()
        holder.waiting.append(attempt.slot)
        yield self.kernel.first_of([attempt.slot, self.kernel.timeout(float(_PEER.hedge_after))])
        slot, attempt.slot = attempt.slot, None
        if attempt.cancelled:  # (_cancel took it out of the line)
            if slot.fired:
                self._free_slot(holder)
            return False
        if not slot.fired:
            holder.waiting.remove(slot)
            yield self.params.rtt / 2
            attempt.done.fire(_BUSY)
            return False
        return True

    def _begins(self, holder: _Node, index: int, tree: bool) -> Step:
        """`PeerServer._begins`: a piece neither held nor arriving at a holder that reads the
        blob (or at any holder, asked by a child in the piece's tree filling the whole blob:
        `tree`) is waited for, up to PARENT_WAIT (the holder is the requester's parent in the
        piece's tree, about to ask for it); by a holder that has not begun the blob, up to
        UNSEEN_PARENT_WAIT unless it begins meanwhile."""
        if index in holder.received or index in holder.inflight:
            return
        if holder.blob is None and not tree:
            return
        started = holder.starts.setdefault(index, self.kernel.event())
        if holder.blob is None:
            yield self.kernel.first_of([started, self.kernel.timeout(UNSEEN_PARENT_WAIT)])
            if started.fired or holder.blob is None:
                return
            wait = PARENT_WAIT - UNSEEN_PARENT_WAIT
        else:
            wait = PARENT_WAIT
        yield self.kernel.first_of([started, self.kernel.timeout(wait)])

    def _free_slot(self, holder: _Node) -> None:
        """`UploadSlots.give`: the slot goes to the longest waiting request, if any."""
        if holder.waiting:
            holder.waiting.pop(0).fire()
        else:
            holder.uploads -= 1

    def _cancel(self, attempt: _Attempt) -> None:
        attempt.cancelled = True
        if attempt.slot is not None and not attempt.slot.fired:
            attempt.holder.waiting.remove(attempt.slot)
        if attempt.flow is not None:
            self.network.cancel(attempt.flow)
        if attempt.counted:
            self._free_slot(attempt.holder)
            attempt.counted = False


def _sha256(index: int) -> bytes:
    """A piece's digest as announced (every copy of a piece is the same here)."""
    return index.to_bytes(32)
