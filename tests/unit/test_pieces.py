from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from dfagent.core.pieces import PieceSpan, piece_bounds, piece_count, pieces_for


def test_pieces_for_crosses_boundaries():
    assert pieces_for(3, 12, 5) == [PieceSpan(0, 3, 5), PieceSpan(1, 5, 10), PieceSpan(2, 10, 13)]
    assert pieces_for(5, 9, 5) == [PieceSpan(1, 5, 10)]
    assert pieces_for(0, 0, 5) == [PieceSpan(0, 0, 1)]


def test_count_and_bounds():
    assert piece_count(0, 4) == 0
    assert piece_count(8, 4) == 2
    assert piece_count(9, 4) == 3
    assert piece_bounds(2, 9, 4) == (8, 9)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from([1, 3, 64, 1024]))
def test_spans_tile_the_range_exactly(first, length, piece_size):
    last = first + length
    spans = pieces_for(first, last, piece_size)
    assert spans[0].start == first
    assert spans[-1].end == last + 1
    for before, after in itertools.pairwise(spans):
        assert before.end == after.start
        assert after.index == before.index + 1
    for span in spans:
        start, end = piece_bounds(span.index, 10**9, piece_size)
        assert start <= span.start < span.end <= end
