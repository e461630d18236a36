"""The home's book of the blobs it is home for: each piece's sha256 (recorded when the piece
first left the origin), who holds it, who was told to fetch it from the origin, and who is
receiving it from which peer right now.

The book is kept per blob *and origin* (`scheme://host:port` of a registry): a piece fetched
from origin O is that registry's word until the blob has been checked whole, so it is
recorded, offered and described only under O, and the first sha256 announced under O binds
nobody else. A holder whose blob is verified announces it as verified under every registry
known to hold it; a verified record replaces an unverified one that disagrees.

Uploads are spread, and pieces move on while they arrive. With the swarm's members known
(set_members, at least FEWEST_MEMBERS of them), a member takes each piece from its parent in
the piece's stripe tree (StripeTrees): the root fetches it from the origin, every other member
takes it from its parent as it arrives there, or from its parent's copy. A member early for its
parent waits a moment for it rather than fetch the piece itself: it is sent to its parent all
the same when the parent reads that part of the blob (the parent's server then holds the
request until the piece begins to arrive there, and nobody asks the home again), else told to
ask again shortly. A parent that is not reading the blob is not waited for. When every member
reads the blob at once, every uplink then carries about one copy of it and the origin sends one
in all. Whoever has no parent to take a piece from (a parent gone, a reader alone, a peer
outside the member list, a smaller swarm) gets the usual choice, below.

The usual choice offers holders, those that gave the piece least often first, then the least
busy. When every holder is busy sending, or nobody holds the piece yet, the requester is told
to take it from a peer that is receiving it right now (the origin's fetcher, or an earlier
requester) as the bytes arrive there: a cut-through relay, which the requester checks like
any peer's copy. The relay chosen is the one passing the piece on to fewest others, so the
piece runs down a line of peers, each uploading it once, at about the speed of one copy
instead of one copy per hop; a line is cut at _RELAY_DEPTH, since each hop adds a little
delay, and a branch then starts at the peer uploading least (a branch at a peer already
passing every piece on would halve its pace). Without this, the first holder of each new
piece uploads it to every other node at once, over one link; and without counting copies per
piece, the node that fetched a piece from the origin (whose uplink is idle whenever it is
between two sends) gives it out again and again while the nodes that received it sit idle.

Holder records are soft state: they expire unless re-announced, so a home that restarts, or a
new home after a membership change, fills up again from announcements. Pure: no I/O.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from dfagent.swarm.trees import StripeTrees

__all__ = ["PARENT_WAIT", "STALL_SECONDS", "UNSEEN_PARENT_WAIT", "Answer", "Directory"]

_DOWNLOAD_TTL = 5.0  # a download not announced by then is forgotten
_SENDS_PER_HOLDER = 1  # beyond this many downloads in flight, a holder counts as busy
_RELAY_DEPTH = 16  # peers a piece passes through on its way from its source, at most
_HOLDERS_OFFERED = 8  # holders named in one answer, the best first
# Holders, or relays, ranked for one answer, at most: with more, as many drawn at random.
# Ranking all of a piece's thousand holders cost a home about 0.4 ms a lookup, and all of its
# thousand relays about 0.3 ms, more than the rest of the request; the best of 32 random ones
# spreads uploads about as evenly.
_RANKED_AMONG = 32
# A requester whose parent in the piece's stripe tree (see StripeTrees) has not asked for it
# yet waits this long for it, if the parent is about to: its latest lookup, within
# _READING_SECONDS, went up to a piece at most _NEAR_PIECES from this one (it reads the same
# part of the blob; a lazy reader elsewhere in it is not waited for). It is sent to the parent
# at once, whose server holds a request for a piece that has not begun to arrive there up to
# PARENT_WAIT (asking the home again every few milliseconds instead made up a third of a
# 1,000-node fill's requests to it). A parent that has not asked yet while the book is younger
# than _READING_SECONDS (the members begin to read at once) is waited for by asking again,
# only UNSEEN_PARENT_WAIT, once per blob and parent (a node starting a container alone waits
# that long for nobody, not that long for each piece; so long a parent's server holds a request
# from a child filling the whole blob before the parent has begun it, see PeerServer._piece).
# Then the usual choice decides: the lease, often, which makes the requester the piece's
# root. Real agents lag each other by more than the simulated ones: with 50 ms, the one
# fastest through the blob (its home, which asks itself) took most origin fetches of a real
# 4-node fill.
PARENT_WAIT = 0.5
UNSEEN_PARENT_WAIT = 0.05
_READING_SECONDS = 2.0
_NEAR_PIECES = 16
# A peer counts as stalled once no byte of the blob has reached it for this long (the engine
# watches for it). A lease younger than that cannot have been seen stalling: a report against
# it is news of the peer's earlier role (a relay whose source stalled, before it took over).
STALL_SECONDS = 1.0


@dataclass(slots=True)
class _Piece:
    sha256: bytes | None = None
    verified: bool = False  # `sha256` came from a holder that checked the whole blob
    holders: dict[str, float] = field(default_factory=dict)  # peer -> expiry
    lease: tuple[str, float] | None = None  # (peer told to fetch from the origin, expiry)
    downloads: dict[str, tuple[str, float]] = field(default_factory=dict)  # who -> (from, expiry)
    followers: Counter[str] = field(default_factory=Counter)  # peer -> downloads from it now
    copies: dict[str, int] = field(default_factory=dict)  # holder -> times offered first for it
    # No download expires before this (a lower bound: lookups skip the expiry scan until then).
    first_expiry: float = math.inf
    # Hops from the source to each peer receiving the piece (see _Hops), kept between lookups
    # while the holders stay `hops_held`; a changed download record drops what it changes.
    hops: dict[str, int] = field(default_factory=dict)
    hops_held: frozenset[str] = frozenset()
    # Peers receiving the piece that pass it on to nobody (the ends of lines), and when each
    # began to receive it (the order of `downloads`): where a new requester usually goes.
    # (A dict for its order, which keeps a random draw among them repeatable.)
    ends: dict[str, None] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)
    downloads_made: int = 0
    # Requesters waiting for their parent in the piece's tree, and since when (_from_parent).
    waits: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Blob:
    size: int
    layout: str
    born: float  # when the home began the book
    pieces: dict[int, _Piece] = field(default_factory=dict)
    sending: dict[str, int] = field(default_factory=dict)  # holder -> downloads from it now
    # peer -> when it last looked up, and the highest piece it asked for then
    asked: dict[str, tuple[float, int]] = field(default_factory=dict)
    # (requester, parent) -> since when the requester has waited for a parent in a stripe tree
    # that has not looked up any piece of the blob (see UNSEEN_PARENT_WAIT)
    unseen: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a requester should do for one piece."""

    sha256: bytes | None  # recorded digest of the piece, to check peer bytes against
    holders: tuple[str, ...]  # peers to fetch from, in the order to try them
    fetch: bool  # the requester itself is to fetch it from the origin (it holds the lease)
    fetching: str | None  # a peer receiving it now: take it from there as it arrives
    # Nothing to do yet: the peer to take it from is about to receive it. Ask again shortly.
    wait: bool = False


