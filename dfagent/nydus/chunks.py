"""The chunks of one nydus data blob as values: where each lies in the blob, how it is encoded
and the digest of its content; lookups by blob byte range, pieces that follow chunk boundaries,
and a compact packed form for the index."""

from __future__ import annotations

import bisect
import enum
import itertools
import struct
from dataclasses import dataclass, field

from dfagent.core.limits import MAX_BLOB_BYTES
from dfagent.nydus.errors import NydusFormatError

__all__ = [
    "MAX_CHUNK_SIZE",
    "Chunk",
    "ChunkMap",
    "Compression",
    "DigestAlgorithm",
    "Piece",
]

MAX_CHUNK_SIZE = 16 * 1024 * 1024  # the largest chunk RAFS allows, compressed or not
DIGEST_SIZE = 32  # blake3 and sha256 alike


class Compression(enum.Enum):
    """How a chunk's bytes are stored in the blob."""

    NONE = "none"
    LZ4_BLOCK = "lz4_block"
    ZSTD = "zstd"


class DigestAlgorithm(enum.Enum):
    """The hash over a chunk's uncompressed content."""

    BLAKE3 = "blake3"
    SHA256 = "sha256"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a data blob. `compression` is how this chunk is stored: NONE for a chunk
    kept raw because it did not shrink, even in a zstd blob. Offsets and sizes are bytes;
    `compressed_*` locate the chunk in the blob file, `uncompressed_*` in the blob's
    uncompressed address space."""

    index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compression: Compression
    digest_algorithm: DigestAlgorithm
    digest: bytes
    crc32c: int | None = None

    def __post_init__(self) -> None:
        what = f"chunk {self.index}"
        if self.index < 0 or self.compressed_offset < 0 or self.uncompressed_offset < 0:
            raise NydusFormatError(f"{what}: negative index or offset")
        if not 0 < self.compressed_size <= MAX_CHUNK_SIZE:
            raise NydusFormatError(f"{what}: compressed size {self.compressed_size} out of range")
        if not 0 < self.uncompressed_size <= MAX_CHUNK_SIZE:
            raise NydusFormatError(
                f"{what}: uncompressed size {self.uncompressed_size} out of range"
            )
        if self.compression is Compression.NONE and (
            self.compressed_size != self.uncompressed_size
        ):
            raise NydusFormatError(
                f"{what}: stored raw but compressed size {self.compressed_size} != "
                f"uncompressed size {self.uncompressed_size}"
            )
        if len(self.digest) != DIGEST_SIZE:
            raise NydusFormatError(f"{what}: digest of {len(self.digest)} bytes, expected 32")
        if self.crc32c is not None and not 0 <= self.crc32c < 1 << 32:
            raise NydusFormatError(f"{what}: crc32c out of range")

    @property
    def compressed_end(self) -> int:
        return self.compressed_offset + self.compressed_size


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of whole chunks `first .. first + count - 1`, blob bytes `start .. end - 1`."""

    start: int
    end: int
    first: int
    count: int


# Packed form: header, then one fixed-size record per chunk.
_MAGIC = b"NCM"
_VERSION = 1
_HEADER = struct.Struct("<3sBHI")  # magic, version, blob id length, chunk count
_RECORD = struct.Struct("<IQIQIB32sI")  # index, c_off, c_size, u_off, u_size, flags, digest, crc
_COMPRESSION_CODE = {Compression.NONE: 0, Compression.LZ4_BLOCK: 1, Compression.ZSTD: 2}
_DIGEST_CODE = {DigestAlgorithm.BLAKE3: 0, DigestAlgorithm.SHA256: 1}
_COMPRESSION_OF = {code: value for value, code in _COMPRESSION_CODE.items()}
_DIGEST_OF = {code: value for value, code in _DIGEST_CODE.items()}
_FLAG_SHA256 = 0x4
_FLAG_CRC32C = 0x8
_FLAGS_KNOWN = 0x3 | _FLAG_SHA256 | _FLAG_CRC32C
_MAX_BLOB_ID = 1024


