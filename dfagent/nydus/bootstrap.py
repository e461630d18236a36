"""The RAFS bootstrap (v5 and v6): its blob table and every chunk it records, grouped into one
ChunkMap per data blob. Pure: bytes in, values out; every count and offset is checked against
the buffer before it is used."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dfagent.nydus.binary import align_up, require_range, u16, u32, u64, unpack
from dfagent.nydus.chunks import Chunk, ChunkMap, Compression, DigestAlgorithm
from dfagent.nydus.errors import NydusFormatError

__all__ = [
    "BOOTSTRAP_HEAD_SIZE",
    "BlobEntry",
    "BlobFeature",
    "Bootstrap",
    "looks_like_bootstrap",
    "parse_bootstrap",
]


class BlobFeature:
    """Feature bits of a data blob (blob table entry and CI header alike)."""

    ALIGNED = 0x1
    INLINED_FS_META = 0x2
    CHUNK_INFO_V2 = 0x4
    ZRAN = 0x8
    SEPARATE = 0x10
    INLINED_CHUNK_DIGEST = 0x20
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One data blob as the bootstrap's blob table describes it. The `ci_*` fields locate the
    blob's chunk-info array (RAFS v6 only; zero for v5); `toc_size`/`toc_digest` are set for
    blobs built with a TOC (zero otherwise)."""

    index: int
    blob_id: str
    chunk_size: int
    chunk_count: int
    compression: Compression
    digest_algorithm: DigestAlgorithm
    features: int
    compressed_size: int
    uncompressed_size: int
    ci_compression: Compression = Compression.NONE
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    toc_size: int = 0
    toc_digest: bytes = bytes(32)


@dataclass(frozen=True, slots=True)
class Bootstrap:
    version: int  # 5 or 6
    chunk_size: int
    blobs: tuple[BlobEntry, ...]
    chunk_maps: Mapping[str, ChunkMap]  # blob id -> its chunks


# The RAFS super-block flags that name the algorithms.
_FLAG_COMPRESSION = {
    0x1: Compression.NONE,
    0x2: Compression.LZ4_BLOCK,
    0x40: None,  # gzip: not a chunk compression we decode
    0x80: Compression.ZSTD,
}
_FLAG_DIGEST = {0x4: DigestAlgorithm.BLAKE3, 0x8: DigestAlgorithm.SHA256}
# The numbering nydus uses for algorithms in blob table entries and CI headers.
COMPRESSION_BY_CODE = {0: Compression.NONE, 1: Compression.LZ4_BLOCK, 3: Compression.ZSTD}
_DIGEST_BY_CODE = {0: DigestAlgorithm.BLAKE3, 1: DigestAlgorithm.SHA256}
_CODE_GZIP = 2

_MIN_CHUNK_SIZE = 0x1000
_MAX_CHUNK_SIZE = 16 << 20
_MAX_CHUNKS_PER_BLOB = 1 << 24
_CHUNK_COMPRESSED = 0x1

# RAFS v5 and v6 record chunks in the same 80-byte layout.
_CHUNK_RECORD = struct.Struct("<32sIIIIQQQII")


def parse_bootstrap(data: bytes | memoryview) -> Bootstrap:
    """The blob table and chunk maps of a RAFS v5 or v6 bootstrap (uncompressed)."""
    data = memoryview(data)
    match _rafs_version(data):
        case 5:
            return _parse_v5(data)
        case 6:
            return _parse_v6(data)
    raise NydusFormatError("bootstrap: neither a RAFS v5 nor a RAFS v6 super block")


BOOTSTRAP_HEAD_SIZE = 1028  # enough of a bootstrap's start to tell v5 and v6 apart


def looks_like_bootstrap(head: bytes | memoryview) -> bool:
    """True when `head`, the first BOOTSTRAP_HEAD_SIZE bytes of a file (or all of a shorter
    one), carries a RAFS v5 or v6 super-block magic."""
    return _rafs_version(memoryview(head)) is not None


def _rafs_version(data: memoryview) -> int | None:
    if (
        len(data) >= 8
        and u32(data, 0, "v5 magic") == _V5_MAGIC
        and u32(data, 4, "v5 version") == 0x500
    ):
        return 5
    if len(data) >= _V6_SUPER_OFFSET + 4 and u32(data, _V6_SUPER_OFFSET, "v6 magic") == _V6_MAGIC:
        return 6
    return None


