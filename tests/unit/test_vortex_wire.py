from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfagent.dragonfly.vortex import (
    MAX_METADATA_LENGTH,
    MAX_PIECE_LENGTH,
    DownloadPiece,
    ErrorCode,
    ErrorMessage,
    Header,
    PieceMetadata,
    Tag,
    TrafficType,
)
from dfagent.dragonfly.vortex.wire import encode_close, encode_header
from dfagent.errors import VortexError

TASK = "d3add1f66b0d0b8083f14479d6e181ec9e2b34cf07d4a1a2ee2fcf51d3a3f14a"

# vortex-protocol's own layout example: number 42, offset 1024, length 2048, digest "short",
# no parent, traffic type 1, cost 30 s, created at 1,700,000,000.
LAYOUT_METADATA = PieceMetadata(42, 1024, 2048, "short", "", 1, 30, 1_700_000_000)
LAYOUT_VALUE = bytes.fromhex(
    "00000032"  # metadata length: 50
    "0000002a"  # number
    "0000000000000400"  # offset
    "0000000000000800"  # length
    "00000005" + b"short".hex() + "00000000"  # digest, parent id
    "01"  # traffic type
    "000000000000001e"  # cost
    "000000006553f100"  # created at
)
METADATA = PieceMetadata(7, 28 << 20, 4 << 20, "crc32:864", "127.0.0.1-node-b", 1, 3, 1_800_000_000)


def value_of(frame: bytes) -> bytes:
    header = Header.decode(frame[:6])
    assert header.length == len(frame) - 6
    return frame[6:]


def test_header_layout():
    assert encode_header(Tag.CLOSE, 0x01020304, packet_id=9) == bytes([9, 254, 1, 2, 3, 4])
    assert Header.decode(bytes([9, 254, 1, 2, 3, 4])) == Header(9, Tag.CLOSE, 0x01020304)
    assert Header.decode(bytes([0, 77, 0, 0, 0, 0])).describe() == "reserved 77 frame of 0 bytes"
    assert encode_close()[1:] == bytes([254, 0, 0, 0, 0])
    for size in (0, 5, 7):
        with pytest.raises(VortexError, match="6 bytes"):
            Header.decode(bytes(size))


def test_download_piece_layout():
    frame = DownloadPiece(TASK, 0x01020304).encode()
    assert frame[1:6] == bytes([0, 0, 0, 0, 68])
    assert frame[6:] == TASK.encode() + bytes([1, 2, 3, 4])
    assert DownloadPiece.decode(frame[6:]) == DownloadPiece(TASK, 0x01020304)


@pytest.mark.parametrize(
    ("task_id", "number"), [(TASK[:63], 0), (TASK + "0", 0), (TASK, -1), (TASK, 1 << 32)]
)
def test_download_piece_refuses_what_cannot_be_sent(task_id, number):
    with pytest.raises(ValueError):
        DownloadPiece(task_id, number).encode()


@pytest.mark.parametrize(
    "value",
    [b"", TASK.encode(), TASK.encode() + bytes(3), TASK.encode() + bytes(5), b"\xff" * 68],
    ids=["empty", "no-number", "short", "long", "not-utf8"],
)
def test_download_piece_malformed(value):
    with pytest.raises(VortexError):
        DownloadPiece.decode(value)


def test_piece_metadata_layout():
    frame = LAYOUT_METADATA.encode()
    assert frame[1] == Tag.PIECE_CONTENT
    assert value_of(frame) == LAYOUT_VALUE
    assert PieceMetadata.decode(LAYOUT_VALUE) == LAYOUT_METADATA


def test_piece_metadata_round_trip_and_later_fields_skipped():
    value = value_of(METADATA.encode())
    assert PieceMetadata.decode(value) == METADATA
    extended = struct.pack(">I", len(value) - 4 + 7) + value[4:] + b"\xab" * 7
    assert PieceMetadata.decode(extended) == METADATA


def _with_length(metadata: bytes) -> bytes:
    return struct.pack(">I", len(metadata)) + metadata