class Directory:
    def __init__(
        self,
        *,
        holder_ttl: float,
        lease_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        shuffle: Callable[[list[str]], None] = random.shuffle,
        sample: Callable[[list[str], int], list[str]] = random.sample,
    ) -> None:
        self._holder_ttl = holder_ttl
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._shuffle = shuffle
        self._sample = sample
        self._blobs: dict[str, dict[str, _Blob]] = {}  # digest -> origin -> book
        self._trees = StripeTrees()

    def set_members(self, members: Sequence[str]) -> None:
        """The swarm's members: in a swarm of FEWEST_MEMBERS or more, a requester that is
        one takes a piece from its parent in the piece's stripe tree while the parent has it
        or is receiving it (see _from_parent). Otherwise the holders and relays are ranked
        as below."""
        self._trees.set_members(members)

    def describe(self, digest: str, origin: str) -> tuple[int, str] | None:
        """(size, layout key) of the blob as `origin` gave it, if any holder got it from there."""
        blob = self._blobs.get(digest, {}).get(origin)
        return None if blob is None else (blob.size, blob.layout)

    def _blob(self, digest: str, origin: str, size: int, layout: str) -> _Blob | None:
        books = self._blobs.setdefault(digest, {})
        blob = books.get(origin)
        if blob is None:
            blob = books[origin] = _Blob(size, layout, self._clock())
        if (blob.size, blob.layout) != (size, layout):
            return None  # cut differently (or a lying size): no sharing between them
        return blob

    def lookup(
        self,
        digest: str,
        origin: str,
        size: int,
        layout: str,
        *,
        indices: Iterable[int],
        requester: str,
        stalled: str | None = None,
    ) -> dict[int, Answer]:
        """Per piece, for a requester filling the blob with `origin`'s bytes: holders of
        `origin`'s copy (or of a verified copy `origin` is known to hold), or a peer receiving
        it now to take it from as it arrives (see _source), else the lease to fetch it from
        `origin`.

        `stalled`: the requester was told to take the piece from that peer, and no byte
        reaches it any more. Its lease passes to the requester (others who saw it stall then
        take the piece from the requester: one new origin fetch, not one each); a stalled
        download is forgotten, so the piece is offered afresh."""
        now = self._clock()
        blob = self._blob(digest, origin, size, layout)
        indices = list(indices)
        if blob is not None and indices:
            blob.asked[requester] = (now, max(indices))
        answers = {}
        for index in indices:
            if blob is None:
                answers[index] = Answer(None, (), True, None)
                continue
            piece = blob.pieces.setdefault(index, _Piece())
            # An agent asks only for what it does not hold: one still on record as a holder
            # lost its copy (evicted, or its cache failed a check). Offered on, it would send
            # others away empty-handed, and a relay told to take the piece from it while it
            # takes the piece from that relay would wait on a loop in which no byte arrives.
            piece.holders.pop(requester, None)
            if stalled is not None and stalled != requester:
                if (
                    piece.lease is not None
                    and piece.lease[0] == stalled
                    and now - (piece.lease[1] - self._lease_ttl) >= STALL_SECONDS
                ):
                    piece.lease = None
                _forget_download(blob, piece, stalled)
            holders = [p for p, expiry in piece.holders.items() if expiry > now]
            if piece.lease is not None and piece.lease[1] <= now:
                piece.lease = None
            if piece.lease is not None and piece.lease[0] == requester:
                piece.lease = None  # asking again: it gave the fetch up
            _forget_download(blob, piece, requester)  # a new answer replaces an earlier one
            _expire_downloads(blob, piece, now)
            parent = self._trees.parent(digest, index, requester)
            if parent is not None:
                answer = self._from_parent(
                    blob, index, piece, parent=parent, holders=holders, requester=requester, now=now
                )
                if answer is not None:
                    answers[index] = answer
                    continue
            if holders or piece.lease is not None:
                answers[index] = self._source(blob, piece, holders, requester, now)
            else:
                piece.lease = (requester, now + self._lease_ttl)
                answers[index] = Answer(piece.sha256, (), True, None)
        return answers

    def _source(
        self, blob: _Blob, piece: _Piece, holders: list[str], requester: str, now: float
    ) -> Answer:
        """Where the requester gets a piece that holders have or somebody is receiving: an
        idle holder (the one that gave it least), else a relay, else a busy holder."""
        held = set(holders)
        holders = self._ranked(blob, piece, holders)
        if not holders or _busy(blob, holders[0]):
            relay = _relay(piece, held, requester, blob.sending, self._few)
            if relay is not None:
                _count_download(blob, piece, requester, relay, now)
                return Answer(piece.sha256, (), False, relay)
        _count_download(blob, piece, requester, holders[0], now)
        return Answer(piece.sha256, tuple(holders), False, None)

    def _few(self, peers: Collection[str]) -> list[str]:
        """`peers` in their order, or _RANKED_AMONG of them drawn at random if there are more."""
        if len(peers) <= _RANKED_AMONG:
            return list(peers)
        drawn = set(self._sample(list(peers), _RANKED_AMONG))
        return [peer for peer in peers if peer in drawn]

    def _ranked(self, blob: _Blob, piece: _Piece, holders: list[str]) -> list[str]:
        """The few holders worth offering, the best first: idle ones before busy ones, then
        those that gave the piece least, then those sending least; random among equals
        (and among _RANKED_AMONG drawn at random, when there are more)."""
        if len(holders) > _RANKED_AMONG:
            holders = self._sample(holders, _RANKED_AMONG)  # (in random order)
        else:
            self._shuffle(holders)
        return heapq.nsmallest(  # stable: the shuffle breaks ties
            _HOLDERS_OFFERED,
            holders,
            key=lambda h: (_busy(blob, h), piece.copies.get(h, 0), blob.sending.get(h, 0)),
        )

    def _from_parent(
        self,
        blob: _Blob,
        index: int,
        piece: _Piece,
        *,
        parent: str,
        holders: list[str],
        requester: str,
        now: float,
    ) -> Answer | None:
        """The requester's parent in the piece's stripe tree holds the piece, or receives
        it: take it from there (from its copy first, then from the other holders worth
        offering, should it not answer). It does not yet, but reads that part of the blob: take
        it from there all the same (its server waits a moment for the piece to begin to
        arrive); or it has not begun to read a blob the members have just begun to: ask again
        shortly. None: the usual choice (_source, or the lease)."""
        held = parent in holders
        lease = piece.lease
        if held or parent in piece.downloads or (lease is not None and lease[0] == parent):
            piece.waits.pop(requester, None)
        elif not _about_to_ask(blob, parent, index, now):
            return None
        elif parent not in blob.asked:  # not seen yet: waited for once, not for every piece
            if now - blob.unseen.setdefault((requester, parent), now) >= UNSEEN_PARENT_WAIT:
                return None
            return Answer(piece.sha256, (), False, None, wait=True)
        elif now - piece.waits.setdefault(requester, now) >= PARENT_WAIT:
            return None
        if _through(piece, parent, requester):
            return None
        _count_download(blob, piece, requester, parent, now)
        if held:
            others = [h for h in holders if h != parent]
            offered = [parent, *self._ranked(blob, piece, others)][:_HOLDERS_OFFERED]
            return Answer(piece.sha256, tuple(offered), False, None)
        return Answer(piece.sha256, (), False, parent)

    def announce(
        self,
        digest: str,
        origin: str,
        size: int,
        layout: str,
        *,
        holder: str,
        pieces: dict[int, bytes],
        verified: bool,
    ) -> list[int]:
        """Record `holder` for `pieces` of `origin`'s copy (`verified`: the holder checked the
        whole blob); returns the indices refused because their sha256 differs from a verified
        one, or from the one `origin`'s copy was first recorded with."""
        blob = self._blob(digest, origin, size, layout)
        if blob is None:
            return list(pieces)
        expiry = self._clock() + self._holder_ttl
        refused = []
        for index, sha256 in pieces.items():
            piece = blob.pieces.setdefault(index, _Piece())
            if piece.sha256 is None:
                piece.sha256, piece.verified = sha256, verified
            elif piece.sha256 != sha256:
                if piece.verified or not verified:
                    refused.append(index)
                    continue
                # Proven bytes replace the registry's earlier word, and its holders with it.
                piece.sha256, piece.verified = sha256, True
                piece.holders.clear()
            elif verified:
                piece.verified = True
            piece.holders[holder] = expiry
            piece.waits.pop(holder, None)
            _forget_download(blob, piece, holder)
            if piece.lease is not None and piece.lease[0] == holder:
                piece.lease = None
        return refused

    def recorded(
        self, digest: str, origin: str, size: int, layout: str, indices: Iterable[int]
    ) -> dict[int, bytes | None]:
        """The sha256 recorded for each piece of `origin`'s copy (None: nobody announced it
        yet). For a requester that took a piece from its origin fetcher as it arrived, before
        there was anything to check it against."""
        blob = self._blobs.get(digest, {}).get(origin)
        if blob is None or (blob.size, blob.layout) != (size, layout):
            return dict.fromkeys(indices)
        return {i: piece.sha256 if (piece := blob.pieces.get(i)) else None for i in indices}

    def check_in(
        self,
        digest: str,
        origin: str,
        size: int,
        layout: str,
        *,
        holder: str,
        pieces: dict[int, bytes],
    ) -> list[int]:
        """Record `holder` for each of `pieces` of `origin`'s copy whose sha256 (that of the
        bytes it received from a relay) is the one recorded: a holder that asks for the
        record to check a piece announces it in the same request. Returns those recorded."""
        recorded = self.recorded(digest, origin, size, layout, pieces)
        matching = {i: sha for i, sha in pieces.items() if recorded[i] == sha}
        if matching:
            self.announce(
                digest, origin, size, layout, holder=holder, pieces=matching, verified=False
            )
        return list(matching)

    def drop_holder(self, digest: str, index: int, holder: str) -> None:
        """A requester found bad bytes at `holder`: stop sending others there."""
        for blob in self._blobs.get(digest, {}).values():
            if index in blob.pieces:
                blob.pieces[index].holders.pop(holder, None)

    def prune(self) -> None:
        """Forget pieces nobody holds or fetches any more, and blobs left empty."""
        now = self._clock()
        for digest in list(self._blobs):
            books = self._blobs[digest]
            for origin in list(books):
                self._prune_book(books, origin, now)
            if not books:
                del self._blobs[digest]

    @staticmethod
    def _prune_book(books: dict[str, _Blob], origin: str, now: float) -> None:
        blob = books[origin]
        blob.asked = {p: a for p, a in blob.asked.items() if now - a[0] <= _READING_SECONDS}
        blob.unseen = {k: t for k, t in blob.unseen.items() if now - t <= _READING_SECONDS}
        for index in list(blob.pieces):
            piece = blob.pieces[index]
            piece.holders = {p: e for p, e in piece.holders.items() if e > now}
            piece.waits = {p: t for p, t in piece.waits.items() if now - t <= _DOWNLOAD_TTL}
            if piece.lease is not None and piece.lease[1] <= now:
                piece.lease = None
            _expire_downloads(blob, piece, now)
            if not piece.holders and piece.lease is None and not piece.downloads:
                del blob.pieces[index]
        if not blob.pieces:
            del books[origin]

    def release(self, digest: str, origin: str, indices: Iterable[int], requester: str) -> None:
        """The requester gave these pieces up without keeping them: someone else may take its
        origin fetches, and nobody is sent to it for them (a piece it checked in, see
        check_in, then could not store)."""
        blob = self._blobs.get(digest, {}).get(origin)
        if blob is None:
            return
        for index in indices:
            piece = blob.pieces.get(index)
            if piece is None:
                continue
            if piece.lease is not None and piece.lease[0] == requester:
                piece.lease = None
            piece.holders.pop(requester, None)


