"""The simulated network: links with a capacity (bytes/s) and fluid flows across two of them
(the sender's uplink, the receiver's downlink), sharing every link max-min fairly.

Each link advertises a fair share: its capacity, less what the flows held back elsewhere take,
split evenly among the rest (water-filling). A flow runs at the smaller of its two links'
shares; that fixed point is the max-min fair allocation. When a flow starts or ends, only the
shares that move are recomputed, starting from its two links and spreading along the flows
whose other end changed, so an event costs about the flows near it, not every flow in the
network. Bytes move as a fluid: no packets, no slow start, no queueing delay (the request's
round trip is the caller's to add).

A flow may follow a leader (a relay passing a piece on while it arrives): it never gets ahead
of the bytes that have reached the relay. Caught up with them, it runs no faster than its
leader; held back by its own links, it falls behind, and once they free up it runs as fast as
they allow until it has caught up again (a relay sends whatever it has). Once the leader is
done, the follower is free.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bench.sim_events import Event, Kernel

__all__ = ["Flow", "Link", "Network"]

_TOLERANCE = 1e-6  # relative change of a share worth passing on
_BYTE = 1e-3  # fluid arithmetic: a flow this close to a mark has reached it
_CAUGHT_UP = 1.0  # bytes: a follower this close behind its leader's bytes has caught up
_FREE = float("inf")


@dataclass(eq=False, slots=True)
class Link:
    capacity: float  # bytes per second
    name: str = ""
    flows: dict[Flow, None] = field(default_factory=dict)  # ordered: runs are reproducible
    share: float = 0.0

    def __post_init__(self) -> None:
        self.share = self.capacity


@dataclass(eq=False, slots=True)
class Flow:
    sender: Link
    receiver: Link
    size: float
    done: Event
    moved: float = 0.0  # bytes delivered, as of `since`
    rate: float = 0.0
    since: float = 0.0
    version: int = 0  # bumps whenever the scheduled arrival is replaced
    marks: list[tuple[float, Event]] = field(default_factory=list)  # (offset, fired then)
    running: bool = True
    cap: float = _FREE  # the leader's rate while caught up with it
    leader: Flow | None = None
    base: float = 0.0  # the leader's bytes that this flow's first byte waits for
    catch_version: int = 0  # bumps whenever the planned catch-up is replaced
    followers: list[Flow] = field(default_factory=list)

    def other(self, link: Link) -> Link:
        return self.receiver if link is self.sender else self.sender

    @property
    def paced_by_leader(self) -> bool:
        """Running at its leader's pace, below what both its links would give it."""
        return self.cap < min(self.sender.share, self.receiver.share)


