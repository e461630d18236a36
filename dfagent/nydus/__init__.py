"""Nydus image formats, as pure values: the chunks of a data blob with their digests, read from
the RAFS bootstrap (also from the bootstrap layer of an image) or the blob's own tail metadata,
and the proof of a chunk's bytes."""

from dfagent.nydus.blobtail import (
    BlobTail,
    BlobTailReader,
    ByteRange,
    ChunkInfo,
    CiHeader,
    TocEntry,
    inline_bootstrap_range,
    parse_chunk_digests,
    parse_chunk_infos,
    parse_ci_header,
    parse_toc,
)
from dfagent.nydus.bootstrap import BlobEntry, BlobFeature, Bootstrap, parse_bootstrap
from dfagent.nydus.chunks import Chunk, ChunkMap, Compression, DigestAlgorithm, Piece
from dfagent.nydus.errors import ChunkMismatch, NydusFormatError
from dfagent.nydus.layer import MAX_BOOTSTRAP_SIZE, MAX_LAYER_SIZE, chunk_maps_of_layer
from dfagent.nydus.verify import chunk_digest, verify_chunk

__all__ = [
    "MAX_BOOTSTRAP_SIZE",
    "MAX_LAYER_SIZE",
    "BlobEntry",
    "BlobFeature",
    "BlobTail",
    "BlobTailReader",
    "Bootstrap",
    "ByteRange",
    "Chunk",
    "ChunkInfo",
    "ChunkMap",
    "ChunkMismatch",
    "CiHeader",
    "Compression",
    "DigestAlgorithm",
    "NydusFormatError",
    "Piece",
    "TocEntry",
    "chunk_digest",
    "chunk_maps_of_layer",
    "inline_bootstrap_range",
    "parse_bootstrap",
    "parse_chunk_digests",
    "parse_chunk_infos",
    "parse_ci_header",
    "parse_toc",
    "verify_chunk",
]
