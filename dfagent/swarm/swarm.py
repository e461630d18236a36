"""The swarm as the engine sees it: where a piece can come from, getting it from a peer
(checked against the sha256 its home recorded), and telling homes what this agent holds.

Everything is said per blob and origin (provenance): an unverified blob's pieces are announced
under the registry they came from, a verified blob's under every registry known to hold it
(marked verified), and a requester asks only under its own blob's provenance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dfagent.engine.inflight import InflightPiece
from dfagent.engine.network import PeerPiece, WholeFill
from dfagent.errors import DfagentError
from dfagent.integrity import sha256_of
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.client import MAX_PIECES_PER_REQUEST, MalformedAnswer, PeerClient, PeerError
from dfagent.swarm.directory import Answer, Directory
from dfagent.swarm.hashing import home_of
from dfagent.swarm.membership import Membership
from dfagent.swarm.rounds import Rounds
from dfagent.swarm.trees import FAN_OUT, StripeTrees
from dfagent.tasks import TaskOwner

__all__ = ["Swarm"]

log = logging.getLogger(__name__)

_ANNOUNCE_DELAY = 0.02  # batch announcements made within this long of each other
# A piece taken from its origin fetcher as it arrived waits this long, at most, for the sha256
# that fetcher announces once the piece is stored (asking again after 5 ms, then 10, ...).
_RECORD_WAIT_SECONDS = 2.0
_FIRST_RECORD_POLL_SECONDS, _LAST_RECORD_POLL_SECONDS = 0.005, 0.05
_REANNOUNCE_BATCH = 512  # stored pieces read at a time to announce again
# Pieces in one announcement request, well within what a home takes (MAX_PIECES_PER_REQUEST):
# a blob just verified is announced whole, which may be thousands of pieces.
_ANNOUNCE_BATCH = 512
# A whole read of a blob of fewer pieces is not filled from tree parents (see prove_whole):
# a reader alone would wait for parents that never come, for little gain.
_TREE_FILL_FEWEST_PIECES = 2 * FAN_OUT
# A tree parent busy with every upload slot is asked again after 5 ms, then 10, ... 100, for
# up to this long.
_BUSY_PARENT_SECONDS = 2.0
_FIRST_BUSY_POLL_SECONDS, _LAST_BUSY_POLL_SECONDS = 0.005, 0.1


@dataclass(frozen=True, slots=True)
class _Held:
    size: int
    layout: str  # the key of how the blob is cut into pieces


_Scope = tuple[str, str, bool]  # (digest, origin, verified): one announcement's subject


@dataclass(frozen=True, slots=True)
class _Asked:
    """What one request to a blob's home says once for all the pieces it asks about."""

    home: str
    digest: str
    origin: str
    size: int
    layout: str
    stalled: str | None = None  # (lookups only: see Directory.lookup)

    @classmethod
    def of(cls, home: str, blob: StoredBlob, stalled: str | None = None) -> _Asked:
        return cls(home, blob.digest.hex, blob.origin, blob.size, blob.layout.key, stalled)

    def body(self, pieces: Iterable[int]) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "origin": self.origin,
            "size": self.size,
            "layout": self.layout,
            "pieces": list(pieces),
        }


