"""Digest rules in one place: what is hashed, how, and what a mismatch means.

- Every piece's sha256 is recorded when its bytes are first stored.
- A blob whose pieces are all present is checked as a whole against its OCI digest.
- Stored pieces are re-hashed by the scrub against what was recorded.

The functions here block (they read files and hash); callers run them in a worker thread.
hashlib releases the GIL while hashing, so they run truly in parallel with the event loop.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_of", "sha256_of_file"]

_READ_CHUNK = 1024 * 1024


def sha256_of(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_of_file(fd: int, offset: int, length: int) -> bytes:
    """sha256 of `length` bytes of an open file from `offset`, read in bounded chunks.

    A file shorter than asked (truncated behind our back) hashes what is there, which then
    fails the comparison like any other corruption.
    """
    digest = hashlib.sha256()
    position, end = offset, offset + length
    while position < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - position), position)
        if not chunk:
            break
        digest.update(chunk)
        position += len(chunk)
    return digest.digest()