def _about_to_ask(blob: _Blob, peer: str, index: int, now: float) -> bool:
    """Whether `peer` is about to ask for piece `index` (see PARENT_WAIT): it reads the same
    part of the blob now, or has not begun to read a blob the home has just begun to keep."""
    asked = blob.asked.get(peer)
    if asked is None or now - asked[0] > _READING_SECONDS:
        return asked is None and now - blob.born <= _READING_SECONDS
    return abs(asked[1] - index) <= _NEAR_PIECES


def _busy(blob: _Blob, peer: str) -> bool:
    return blob.sending.get(peer, 0) >= _SENDS_PER_HOLDER


def _relay(
    piece: _Piece,
    held: set[str],
    requester: str,
    sending: dict[str, int],
    few: Callable[[Collection[str]], list[str]],
) -> str | None:
    """A peer receiving the piece right now (the origin's fetcher, or a requester told where
    to get it) for the requester to take it from as it arrives, if there is one: the one that
    passes it on to fewest others, then the one uploading least of the blob, then the one
    nearest the piece's source. So a piece runs down a line of peers, each uploading it once;
    each hop adds a little delay, so a line grows only to _RELAY_DEPTH, and then a branch
    starts at a peer with upload to spare (one that ends the lines of other pieces). Never a
    relay that receives the piece through the requester. `held`: the piece's holders, which
    are sources, not relays. `few`: the candidates to rank, of those there are (see
    _RANKED_AMONG)."""
    choice = _RelayChoice(piece, held, requester, sending, _Hops(piece, held), few)
    return choice.line_end() or choice.ranked()


