"""Decompression with the output size known in advance: nothing larger than `size` is ever
produced, so a hostile input cannot make us inflate more than its record allows. Every byte of
the input must be part of the one encoded object: bytes after it (padding, a second or a
skippable zstd frame) are an error, not ignored, since they would be stored and served as if
the digest proved them."""

from __future__ import annotations

import lz4.block
import zstandard

from dfagent.nydus.chunks import Compression

__all__ = ["DecodeError", "decompress"]


class DecodeError(Exception):
    """The input is not exactly one encoding of the expected number of bytes."""


def decompress(compression: Compression, data: bytes | memoryview, size: int) -> bytes:
    """`data` decoded with `compression`: exactly `size` bytes, or DecodeError."""
    match compression:
        case Compression.NONE:
            out = bytes(data)
        case Compression.ZSTD:
            out = _zstd(data, size)
        case Compression.LZ4_BLOCK:
            try:  # a block must end exactly where the input does: no bytes may follow it
                out = lz4.block.decompress(data, uncompressed_size=size)
            except lz4.block.LZ4BlockError as exc:
                raise DecodeError(f"lz4_block: {exc}") from exc
    if len(out) != size:
        raise DecodeError(f"{compression.value}: {len(out)} bytes decoded, expected {size}")
    return out


def _zstd(data: bytes | memoryview, size: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd: {exc}") from exc
    # A declared size is what the library allocates, whatever limit is passed: check it first.
    if declared not in (-1, size):
        raise DecodeError(f"zstd: frame declares {declared} bytes, expected {size}")
    try:
        return zstandard.ZstdDecompressor().decompress(
            data, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd: {exc}") from exc
