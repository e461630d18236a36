"""Dragonfly's pieces of a blob beside this agent's own: the translation at the edge.

Dragonfly cuts a blob into pieces of one length from its size (4 MiB to 64 MiB); this agent
cuts it its own way (fixed pieces, or runs of nydus chunks). A Dragonfly piece is whole here
when every piece of ours that it touches is present."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from dfagent.dragonfly.pieces import piece_count, piece_length
from dfagent.storage.layout import PieceLayout

__all__ = ["DragonflyPieces"]


@dataclass(frozen=True, slots=True)
class DragonflyPieces:
    size: int
    length: int

    @classmethod
    def of(cls, size: int) -> DragonflyPieces:
        return cls(size, piece_length(size))

    @property
    def count(self) -> int:
        return piece_count(self.size, self.length)

    def bounds(self, number: int) -> tuple[int, int]:
        """Blob offsets `[start, end)` of piece `number`."""
        start = number * self.length
        return start, min(start + self.length, self.size)

    def covering(self, start: int, end: int) -> range:
        """The pieces that hold blob bytes `[start, end)`."""
        if end <= start:
            return range(0)
        return range(start // self.length, (end - 1) // self.length + 1)

    def ours(self, number: int, layout: PieceLayout) -> range:
        """This agent's pieces that piece `number` touches."""
        start, end = self.bounds(number)
        return range(layout.index_of(start), layout.index_of(end - 1) + 1)

    def whole(self, number: int, layout: PieceLayout, present: Container[int]) -> bool:
        return all(index in present for index in self.ours(number, layout))
