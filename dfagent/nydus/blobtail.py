"""A data blob's own metadata at its tail: the chunk-info (CI) header and array, and for blobs
built with a TOC the TOC itself and the chunk digest array (`blob.digest`).

The parsers are pure. `BlobTailReader` says which byte ranges of the blob to read, takes
them, and says what to read next, so a caller fetches only those ranges (ranged GETs):

    reader = BlobTailReader(blob_size, entry)
    while ranges := reader.wanted():
        reader.feed({r: await fetch(r.start, r.end) for r in ranges})
    tail = reader.result()
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from dfagent.nydus.binary import require_range, unpack
from dfagent.nydus.bootstrap import COMPRESSION_BY_CODE, BlobEntry, BlobFeature
from dfagent.nydus.chunks import Chunk, ChunkMap, Compression, DigestAlgorithm
from dfagent.nydus.codec import DecodeError, decompress
from dfagent.nydus.errors import NydusFormatError

__all__ = [
    "CI_HEADER_SIZE",
    "BlobTail",
    "BlobTailReader",
    "ByteRange",
    "ChunkInfo",
    "CiHeader",
    "TocEntry",
    "inline_bootstrap_range",
    "parse_chunk_digests",
    "parse_chunk_infos",
    "parse_ci_header",
    "parse_toc",
]

CI_HEADER_SIZE = 4096
TAR_HEADER_SIZE = 512
# The most chunk entries a tail read without the bootstrap may claim: 4 Mi (a 96 MiB v2 array).
# RAFS allows 16 Mi; with the bootstrap's blob entry its own chunk count is the bound.
DEFAULT_MAX_CHUNKS = 1 << 22
_CI_MAGIC = 0xB10BB10B
_CI_HEADER = struct.Struct("<IIIIQQQ")
_CI_V1 = struct.Struct("<QQ")
_CI_V2 = struct.Struct("<QQQ")
_V2_COMPRESSED = 0x01
_V2_ZRAN = 0x02
_V2_HAS_CRC32 = 0x10
_TOC_ENTRY = struct.Struct("<II16s32sQQQ48x")
_TOC_FLAGS = {0x1: Compression.NONE, 0x2: Compression.ZSTD, 0x4: Compression.LZ4_BLOCK}
_TOC_NAME = b"rafs.blob.toc"
_TOC_WINDOW = 0x1000  # the TOC is found within the blob's last 4 KiB
_MAX_TOC_SIZE = 0x10000
_DIGEST_SIZE = 32


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Blob bytes `start .. end - 1`."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class CiHeader:
    """The 4096-byte header after a blob's chunk-info array."""

    features: int
    compression: Compression  # of the chunk-info array
    entries: int
    offset: int
    compressed_size: int
    uncompressed_size: int

    @property
    def entry_size(self) -> int:
        return _CI_V2.size if self.features & BlobFeature.CHUNK_INFO_V2 else _CI_V1.size

    @property
    def array_range(self) -> ByteRange:
        return ByteRange(self.offset, self.offset + self.compressed_size)


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Where one chunk lies, as the chunk-info array records it (no digest)."""

    index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool
    crc32c: int | None = None


@dataclass(frozen=True, slots=True)
class TocEntry:
    name: str
    compression: Compression
    sha256: bytes  # of the uncompressed entry
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int

    @property
    def range(self) -> ByteRange:
        return ByteRange(self.compressed_offset, self.compressed_offset + self.compressed_size)


def parse_ci_header(buf: bytes | memoryview, max_chunks: int = DEFAULT_MAX_CHUNKS) -> CiHeader:
    """The CI header (exactly 4096 bytes), its sizes checked against each other."""
    if len(buf) != CI_HEADER_SIZE:
        raise NydusFormatError(f"CI header: {len(buf)} bytes, expected {CI_HEADER_SIZE}")
    magic, features, code, entries, offset, c_size, u_size = unpack(_CI_HEADER, buf, 0, "CI")
    magic2 = unpack(struct.Struct("<I"), buf, CI_HEADER_SIZE - 4, "CI header")[0]
    if magic != _CI_MAGIC or magic2 != _CI_MAGIC:
        raise NydusFormatError("CI header: bad magic")
    if features & BlobFeature.ZRAN:
        raise NydusFormatError("CI header: ZRan (gzip) blobs are not supported")
    if code not in COMPRESSION_BY_CODE:
        raise NydusFormatError(f"CI header: unsupported chunk-info compressor {code}")
    header = CiHeader(features, COMPRESSION_BY_CODE[code], entries, offset, c_size, u_size)
    if not 0 < entries <= max_chunks:
        raise NydusFormatError(f"CI header: {entries} chunk entries, allowed 1..{max_chunks}")
    if entries > offset and not features & BlobFeature.SEPARATE:
        raise NydusFormatError(
            f"CI header: {entries} chunks cannot fit the {offset} bytes before the array"
        )
    if u_size != entries * header.entry_size:
        raise NydusFormatError(
            f"CI header: array of {u_size} bytes for {entries} entries of {header.entry_size}"
        )
    if c_size == 0 or (c_size > u_size and header.compression is Compression.NONE):
        raise NydusFormatError(f"CI header: compressed array size {c_size} is inconsistent")
    if c_size > u_size + u_size // 2 + 1024:  # no codec expands data that much
        raise NydusFormatError(f"CI header: compressed array size {c_size} is implausible")
    return header


def parse_chunk_infos(header: CiHeader, data: bytes | memoryview) -> tuple[ChunkInfo, ...]:
    """The chunk-info array as stored (`header.compressed_size` bytes at `header.offset`).
    At most `header.uncompressed_size` bytes are decoded, which the header ties to its
    entry count."""
    return _infos(header, _decode_array(header, data))


def _decode_array(header: CiHeader, data: bytes | memoryview) -> bytes:
    if len(data) != header.compressed_size:
        raise NydusFormatError(
            f"chunk-info array: {len(data)} bytes, the CI header says {header.compressed_size}"
        )
    try:
        return decompress(header.compression, data, header.uncompressed_size)
    except DecodeError as exc:
        raise NydusFormatError(f"chunk-info array: {exc}") from exc


def _infos(header: CiHeader, array: bytes) -> tuple[ChunkInfo, ...]:
    if header.features & BlobFeature.CHUNK_INFO_V2:
        infos = tuple(_info_v2(i, *f) for i, f in enumerate(_CI_V2.iter_unpack(array)))
    else:
        infos = tuple(_info_v1(i, *f) for i, f in enumerate(_CI_V1.iter_unpack(array)))
    for info in infos:
        if info.compressed_offset + info.compressed_size > header.offset:
            raise NydusFormatError(
                f"chunk-info array: chunk {info.index} runs past the chunk data "
                f"(ends at {info.compressed_offset + info.compressed_size}, "
                f"data ends by {header.offset})"
            )
    return infos


def _info_v1(index: int, uncomp: int, comp: int) -> ChunkInfo:
    u_size = ((uncomp >> 44) | ((uncomp & 0xF00) << 12)) + 1
    c_size = ((comp >> 44) | ((comp & 0xF00_0000_0000) >> 20)) + 1
    return ChunkInfo(
        index=index,
        compressed_offset=comp & 0xFF_FFFF_FFFF,
        compressed_size=c_size,
        uncompressed_offset=uncomp & 0xFFF_FFFF_F000,
        uncompressed_size=u_size,
        compressed=c_size != u_size,
    )


def _info_v2(index: int, uncomp: int, comp: int, extra: int) -> ChunkInfo:
    flags = uncomp >> 56
    if flags & _V2_ZRAN:
        raise NydusFormatError(f"chunk-info array: chunk {index} is a ZRan chunk (unsupported)")
    return ChunkInfo(
        index=index,
        compressed_offset=comp & 0xFF_FFFF_FFFF,
        compressed_size=comp >> 40,
        uncompressed_offset=(uncomp & 0xFFFF_FFFF) << 12,
        uncompressed_size=((uncomp >> 32) & 0xFF_FFFF) + 1,
        compressed=bool(flags & _V2_COMPRESSED),
        crc32c=extra & 0xFFFF_FFFF if flags & _V2_HAS_CRC32 else None,
    )


def parse_chunk_digests(data: bytes | memoryview, entries: int) -> tuple[bytes, ...]:
    """`blob.digest`: one 32-byte digest per chunk, in chunk-info order."""
    if len(data) != entries * _DIGEST_SIZE:
        raise NydusFormatError(
            f"blob.digest: {len(data)} bytes for {entries} chunks of {_DIGEST_SIZE}"
        )
    view = memoryview(data)
    return tuple(bytes(view[i : i + _DIGEST_SIZE]) for i in range(0, len(view), _DIGEST_SIZE))


def _tar_entry(header: bytes | memoryview, what: str) -> tuple[str, int]:
    """Name and size from a 512-byte tar header, its checksum checked."""
    require_range(header, 0, TAR_HEADER_SIZE, what)
    block = bytes(header[:TAR_HEADER_SIZE])
    try:
        stored = int(block[148:156].split(b"\0")[0].strip() or b"-1", 8)
        size = int(block[124:136].split(b"\0")[0].strip() or b"-1", 8)
    except ValueError as exc:
        raise NydusFormatError(f"{what}: not a tar header") from exc
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]) or size < 0:
        raise NydusFormatError(f"{what}: not a tar header (checksum)")
    name = block[:100].split(b"\0")[0]
    return name.decode("ascii", "replace"), size


def parse_toc(
    window: bytes | memoryview, expected_digest: bytes | None = None
) -> tuple[tuple[TocEntry, ...], int]:
    """The TOC at the end of `window` (the blob's last bytes): its entries and its size
    (entries + tar header). With `expected_digest` (the bootstrap's `blob_toc_digest`), the
    sha256 of the TOC must match it."""
    if len(window) < TAR_HEADER_SIZE:
        raise NydusFormatError(f"TOC: {len(window)} bytes, shorter than a tar header")
    name, size = _tar_entry(memoryview(window)[-TAR_HEADER_SIZE:], "TOC tar header")
    if name != _TOC_NAME.decode():
        raise NydusFormatError(f"TOC: the last tar entry is {name!r}, not {_TOC_NAME.decode()}")
    if size % _TOC_ENTRY.size or size + TAR_HEADER_SIZE > len(window):
        raise NydusFormatError(f"TOC: {size} bytes of entries do not fit the TOC")
    toc = memoryview(window)[len(window) - TAR_HEADER_SIZE - size :]
    if expected_digest is not None and hashlib.sha256(toc).digest() != expected_digest:
        raise NydusFormatError("TOC: sha256 differs from the digest the bootstrap records")
    entries = []
    for flags, _, raw_name, sha256, offset, c_size, u_size in _TOC_ENTRY.iter_unpack(toc[:size]):
        entry_name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        compression = next((c for bit, c in _TOC_FLAGS.items() if flags & bit), None)
        if compression is None:
            raise NydusFormatError(f"TOC entry {entry_name!r}: unknown compression {flags:#x}")
        entries.append(TocEntry(entry_name, compression, sha256, offset, c_size, u_size))
    return tuple(entries), size + TAR_HEADER_SIZE


def inline_bootstrap_range(window: bytes | memoryview, blob_size: int) -> ByteRange | None:
    """Where a blob built with inlined RAFS metadata (and no TOC) keeps its bootstrap, from
    the blob's last bytes `window`: the `image.boot` tar entry ends the blob, its data
    (uncompressed) just before the tar header. None when the blob does not end that way.
    Such a bootstrap names the blob holding it by a placeholder id ("x" * 64)."""
    if len(window) < TAR_HEADER_SIZE or not _looks_like_tar(memoryview(window)[-TAR_HEADER_SIZE:]):
        return None
    name, size = _tar_entry(memoryview(window)[-TAR_HEADER_SIZE:], "tar header")
    if name != "image.boot":
        return None
    start = blob_size - TAR_HEADER_SIZE - size
    if start < 0:
        raise NydusFormatError(f"image.boot: {size} bytes do not fit a blob of {blob_size}")
    return ByteRange(start, blob_size - TAR_HEADER_SIZE)


@dataclass(frozen=True, slots=True)
class BlobTail:
    """What a blob's tail says about its chunks; `digests` when the blob carries them."""

    header: CiHeader
    chunks: tuple[ChunkInfo, ...]
    digests: tuple[bytes, ...] | None
    toc: tuple[TocEntry, ...] = ()

    def chunk_map(
        self,
        blob_id: str,
        compression: Compression,
        digest_algorithm: DigestAlgorithm,
        digests: tuple[bytes, ...] | None = None,
    ) -> ChunkMap:
        """The chunk map, with the blob's own digests or `digests` (chunk-info order).
        `compression` and `digest_algorithm` come from the bootstrap: the blob does not
        record them."""
        digests = digests if digests is not None else self.digests
        if digests is None:
            raise NydusFormatError(f"blob {blob_id}: its tail carries no chunk digests")
        if len(digests) != len(self.chunks):
            raise NydusFormatError(
                f"blob {blob_id}: {len(digests)} digests for {len(self.chunks)} chunks"
            )
        return ChunkMap(
            blob_id,
            tuple(
                Chunk(
                    index=info.index,
                    compressed_offset=info.compressed_offset,
                    compressed_size=info.compressed_size,
                    uncompressed_offset=info.uncompressed_offset,
                    uncompressed_size=info.uncompressed_size,
                    compression=compression if info.compressed else Compression.NONE,
                    digest_algorithm=digest_algorithm,
                    digest=digest,
                    crc32c=info.crc32c,
                )
                for info, digest in zip(self.chunks, digests, strict=True)
            ),
        )


class BlobTailReader:
    """Reads a blob's tail metadata in at most two rounds of ranged reads.

    With the bootstrap's `entry` for the blob, the chunk-info array and its header are read
    where the entry says (one round), or, for a blob with a TOC, the TOC first (checked
    against the entry's TOC digest) and then the array, its header and `blob.digest`. Without
    an entry, the last 4 KiB are read first: a TOC there leads on as above; otherwise they
    must be the CI header."""

    def __init__(
        self, blob_size: int, entry: BlobEntry | None = None, max_chunks: int = DEFAULT_MAX_CHUNKS
    ) -> None:
        if blob_size <= 0:
            raise NydusFormatError(f"blob of {blob_size} bytes has no tail")
        self._size = blob_size
        self._entry = entry
        self._max_chunks = min(max_chunks, entry.chunk_count) if entry else max_chunks
        self._fed: list[tuple[ByteRange, bytes]] = []
        self._toc: tuple[TocEntry, ...] = ()
        self._result: BlobTail | None = None
        self._array: ByteRange | None = None
        self._header: ByteRange | None = None
        self._digests: ByteRange | None = None
        if entry is not None and entry.toc_size:
            if not TAR_HEADER_SIZE <= entry.toc_size <= min(_MAX_TOC_SIZE, blob_size):
                raise NydusFormatError(f"blob {entry.blob_id}: TOC size {entry.toc_size}")
            self._wanted = (ByteRange(blob_size - entry.toc_size, blob_size),)
        elif entry is not None and not entry.features & BlobFeature.HAS_TOC:
            if not entry.ci_compressed_size:
                raise NydusFormatError(f"blob {entry.blob_id}: no chunk-info array recorded")
            header_start = entry.ci_offset + entry.ci_compressed_size
            self._array = self._bounded(self._inside(entry.ci_offset, header_start), "array")
            self._header = self._inside(header_start, header_start + CI_HEADER_SIZE)
            self._wanted = (ByteRange(self._array.start, self._header.end),)
        else:
            self._wanted = (ByteRange(max(0, blob_size - _TOC_WINDOW), blob_size),)

    def _bounded(self, wanted: ByteRange, what: str) -> ByteRange:
        """`wanted` unless it is larger than `max_chunks` entries can make it."""
        most = {
            "array": self._max_chunks * _CI_V2.size * 3 // 2 + 1024,
            "header": CI_HEADER_SIZE,
            "digests": self._max_chunks * _DIGEST_SIZE,
        }[what]
        if wanted.size > most:
            raise NydusFormatError(
                f"blob tail: a chunk-info {what} of {wanted.size} bytes, at most {most} expected"
            )
        return wanted

    def wanted(self) -> tuple[ByteRange, ...]:
        """The byte ranges to read next; empty once `result()` is ready."""
        return () if self._result is not None else self._wanted

    def feed(self, parts: Mapping[ByteRange, bytes]) -> None:
        """The bytes of every range `wanted()` returned."""
        if self._result is not None:
            raise RuntimeError("blob tail: already read")
        for wanted in self._wanted:
            got = parts.get(wanted)
            if got is None or len(got) != wanted.size:
                raise NydusFormatError(
                    f"blob tail: bytes {wanted.start}..{wanted.end} missing or short"
                )
            self._fed.append((wanted, got))
        if self._array is None:
            self._after_window(parts[self._wanted[0]])
        if self._array is not None:
            self._wanted = tuple(
                r
                for r in (self._array, self._header, self._digests)
                if r is not None and self._bytes(r) is None
            )
            if not self._wanted:
                self._after_metadata()

    def result(self) -> BlobTail:
        if self._result is None:
            raise RuntimeError("blob tail: more ranges must be fed first")
        return self._result

    def _inside(self, start: int, end: int) -> ByteRange:
        if start < 0 or end > self._size or end <= start:
            raise NydusFormatError(f"blob tail: bytes {start}..{end} lie outside the blob")
        return ByteRange(start, end)

    def _bytes(self, wanted: ByteRange) -> memoryview | None:
        """Bytes of `wanted` from what was fed, or None if not fed yet."""
        for fed, data in self._fed:
            if fed.start <= wanted.start and wanted.end <= fed.end:
                return memoryview(data)[wanted.start - fed.start : wanted.end - fed.start]
        return None

    def _after_window(self, window: bytes) -> None:
        """The last bytes of the blob: a TOC, or (no TOC) the CI header."""
        view = memoryview(window)
        if not (len(view) >= TAR_HEADER_SIZE and _looks_like_tar(view[-TAR_HEADER_SIZE:])):
            if self._entry is not None:
                raise NydusFormatError(f"blob {self._entry.blob_id}: no TOC at the blob's end")
            header = parse_ci_header(view[-CI_HEADER_SIZE:], self._max_chunks)
            self._header = ByteRange(self._size - CI_HEADER_SIZE, self._size)
            self._array = self._bounded(self._inside(header.offset, self._header.start), "array")
            return
        if inline_bootstrap_range(view, self._size) is not None:
            raise NydusFormatError(
                "blob ends with its inlined bootstrap and has no TOC: parse that bootstrap "
                "(inline_bootstrap_range) and read the tail with its blob entry"
            )
        expected = None
        if self._entry is not None and self._entry.toc_size and any(self._entry.toc_digest):
            expected = self._entry.toc_digest
        self._toc, _ = parse_toc(view, expected)
        by_name = {entry.name: entry for entry in self._toc}
        meta = by_name.get("blob.meta")
        meta_header = by_name.get("blob.meta.header")
        if meta is None or meta_header is None:
            raise NydusFormatError("TOC: no blob.meta / blob.meta.header entry")
        self._array = self._bounded(self._inside(meta.compressed_offset, meta.range.end), "array")
        self._header = self._bounded(
            self._inside(meta_header.compressed_offset, meta_header.range.end), "header"
        )
        digests = by_name.get("blob.digest")
        if digests is not None:
            if digests.compression is not Compression.NONE:
                raise NydusFormatError("TOC: blob.digest is compressed (unsupported)")
            self._digests = self._bounded(
                self._inside(digests.compressed_offset, digests.range.end), "digests"
            )

    def _after_metadata(self) -> None:
        assert self._array is not None and self._header is not None
        array, header_bytes = self._bytes(self._array), self._bytes(self._header)
        assert array is not None and header_bytes is not None
        header = parse_ci_header(header_bytes, self._max_chunks)
        by_name = {entry.name: entry for entry in self._toc}
        _check_toc_digest(by_name.get("blob.meta.header"), header_bytes)
        if header.array_range != self._array:
            raise NydusFormatError(
                f"CI header: array at {header.offset}+{header.compressed_size}, "
                f"expected {self._array.start}+{self._array.size}"
            )
        entry = self._entry
        if (
            entry is not None
            and entry.ci_compressed_size
            and (header.offset, header.compressed_size, header.uncompressed_size, header.entries)
            != (
                entry.ci_offset,
                entry.ci_compressed_size,
                entry.ci_uncompressed_size,
                entry.chunk_count,
            )
        ):
            raise NydusFormatError(
                f"blob {entry.blob_id}: CI header differs from the bootstrap's blob table"
            )
        decoded = _decode_array(header, array)
        _check_toc_digest(by_name.get("blob.meta"), decoded)
        infos = _infos(header, decoded)
        digests = None
        if self._digests is not None:
            raw = self._bytes(self._digests)
            assert raw is not None
            _check_toc_digest(by_name.get("blob.digest"), raw)
            digests = parse_chunk_digests(raw, header.entries)
        self._result = BlobTail(header, infos, digests, self._toc)


def _looks_like_tar(block: memoryview) -> bool:
    try:
        _tar_entry(block, "tar header")
    except NydusFormatError:
        return False
    return True


def _check_toc_digest(entry: TocEntry | None, content: bytes | memoryview) -> None:
    if entry is not None and any(entry.sha256) and hashlib.sha256(content).digest() != entry.sha256:
        raise NydusFormatError(f"TOC entry {entry.name}: sha256 of the content differs")
