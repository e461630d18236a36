"""The chunk maps a nydus bootstrap layer vouches for. An image converted to nydus carries its
bootstrap as an ordinary layer: a tar (gzip, zstd or uncompressed) holding `image/image.boot`,
or the bootstrap file itself pushed as a blob. Once that layer's sha256 is checked, the
bootstrap's chunk digests prove every chunk of the data blobs it names.

Telling that a layer is not one is cheap whatever its size: only the first few members of a tar
are looked at, and layers or bootstraps beyond the caps below are refused. Blocking: the
caller runs it in a thread.
"""

from __future__ import annotations

import re
import zlib
from typing import BinaryIO, Protocol

import zstandard

from dfagent.nydus.bootstrap import BOOTSTRAP_HEAD_SIZE, looks_like_bootstrap, parse_bootstrap
from dfagent.nydus.chunks import ChunkMap
from dfagent.nydus.errors import NydusFormatError

__all__ = ["MAX_BOOTSTRAP_SIZE", "MAX_LAYER_SIZE", "chunk_maps_of_layer"]

MAX_LAYER_SIZE = 256 << 20  # a bigger blob (as stored, compressed) is not looked at
MAX_BOOTSTRAP_SIZE = 64 << 20  # a bigger bootstrap (decompressed) is not read

_MAX_HEADERS = 8  # tar headers read before concluding the layer holds no bootstrap
_MAX_SKIPPED = 64 << 10  # a bigger member before the bootstrap: not a bootstrap layer
_BOOTSTRAP_NAMES = (b"image/image.boot", b"image.boot")
_OCI_HEX = re.compile(r"[0-9a-f]{64}")
_READ_SIZE = 64 << 10

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_WBITS = 16 + zlib.MAX_WBITS

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_HEADER_ONLY = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos
_PAX, _GNU_LONG_NAME = b"x", b"L"  # headers that name or size the next member
_OCTAL = re.compile(rb"[0-7]*")
_DECIMAL = re.compile(rb"[0-9]{1,20}")


def chunk_maps_of_layer(file: BinaryIO, size: int) -> dict[str, ChunkMap]:
    """The chunk map of every data blob named by the bootstrap in this layer, keyed by the
    blob's OCI digest (hex); {} when the layer is not a bootstrap layer, is bigger than
    MAX_LAYER_SIZE, or holds a bootstrap bigger than MAX_BOOTSTRAP_SIZE. Blob ids that are
    not a sha256 (a placeholder of an inline-meta image) and blobs without chunks are left
    out. `file` is read from its start, at most `size` bytes of it.

    A layer that claims to be one but is damaged (a truncated or corrupt stream, a bad tar
    header, a malformed bootstrap) is a NydusFormatError; nothing else but an OSError from
    `file` leaves this function."""
    if size > MAX_LAYER_SIZE:
        return {}
    blob = _Blob(file, size)
    head = _read_up_to(blob, BOOTSTRAP_HEAD_SIZE)
    blob.rewind()
    if head.startswith(_GZIP_MAGIC):
        bootstrap = _bootstrap_in_tar(_Gunzip(blob))
    elif head.startswith(_ZSTD_MAGIC):
        bootstrap = _bootstrap_in_tar(_Unzstd(blob))
    elif _is_tar(head):
        bootstrap = _bootstrap_in_tar(blob)
    elif looks_like_bootstrap(head) and size <= MAX_BOOTSTRAP_SIZE:
        bootstrap = _read_exact(blob, size, "bootstrap")
    else:
        return {}
    return {} if bootstrap is None else _chunk_maps(bootstrap)


def _chunk_maps(bootstrap: bytes) -> dict[str, ChunkMap]:
    boot = parse_bootstrap(bootstrap)
    return {
        blob.blob_id: chunk_map
        for blob in boot.blobs
        if _OCI_HEX.fullmatch(blob.blob_id) and (chunk_map := boot.chunk_maps[blob.blob_id]).chunks
    }


# --- byte streams ---------------------------------------------------------------------------


class _Stream(Protocol):
    def read(self, size: int, /) -> bytes:
        """Up to `size` bytes (size > 0); b"" only at the end."""
        ...


