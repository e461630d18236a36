"""The Vortex frames dfdaemon 1.5.10 exchanges for a piece (vortex-protocol 0.2.0).

Every frame is a 6-byte header (u8 packet id, u8 tag, u32 value length; big-endian) and its
value. A DownloadPiece value is the 64-byte task id and the u32 piece number. A PieceContent
value is the u32 length M of the metadata, then M bytes of metadata: number u32, offset u64,
length u64, digest (u32 length + UTF-8), parent id (u32 length + UTF-8), traffic type u8,
cost u64 (seconds), created_at i64 (unix seconds); bytes after these, within M, are room for
later fields and are skipped. The piece's bytes follow the frame, outside its length. An Error
value is a u8 code and a UTF-8 message. The packet id is random and nobody checks it.
"""

from __future__ import annotations

import asyncio
import random
import struct
from dataclasses import dataclass
from enum import IntEnum

from dfagent.errors import VortexError

__all__ = [
    "DOWNLOAD_PIECE_LENGTH",
    "HEADER_SIZE",
    "MAX_ERROR_LENGTH",
    "MAX_METADATA_LENGTH",
    "MAX_PIECE_LENGTH",
    "TASK_ID_SIZE",
    "DownloadPiece",
    "ErrorCode",
    "ErrorMessage",
    "Header",
    "PieceMetadata",
    "Tag",
    "TrafficType",
    "crc32_digest",
    "encode_close",
    "encode_header",
    "read_header",
    "read_value",
]

HEADER_SIZE = 6
TASK_ID_SIZE = 64
DOWNLOAD_PIECE_LENGTH = TASK_ID_SIZE + 4
MAX_METADATA_LENGTH = 64 * 1024  # a real one is about 150 bytes
MAX_ERROR_LENGTH = 64 * 1024
MAX_PIECE_LENGTH = 1 << 30  # the protocol's own limit for a piece

_HEADER = struct.Struct(">BBI")
_PIECE_NUMBER = struct.Struct(">I")
_METADATA_PREFIX = struct.Struct(">IQQI")  # number, offset, length, digest length
_LENGTH = struct.Struct(">I")
_METADATA_SUFFIX = struct.Struct(">BQq")  # traffic type, cost, created_at
_MIN_METADATA_LENGTH = _METADATA_PREFIX.size + _LENGTH.size + _METADATA_SUFFIX.size


class Tag(IntEnum):
    DOWNLOAD_PIECE = 0
    PIECE_CONTENT = 1
    DOWNLOAD_PERSISTENT_PIECE = 2
    PERSISTENT_PIECE_CONTENT = 3
    DOWNLOAD_PERSISTENT_CACHE_PIECE = 4
    PERSISTENT_CACHE_PIECE_CONTENT = 5
    DOWNLOAD_CACHE_PIECE = 6
    CACHE_PIECE_CONTENT = 7
    CLOSE = 254
    ERROR = 255


class ErrorCode(IntEnum):
    UNKNOWN = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    INTERNAL = 3


class TrafficType(IntEnum):
    """Where the serving peer got the piece from (the API's common.v2.TrafficType); dfdaemon
    always sends REMOTE_PEER."""

    BACK_TO_SOURCE = 0
    REMOTE_PEER = 1
    LOCAL_PEER = 2


def crc32_digest(crc: int) -> str:
    """A piece's digest as Dragonfly writes it: CRC-32/IEEE (zlib.crc32) in decimal."""
    return f"crc32:{crc}"


def _name(kind: type[IntEnum], value: int) -> str:
    try:
        return kind(value).name
    except ValueError:
        return f"reserved {value}"


@dataclass(frozen=True, slots=True)
class Header:
    packet_id: int
    tag: int  # a Tag, or 8-253 (reserved)
    length: int

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise VortexError(f"a frame header is {HEADER_SIZE} bytes, got {len(data)}")
        return cls(*_HEADER.unpack(data))

    def describe(self) -> str:
        return f"{_name(Tag, self.tag)} frame of {self.length} bytes"


def encode_header(tag: Tag, length: int, packet_id: int | None = None) -> bytes:
    if not 0 <= length < 1 << 32:
        raise ValueError(f"a frame value of {length} bytes does not fit a u32 length")
    return _HEADER.pack(random.randrange(256) if packet_id is None else packet_id, tag, length)


