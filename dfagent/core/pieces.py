"""Piece arithmetic: a blob is cut into fixed-size pieces; piece n starts at n * piece_size."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PieceSpan", "piece_bounds", "piece_count", "pieces_for"]


@dataclass(frozen=True, slots=True)
class PieceSpan:
    """The part `[start, end)` (blob offsets) of piece `index` that a read needs."""

    index: int
    start: int
    end: int


def piece_count(size: int, piece_size: int) -> int:
    return (size + piece_size - 1) // piece_size


def piece_bounds(index: int, size: int, piece_size: int) -> tuple[int, int]:
    """Blob offsets `[start, end)` of piece `index`; the last piece holds the remainder."""
    start = index * piece_size
    return start, min(start + piece_size, size)


def pieces_for(first: int, last: int, piece_size: int) -> list[PieceSpan]:
    """The pieces that the inclusive byte range `first..last` touches, with the part of each."""
    spans = []
    index = first // piece_size
    position = first
    end = last + 1
    while position < end:
        piece_end = min((index + 1) * piece_size, end)
        spans.append(PieceSpan(index, position, piece_end))
        position = piece_end
        index += 1
    return spans
