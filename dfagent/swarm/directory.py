"""The home's book of the blobs it is home for: each piece's sha256 (recorded when the piece
first left the origin), who holds it, who was told to fetch it from the origin, and who is
downloading it from which holder right now.

The book is kept per blob *and origin* (`scheme://host:port` of a registry): a piece fetched
from origin O is that registry's word until the blob has been checked whole, so it is
recorded, offered and described only under O, and the first sha256 announced under O binds
nobody else. A holder whose blob is verified announces it as verified under every registry
known to hold it; a verified record replaces an unverified one that disagrees.

Uploads are spread: holders are offered those that gave the piece least often first, then
the least busy, and when that one is already sending to someone and another requester is
downloading the piece, a newcomer is told to wait for that requester and take the piece from
it, up to a few newcomers per such relay (the one with fewest first). Without this, the first
holder of each new piece uploads it to every other node at once, over one link; without counting
copies per piece, the node that fetched a piece from the origin (whose uplink is idle whenever
it is between two sends) gives it out again and again while the nodes that received it sit
idle, so its uplink, not the links, sets the pace; and without the cap, a whole swarm queues
behind one relay at a time, so a piece spreads one node after another instead of as a tree.

Holder records are soft state: they expire unless re-announced, so a home that restarts, or a
new home after a membership change, fills up again from announcements. Pure: no I/O.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Answer", "Directory"]

_DOWNLOAD_TTL = 5.0  # a download from a holder not announced by then is forgotten
_SENDS_PER_HOLDER = 1  # beyond this many downloads in flight, a holder counts as busy
_WAITERS_PER_RELAY = 4  # newcomers told to wait for one downloading requester, at most
_WAIT_TTL = 1.0  # a waiter that has not asked again by then is forgotten (waiters poll faster)


@dataclass(slots=True)
class _Piece:
    sha256: bytes | None = None
    verified: bool = False  # `sha256` came from a holder that checked the whole blob
    holders: dict[str, float] = field(default_factory=dict)  # peer -> expiry
    lease: tuple[str, float] | None = None  # (peer told to fetch from the origin, expiry)
    downloads: dict[str, tuple[str, float]] = field(default_factory=dict)  # who -> (from, expiry)
    copies: dict[str, int] = field(default_factory=dict)  # holder -> times offered first for it
    waiters: dict[str, tuple[str, float]] = field(default_factory=dict)  # who -> (relay, expiry)


@dataclass(slots=True)
class _Blob:
    size: int
    layout: str
    pieces: dict[int, _Piece] = field(default_factory=dict)
    sending: dict[str, int] = field(default_factory=dict)  # holder -> downloads from it now


@dataclass(frozen=True, slots=True)
class Answer:
    """What a requester should do for one piece."""

    sha256: bytes | None  # recorded digest of the piece, to check peer bytes against
    holders: tuple[str, ...]  # peers to fetch from, in the order to try them
    fetch: bool  # the requester itself is to fetch it from the origin (it holds the lease)
    fetching: str | None  # another peer is fetching it (from the origin or a holder) now


class Directory:
    def __init__(
        self,
        *,
        holder_ttl: float,
        lease_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        shuffle: Callable[[list[str]], None] = random.shuffle,
    ) -> None:
        self._holder_ttl = holder_ttl
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._shuffle = shuffle
        self._blobs: dict[str, dict[str, _Blob]] = {}  # digest -> origin -> book

    def describe(self, digest: str, origin: str) -> tuple[int, str] | None:
        """(size, layout key) of the blob as `origin` gave it, if any holder got it from there."""
        blob = self._blobs.get(digest, {}).get(origin)
        return None if blob is None else (blob.size, blob.layout)

    def _blob(self, digest: str, origin: str, size: int, layout: str) -> _Blob | None:
        books = self._blobs.setdefault(digest, {})
        blob = books.get(origin)
        if blob is None:
            blob = books[origin] = _Blob(size, layout)
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
        `origin`'s copy (or of a verified copy `origin` is known to hold), else the lease to
        fetch it from `origin`, else who is fetching it now.

        `stalled`: the requester was told to wait for that peer, and no byte reaches it any
        more. Its lease passes to the requester (others who saw it stall then wait for the
        requester: one new origin fetch, not one each); a stalled download from a holder is
        forgotten, so the piece is offered afresh."""
        now = self._clock()
        blob = self._blob(digest, origin, size, layout)
        answers = {}
        for index in indices:
            if blob is None:
                answers[index] = Answer(None, (), True, None)
                continue
            piece = blob.pieces.setdefault(index, _Piece())
            if stalled is not None and stalled != requester:
                if piece.lease is not None and piece.lease[0] == stalled:
                    piece.lease = None
                _forget_download(blob, piece, stalled)
            holders = [p for p, expiry in piece.holders.items() if expiry > now and p != requester]
            if holders:
                answers[index] = self._from_holders(blob, piece, holders, requester, now)
            elif piece.lease is not None and piece.lease[1] > now and piece.lease[0] != requester:
                answers[index] = Answer(piece.sha256, (), False, piece.lease[0])
            else:
                piece.lease = (requester, now + self._lease_ttl)
                answers[index] = Answer(piece.sha256, (), True, None)
        return answers

    def _from_holders(
        self, blob: _Blob, piece: _Piece, holders: list[str], requester: str, now: float
    ) -> Answer:
        _forget_download(blob, piece, requester)  # a new answer replaces an earlier one
        _expire_downloads(blob, piece, now)
        piece.waiters.pop(requester, None)
        self._shuffle(holders)
        # stable: random among equals
        holders.sort(key=lambda h: (piece.copies.get(h, 0), blob.sending.get(h, 0)))
        if blob.sending.get(holders[0], 0) >= _SENDS_PER_HOLDER:
            relay = _least_awaited_relay(piece, holders, now)
            if relay is not None:
                piece.waiters[requester] = (relay, now + _WAIT_TTL)
                return Answer(piece.sha256, (), False, relay)
        piece.downloads[requester] = (holders[0], now + _DOWNLOAD_TTL)
        piece.copies[holders[0]] = piece.copies.get(holders[0], 0) + 1
        blob.sending[holders[0]] = blob.sending.get(holders[0], 0) + 1
        return Answer(piece.sha256, tuple(holders), False, None)

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
            _forget_download(blob, piece, holder)
            if piece.lease is not None and piece.lease[0] == holder:
                piece.lease = None
        return refused

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
        for index in list(blob.pieces):
            piece = blob.pieces[index]
            piece.holders = {p: e for p, e in piece.holders.items() if e > now}
            if piece.lease is not None and piece.lease[1] <= now:
                piece.lease = None
            _expire_downloads(blob, piece, now)
            if not piece.holders and piece.lease is None and not piece.downloads:
                del blob.pieces[index]
        if not blob.pieces:
            del books[origin]

    def release(self, digest: str, origin: str, indices: Iterable[int], requester: str) -> None:
        """The requester gave up its origin fetches: let someone else take them."""
        blob = self._blobs.get(digest, {}).get(origin)
        if blob is None:
            return
        for index in indices:
            piece = blob.pieces.get(index)
            if piece is not None and piece.lease is not None and piece.lease[0] == requester:
                piece.lease = None


def _least_awaited_relay(piece: _Piece, holders: list[str], now: float) -> str | None:
    """The requester downloading the piece now (not yet a holder) that fewest others wait
    for, if it has room for one more; waiters whose relay is done or gone are dropped first."""
    for who, (relay, expiry) in list(piece.waiters.items()):
        if expiry <= now or relay in holders or relay not in piece.downloads:
            del piece.waiters[who]
    waiting = Counter(relay for relay, _ in piece.waiters.values())
    relays = [who for who in piece.downloads if who not in holders]
    if not relays:
        return None
    relay = min(relays, key=lambda who: waiting[who])
    return relay if waiting[relay] < _WAITERS_PER_RELAY else None


def _expire_downloads(blob: _Blob, piece: _Piece, now: float) -> None:
    for who, (_, expiry) in list(piece.downloads.items()):
        if expiry <= now:
            _forget_download(blob, piece, who)


def _forget_download(blob: _Blob, piece: _Piece, requester: str) -> None:
    record = piece.downloads.pop(requester, None)
    if record is None:
        return
    left = blob.sending.get(record[0], 0) - 1
    if left > 0:
        blob.sending[record[0]] = left
    else:
        blob.sending.pop(record[0], None)
