"""The ids dfdaemon 1.5.10 gives tasks, hosts, peers and pieces.

A task's id must be the one dfdaemon computes for the same download, or the scheduler treats
the two as different tasks and the peers never share pieces.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence

from dfagent.dragonfly.url import DEFAULT_FILTERED_QUERY_PARAMS, canonical_url

__all__ = ["host_id", "peer_id", "piece_id", "task_id_for_blob", "task_id_for_url"]

# dfdaemon's test for an OCI blob URL; the digest is whatever follows the last `/blobs/`.
_BLOB_URL = re.compile(r"(.*)://(.*)/v2/(.*)/blobs/([^?]+)(?:\?.*)?")
# The digests dfdaemon accepts there, by algorithm: the length of the part after the colon
# (any characters: it does not check that they are hex), or None for any non-empty part.
_DIGEST_LENGTHS: dict[str, int | None] = {"sha256": 64, "sha512": 128, "crc32": None}


def task_id_for_url(
    url: str,
    *,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
    filtered_query_params: Sequence[str] = DEFAULT_FILTERED_QUERY_PARAMS,
) -> str:
    """The id of a STANDARD task downloading `url`: sha256 over the canonical URL, the tag,
    the application, the explicit piece length in decimal (when one was asked for) and the
    word STANDARD, with nothing between them. An empty tag or application adds nothing."""
    hasher = hashlib.sha256(canonical_url(url, filtered_query_params).encode())
    hasher.update(tag.encode())
    hasher.update(application.encode())
    if piece_length is not None:
        hasher.update(str(piece_length).encode())
    hasher.update(b"STANDARD")
    return hasher.hexdigest()


def task_id_for_blob(url: str) -> str | None:
    """The task id of a `/v2/<name>/blobs/<digest>` URL when dfdaemon derives task ids from
    blob digests (`enableTaskIDBasedBlobDigest`): the digest without its algorithm. None when
    `url` is not a blob URL (dfdaemon then uses `task_id_for_url`); ValueError for a blob URL
    whose digest dfdaemon refuses (it fails such a download instead of falling back)."""
    match = _BLOB_URL.fullmatch(url)
    if match is None:
        return None
    algorithm, colon, encoded = match.group(4).partition(":")
    if not colon or algorithm not in _DIGEST_LENGTHS:
        raise ValueError(f"dfdaemon refuses blob URL {url!r}: unknown digest algorithm")
    expected = _DIGEST_LENGTHS[algorithm]
    if not encoded or (expected is not None and len(encoded) != expected):
        raise ValueError(f"dfdaemon refuses blob URL {url!r}: bad {algorithm} digest length")
    return encoded


def host_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    """`<ip>-<hostname>`, with `-seed` after it for a seed peer."""
    return f"{ip}-{hostname}-seed" if seed else f"{ip}-{hostname}"


def peer_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    """A new peer id: `<ip>-<hostname>-<uuid4>`, with `-seed` after it for a seed peer."""
    peer = f"{ip}-{hostname}-{uuid.uuid4()}"
    return f"{peer}-seed" if seed else peer


def piece_id(task_id: str, number: int) -> str:
    return f"{task_id}-{number}"