def encode_close() -> bytes:
    return encode_header(Tag.CLOSE, 0)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise VortexError(f"{what} is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class DownloadPiece:
    task_id: str
    number: int

    def encode(self) -> bytes:
        task = self.task_id.encode()
        if len(task) != TASK_ID_SIZE:
            raise ValueError(f"a task id is {TASK_ID_SIZE} bytes, got {len(task)}")
        if not 0 <= self.number < 1 << 32:
            raise ValueError(f"piece number {self.number} does not fit a u32")
        header = encode_header(Tag.DOWNLOAD_PIECE, DOWNLOAD_PIECE_LENGTH)
        return header + task + _PIECE_NUMBER.pack(self.number)

    @classmethod
    def decode(cls, value: bytes) -> DownloadPiece:
        if len(value) != DOWNLOAD_PIECE_LENGTH:
            raise VortexError(
                f"a DownloadPiece value is {DOWNLOAD_PIECE_LENGTH} bytes, got {len(value)}"
            )
        task_id = _text(value[:TASK_ID_SIZE], "the task id")
        (number,) = _PIECE_NUMBER.unpack_from(value, TASK_ID_SIZE)
        return cls(task_id, number)


@dataclass(frozen=True, slots=True)
class PieceMetadata:
    """What a PieceContent frame says about the piece whose bytes follow it."""

    number: int
    offset: int
    length: int
    digest: str  # "crc32:<decimal>", or empty when the peer has none
    parent_id: str
    traffic_type: int = TrafficType.REMOTE_PEER
    cost: int = 0  # seconds the serving peer took to get the piece
    created_at: int = 0  # unix seconds

    def encode(self) -> bytes:
        """The PieceContent frame (without the piece's bytes)."""
        if not 0 <= self.length <= MAX_PIECE_LENGTH:
            raise ValueError(f"a piece of {self.length} bytes is outside the protocol's 0-1 GiB")
        digest, parent = self.digest.encode(), self.parent_id.encode()
        try:
            metadata = b"".join(
                (
                    _METADATA_PREFIX.pack(self.number, self.offset, self.length, len(digest)),
                    digest,
                    _LENGTH.pack(len(parent)),
                    parent,
                    _METADATA_SUFFIX.pack(self.traffic_type, self.cost, self.created_at),
                )
            )
        except struct.error as exc:
            raise ValueError(f"piece metadata out of range: {exc}") from exc
        if len(metadata) > MAX_METADATA_LENGTH:
            raise ValueError(f"piece metadata of {len(metadata)} bytes is over the limit")
        value = _LENGTH.pack(len(metadata)) + metadata
        return encode_header(Tag.PIECE_CONTENT, len(value)) + value

    @classmethod
    def decode(cls, value: bytes) -> PieceMetadata:
        """The metadata of a PieceContent frame's value (the u32 length and what follows)."""
        if len(value) < _LENGTH.size:
            raise VortexError("a PieceContent value too short for its metadata length")
        (declared,) = _LENGTH.unpack_from(value)
        if declared > MAX_METADATA_LENGTH:
            raise VortexError(f"piece metadata of {declared} bytes is over the limit")
        if len(value) != _LENGTH.size + declared:
            raise VortexError(
                f"piece metadata says {declared} bytes but the frame holds {len(value) - 4}"
            )
        if declared < _MIN_METADATA_LENGTH:
            raise VortexError(f"piece metadata of {declared} bytes is too short")
        number, offset, length, digest_length = _METADATA_PREFIX.unpack_from(value, 4)
        position = 4 + _METADATA_PREFIX.size
        digest, position = _field(value, position, digest_length, "digest")
        if len(value) - position < _LENGTH.size:
            raise VortexError("piece metadata ends before the parent id's length")
        (parent_length,) = _LENGTH.unpack_from(value, position)
        parent, position = _field(value, position + _LENGTH.size, parent_length, "parent id")
        if len(value) - position < _METADATA_SUFFIX.size:
            raise VortexError("piece metadata ends before its traffic type, cost and time")
        traffic_type, cost, created_at = _METADATA_SUFFIX.unpack_from(value, position)
        if length > MAX_PIECE_LENGTH:
            raise VortexError(f"a piece of {length} bytes is over the protocol's limit")
        return cls(number, offset, length, digest, parent, traffic_type, cost, created_at)


def _field(value: bytes, position: int, length: int, what: str) -> tuple[str, int]:
    end = position + length
    if end > len(value):
        raise VortexError(f"piece metadata ends inside its {what} ({length} bytes declared)")
    return _text(value[position:end], f"the {what}"), end


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    code: int  # an ErrorCode, or 4-255 (reserved)
    message: str

    def encode(self) -> bytes:
        message = self.message.encode()[: MAX_ERROR_LENGTH - 1].decode(errors="ignore")
        value = bytes([self.code]) + message.encode()
        return encode_header(Tag.ERROR, len(value)) + value

    @classmethod
    def decode(cls, value: bytes) -> ErrorMessage:
        if not value:
            raise VortexError("an Error value without its code")
        return cls(value[0], _text(value[1:], "the error message"))

    def describe(self) -> str:
        return f"{_name(ErrorCode, self.code)}: {self.message}"


async def read_header(reader: asyncio.StreamReader) -> Header:
    """The next frame's header; asyncio.IncompleteReadError when the stream ends first."""
    return Header.decode(await reader.readexactly(HEADER_SIZE))


async def read_value(reader: asyncio.StreamReader, header: Header, limit: int) -> bytes:
    """The value of `header`'s frame, refused (before reading it) when over `limit` bytes."""
    if header.length > limit:
        raise VortexError(f"{header.describe()} is over the {limit}-byte limit")
    return await reader.readexactly(header.length)
