"""How dfdaemon 1.5.10 cuts a task into pieces.

Piece n starts at n * length; every piece but the last is `length` long. Without an explicit
piece length the length is the next power of two of content_length / 500, kept within
4 MiB … 64 MiB. dfdaemon computes these in floating point; so does this module, so the results
agree for any length.
"""

from __future__ import annotations

import math

__all__ = ["MAX_PIECE_LENGTH", "MIN_PIECE_LENGTH", "piece_bounds", "piece_count", "piece_length"]

MIN_PIECE_LENGTH = 4 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
_TARGET_PIECE_COUNT = 500


def piece_length(content_length: int) -> int:
    """The piece length dfdaemon picks for a task of `content_length` bytes."""
    if content_length < 0:
        raise ValueError(f"negative content length {content_length}")
    share = int(float(content_length) / float(_TARGET_PIECE_COUNT))
    power = 1 << max(share - 1, 0).bit_length()  # the next power of two (1 for 0)
    return min(max(power, MIN_PIECE_LENGTH), MAX_PIECE_LENGTH)


def piece_count(content_length: int, length: int) -> int:
    if content_length < 0 or length <= 0:
        raise ValueError(f"no pieces for content length {content_length}, length {length}")
    return math.ceil(float(content_length) / float(length))


def piece_bounds(content_length: int, length: int, number: int) -> tuple[int, int]:
    """(offset, length) of piece `number`; the last piece holds what remains."""
    count = piece_count(content_length, length)
    if not 0 <= number < count:
        raise ValueError(f"piece {number} of a task with {count} pieces")
    offset = number * length
    return offset, min(length, content_length - offset)
