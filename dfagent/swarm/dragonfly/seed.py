"""The seed-peer role: the scheduler asks this member (`DfdaemonUpload.DownloadTask`) to fetch
a blob from its origin first, so that the cluster's other peers get it from here.

Only registry blob URLs are taken, and only as an anonymous caller: a seed never holds a
client's credentials, so a private blob fails here and its readers use their own origin.

The download is registered under the task id dfdaemon would give the request (not the one
`dragonfly.task_id` picks for this agent's own reads): the scheduler names the task it wants
only through the request, and its other peers wait on that task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Protocol
from urllib.parse import unquote

from dragonfly_api import common_pb2
from yarl import URL

from dfagent.core.digest import Digest, InvalidDigest, blob_reference
from dfagent.dragonfly.ids import task_id_for_blob, task_id_for_url
from dfagent.engine.fetcher import Engine
from dfagent.engine.prefetch import Prefetcher
from dfagent.errors import DfagentError
from dfagent.origin.client import BlobSource

__all__ = ["SeedError", "Seeder", "Seeds", "task_id_of"]


# Seed downloads under way at once: each holds an origin fetch and the task id it is for.
_MAX_SEEDS = 256


class SeedError(DfagentError):
    """A download the scheduler asked for cannot be done here; the message says why."""


class Seeds(Protocol):
    """What the upload server needs of the seed role."""

    async def seed(
        self, download: common_pb2.Download, started: Callable[[int], Awaitable[None]]
    ) -> None: ...


class Seeder:
    """Fetches whole blobs from their origins when the scheduler asks, at most _MAX_SEEDS at
    once. `back_to_source(digest_hex, task_id)` is the member's: while its context is open, the
    blob's registration is task `task_id`'s."""

    def __init__(
        self,
        engine: Engine,
        prefetcher: Prefetcher,
        back_to_source: Callable[[str, str], AbstractContextManager[None]],
    ) -> None:
        self._engine = engine
        self._prefetcher = prefetcher
        self._back_to_source = back_to_source
        self._running = 0

    async def seed(
        self, download: common_pb2.Download, started: Callable[[int], Awaitable[None]]
    ) -> None:
        """Fetch the blob at `download.url` whole, as its task; `started(size)` once its size
        is known. Raises SeedError (or another DfagentError from the origin) when it cannot
        be done."""
        url = download.url
        parsed = URL(url, encoded=True)
        reference = blob_reference(parsed.raw_path)
        if reference is None or parsed.scheme not in ("http", "https"):
            raise SeedError(f"not a registry blob URL: {url}")
        try:
            digest = Digest.parse(unquote(reference))
        except InvalidDigest as exc:
            raise SeedError(str(exc)) from None
        task_id = task_id_of(download, digest)
        if self._running >= _MAX_SEEDS:
            raise SeedError(f"{_MAX_SEEDS} seed downloads are under way already")
        self._running += 1
        try:
            with self._back_to_source(digest.hex, task_id):
                source = BlobSource(parsed, digest)
                blob = await self._engine.blob(source, for_client=False)
                await started(blob.size)
                await self._prefetcher.complete(blob, source, paced=False)
        finally:
            self._running -= 1


def task_id_of(download: common_pb2.Download, digest: Digest) -> str:
    """The id dfdaemon gives the task of `download`, which fetches blob `digest` (the one in
    the URL's path). SeedError for a download this agent does not cut into pieces as dfdaemon
    would (its own piece length), names by content, whose id it cannot be sure of, or that
    dfdaemon names by another blob's digest (one in its query, say): those bytes would be
    served as that other blob's."""
    if download.HasField("piece_length"):
        raise SeedError("a download with its own piece length is not taken")
    if download.HasField("content_for_calculating_task_id"):
        raise SeedError("a download named by its content is not taken")
    try:
        if download.enable_task_id_based_blob_digest:
            by_digest = task_id_for_blob(download.url)
            if by_digest is not None:
                if by_digest != digest.hex:
                    raise SeedError(f"{download.url!r} names its task {by_digest!r}, not {digest}")
                return by_digest
        return task_id_for_url(
            download.url,
            tag=download.tag,
            application=download.application,
            filtered_query_params=download.filtered_query_params,
        )
    except ValueError as exc:
        raise SeedError(str(exc)) from None