def _super_algorithms(flags: int, what: str) -> tuple[Compression, DigestAlgorithm]:
    compressions = [bit for bit in _FLAG_COMPRESSION if flags & bit]
    digests = [bit for bit in _FLAG_DIGEST if flags & bit]
    if len(compressions) != 1 or len(digests) != 1:
        raise NydusFormatError(f"{what}: flags {flags:#x} name no single compressor and digester")
    compression = _FLAG_COMPRESSION[compressions[0]]
    if compression is None:
        raise NydusFormatError(f"{what}: gzip chunks are not supported")
    return compression, _FLAG_DIGEST[digests[0]]


def _check_chunk_size(size: int, what: str) -> None:
    if size & (size - 1) or not _MIN_CHUNK_SIZE <= size <= _MAX_CHUNK_SIZE:
        raise NydusFormatError(f"{what}: chunk size {size} is not a power of two in 4K..16M")


def _table(data: memoryview, offset: int, size: int, entry: int, what: str) -> memoryview:
    if size % entry:
        raise NydusFormatError(f"{what}: size {size} is not a multiple of {entry}")
    require_range(data, offset, size, what)
    return data[offset : offset + size]


def _chunk_maps(
    blobs: tuple[BlobEntry, ...], records: Iterator[tuple], what: str
) -> dict[str, ChunkMap]:
    """Chunk records grouped per blob; a chunk recorded more than once (files sharing it)
    must be recorded the same way each time."""
    if len({blob.blob_id for blob in blobs}) != len(blobs):
        raise NydusFormatError(f"{what}: the blob table names a blob twice")
    found: list[dict[int, Chunk]] = [{} for _ in blobs]
    for record in records:
        digest, blob_index, flags, c_size, u_size, c_offset, u_offset, _, index, _ = record
        if blob_index >= len(blobs):
            raise NydusFormatError(f"{what}: a chunk names blob {blob_index} of {len(blobs)}")
        blob = blobs[blob_index]
        if index >= blob.chunk_count and blob.chunk_count:
            raise NydusFormatError(
                f"{what}: chunk index {index} beyond blob {blob.blob_id}'s {blob.chunk_count}"
            )
        compressed = bool(flags & _CHUNK_COMPRESSED)
        if compressed and blob.compression is Compression.NONE:
            raise NydusFormatError(f"{what}: chunk {index} compressed in an uncompressed blob")
        chunk = Chunk(
            index=index,
            compressed_offset=c_offset,
            compressed_size=c_size,
            uncompressed_offset=u_offset,
            uncompressed_size=u_size,
            compression=blob.compression if compressed else Compression.NONE,
            digest_algorithm=blob.digest_algorithm,
            digest=bytes(digest),
        )
        if blob.compressed_size and chunk.compressed_end > blob.compressed_size:
            raise NydusFormatError(
                f"{what}: chunk {index} ends at {chunk.compressed_end}, past the end of blob "
                f"{blob.blob_id}'s {blob.compressed_size} data bytes"
            )
        known = found[blob_index].setdefault(index, chunk)
        if known != chunk:
            raise NydusFormatError(
                f"{what}: chunk {index} of blob {blob.blob_id} recorded twice with different fields"
            )
    return {
        blob.blob_id: ChunkMap(blob.blob_id, tuple(chunks.values()))
        for blob, chunks in zip(blobs, found, strict=True)
    }


# --- RAFS v6 -------------------------------------------------------------------------------

_V6_MAGIC = 0xE0F5E1E2
_V6_SUPER_OFFSET = 1024
_V6_EXT_OFFSET = 1024 + 128
_V6_EXT = struct.Struct("<QQIIQQ")  # flags, blob table offset/size, chunk size, chunk table
_V6_BLOB = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ48x")
_V6_BLOCK = 4096