class Swarm:
    def __init__(
        self,
        membership: Membership,
        directory: Directory,
        client: PeerClient,
        store: PieceStore,
        metrics: Metrics,
        *,
        refresh: float,
        hedge_after: float,
        trees: StripeTrees | None = None,
    ) -> None:
        self._hedge_after = hedge_after
        self._trees = StripeTrees() if trees is None else trees
        self._membership = membership
        self._directory = directory
        self._client = client
        self._store = store
        self._metrics = metrics
        self._refresh = refresh
        self._tasks = TaskOwner("swarm")
        # A blob's lookups, and its sha256 queries, go to its home one request at a time;
        # pieces asked about meanwhile go together in the next (see rounds.py).
        self._lookups: Rounds[_Asked, None, Answer] = Rounds(
            self._send_lookup, self._tasks, "lookup", most=MAX_PIECES_PER_REQUEST
        )
        self._queries: Rounds[_Asked, bytes, tuple[bytes | None, bool]] = Rounds(
            self._send_query, self._tasks, "recorded", most=MAX_PIECES_PER_REQUEST
        )
        self._pending: dict[_Scope, dict[int, bytes]] = defaultdict(dict)
        self._pending_meta: dict[str, _Held] = {}
        self._flushing = False
        self._malformed: set[tuple[str, str]] = set()  # (peer, kind of answer) warned of
        # Relayed pieces a home recorded this agent for when it checked them (see _recorded),
        # not to be announced there again; forgotten at each refresh (one not stored by then
        # never will be, and announcing one twice does no harm).
        self._checked_in: set[tuple[_Scope, int]] = set()

    @property
    def me(self) -> str:
        return self._membership.me

    def home(self, digest_hex: str) -> str:
        return home_of(self._membership.members(), digest_hex)

    def others(self) -> list[str]:
        return self._membership.others()

    async def complete_at(
        self, peer: str, digest: str, size: int, url: str
    ) -> tuple[str, str | None]:
        """Ask `peer` to fetch the whole blob (from the swarm, else `url`); its (state, error)."""
        return await self._client.complete(peer, {"digest": digest, "size": size, "url": url})

    async def completion_at(self, peer: str, digest: str) -> tuple[str, str | None]:
        return await self._client.completion(peer, digest.removeprefix("sha256:"))

    async def aclose(self) -> None:
        await self._tasks.aclose()

    # asking --------------------------------------------------------------------------------

    async def describe(self, digest_hex: str, origin: str) -> tuple[int, str] | None:
        """(size, layout key) of a blob as `origin` gave it to some peer, without asking the
        origin."""
        home = self.home(digest_hex)
        if home == self.me:
            return self._directory.describe(digest_hex, origin)
        try:
            return await self._client.describe(home, digest_hex, origin)
        except PeerError as exc:
            self._home_failed("home unreachable", home, exc)
            return None

    async def lookup(
        self,
        blob: StoredBlob,
        source: BlobSource,
        indices: list[int],
        *,
        stalled: str | None = None,
    ) -> dict[int, Answer]:
        """Per piece: holders to fetch from, or leave to fetch from the origin (see
        Directory.lookup for `stalled`). With the home unreachable every piece goes to the
        origin (the swarm only ever makes things faster)."""
        digest = blob.digest.hex
        home = self.home(digest)
        started = time.monotonic()
        if home == self.me:
            answers = self._directory.lookup(
                digest,
                blob.origin,
                blob.size,
                blob.layout.key,
                indices=indices,
                requester=self.me,
                stalled=stalled,
            )
        else:
            try:
                answers = await self._lookups.ask(
                    _Asked.of(home, blob, stalled), dict.fromkeys(indices)
                )
            except PeerError as exc:
                self._metrics.directory_lookups.labels("error").inc()
                self._home_failed("home unreachable; using the origin", home, exc)
                return {i: Answer(None, (), True, None) for i in indices}
        self._metrics.directory_lookups.labels("ok").inc()
        self._metrics.directory_lookup_seconds.observe(time.monotonic() - started)
        return answers

    async def _send_lookup(self, asked: _Asked, pieces: dict[int, None]) -> dict[int, Answer]:
        body = {**asked.body(pieces), "requester": self.me, "stalled": asked.stalled}
        self._metrics.home_requests.labels("lookup").inc()
        self._metrics.home_pieces_asked.labels("lookup").inc(len(pieces))
        return await self._client.lookup(asked.home, body)

    async def prove_whole(self, blob: StoredBlob, source: BlobSource, fill: WholeFill) -> bool:
        """In a swarm with stripe trees (see StripeTrees), fill the whole blob from this
        agent's parent in each piece's tree, as the piece arrives there, without a word to the
        blob's home: a thousand members asking a home about every piece keep it busier than
        their links. Every member computes the trees alike. The bytes are staged and proven
        with the whole blob. Each stripe goes a piece at a time, apart from the others; one
        whose tree starts here comes the usual way (from the origin, with the lease).

        A parent may not send a piece: it does not read the blob (its server waits a moment
        for a parent about to), or fails. Before any parent has sent one, the members are not
        reading the blob together: the read goes the usual way, the quickest for a member
        alone. After that, the parent's stripe comes the usual way from that piece on and the
        others go on (its tree children still get it from here as it arrives).

        False, and the read goes the usual way (every piece then proven on its own), in a
        smaller swarm, for a small blob, as above, when a piece comes neither way or cannot
        be stored, and when the whole blob does not match its digest (its staged pieces are
        dropped)."""
        if not self._trees.includes(self.me) or blob.layout.count < _TREE_FILL_FEWEST_PIECES:
            return False
        stripes = [range(stripe, blob.layout.count, FAN_OUT) for stripe in range(FAN_OUT)]
        parent_sent = asyncio.Event()
        fills = [
            self._tasks.spawn(self._fill_stripe(blob, fill, s, parent_sent), name="tree-fill")
            for s in stripes
        ]
        # A reader that goes away leaves the stripes running: its tree children rely on them.
        for filled in asyncio.as_completed(fills):
            if not await filled:
                for job in fills:
                    job.cancel()
                await asyncio.wait(fills)  # (their claims given up before the usual read)
                self._metrics.tree_fills.labels("not_filled").inc()
                return False
        if not await fill.proven():
            self._metrics.tree_fills.labels("not_proven").inc()
            log.warning(
                "a blob filled from tree parents did not prove whole; its pieces are fetched "
                "again, each proven on its own",
                extra={"digest": str(blob.digest)},
            )
            return False
        self._metrics.tree_fills.labels("verified").inc()
        return True

    async def _fill_stripe(
        self, blob: StoredBlob, fill: WholeFill, indices: range, parent_sent: asyncio.Event
    ) -> bool:
        """The pieces of one stripe, in order, from this agent's parent in its tree (staged),
        or the usual way where the tree starts here, or from the first piece the parent did
        not send once `parent_sent` (some parent sent one); False once one came neither way
        (or could not be stored), or the parent did not send one before any parent did."""
        parent = self._trees.parent(blob.digest.hex, indices[0], self.me)
        for index in indices:
            piece = None if parent is None else fill.claim(index)
            if piece is None:  # the tree starts here; or the piece is here, staged or coming
                if not await fill.usual([index]):
                    return False
                continue
            try:
                data = await self._from_parent(parent, blob, piece)
            except BaseException:
                fill.give_up(piece)
                raise
            if data is None:
                fill.give_up(piece)
                if not parent_sent.is_set():
                    return False
                self._metrics.tree_stripes_usual.inc()
                parent = None
                if not await fill.usual([index]):
                    return False
                continue
            parent_sent.set()
            try:
                await fill.stage(piece, data)
            except (DfagentError, OSError) as exc:
                log.warning("cannot stage a piece; the blob is read the usual way",
                            extra={"digest": str(blob.digest), "error": str(exc)})  # fmt: skip
                return False
            self._metrics.tree_fill_pieces.inc()
        return True

    async def _from_parent(
        self, parent: str, blob: StoredBlob, piece: InflightPiece
    ) -> bytes | None:
        """A piece from this agent's parent in its tree (asked again shortly while the parent
        is only busy, up to _BUSY_PARENT_SECONDS); None when the parent does not send it."""
        waited_until = time.monotonic() + _BUSY_PARENT_SECONDS
        delay = _FIRST_BUSY_POLL_SECONDS
        while True:
            try:
                return await self._client.piece(
                    parent,
                    blob.digest.hex,
                    blob.origin,
                    piece.index,
                    piece.length,
                    arrived=_passing_on(blob, piece.arriving),
                    tree=True,
                )
            except PeerError as exc:
                piece.forget_arrivals()
                if not exc.busy or time.monotonic() > waited_until:
                    log.info("tree parent did not send a piece; it is read the usual way",
                             extra={"peer": parent, "piece": piece.index,
                                    "error": str(exc)})  # fmt: skip
                    return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LAST_BUSY_POLL_SECONDS)

    async def progress(self, peer: str, blob: StoredBlob, index: int) -> int | None:
        """How many bytes of piece `index` of `blob` have reached `peer` (see
        PieceNetwork.progress); None when it does not answer at all (a dead lease holder is
        not worth waiting for). A peer that answers but cannot tell counts as making no
        progress."""
        try:
            return await self._client.progress(peer, blob.digest.hex, index)
        except PeerError as exc:
            log.debug("progress check failed", extra={"peer": peer, "error": str(exc)})
            return None if exc.unreachable else 0

    async def fetch(
        self,
        blob: StoredBlob,
        index: int,
        answer: Answer,
        *,
        check: Callable[[bytes], Awaitable[bool]] | None = None,
        arriving: Callable[[int, bytes], None] | None = None,
    ) -> PeerPiece | None:
        """The piece from one of its holders, or from the peer receiving it now (as it
        arrives there), checked against the recorded sha256 (and by `check`, the proof of a
        piece made of nydus chunks); None when no peer delivers good bytes. A peer whose bytes
        fail either is reported to the home. A holder that has not started sending within the
        hedge delay gets company: the next holder is asked too and the first good answer wins.
        Once a holder sends, no more are asked (on a capped link a second copy would only
        halve both). `arriving` is told the bytes as they come in, before any check (for
        peers that take the piece from this agent meanwhile). Raises PeerError(busy=True) when
        every peer asked was only busy (worth asking again shortly, not the origin)."""
        peers = answer.holders or ((answer.fetching,) if answer.fetching is not None else ())
        start, end = blob.layout.bounds(index)
        waiting = list(peers)
        running: dict[asyncio.Task[PeerPiece | None], str] = {}
        busy = 0
        sending = asyncio.Event()  # some peer has begun to send the piece
        try:
            while waiting or running:
                if waiting and not (running and sending.is_set()):
                    peer = waiting.pop(0)
                    attempt = self._checked(
                        blob,
                        index,
                        peer,
                        end - start,
                        answer.sha256,
                        sending=sending,
                        check=check,
                        arriving=arriving if not running else None,
                    )
                    running[self._tasks.spawn(attempt, name="peer-piece")] = peer
                hedge = waiting and not sending.is_set()
                done, _ = await asyncio.wait(
                    running,
                    timeout=self._hedge_after if hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    running.pop(task)
                    try:
                        got = task.result()
                    except PeerError as exc:
                        busy += exc.busy
                        continue
                    if got is not None:
                        return got
        finally:
            for task in running:
                task.cancel()
        if busy and busy == len(peers):
            raise PeerError("every peer asked is busy", busy=True)
        return None

    async def _checked(
        self,
        blob: StoredBlob,
        index: int,
        peer: str,
        length: int,
        sha256: bytes | None,
        *,
        sending: asyncio.Event,
        check: Callable[[bytes], Awaitable[bool]] | None,
        arriving: Callable[[int, bytes], None] | None,
    ) -> PeerPiece | None:
        """The piece from `peer` if it matches `sha256` (None: the one its home records
        once the peer that fetches it from the origin announces it) and passes `check`; None
        (and the peer reported) if not."""
        try:
            data = await self._client.piece(
                peer,
                blob.digest.hex,
                blob.origin,
                index,
                length,
                sending=sending,
                arrived=_passing_on(blob, arriving),
            )
        except PeerError as exc:
            log.debug("peer fetch failed", extra={"peer": peer, "error": str(exc)})
            raise
        got = await asyncio.to_thread(sha256_of, data)
        if check is not None and not await check(data):
            why = "its chunk proof"
        else:
            if sha256 is None:
                sha256 = await self._recorded(blob, index, holding=got)
                if sha256 is None:
                    log.debug("no sha256 recorded to check a relayed piece", extra={"peer": peer})
                    return None
            if got == sha256:
                return PeerPiece(data, sha256)
            why = "its recorded sha256"
        self._metrics.peer_bad_pieces.inc()
        log.warning(
            f"peer sent a piece that fails {why}; not used",
            extra={"peer": peer, "digest": str(blob.digest), "piece": index},
        )
        self._tasks.spawn(self._report(blob.digest.hex, index, peer), name="report")
        return None

    async def _recorded(self, blob: StoredBlob, index: int, *, holding: bytes) -> bytes | None:
        """The sha256 the home records for a piece, waiting (up to _RECORD_WAIT_SECONDS) for
        the peer that fetched it from the origin to announce it. `holding`: the sha256 of the
        copy this agent received. A home records this agent as its holder in the same
        exchange when the two match; the piece is then not announced to it again once stored
        (a relayed piece otherwise cost its home two requests, the query and the
        announcement). One this agent then fails to store is given up (`release`), which
        takes this agent off its record."""
        digest = blob.digest.hex
        home = self.home(digest)
        waited_until = time.monotonic() + _RECORD_WAIT_SECONDS
        delay = _FIRST_RECORD_POLL_SECONDS
        while True:
            if home == self.me:
                sha256 = self._directory.recorded(
                    digest, blob.origin, blob.size, blob.layout.key, [index]
                )[index]
            else:
                try:
                    answers = await self._queries.ask(_Asked.of(home, blob), {index: holding})
                except PeerError as exc:
                    self._home_failed("home unreachable", home, exc, level=logging.DEBUG)
                    return None
                sha256, held = answers[index]
                if held:
                    self._checked_in.add(((digest, blob.origin, False), index))
            if sha256 is not None or time.monotonic() > waited_until:
                return sha256
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LAST_RECORD_POLL_SECONDS)

    async def _send_query(
        self, asked: _Asked, holding: dict[int, bytes]
    ) -> dict[int, tuple[bytes | None, bool]]:
        """The sha256 recorded for each piece, and whether this agent was recorded as holding
        it (see _recorded)."""
        body = {
            **asked.body(holding),
            "holder": self.me,
            "holding": {str(i): sha256.hex() for i, sha256 in holding.items()},
        }
        self._metrics.home_requests.labels("recorded").inc()
        self._metrics.home_pieces_asked.labels("recorded").inc(len(holding))
        recorded, held = await self._client.recorded(asked.home, body)
        return {i: (recorded[i], i in held) for i in holding}

    def _home_failed(
        self, message: str, home: str, exc: PeerError, *, level: int = logging.INFO
    ) -> None:
        """Log a failed exchange with a home at `level`; an answer that is not what the
        protocol says as a warning, once per home and kind of answer until the next refresh
        (a home that answers every lookup so would otherwise cost a line per read)."""
        if isinstance(exc, MalformedAnswer):
            cause = (exc.peer, exc.kind)
            if cause not in self._malformed:
                self._malformed.add(cause)
                level = logging.WARNING
                message = "home answered something unusable; using the origin"
            else:
                level = logging.DEBUG
        log.log(level, message, extra={"home": home, "error": str(exc)})

    async def _report(self, digest_hex: str, index: int, holder: str) -> None:
        home = self.home(digest_hex)
        if home == self.me:
            self._directory.drop_holder(digest_hex, index, holder)
            return
        with contextlib.suppress(PeerError):
            await self._client.report(
                home, {"digest": digest_hex, "index": index, "holder": holder}
            )

    def release(self, blob: StoredBlob, indices: list[int]) -> None:
        """This agent gave up `indices` without keeping them: whoever waits for them may go to
        the origin now, and its home no longer names it as their holder (it may have checked
        one in, see _recorded, before failing to store it)."""
        scope = (blob.digest.hex, blob.origin, False)  # where _recorded checks pieces in
        self._checked_in.difference_update((scope, index) for index in indices)
        self._tasks.spawn(self._release(blob, indices), name="release")

    async def _release(self, blob: StoredBlob, indices: list[int]) -> None:
        digest = blob.digest.hex
        home = self.home(digest)
        if home == self.me:
            self._directory.release(digest, blob.origin, indices, self.me)
            return
        body = {"digest": digest, "origin": blob.origin, "pieces": indices, "requester": self.me}
        try:
            await self._client.release(home, body)
        except PeerError as exc:  # the lease expires on its own
            log.info("lease release lost", extra={"home": home, "error": str(exc)})

    # telling -------------------------------------------------------------------------------

    def announce(self, blob: StoredBlob, index: int, sha256: bytes) -> None:
        """Note that this agent now holds a piece; homes hear of it in batches (but for a
        home that recorded it already, when this agent checked the piece: see _recorded)."""
        for scope in _scopes(blob.digest.hex, blob.verified, blob.origin, blob.origins):
            if (scope, index) in self._checked_in:
                self._checked_in.discard((scope, index))
                continue
            self._pending[scope][index] = sha256
        self._queue(blob)

    def announce_blob(self, blob: StoredBlob) -> None:
        """Announce every piece of a blob again: it was just verified, or a registry proved it
        holds it (the pieces now serve that registry's clients too)."""
        for scope in _scopes(blob.digest.hex, blob.verified, blob.origin, blob.origins):
            self._pending[scope].update(blob.piece_sha256)
        self._queue(blob)

    def _queue(self, blob: StoredBlob) -> None:
        self._pending_meta[blob.digest.hex] = _Held(blob.size, blob.layout.key)
        if not self._flushing:
            self._flushing = True
            self._tasks.spawn(self._flush_soon(), name="announce")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(_ANNOUNCE_DELAY)
        self._flushing = False
        pending, self._pending = self._pending, defaultdict(dict)
        meta, self._pending_meta = self._pending_meta, {}
        await self._send(pending, meta)

    async def _send(self, pending: dict[_Scope, dict[int, bytes]], meta: dict[str, _Held]) -> None:
        by_home: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (digest, origin, verified), pieces in pending.items():
            held = meta[digest]
            home = self.home(digest)
            if home == self.me:
                self._directory.announce(
                    digest,
                    origin,
                    held.size,
                    held.layout,
                    holder=self.me,
                    pieces=pieces,
                    verified=verified,
                )
                continue
            blob = {
                "digest": digest,
                "origin": origin,
                "verified": verified,
                "size": held.size,
                "layout": held.layout,
            }
            indices = list(pieces)
            for start in range(0, max(len(indices), 1), _ANNOUNCE_BATCH):
                part = indices[start : start + _ANNOUNCE_BATCH]
                by_home[home].append({**blob, "pieces": {str(i): pieces[i].hex() for i in part}})
        for home, blobs in by_home.items():
            for batch in _batches(blobs, _ANNOUNCE_BATCH):
                try:
                    await self._client.announce(home, {"holder": self.me, "blobs": batch})
                except PeerError as exc:  # the rest would fare no better
                    log.info(
                        "announcement lost; repeated later",
                        extra={"home": home, "error": str(exc)},
                    )
                    break

    async def reannounce(self) -> None:
        """Tell every home again what this agent holds (soft state: homes forget otherwise)."""
        after = ("", -1)
        while rows := await self._store.index.pieces_after(*after, _REANNOUNCE_BATCH):
            after = (rows[-1].digest, rows[-1].index)
            pending: dict[_Scope, dict[int, bytes]] = defaultdict(dict)
            meta: dict[str, _Held] = {}
            for row in rows:
                origins = {row.origin, *row.origins.split()}
                for scope in _scopes(row.digest, row.verified, row.origin, origins):
                    pending[scope][row.index] = row.sha256
                meta[row.digest] = _Held(row.blob_size, row.layout)
            await self._send(pending, meta)

    async def run(self) -> None:
        """Refresh membership, re-announce, prune the directory, every swarm.refresh."""
        self._set_members()
        await self.reannounce()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh):
                    await self._membership.changed.wait()
            self._membership.changed.clear()
            self._malformed.clear()  # a fault that lasts is warned of again
            self._checked_in.clear()
            try:
                await self._membership.refresh()
                self._set_members()
                await self.reannounce()
                self._directory.prune()
                others = self._membership.others()
                self._metrics.peers_known.set(len(others))
                self._metrics.peers_healthy.set(len(set(others) - self._client.unreachable))
            except Exception:
                log.exception("swarm refresh failed; trying again next interval")

    def _set_members(self) -> None:
        members = self._membership.members()
        self._directory.set_members(members)
        self._trees.set_members(members)