def _malformed_metadata() -> list:
    value = value_of(METADATA.encode())
    body = value[4:]
    digest_length_at = 20  # after number, offset and length
    digest_at = digest_length_at + 4
    parent_length_at = digest_at + len("crc32:864")
    overrun = struct.pack(">I", 999)
    case = pytest.param
    return [
        case(b"", "too short", id="empty"),
        case(value[:3], "too short", id="no-length"),
        case(value[:-1], "says 70 bytes but the frame holds 69", id="frame-short"),
        case(value + b"\x00", "says 70 bytes but the frame holds 71", id="frame-long"),
        case(struct.pack(">I", MAX_METADATA_LENGTH + 1) + body, "over the limit", id="huge"),
        case(_with_length(body[:44]), "44 bytes is too short", id="too-short"),
        case(
            _with_length(body[:digest_length_at] + overrun + body[digest_at:]),
            "ends inside its digest",
            id="digest-overrun",
        ),
        case(
            _with_length(body[:parent_length_at] + overrun + body[parent_length_at + 4 :]),
            "ends inside its parent id",
            id="parent-overrun",
        ),
        case(_with_length(body[:-1]), "before its traffic type", id="no-suffix"),
        case(
            _with_length(body[:digest_at] + b"\xff" + body[digest_at + 1 :]),
            "digest is not UTF-8",
            id="digest-not-utf8",
        ),
        case(
            _with_length(
                struct.pack(">IQQII", 0, 0, MAX_PIECE_LENGTH + 1, 0, 0)
                + struct.pack(">BQq", 1, 0, 0)
            ),
            "over the protocol's limit",
            id="piece-too-long",
        ),
    ]


@pytest.mark.parametrize(("value", "reason"), _malformed_metadata())
def test_piece_metadata_malformed(value, reason):
    with pytest.raises(VortexError, match=reason):
        PieceMetadata.decode(value)


@pytest.mark.parametrize(
    "metadata",
    [
        PieceMetadata(0, 0, MAX_PIECE_LENGTH + 1, "", ""),
        PieceMetadata(-1, 0, 0, "", ""),
        PieceMetadata(0, 0, 0, "", "", traffic_type=256),
        PieceMetadata(0, 0, 0, "x" * MAX_METADATA_LENGTH, ""),
    ],
)
def test_piece_metadata_refuses_what_cannot_be_sent(metadata):
    with pytest.raises(ValueError):
        metadata.encode()


def test_error_message():
    frame = ErrorMessage(ErrorCode.INTERNAL, "boom").encode()
    assert frame[1:6] == bytes([255, 0, 0, 0, 5])
    assert frame[6:] == b"\x03boom"
    error = ErrorMessage.decode(b"\x02piece x not found")
    assert error == ErrorMessage(ErrorCode.NOT_FOUND, "piece x not found")
    assert error.describe() == "NOT_FOUND: piece x not found"
    assert ErrorMessage.decode(b"\xc8").describe() == "reserved 200: "
    with pytest.raises(VortexError, match="code"):
        ErrorMessage.decode(b"")
    with pytest.raises(VortexError, match="UTF-8"):
        ErrorMessage.decode(b"\x03\xff")


metadata_values = st.builds(
    PieceMetadata,
    number=st.integers(0, 2**32 - 1),
    offset=st.integers(0, 2**64 - 1),
    length=st.integers(0, MAX_PIECE_LENGTH),
    digest=st.text(max_size=80),
    parent_id=st.text(max_size=80),
    traffic_type=st.sampled_from(TrafficType),
    cost=st.integers(0, 2**64 - 1),
    created_at=st.integers(-(2**63), 2**63 - 1),
)


@given(metadata_values)
def test_piece_metadata_round_trips(metadata):
    assert PieceMetadata.decode(value_of(metadata.encode())) == metadata


@given(metadata_values, st.integers(1, 400))
def test_truncated_metadata_is_refused(metadata, cut):
    value = value_of(metadata.encode())
    with pytest.raises(VortexError):
        PieceMetadata.decode(value[: max(len(value) - cut, 0)])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_vortex_error(data):
    for decode in (PieceMetadata.decode, DownloadPiece.decode, ErrorMessage.decode):
        with contextlib.suppress(VortexError):  # anything else fails the test
            decode(data)