@dataclass(frozen=True, slots=True)
class _RelayChoice:
    """What _relay chooses from, and the two ways it chooses."""

    piece: _Piece
    held: set[str]
    requester: str
    sending: dict[str, int]
    hops: _Hops
    few: Callable[[Collection[str]], list[str]]

    def ranked(self) -> str | None:
        """_relay's choice, made by ranking the peers receiving the piece."""
        piece, requester = self.piece, self.requester
        relays = [
            who for who in self.few(piece.downloads) if who not in self.held and who != requester
        ]
        if piece.lease is not None and piece.lease[0] != requester:
            relays.append(piece.lease[0])
        known, followers, sending = piece.hops, piece.followers, self.sending
        ranked = [
            (
                (deep := known[who] if who in known else self.hops(who)) >= _RELAY_DEPTH,
                followers.get(who, 0),
                sending.get(who, 0),
                deep,
                position,
                who,
            )
            for position, who in enumerate(relays)
        ]
        while ranked:
            best = min(ranked)
            if not _through(piece, best[-1], requester):
                return best[-1]
            ranked.remove(best)
        return None

    def line_end(self) -> str | None:
        """The relay _relay chooses when some line has room at its end (a peer passing the
        piece on to nobody, fewer than _RELAY_DEPTH hops from its source), found among those
        ends rather than among every peer receiving the piece. None when no line has room, or
        when the best end receives the piece through the requester (then `ranked` decides)."""
        piece, requester = self.piece, self.requester
        ends: list[tuple[str, float]] = [
            (who, piece.since[who])
            for who in self.few(piece.ends)
            if who not in self.held and who != requester
        ]
        lease = piece.lease
        if lease is not None and lease[0] != requester and not piece.followers.get(lease[0]):
            ends.append((lease[0], math.inf))  # the origin's fetcher ranks after every download
        best: tuple[tuple[int, int, float], str] | None = None
        known = piece.hops
        for who, since in ends:
            if (deep := known[who] if who in known else self.hops(who)) < _RELAY_DEPTH:
                rank = (self.sending.get(who, 0), deep, since)
                if best is None or rank < best[0]:
                    best = (rank, who)
        if best is None or _through(piece, best[1], requester):
            return None
        return best[1]


