"""What the engine needs from a network of peers, whichever it is: the builtin swarm (agents
are their own directory) or a Dragonfly cluster (a scheduler names parents).

A network only ever makes reads faster: every answer may be "go to the origin", and every
byte it delivers is checked by the engine's proofs before a client sees it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from dfagent.engine.inflight import InflightPiece
from dfagent.origin.client import BlobSource
from dfagent.storage.store import StoredBlob
from dfagent.swarm.directory import Answer

__all__ = ["Answer", "PeerPiece", "PieceCheck", "PieceNetwork", "WholeFill"]

# The proof a peer's copy of a piece made of nydus chunks must pass before it is used.
PieceCheck = Callable[[bytes], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PeerPiece:
    """A piece a network delivered and checked: its bytes, and their sha256 when the check
    computed it (so storing the piece need not hash it again)."""

    data: bytes
    sha256: bytes | None


class WholeFill(Protocol):
    """What the engine lends a network that fills a whole blob with bytes only the blob's
    digest proves (PieceNetwork.prove_whole)."""

    def claim(self, index: int) -> InflightPiece | None:
        """Piece `index`, registered as arriving here: peers told to take it from this agent
        get its bytes as they come (`InflightPiece.arriving`). None when the piece is here,
        staged or already on its way."""
        ...

    async def stage(self, piece: InflightPiece, data: bytes) -> None:
        """Store a claimed piece's bytes, staged: they serve once the whole blob proves them
        (raises StorageFull or OSError when they cannot be stored)."""
        ...

    def give_up(self, piece: InflightPiece) -> None:
        """A claimed piece that no peer delivered."""
        ...

    async def usual(self, indices: list[int]) -> bool:
        """Fetch pieces the usual way (each proven as it arrives), and wait for them (and for
        those already on their way); False when some did not come."""
        ...

    async def proven(self) -> bool:
        """Wait until the blob is proven whole (True), or cannot be: a piece is neither here,
        staged nor on its way (one did not come or could not be stored, or the staged pieces
        were dropped with a blob that failed its digest), or it took too long."""
        ...


class PieceNetwork(Protocol):
    async def describe(self, digest_hex: str, origin: str) -> tuple[int, str] | None:
        """(size, layout key) of a blob as `origin` gave it to some peer, if any peer knows."""
        ...

    async def lookup(
        self,
        blob: StoredBlob,
        source: BlobSource,
        indices: list[int],
        *,
        stalled: str | None = None,
    ) -> dict[int, Answer]:
        """Per piece: holders to fetch from, a peer already fetching it, or go to the origin.
        `stalled`: a peer this agent was told to wait for, to which no byte arrives any more
        (its fetch is handed to this agent, or the piece offered afresh)."""
        ...

    async def fetch(
        self,
        blob: StoredBlob,
        index: int,
        answer: Answer,
        *,
        check: PieceCheck | None = None,
        arriving: Callable[[int, bytes], None] | None = None,
    ) -> PeerPiece | None:
        """The piece from one of `answer.holders` (or, with none, from `answer.fetching` as
        it arrives there, where the network allows), checked (its bytes match the sha256 its
        network records, and pass `check`); None when none delivered good bytes (raises
        PeerError(busy=True) when all were only busy). `arriving(offset, bytes)`, when the
        network passes pieces on while they arrive, is told each part before any check."""
        ...

    async def progress(self, peer: str, blob: StoredBlob, index: int) -> int | None:
        """How many bytes of piece `index` of `blob` have reached `peer`, a peer fetching it
        for this agent to take (the count moves while its fetch runs); None when it does not
        answer."""
        ...

    def release(self, blob: StoredBlob, indices: list[int]) -> None:
        """This agent gave up fetching `indices` from the origin."""
        ...

    def announce(self, blob: StoredBlob, index: int, sha256: bytes) -> None:
        """This agent now holds piece `index` (stored, with its sha256)."""
        ...

    async def prove_whole(self, blob: StoredBlob, source: BlobSource, fill: WholeFill) -> bool:
        """Fill the blob from peers whose bytes only the whole blob's digest can prove (with
        `fill`'s help, where the network uses it), and check it; True when the blob is now
        verified (False: read it the usual way)."""
        ...