class _Blob:
    """The file's bytes from its start, never past `size`."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._size = size
        self._left = size
        file.seek(0)

    def rewind(self) -> None:
        self._file.seek(0)
        self._left = self._size

    def read(self, size: int, /) -> bytes:
        if self._left <= 0:
            return b""
        data = self._file.read(min(size, self._left))
        self._left -= len(data)
        return data


class _Gunzip:
    """The decompressed bytes of a gzip stream (one member or several in a row)."""

    def __init__(self, source: _Stream) -> None:
        self._source = source
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._input = b""

    def read(self, size: int, /) -> bytes:
        while True:
            if not self._input:
                self._input = self._source.read(_READ_SIZE)
                if not self._input:
                    if self._inflater.eof:
                        return b""
                    raise NydusFormatError("layer: the gzip stream is truncated")
            if self._inflater.eof:  # another member follows
                self._inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                out = self._inflater.decompress(self._input, size)
            except zlib.error as exc:
                raise NydusFormatError(f"layer: gzip: {exc}") from exc
            self._input = self._inflater.unconsumed_tail or self._inflater.unused_data
            if out:
                return out


class _Unzstd:
    """The decompressed bytes of a zstd stream. A truncated one just ends early: cut inside its
    first block, it reads as a stream too short to be a tar."""

    def __init__(self, source: _Stream) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=_READ_SIZE, read_across_frames=True
        )

    def read(self, size: int, /) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise NydusFormatError(f"layer: zstd: {exc}") from exc


def _read_up_to(stream: _Stream, size: int) -> bytes:
    parts = []
    while size > 0 and (part := stream.read(size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_exact(stream: _Stream, size: int, what: str) -> bytes:
    data = _read_up_to(stream, size)
    if len(data) != size:
        raise NydusFormatError(f"layer: {what} ends after {len(data)} of {size} bytes")
    return data


# --- tar ------------------------------------------------------------------------------------


def _bootstrap_in_tar(stream: _Stream) -> bytes | None:
    """The bootstrap among the first members of the tar in `stream`; None when `stream` is not
    a tar or its first members show it is not a bootstrap layer."""
    block = _read_up_to(stream, _BLOCK)
    if len(block) < _BLOCK or not _is_tar(block):
        return None
    long_name: bytes | None = None  # from a GNU long-name header, for the next member
    pax: dict[bytes, bytes] = {}  # from a pax header, for the next member
    for count in range(_MAX_HEADERS):
        if count:
            block = _read_exact(stream, _BLOCK, "tar header")
        if block == _ZERO_BLOCK:
            return None  # the end of the archive
        name, size, kind = _header(block)
        name = long_name or pax.get(b"path", name)
        if b"size" in pax:
            size = _pax_size(pax[b"size"])
        long_name, pax = None, {}
        if kind in _HEADER_ONLY:
            size = 0
        if _normalized(name) in _BOOTSTRAP_NAMES:
            if kind not in _REGULAR:
                raise NydusFormatError(f"layer: tar member {name!r} is not a regular file")
            if size > MAX_BOOTSTRAP_SIZE:
                return None
            return _read_exact(stream, size, "bootstrap")
        if size > _MAX_SKIPPED:
            return None
        data = _read_exact(stream, -size % _BLOCK + size, f"tar member {name!r}")[:size]
        if kind == _PAX:
            pax = _pax_records(data)
        elif kind == _GNU_LONG_NAME:
            long_name = data.split(b"\0", 1)[0]
    return None


def _is_tar(first_block: bytes) -> bool:
    return first_block[257:262] == b"ustar"


def _header(block: bytes) -> tuple[bytes, int, bytes]:
    """(name, size, type flag) of a ustar, pax or GNU tar header."""
    magic = block[257:263]
    if not magic.startswith(b"ustar"):
        raise NydusFormatError("layer: tar header without the ustar magic")
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = unsigned - 0x100 * sum(1 for byte in block[:148] + block[156:] if byte & 0x80)
    if stored not in (unsigned, signed):
        raise NydusFormatError("layer: tar header checksum mismatch")
    name = block[:100].split(b"\0", 1)[0]
    if magic == b"ustar\0":  # POSIX: a prefix extends the name; GNU uses these bytes otherwise
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name, _number(block[124:136], "size"), block[156:157]


def _number(field: bytes, what: str) -> int:
    """A numeric tar header field: octal digits, or base-256 when the top bit is set."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise NydusFormatError(f"layer: tar header {what} is negative")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not _OCTAL.fullmatch(digits):
        raise NydusFormatError(f"layer: tar header {what} {field!r} is not octal")
    return int(digits or b"0", 8)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The `<length> <key>=<value>\\n` records of a pax extended header."""
    records = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        length = data[position:space]
        if space < 0 or not _DECIMAL.fullmatch(length):
            raise NydusFormatError("layer: malformed pax record length")
        end = position + int(length)
        record = data[space + 1 : end]
        key, equals, value = record.removesuffix(b"\n").partition(b"=")
        if end > len(data) or not record.endswith(b"\n") or not equals:
            raise NydusFormatError("layer: malformed pax record")
        records[key] = value
        position = end
    return records


def _pax_size(value: bytes) -> int:
    if not _DECIMAL.fullmatch(value):
        raise NydusFormatError(f"layer: pax size {value!r} is not a number")
    return int(value)


def _normalized(name: bytes) -> bytes:
    name = name.lstrip(b"/")
    while name.startswith(b"./"):
        name = name[2:].lstrip(b"/")
    return name
