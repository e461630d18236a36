"""The proof of one chunk: its bytes decode to content whose digest is the recorded one."""

from __future__ import annotations

import hashlib

import blake3

from dfagent.nydus.chunks import Chunk, DigestAlgorithm
from dfagent.nydus.codec import DecodeError, decompress
from dfagent.nydus.errors import ChunkMismatch

__all__ = ["chunk_digest", "verify_chunk"]


def chunk_digest(algorithm: DigestAlgorithm, content: bytes | memoryview) -> bytes:
    """The digest nydus records for uncompressed chunk `content`."""
    match algorithm:
        case DigestAlgorithm.BLAKE3:
            return blake3.blake3(content).digest()
        case DigestAlgorithm.SHA256:
            return hashlib.sha256(content).digest()


def verify_chunk(chunk: Chunk, data: bytes | memoryview) -> bytes:
    """The uncompressed content of `chunk` from its stored bytes `data`, or ChunkMismatch when
    `data` is not exactly the chunk the image describes. Work is bounded by the chunk record:
    at most `chunk.uncompressed_size` bytes are ever decoded."""
    if len(data) != chunk.compressed_size:
        raise ChunkMismatch(
            chunk.index, f"{len(data)} bytes given, the chunk has {chunk.compressed_size}"
        )
    try:
        content = decompress(chunk.compression, data, chunk.uncompressed_size)
    except DecodeError as exc:
        raise ChunkMismatch(chunk.index, f"does not decode: {exc}") from exc
    if chunk_digest(chunk.digest_algorithm, content) != chunk.digest:
        raise ChunkMismatch(chunk.index, f"{chunk.digest_algorithm.value} digest differs")
    return content
