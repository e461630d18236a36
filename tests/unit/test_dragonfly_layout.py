"""Dragonfly's pieces beside this agent's: which of ours a Dragonfly piece touches, and when
it is whole here."""

from __future__ import annotations

from dfagent.storage.layout import FixedLayout
from dfagent.swarm.dragonfly.layout import DragonflyPieces

MiB = 1024 * 1024


def test_a_blob_of_a_few_mib_has_4_mib_pieces_and_a_short_last_one():
    pieces = DragonflyPieces.of(9 * MiB + 5)
    assert pieces.length == 4 * MiB
    assert pieces.count == 3
    assert pieces.bounds(2) == (8 * MiB, 9 * MiB + 5)


def test_covering_names_every_piece_a_byte_range_touches():
    pieces = DragonflyPieces.of(9 * MiB)
    assert list(pieces.covering(0, 1)) == [0]
    assert list(pieces.covering(4 * MiB - 1, 4 * MiB + 1)) == [0, 1]
    assert list(pieces.covering(8 * MiB, 9 * MiB)) == [2]
    assert list(pieces.covering(5, 5)) == []


def test_a_dragonfly_piece_is_whole_when_every_piece_of_ours_in_it_is_present():
    size = 9 * MiB
    pieces = DragonflyPieces.of(size)
    ours = FixedLayout(size, MiB)
    assert list(pieces.ours(1, ours)) == [4, 5, 6, 7]
    assert pieces.whole(1, ours, {4, 5, 6, 7})
    assert not pieces.whole(1, ours, {4, 5, 7})
    assert list(pieces.ours(2, ours)) == [8]


def test_pieces_of_ours_that_straddle_a_dragonfly_boundary_count_for_both():
    size = 9 * MiB
    pieces = DragonflyPieces.of(size)
    ours = FixedLayout(size, 3 * MiB)  # 0-3, 3-6, 6-9 MiB against 0-4, 4-8, 8-9 MiB
    assert list(pieces.ours(0, ours)) == [0, 1]
    assert list(pieces.ours(1, ours)) == [1, 2]
    assert not pieces.whole(1, ours, {1})
    assert pieces.whole(1, ours, {1, 2})
