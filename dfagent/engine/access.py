"""Who may read a cached blob: a client whose registry holds the blob and accepts the client.

Bytes in the cache (or at peers) were fetched with somebody's credentials. A blob that one of
its origins served to an anonymous caller is public and goes to anyone. Any other blob goes to
a client only when the registry the client names

- accepts the client's own `Authorization` for it, and
- is one of the blob's recorded origins (`StoredBlob.origins`: the registry it came from, and
  any that proved it since), or proves now that it holds the blob: it serves, with the
  client's credentials, four random 64-byte ranges of the blob that match this node's
  verified copy. A server that merely answers 200 cannot pass; one that passes is recorded as an
  origin.

For a recorded origin the check is a HEAD on the blob URL with the client's credentials (a
redirect target remembered earlier never answers it). A granted check is remembered per
(credentials, registry, blob URL path) for `auth.cache_ttl`; a successful origin fetch made with
the client's credentials vouches for them just the same. A refusal (401 with
`WWW-Authenticate`, 403, 404) goes back to the client as the origin gave it.

A check runs as a task of its own, shared by every request that needs the same answer: a
client that hangs up does not fail the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable

from dfagent.errors import DfagentError, NotProven
from dfagent.origin.client import BlobSource, OriginClient
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.tasks import TaskOwner

log = logging.getLogger(__name__)

__all__ = ["AccessGate"]

_MAX_REMEMBERED = 65536
# A registry proves it holds a blob by serving this many random ranges of it, this long: one
# that knows a share f of the blob's bytes passes with probability about f ** _PROOF_SAMPLES.
_PROOF_SAMPLES = 4
_PROOF_BYTES = 64

_Key = tuple[str, str]  # (credentials hash or "" for anonymous, registry + path)


class AccessGate:
    def __init__(
        self,
        origin: OriginClient,
        store: PieceStore,
        *,
        enabled: bool,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._origin = origin
        self._store = store
        self._enabled = enabled
        self._ttl = ttl
        self._clock = clock
        self._granted: dict[_Key, float] = {}  # -> expiry
        self._tried: dict[_Key, float] = {}  # public blobs' background proofs -> until when
        self._checking: dict[_Key, asyncio.Task[None]] = {}  # checks clients wait on
        # Background proofs (learn_origin): apart, since they swallow a refusal that a check a
        # client waits on must raise.
        self._learning: dict[_Key, asyncio.Task[None]] = {}
        self._tasks = TaskOwner("access")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    @staticmethod
    def _where(source: BlobSource) -> str:
        return f"{source.origin}{source.url.path}"

    @staticmethod
    def _who(source: BlobSource) -> str:
        if source.authorization is None:
            return ""
        return hashlib.sha256(source.authorization.encode()).hexdigest()

    def vouch(self, source: BlobSource) -> None:
        """The origin just served this blob to these credentials."""
        self._remember((self._who(source), self._where(source)))

    async def ensure(self, source: BlobSource, blob: StoredBlob) -> None:
        """Return when the client behind `source` may read `blob`; raise the registry's
        refusal, or NotProven."""
        if not self._enabled or blob.public:
            self.learn_origin(source, blob)
            return
        key = (self._who(source), self._where(source))
        if _holds(blob, source.origin) and self._valid(key):
            return
        check = self._checking.get(key)
        if check is None:
            check = self._tasks.spawn(self._check(source, blob, key), name="access-check")
            self._checking[key] = check
            check.add_done_callback(lambda _: self._checking.pop(key, None))
        await asyncio.shield(check)

    def learn_origin(self, source: BlobSource, blob: StoredBlob) -> None:
        """A public, verified blob was read naming a registry not known to hold it: find out in
        the background whether it does (a nydus bootstrap it holds makes it vouch for chunk
        maps; a verified blob's pieces are announced under every registry holding it)."""
        if not self._enabled or not blob.verified or source.origin in blob.origins:
            return
        key = (self._who(source), self._where(source))
        if key not in self._learning and not _unexpired(self._tried, key, self._clock()):
            _note(self._tried, key, self._clock() + self._ttl)  # once per auth.cache_ttl
            learn = self._tasks.spawn(self._quietly(source, blob, key), name="learn-origin")
            self._learning[key] = learn
            learn.add_done_callback(lambda _: self._learning.pop(key, None))

    async def _quietly(self, source: BlobSource, blob: StoredBlob, key: _Key) -> None:
        try:
            await self._check(source, blob, key)
        except DfagentError as exc:
            log.debug(
                "registry not shown to hold a blob",
                extra={"origin": source.origin, "digest": str(blob.digest), "error": str(exc)},
            )

    async def _check(self, source: BlobSource, blob: StoredBlob, key: _Key) -> None:
        registry = source.origin
        with blob.pinned():
            if _holds(blob, registry):
                # A HEAD with the client's credentials, answered for this blob: a login page a
                # redirect leads a stranger to answers 200 too, with some other length.
                await self._origin.blob_size(source, blob.size)
            else:
                await self._prove(source, blob)
            await self._store.add_origin(blob, registry, public=source.authorization is None)
        self._remember(key)

    async def _prove(self, source: BlobSource, blob: StoredBlob) -> None:
        """The registry serves, with the client's credentials, a random range of the blob
        that matches this node's verified copy."""
        if not blob.verified:
            raise NotProven(f"{source.origin} is not an origin of {blob.digest}")
        if blob.size == 0:  # nothing to prove: the empty blob is no secret
            await self._origin.blob_size(source)
            return
        length = min(_PROOF_BYTES, blob.size)
        firsts = [secrets.randbelow(blob.size - length + 1) for _ in range(_PROOF_SAMPLES)]
        held = await asyncio.gather(*(self._serves(source, blob, f, length) for f in firsts))
        if not all(held):
            raise NotProven(f"{source.origin} does not hold {blob.digest}")

    async def _serves(self, source: BlobSource, blob: StoredBlob, first: int, length: int) -> bool:
        """Whether the registry's bytes `first..first+length-1` of the blob equal ours."""
        ours = await asyncio.to_thread(os.pread, blob.file.fileno(), length, first)
        theirs = bytearray()
        async with self._origin.open_range(source, first, first + length - 1, blob.size) as body:
            async for chunk in body.chunks():
                theirs += chunk
        return theirs == ours

    def _valid(self, key: _Key) -> bool:
        return _unexpired(self._granted, key, self._clock())

    def _remember(self, key: _Key) -> None:
        _note(self._granted, key, self._clock() + self._ttl)


def _holds(blob: StoredBlob, registry: str) -> bool:
    """Whether `registry` is known to hold the blob: one of its recorded origins, or (for the
    chunks, which are all a voucher's client may read of an unverified blob) a registry whose
    proven image metadata names it."""
    return registry in blob.origins or registry in blob.vouchers


def _unexpired(book: dict[_Key, float], key: _Key, now: float) -> bool:
    expiry = book.get(key)
    return expiry is not None and expiry > now


def _note(book: dict[_Key, float], key: _Key, expiry: float) -> None:
    book.pop(key, None)  # re-insert: the dict stays oldest first
    book[key] = expiry
    while len(book) > _MAX_REMEMBERED:
        del book[next(iter(book))]