def _parse_v6(data: memoryview) -> Bootstrap:
    flags, blob_offset, blob_size, chunk_size, chunk_offset, chunk_table_size = unpack(
        _V6_EXT, data, _V6_EXT_OFFSET, "v6 extended super block"
    )
    _super_algorithms(flags, "v6 super block")
    _check_chunk_size(chunk_size, "v6 super block")
    if blob_offset % _V6_BLOCK or blob_offset < _V6_BLOCK:
        raise NydusFormatError(f"v6 super block: blob table offset {blob_offset} not aligned")
    table = _table(data, blob_offset, blob_size, _V6_BLOB.size, "v6 blob table")
    blobs = tuple(
        _v6_blob(position, fields, chunk_size)
        for position, fields in enumerate(_V6_BLOB.iter_unpack(table))
    )
    records: Iterator[tuple] = iter(())
    if chunk_table_size:
        if chunk_offset % _V6_BLOCK or chunk_offset < _V6_BLOCK:
            raise NydusFormatError(f"v6 super block: chunk table offset {chunk_offset} unaligned")
        chunk_table = _table(
            data, chunk_offset, chunk_table_size, _CHUNK_RECORD.size, "v6 chunk table"
        )
        records = _CHUNK_RECORD.iter_unpack(chunk_table)
    return Bootstrap(6, chunk_size, blobs, _chunk_maps(blobs, records, "v6 chunk table"))


def _v6_blob(position: int, fields: tuple, chunk_size: int) -> BlobEntry:
    (
        raw_id,
        index,
        blob_chunk_size,
        chunk_count,
        compression,
        digest,
        features,
        c_size,
        u_size,
        toc_size,
        ci_compression,
        ci_offset,
        ci_c_size,
        ci_u_size,
        toc_digest,
        _meta_digest,
        _meta_size,
    ) = fields
    what = f"v6 blob table entry {position}"
    blob_id = _blob_id(bytes(raw_id).rstrip(b"\0"), what)
    if index != position:
        raise NydusFormatError(f"{what}: records index {index}")
    if blob_chunk_size != chunk_size:
        raise NydusFormatError(f"{what}: chunk size {blob_chunk_size}, image has {chunk_size}")
    if chunk_count > _MAX_CHUNKS_PER_BLOB:
        raise NydusFormatError(f"{what}: {chunk_count} chunks, more than RAFS allows")
    if ci_offset + ci_c_size >= 1 << 64 or ci_c_size > ci_u_size:
        raise NydusFormatError(f"{what}: chunk-info location is inconsistent")
    return BlobEntry(
        index=index,
        blob_id=blob_id,
        chunk_size=chunk_size,
        chunk_count=chunk_count,
        compression=_coded_compression(compression, f"{what}: compressor"),
        digest_algorithm=_coded_digest(digest, what),
        features=features,
        compressed_size=c_size,
        uncompressed_size=u_size,
        ci_compression=_coded_compression(ci_compression, f"{what}: chunk-info compressor"),
        ci_offset=ci_offset,
        ci_compressed_size=ci_c_size,
        ci_uncompressed_size=ci_u_size,
        toc_size=toc_size,
        toc_digest=bytes(toc_digest),
    )


def _coded_compression(code: int, what: str) -> Compression:
    if code == _CODE_GZIP:
        raise NydusFormatError(f"{what}: gzip is not supported")
    if code not in COMPRESSION_BY_CODE:
        raise NydusFormatError(f"{what}: unknown code {code}")
    return COMPRESSION_BY_CODE[code]


def _coded_digest(code: int, what: str) -> DigestAlgorithm:
    if code not in _DIGEST_BY_CODE:
        raise NydusFormatError(f"{what}: unknown digest algorithm {code}")
    return _DIGEST_BY_CODE[code]


def _blob_id(raw: bytes, what: str) -> str:
    try:
        blob_id = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise NydusFormatError(f"{what}: blob id is not ASCII") from exc
    if not blob_id or not blob_id.isprintable():
        raise NydusFormatError(f"{what}: empty or unprintable blob id")
    return blob_id


# --- RAFS v5 -------------------------------------------------------------------------------

_V5_MAGIC = 0x52414653
_V5_SUPER = struct.Struct("<IIIIQQQQQIIIIQ")
_V5_SUPER_SIZE = 8192
_V5_EXT_BLOB = struct.Struct("<IIQQ40x")
_V5_INODE_SIZE = 128
_V5_ALIGN = 8
_S_IFMT = 0o170000
_S_IFREG = 0o100000
_V5_INODE_XATTR = 0x4