class Network:
    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self.settles = 0  # link shares recomputed, in all (the model's own cost)
        self._recaps: deque[Flow] = deque()  # followers whose cap may have to change
        self._following = False

    def start(
        self,
        sender: Link,
        receiver: Link,
        size: float,
        *,
        leader: Flow | None = None,
        base: float | None = None,
    ) -> Flow:
        """A flow of `size` bytes; its `done` event fires once the last byte is in. With a
        `leader` still running, its bytes are the leader's from byte `base` on (default: as
        far as the leader has come), and it never gets ahead of them (a cut-through relay)."""
        flow = Flow(sender, receiver, size, self._kernel.event(), since=self._kernel.now)
        if leader is not None and leader.running:
            flow.leader = leader
            flow.base = self._moved(leader) if base is None else base
            flow.cap = self._cap(flow)
            leader.followers.append(flow)
        sender.flows[flow] = None
        receiver.flows[flow] = None
        self._settle([sender, receiver], {flow: None})
        self._recaps.append(flow)
        self._follow()
        return flow

    def reach(self, flow: Flow, offset: float) -> Event:
        """An event that fires once `flow` has delivered `offset` bytes."""
        assert offset <= flow.size + _BYTE, "a flow never reaches past its end"
        event = self._kernel.event()
        if offset <= self._moved(flow) + _BYTE:
            event.fire()
            return event
        flow.marks.append((offset, event))
        flow.marks.sort(key=lambda mark: mark[0])
        self._schedule(flow)
        return event

    def cancel(self, flow: Flow) -> None:
        """Stop `flow` (its `done` never fires)."""
        if flow.running:
            self._remove(flow)

    # --------------------------------------------------------------------------------------

    def _moved(self, flow: Flow) -> float:
        return flow.moved + flow.rate * (self._kernel.now - flow.since)

    def _remove(self, flow: Flow) -> None:
        flow.moved = self._moved(flow)
        flow.since = self._kernel.now
        flow.rate = 0.0
        flow.running = False
        flow.version += 1
        flow.sender.flows.pop(flow, None)
        flow.receiver.flows.pop(flow, None)
        self._settle([flow.sender, flow.receiver], {})
        followers, flow.followers = flow.followers, []
        for follower in followers:  # free to run
            follower.leader = None
            self._recaps.append(follower)
        self._follow()

    def _cap(self, flow: Flow) -> float:
        """A follower caught up with the bytes at its relay runs at its leader's rate; one
        behind them (or whose leader is done) runs as fast as its links allow."""
        leader = flow.leader
        if leader is None or not leader.running:
            return _FREE
        behind = self._moved(leader) - flow.base - self._moved(flow)
        return leader.rate if behind <= _CAUGHT_UP else _FREE

    def _follow(self) -> None:
        """Pass rate changes down chains of followers (a loop, not recursion: a chain may be
        as long as the cluster), and plan when each follower that is behind catches up."""
        if self._following:
            return
        self._following = True
        while self._recaps:
            flow = self._recaps.popleft()
            if not flow.running:
                continue
            cap = self._cap(flow)
            if cap != flow.cap:
                flow.cap = cap
                self._settle([flow.sender, flow.receiver], {flow: None})
            self._plan_catch_up(flow)
        self._following = False

    def _plan_catch_up(self, flow: Flow) -> None:
        flow.catch_version += 1
        leader = flow.leader
        if flow.cap != _FREE or leader is None or not leader.running:
            return
        closing = flow.rate - leader.rate
        if closing <= 0:
            return
        behind = self._moved(leader) - flow.base - self._moved(flow)
        version = flow.catch_version
        self._kernel.after(max(0.0, behind / closing), lambda _: self._caught_up(flow, version))

    def _caught_up(self, flow: Flow, version: int) -> None:
        if version == flow.catch_version and flow.running:
            self._recaps.append(flow)
            self._follow()

    def _settle(self, links: list[Link], touched: dict[Flow, None]) -> None:
        """Recompute the shares that change from `links` on, then the rates of the flows on
        any link whose share moved (and of `touched`)."""
        pending = list(links)
        queued = set(pending)
        moved = dict.fromkeys(links)
        while pending:
            link = pending.pop()
            queued.discard(link)
            self.settles += 1
            share = _fair_share(link)
            if abs(share - link.share) <= _TOLERANCE * link.capacity:
                continue
            link.share = share
            moved[link] = None
            for flow in link.flows:
                other = flow.other(link)
                if other not in queued:
                    queued.add(other)
                    pending.append(other)
        for link in moved:
            touched.update(link.flows)
        for flow in touched:
            if flow.running:
                rate = min(flow.sender.share, flow.receiver.share, flow.cap)
                if rate != flow.rate:
                    flow.moved = self._moved(flow)
                    flow.since = self._kernel.now
                    flow.rate = rate
                    self._schedule(flow)
                    self._recaps += flow.followers
                    if flow.leader is not None:
                        self._recaps.append(flow)

    def _schedule(self, flow: Flow) -> None:
        """Plan the flow's next arrival: its next mark, or its end."""
        flow.version += 1
        if flow.rate <= 0:
            return
        target = flow.marks[0][0] if flow.marks else flow.size
        delay = max(0.0, (target - self._moved(flow)) / flow.rate)
        version = flow.version
        self._kernel.after(delay, lambda _: self._arrive(flow, version))

    def _arrive(self, flow: Flow, version: int) -> None:
        if version != flow.version or not flow.running:
            return
        moved = self._moved(flow)
        while flow.marks and flow.marks[0][0] <= moved + _BYTE:
            flow.marks.pop(0)[1].fire()
        if moved + _BYTE >= flow.size:
            self._remove(flow)
            flow.done.fire()
            return
        self._schedule(flow)


def _fair_share(link: Link) -> float:
    """Water-filling: flows held below an even split by their other link keep that rate; the
    rest of the capacity is split evenly among the others. With every flow held elsewhere, the
    largest of them could still grow by what is left."""
    if not link.flows:
        return link.capacity
    elsewhere = sorted(min(flow.other(link).share, flow.cap) for flow in link.flows)
    left, count = link.capacity, len(elsewhere)
    for share in elsewhere:
        if share * count >= left:
            return left / count
        left -= share
        count -= 1
    return left + elsewhere[-1]