def _passing_on(
    blob: StoredBlob, arriving: Callable[[int, bytes], None] | None
) -> Callable[[bytes], None]:
    """What a piece's download does with each part as it arrives: counts it as arriving here
    and tells `arriving` (offset in the piece, bytes), which passes it on to peers taking the
    piece from this agent meanwhile."""
    received = 0

    def arrived(part: bytes) -> None:
        nonlocal received
        blob.arrived += len(part)
        if arriving is not None:
            arriving(received, part)
        received += len(part)

    return arrived


def _batches(blobs: list[dict[str, Any]], limit: int) -> Iterator[list[dict[str, Any]]]:
    """Announcement entries (of at most `limit` pieces each) grouped into requests of at most
    `limit` pieces (an entry without any counts as one)."""
    batch: list[dict[str, Any]] = []
    count = 0
    for blob in blobs:
        pieces = max(len(blob["pieces"]), 1)
        if batch and count + pieces > limit:
            yield batch
            batch, count = [], 0
        batch.append(blob)
        count += pieces
    if batch:
        yield batch


def _scopes(digest: str, verified: bool, origin: str, origins: set[str]) -> list[_Scope]:
    """Under which origins a blob's pieces are announced: an unverified blob's under its
    provenance only; a verified blob's under every registry known to hold it."""
    if not verified:
        return [(digest, origin, False)]
    return [(digest, known, True) for known in sorted(origins)]