class _Hops:
    """Hops from a piece's source (a holder, or the origin's fetcher) to each peer receiving
    it: each line is walked once, and what was walked is kept in the piece for later lookups
    (a home with a thousand peers on one piece would otherwise walk them all on every lookup)
    until its holders change or a download record changes a line (_count_download,
    _forget_download)."""

    def __init__(self, piece: _Piece, held: set[str]) -> None:
        if piece.hops_held != held:
            piece.hops = {}
            piece.hops_held = frozenset(held)
        self._downloads = piece.downloads
        self._held = held
        self._known = piece.hops

    def __call__(self, peer: str) -> int:
        line = []
        while peer not in self._known:
            record = self._downloads.get(peer)
            if record is None or record[0] in self._held:
                self._known[peer] = 0
            elif len(line) > len(self._downloads):  # a loop (never made): not walked forever
                self._known[peer] = _RELAY_DEPTH
            else:
                line.append(peer)
                peer = record[0]
        hops = self._known[peer]
        for relay in reversed(line):
            hops += 1
            self._known[relay] = hops
        return hops


def _through(piece: _Piece, relay: str, requester: str) -> bool:
    """Whether `relay` receives the piece by way of `requester` (asking it would be a loop in
    which no byte ever arrives)."""
    for _ in range(len(piece.downloads)):
        if relay not in piece.downloads:
            return False
        relay = piece.downloads[relay][0]
        if relay == requester:
            return True
    return False