def _parse_v5(data: memoryview) -> Bootstrap:
    (
        _,
        _,
        sb_size,
        chunk_size,
        flags,
        _,
        inode_table_offset,
        _,
        blob_table_offset,
        inode_entries,
        _,
        blob_table_size,
        ext_entries,
        ext_offset,
    ) = unpack(_V5_SUPER, data, 0, "v5 super block")
    if sb_size != _V5_SUPER_SIZE:
        raise NydusFormatError(f"v5 super block: size {sb_size}, expected {_V5_SUPER_SIZE}")
    compression, digest = _super_algorithms(flags, "v5 super block")
    _check_chunk_size(chunk_size, "v5 super block")
    ext_table = _table(
        data, ext_offset, ext_entries * _V5_EXT_BLOB.size, _V5_EXT_BLOB.size, "v5 ext blob table"
    )
    extended = list(_V5_EXT_BLOB.iter_unpack(ext_table))
    require_range(data, blob_table_offset, blob_table_size, "v5 blob table")
    names = bytes(data[blob_table_offset : blob_table_offset + blob_table_size])
    blobs = tuple(_v5_blobs(names, extended, chunk_size, compression, digest))
    inode_table = _table(data, inode_table_offset, inode_entries * 4, 4, "v5 inode table")
    records = _v5_chunk_records(data, inode_table)
    return Bootstrap(5, chunk_size, blobs, _chunk_maps(blobs, records, "v5 inode chunks"))


def _v5_blobs(
    table: bytes,
    extended: list[tuple],
    chunk_size: int,
    compression: Compression,
    digest: DigestAlgorithm,
) -> Iterator[BlobEntry]:
    """Blob table frames: u32 readahead offset, u32 readahead size, the id, NUL between
    frames; the table is padded with NULs to 8 bytes."""
    position = 0
    index = 0
    while len(table) - position > 8:
        end = table.find(b"\0", position + 8)
        end = len(table) if end < 0 else end
        raw_id = table[position + 8 : end]
        position = end + 1
        if not raw_id.strip(b"\0"):
            break  # padding
        what = f"v5 blob table entry {index}"
        chunk_count, features, u_size, c_size = (
            extended[index] if index < len(extended) else (0, 0, 0, 0)
        )
        if extended and index >= len(extended):
            raise NydusFormatError(f"{what}: missing from the extended blob table")
        if chunk_count > _MAX_CHUNKS_PER_BLOB:
            raise NydusFormatError(f"{what}: {chunk_count} chunks, more than RAFS allows")
        yield BlobEntry(
            index=index,
            blob_id=_blob_id(raw_id, what),
            chunk_size=chunk_size,
            chunk_count=chunk_count,
            compression=compression,
            digest_algorithm=digest,
            features=features,
            compressed_size=c_size,
            uncompressed_size=u_size,
        )
        index += 1


def _v5_chunk_records(data: memoryview, inode_table: memoryview) -> Iterator[tuple]:
    """The chunk records after every regular file's inode (each inode visited once: hard
    links share one)."""
    seen: set[int] = set()
    budget = len(data) // _CHUNK_RECORD.size  # inodes cannot share chunk records
    for (slot,) in struct.iter_unpack("<I", inode_table):
        offset = slot * _V5_ALIGN
        if slot == 0 or offset in seen:
            continue
        seen.add(offset)
        what = f"v5 inode at {offset}"
        if offset < _V5_SUPER_SIZE:
            raise NydusFormatError(f"{what}: inside the super block")
        mode = u32(data, offset + 60, what)
        if mode & _S_IFMT != _S_IFREG:
            continue
        inode_flags = u64(data, offset + 80, what)
        child_count = u32(data, offset + 96, what)
        name_size = u16(data, offset + 100, what)
        symlink_size = u16(data, offset + 102, what)
        position = (
            offset
            + _V5_INODE_SIZE
            + align_up(name_size, _V5_ALIGN)
            + align_up(symlink_size, _V5_ALIGN)
        )
        if inode_flags & _V5_INODE_XATTR:
            xattr_size = u64(data, position, f"{what}: xattr size")
            position += 8 + align_up(xattr_size, _V5_ALIGN)
        budget -= child_count
        if budget < 0:
            raise NydusFormatError(f"{what}: inodes claim more chunks than the bootstrap holds")
        size = child_count * _CHUNK_RECORD.size
        yield from _CHUNK_RECORD.iter_unpack(_table(data, position, size, _CHUNK_RECORD.size, what))