@dataclass(frozen=True, slots=True)
class ChunkMap:
    """Every chunk of the data blob `blob_id`, ordered by compressed offset; chunks never
    overlap in the blob, and lie packed from its start (see `_check_packed`)."""

    blob_id: str
    chunks: tuple[Chunk, ...]
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _ends: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.chunks, key=lambda chunk: chunk.compressed_offset))
        for before, after in itertools.pairwise(ordered):
            if after.compressed_offset < before.compressed_end:
                raise NydusFormatError(
                    f"blob {self.blob_id}: chunks {before.index} and {after.index} overlap "
                    f"(bytes {before.compressed_offset}..{before.compressed_end} and "
                    f"{after.compressed_offset}..{after.compressed_end})"
                )
        object.__setattr__(self, "chunks", ordered)
        object.__setattr__(self, "_starts", tuple(c.compressed_offset for c in ordered))
        object.__setattr__(self, "_ends", tuple(c.compressed_end for c in ordered))
        self._check_packed()

    def _check_packed(self) -> None:
        """A builder writes a blob's chunks back to back from byte 0. A map may leave some
        out (files an upper layer deleted, chunks of other images), so the bytes it does not
        cover must fit the chunks it skips, each at most MAX_CHUNK_SIZE, with one chunk's
        worth to spare. Far-apart chunks are refused here, before anything is sized by where
        they lie."""
        if self.data_end > MAX_BLOB_BYTES:
            raise NydusFormatError(
                f"blob {self.blob_id}: chunks reach byte {self.data_end}, past any plausible "
                f"blob size ({MAX_BLOB_BYTES})"
            )
        uncovered = self.data_end - sum(chunk.compressed_size for chunk in self.chunks)
        indexes = {chunk.index for chunk in self.chunks}
        skipped = max(indexes, default=-1) + 1 - len(indexes)
        if uncovered > (skipped + 1) * MAX_CHUNK_SIZE:
            raise NydusFormatError(
                f"blob {self.blob_id}: {uncovered} bytes before byte {self.data_end} lie in no "
                f"chunk, more than the {skipped} chunks the map skips could hold"
            )

    @property
    def data_end(self) -> int:
        """The blob byte just past the last chunk (0 for a blob without chunks)."""
        return self._ends[-1] if self._ends else 0

    def agrees_with(self, other: ChunkMap) -> bool:
        """Whether both maps could be the blob's own: wherever their chunks overlap they are
        the same chunk, proven the same way. One may leave out chunks the other lists (files
        an upper layer deleted), so maps of one blob from two images often differ and agree."""
        if self.blob_id != other.blob_id:
            return False
        mine, theirs, i, j = self.chunks, other.chunks, 0, 0
        while i < len(mine) and j < len(theirs):
            a, b = mine[i], theirs[j]
            if a.compressed_end <= b.compressed_offset:
                i += 1
            elif b.compressed_end <= a.compressed_offset:
                j += 1
            elif _proven_by(a) != _proven_by(b):
                return False
            else:
                i, j = i + 1, j + 1
        return True

    def covering(self, start: int, end: int) -> tuple[Chunk, ...]:
        """The chunks holding any of blob bytes `start .. end - 1`, in blob order."""
        if end <= start:
            return ()
        first = bisect.bisect_right(self._ends, start)
        stop = bisect.bisect_left(self._starts, end)
        return self.chunks[first:stop]

    def pieces(self, budget: int) -> tuple[Piece, ...]:
        """The blob cut into runs of whole chunks, each spanning at most `budget` bytes (a
        chunk larger than the budget is a piece of its own). The same map and budget always
        give the same pieces."""
        if budget <= 0:
            raise ValueError(f"piece budget must be positive, got {budget}")
        pieces: list[Piece] = []
        first = 0
        while first < len(self.chunks):
            start = self._starts[first]
            last = max(first, bisect.bisect_right(self._ends, start + budget) - 1)
            pieces.append(Piece(start, self._ends[last], first, last - first + 1))
            first = last + 1
        return tuple(pieces)

    def to_bytes(self) -> bytes:
        blob_id = self.blob_id.encode()
        parts = [_HEADER.pack(_MAGIC, _VERSION, len(blob_id), len(self.chunks)), blob_id]
        for chunk in self.chunks:
            flags = _COMPRESSION_CODE[chunk.compression]
            if chunk.digest_algorithm is DigestAlgorithm.SHA256:
                flags |= _FLAG_SHA256
            if chunk.crc32c is not None:
                flags |= _FLAG_CRC32C
            parts.append(
                _RECORD.pack(
                    chunk.index,
                    chunk.compressed_offset,
                    chunk.compressed_size,
                    chunk.uncompressed_offset,
                    chunk.uncompressed_size,
                    flags,
                    chunk.digest,
                    chunk.crc32c or 0,
                )
            )
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkMap:
        """The map `to_bytes` packed; NydusFormatError for anything else."""
        if len(data) < _HEADER.size:
            raise NydusFormatError(f"packed chunk map: {len(data)} bytes, shorter than its header")
        magic, version, id_size, count = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise NydusFormatError("packed chunk map: bad magic")
        if version != _VERSION:
            raise NydusFormatError(f"packed chunk map: unknown version {version}")
        expected = _HEADER.size + id_size + count * _RECORD.size
        if id_size > _MAX_BLOB_ID or len(data) != expected:
            raise NydusFormatError(
                f"packed chunk map: {len(data)} bytes for {count} chunks, expected {expected}"
            )
        try:
            blob_id = data[_HEADER.size : _HEADER.size + id_size].decode()
        except UnicodeDecodeError as exc:
            raise NydusFormatError("packed chunk map: blob id is not UTF-8") from exc
        chunks = []
        for record in _RECORD.iter_unpack(memoryview(data)[_HEADER.size + id_size :]):
            index, c_offset, c_size, u_offset, u_size, flags, digest, crc = record
            compression = _COMPRESSION_OF.get(flags & 0x3)
            if compression is None or flags & ~_FLAGS_KNOWN:
                raise NydusFormatError(f"packed chunk map: chunk {index} has bad flags {flags}")
            chunks.append(
                Chunk(
                    index=index,
                    compressed_offset=c_offset,
                    compressed_size=c_size,
                    uncompressed_offset=u_offset,
                    uncompressed_size=u_size,
                    compression=compression,
                    digest_algorithm=_DIGEST_OF[int(bool(flags & _FLAG_SHA256))],
                    digest=bytes(digest),
                    crc32c=crc if flags & _FLAG_CRC32C else None,
                )
            )
        return cls(blob_id, tuple(chunks))


def _proven_by(chunk: Chunk) -> tuple[object, ...]:
    """What a chunk proof checks of a chunk: where its bytes lie, how they decode, to what."""
    return (
        chunk.compressed_offset,
        chunk.compressed_size,
        chunk.uncompressed_size,
        chunk.compression,
        chunk.digest_algorithm,
        chunk.digest,
    )
