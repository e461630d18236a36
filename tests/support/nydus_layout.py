"""Nydus structures written from the published layout, independently of dfagent's parsers:
chunk-info entries, CI headers, TOCs, whole data blobs and RAFS v6 bootstraps, so unit tests
can check the parsers on exact bytes and then damage them."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from dataclasses import dataclass

import blake3
import lz4.block
import zstandard

CI_MAGIC = 0xB10BB10B
CODE = {"none": 0, "lz4_block": 1, "zstd": 3}
TOC_FLAG = {"none": 1, "zstd": 2, "lz4_block": 4}
F_ALIGNED, F_V2, F_DIGEST, F_TAR, F_TOC, F_CAP = (
    0x1,
    0x4,
    0x20,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
)


def compress(data: bytes, how: str) -> bytes:
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if how == "lz4_block":
        return lz4.block.compress(data, store_size=False)
    return data


def digest(data: bytes, algorithm: str) -> bytes:
    return blake3.blake3(data).digest() if algorithm == "blake3" else hashlib.sha256(data).digest()


def ci_v1(c_offset: int, c_size: int, u_offset: int, u_size: int) -> bytes:
    u, c = u_size - 1, c_size - 1
    uncomp = u_offset | ((u & 0xFFFFF) << 44) | ((u >> 20) << 8)
    comp = c_offset | ((c & 0xFFFFF) << 44) | ((c >> 20) << 40)
    return struct.pack("<QQ", uncomp, comp)


def ci_v2(c_offset, c_size, u_offset, u_size, compressed, crc=None) -> bytes:
    flags = (0x1 if compressed else 0) | (0x10 if crc is not None else 0)
    uncomp = (u_offset >> 12) | ((u_size - 1) << 32) | (flags << 56)
    comp = c_offset | (c_size << 40)
    return struct.pack("<QQQ", uncomp, comp, crc or 0)


def ci_header(features, code, entries, offset, c_size, u_size, magic=CI_MAGIC) -> bytes:
    head = struct.pack("<IIIIQQQ", magic, features, code, entries, offset, c_size, u_size)
    return head + bytes(4096 - len(head) - 4) + struct.pack("<I", magic)


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def toc_entry(name, how, sha, offset, c_size, u_size) -> bytes:
    return struct.pack(
        "<II16s32sQQQ48x", TOC_FLAG[how], 0, name.encode(), sha, offset, c_size, u_size
    )


@dataclass
class SyntheticChunk:
    index: int
    compressed_offset: int
    stored: bytes
    content: bytes
    compressed: bool
    uncompressed_offset: int

    @property
    def compressed_size(self) -> int:
        return len(self.stored)


@dataclass
class SyntheticBlob:
    data: bytes
    chunks: list[SyntheticChunk]
    digests: list[bytes]
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    features: int
    toc: bytes  # entries + tar header, empty without a TOC
    ci_compression: str = "zstd"


def build_blob(
    contents, compression="zstd", algorithm="blake3", *, v2=False, toc=False, ci_compression="zstd"
) -> SyntheticBlob:
    """A data blob laid out as nydus-image lays it out (incompressible chunks stored raw)."""
    out = io.BytesIO()
    chunks = []
    u_offset = 0
    for index, content in enumerate(contents):
        stored = compress(content, compression)
        compressed = compression != "none" and len(stored) < len(content)
        stored = stored if compressed else content
        chunks.append(SyntheticChunk(index, out.tell(), stored, content, compressed, u_offset))
        out.write(stored)
        u_offset += (len(content) + 4095) // 4096 * 4096
    data_size = out.tell()
    if toc:
        out.write(tar_header("image.blob", data_size))
    if v2:
        array = b"".join(
            ci_v2(
                c.compressed_offset,
                c.compressed_size,
                c.uncompressed_offset,
                len(c.content),
                c.compressed,
            )
            for c in chunks
        )
    else:
        array = b"".join(
            ci_v1(c.compressed_offset, c.compressed_size, c.uncompressed_offset, len(c.content))
            for c in chunks
        )
    stored_array = compress(array, ci_compression)
    if len(stored_array) >= len(array):  # as nydus-image does: kept raw when it does not shrink
        stored_array, ci_compression = array, "none"
    features = F_ALIGNED | (F_V2 if v2 else 0) | (F_DIGEST | F_TAR | F_TOC | F_CAP if toc else 0)
    ci_offset = out.tell()
    header = ci_header(
        features, CODE[ci_compression], len(chunks), ci_offset, len(stored_array), len(array)
    )
    out.write(stored_array)
    out.write(header)
    digests = [digest(c.content, algorithm) for c in chunks]
    toc_bytes = b""
    if toc:
        out.write(tar_header("blob.meta", len(stored_array) + len(header)))
        digest_offset = out.tell()
        digest_array = b"".join(digests)
        out.write(digest_array)
        out.write(tar_header("blob.digest", len(digest_array)))
        entries = b"".join(
            [
                toc_entry(
                    "blob.meta",
                    ci_compression,
                    hashlib.sha256(array).digest(),
                    ci_offset,
                    len(stored_array),
                    len(array),
                ),
                toc_entry(
                    "blob.meta.header",
                    "none",
                    hashlib.sha256(header).digest(),
                    ci_offset + len(stored_array),
                    4096,
                    4096,
                ),
                toc_entry(
                    "blob.digest",
                    "none",
                    hashlib.sha256(digest_array).digest(),
                    digest_offset,
                    len(digest_array),
                    len(digest_array),
                ),
            ]
        )
        toc_bytes = entries + tar_header("rafs.blob.toc", len(entries))
        out.write(toc_bytes)
    return SyntheticBlob(
        out.getvalue(),
        chunks,
        digests,
        ci_offset,
        len(stored_array),
        len(array),
        features,
        toc_bytes,
        ci_compression,
    )


def v6_bootstrap(
    blob_id: str,
    blob: SyntheticBlob,
    compression="zstd",
    algorithm="blake3",
    chunk_size=0x100000,
    chunk_records=None,
) -> bytes:
    """A RAFS v6 bootstrap holding only what the chunk map needs: super blocks, one blob
    table entry and the chunk table."""
    flags = {"none": 0x1, "lz4_block": 0x2, "zstd": 0x80}[compression]
    flags |= 0x4 if algorithm == "blake3" else 0x8
    blob_table, chunk_table = 4096, 8192
    if chunk_records is None:
        chunk_records = [
            chunk_record(c, digest_value, 0)
            for c, digest_value in zip(blob.chunks, blob.digests, strict=True)
        ]
    chunks = b"".join(chunk_records)
    image = bytearray(chunk_table + len(chunks))
    struct.pack_into("<I", image, 1024, 0xE0F5E1E2)
    struct.pack_into(
        "<QQIIQQ", image, 1152, flags, blob_table, 256, chunk_size, chunk_table, len(chunks)
    )
    toc_digest = hashlib.sha256(blob.toc).digest() if blob.toc else bytes(32)
    entry = struct.pack(
        "<64sIIIIIIQQIIQQQ32s32sQ48x",
        blob_id.encode(),
        0,
        chunk_size,
        len(blob.chunks),
        CODE[compression],
        0 if algorithm == "blake3" else 1,
        blob.features,
        blob.chunks[-1].compressed_offset + blob.chunks[-1].compressed_size,
        sum(len(c.content) for c in blob.chunks),
        len(blob.toc),
        CODE[blob.ci_compression],
        blob.ci_offset,
        blob.ci_compressed_size,
        blob.ci_uncompressed_size,
        toc_digest,
        bytes(32),
        0,
    )
    image[blob_table : blob_table + 256] = entry
    image[chunk_table:] = chunks
    return bytes(image)


def chunk_record(chunk: SyntheticChunk, digest_value: bytes, blob_index: int) -> bytes:
    return struct.pack(
        "<32sIIIIQQQII",
        digest_value,
        blob_index,
        1 if chunk.compressed else 0,
        chunk.compressed_size,
        len(chunk.content),
        chunk.compressed_offset,
        chunk.uncompressed_offset,
        0,
        chunk.index,
        0,
    )


def v5_inode(mode: int, name: bytes, child_count: int, flags: int = 0) -> bytes:
    head = struct.pack(
        "<32sQQIIIIQQQIIIHHIIQ8x",
        bytes(32),
        1,
        1,
        0,
        0,
        0,
        mode,
        0,
        0,
        flags,
        1,
        0,
        child_count,
        len(name),
        0,
        0,
        0,
        0,
    )
    return head + name.ljust((len(name) + 7) // 8 * 8, b"\0")


def v5_bootstrap(
    blob_id: str,
    blob: SyntheticBlob,
    compression="zstd",
    algorithm="blake3",
    chunk_size=0x100000,
    inode_slots=None,
    child_count=None,
) -> bytes:
    """A RAFS v5 bootstrap: super block, inode table, blob table, extended blob table, a root
    directory and one regular file holding every chunk of `blob`."""
    flags = {"none": 0x1, "lz4_block": 0x2, "zstd": 0x80}[compression]
    flags |= 0x4 if algorithm == "blake3" else 0x8
    inode_table = 8192
    blob_table = inode_table + 8
    frame = struct.pack("<II", 0, 0) + blob_id.encode()
    frame = frame.ljust((len(frame) + 7) // 8 * 8, b"\0")
    ext_table = blob_table + len(frame)
    root = ext_table + 64
    root_inode = v5_inode(0o040755, b"/", 1)
    file_offset = root + len(root_inode)
    records = b"".join(
        chunk_record(c, d, 0) for c, d in zip(blob.chunks, blob.digests, strict=True)
    )
    count = len(blob.chunks) if child_count is None else child_count
    file_inode = v5_inode(0o100644, b"file", count)
    super_block = struct.pack(
        "<IIIIQQQQQIIIIQ",
        0x52414653,
        0x500,
        8192,
        chunk_size,
        flags,
        2,
        inode_table,
        0,
        blob_table,
        2,
        0,
        len(frame),
        1,
        ext_table,
    ).ljust(8192, b"\0")
    slots = inode_slots if inode_slots is not None else [root >> 3, file_offset >> 3]
    ext = struct.pack(
        "<IIQQ40x",
        len(blob.chunks),
        blob.features,
        sum(len(c.content) for c in blob.chunks),
        len(blob.data),
    )
    return (
        super_block
        + struct.pack("<2I", *slots[:2])
        + frame
        + ext
        + root_inode
        + file_inode
        + records
    )
