"""Blob identity. A blob is its digest, never the URL it was fetched from."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Digest", "InvalidDigest", "blob_reference"]

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
# /v2/<name>/blobs/<digest>; `uploads/...` paths have a further slash and never match.
_BLOB_PATH = re.compile(r"/v2/(?P<name>[^?#]+?)/blobs/(?P<reference>[^/]+)")


def blob_reference(path: str) -> str | None:
    """The `<digest>` part (as written, still percent-encoded) of a registry blob path
    `/v2/<name>/blobs/<digest>`, or None for any other path."""
    match = _BLOB_PATH.fullmatch(path)
    return None if match is None else match.group("reference")


class InvalidDigest(ValueError):
    """The text is not `sha256:` followed by 64 lower-case hex digits."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated sha256 content digest. `hex` is safe to use in file paths."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _SHA256.fullmatch(text)
        if match is None:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise InvalidDigest(f"digest must be sha256:<64 lower-case hex>, got {shown!r}")
        return cls(match.group(1))

    def __str__(self) -> str:
        return f"sha256:{self.hex}"