def _count_download(blob: _Blob, piece: _Piece, requester: str, source: str, now: float) -> None:
    _line_changes(piece, requester)
    expiry = now + _DOWNLOAD_TTL
    piece.downloads[requester] = (source, expiry)
    piece.since[requester] = piece.downloads_made
    piece.downloads_made += 1
    piece.first_expiry = min(piece.first_expiry, expiry)
    if not piece.followers.get(requester):
        piece.ends[requester] = None
    piece.followers[source] += 1
    piece.ends.pop(source, None)
    piece.copies[source] = piece.copies.get(source, 0) + 1
    blob.sending[source] = blob.sending.get(source, 0) + 1


def _expire_downloads(blob: _Blob, piece: _Piece, now: float) -> None:
    if now < piece.first_expiry:
        return
    for who, (_, expiry) in list(piece.downloads.items()):
        if expiry <= now:
            _forget_download(blob, piece, who)
    piece.first_expiry = min((expiry for _, expiry in piece.downloads.values()), default=math.inf)


def _line_changes(piece: _Piece, peer: str) -> None:
    """`peer`'s download record is about to change: drop the hops it decides (its own, and
    those of every peer that receives the piece through it)."""
    if piece.followers.get(peer):
        piece.hops.clear()
    else:
        piece.hops.pop(peer, None)


def _forget_download(blob: _Blob, piece: _Piece, requester: str) -> None:
    record = piece.downloads.pop(requester, None)
    if record is None:
        return
    _line_changes(piece, requester)
    piece.ends.pop(requester, None)
    del piece.since[requester]
    piece.followers[record[0]] -= 1
    if not piece.followers[record[0]]:
        del piece.followers[record[0]]
        if record[0] in piece.downloads:
            piece.ends[record[0]] = None
    left = blob.sending.get(record[0], 0) - 1
    if left > 0:
        blob.sending[record[0]] = left
    else:
        blob.sending.pop(record[0], None)
