"""The seed-peer role: the scheduler asks this member (`DfdaemonUpload.DownloadTask`) to fetch
a blob from its origin first, so that the cluster's other peers get it from here.

Only registry blob URLs are taken, and only as an anonymous caller: a seed never holds a
client's credentials, so a private blob fails here and its readers use their own origin."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Protocol

from yarl import URL

from dfagent.core.digest import Digest, InvalidDigest
from dfagent.engine.fetcher import Engine
from dfagent.engine.prefetch import Prefetcher
from dfagent.errors import DfagentError
from dfagent.origin.client import BlobSource

__all__ = ["SeedError", "Seeder", "Seeds"]

_BLOB_PATH = re.compile(r"/v2/.+/blobs/(?P<digest>sha256:[0-9a-f]{64})")


class SeedError(DfagentError):
    """A download the scheduler asked for cannot be done here; the message says why."""


class Seeds(Protocol):
    """What the upload server needs of the seed role."""

    async def seed(self, url: str, started: Callable[[int], Awaitable[None]]) -> None: ...


class Seeder:
    """Fetches whole blobs from their origins when the scheduler asks."""

    def __init__(
        self, engine: Engine, prefetcher: Prefetcher, back_to_source: Callable[[str], None]
    ) -> None:
        self._engine = engine
        self._prefetcher = prefetcher
        self._back_to_source = back_to_source

    async def seed(self, url: str, started: Callable[[int], Awaitable[None]]) -> None:
        """Fetch the blob at `url` whole; `started(size)` once its size is known. Raises
        SeedError (or another DfagentError from the origin) when it cannot be done."""
        parsed = URL(url)
        match = _BLOB_PATH.fullmatch(parsed.path)
        if match is None or parsed.scheme not in ("http", "https"):
            raise SeedError(f"not a registry blob URL: {url}")
        try:
            digest = Digest.parse(match.group("digest"))
        except InvalidDigest as exc:
            raise SeedError(str(exc)) from None
        self._back_to_source(digest.hex)
        source = BlobSource(parsed, digest)
        blob = await self._engine.blob(source, for_client=False)
        await started(blob.size)
        await self._prefetcher.complete(blob, source, paced=False)
