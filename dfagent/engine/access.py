"""Who may read a cached blob: only a client whose credentials the origin accepts for it.

Bytes in the cache (or at peers) were fetched with somebody's credentials. Before they go to
a client, that client's own `Authorization` is confirmed at the origin with a HEAD on the blob
URL, and the answer is remembered per (credentials, registry, blob URL path) for
`auth.cache_ttl`. A successful origin fetch made with the client's credentials vouches for
them just the same. Blobs the origin serves to anyone are remembered as public. A refusal (401
with `WWW-Authenticate`, 403, 404) goes back to the client as the origin gave it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from dfagent.origin.client import BlobSource, OriginClient

__all__ = ["AccessGate"]

_MAX_REMEMBERED = 65536

_Key = tuple[str, str]  # (credentials hash or "" for public, registry + path)


class AccessGate:
    def __init__(
        self,
        origin: OriginClient,
        *,
        enabled: bool,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._origin = origin
        self._enabled = enabled
        self._ttl = ttl
        self._clock = clock
        self._granted: dict[_Key, float] = {}  # -> expiry
        self._checking: dict[_Key, asyncio.Future[None]] = {}

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

    async def ensure(self, source: BlobSource) -> None:
        """Return when these credentials may read this blob; raise the origin's refusal."""
        if not self._enabled:
            return
        where = self._where(source)
        if self._valid(("", where)) or self._valid(key := (self._who(source), where)):
            return
        pending = self._checking.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._checking[key] = pending
            try:
                await self._origin.blob_size(source)  # a HEAD with the client's credentials
                self._remember(key)
                pending.set_result(None)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # this caller re-raises it; waiters get it too
                raise
            finally:
                del self._checking[key]
            return
        await asyncio.shield(pending)

    def _valid(self, key: _Key) -> bool:
        expiry = self._granted.get(key)
        return expiry is not None and expiry > self._clock()

    def _remember(self, key: _Key) -> None:
        self._granted.pop(key, None)  # re-insert: the dict stays oldest first
        self._granted[key] = self._clock() + self._ttl
        while len(self._granted) > _MAX_REMEMBERED:
            del self._granted[next(iter(self._granted))]
