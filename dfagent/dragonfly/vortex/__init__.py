"""Vortex, the TCP protocol Dragonfly peers move piece bytes with: the frames, a client that
fetches one piece, and a server side that answers a connection's requests."""

from dfagent.dragonfly.vortex.client import PieceReply, download_piece, fetch_piece
from dfagent.dragonfly.vortex.server import (
    IDLE_TIMEOUT,
    SEND_TIMEOUT,
    Lookup,
    ServedPiece,
    Slots,
    serve_connection,
)
from dfagent.dragonfly.vortex.wire import (
    HEADER_SIZE,
    MAX_METADATA_LENGTH,
    MAX_PIECE_LENGTH,
    TASK_ID_SIZE,
    DownloadPiece,
    ErrorCode,
    ErrorMessage,
    Header,
    PieceMetadata,
    Tag,
    TrafficType,
    crc32_digest,
)

__all__ = [
    "HEADER_SIZE",
    "IDLE_TIMEOUT",
    "MAX_METADATA_LENGTH",
    "MAX_PIECE_LENGTH",
    "SEND_TIMEOUT",
    "TASK_ID_SIZE",
    "DownloadPiece",
    "ErrorCode",
    "ErrorMessage",
    "Header",
    "Lookup",
    "PieceMetadata",
    "PieceReply",
    "ServedPiece",
    "Slots",
    "Tag",
    "TrafficType",
    "crc32_digest",
    "download_piece",
    "fetch_piece",
    "serve_connection",
]
