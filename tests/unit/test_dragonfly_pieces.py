from __future__ import annotations

import pytest

from dfagent.dragonfly import piece_bounds, piece_count, piece_length

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("content_length", "expected"),
    [
        (0, 4 * MiB),
        (1, 4 * MiB),
        (2000 * MiB, 4 * MiB),
        (2 * GiB, 8 * MiB),  # 2 GiB / 500 is just over 4 MiB
        (500 * 4 * MiB, 4 * MiB),  # exactly 4 MiB each
        (500 * 4 * MiB + 500, 8 * MiB),  # a byte more each: the next power of two
        (4 * GiB, 16 * MiB),
        (8 * GiB, 32 * MiB),
        (16 * GiB, 64 * MiB),
        (1 << 50, 64 * MiB),
    ],
)
def test_piece_length(content_length, expected):
    assert piece_length(content_length) == expected


@pytest.mark.parametrize(
    ("content_length", "length", "count", "last"),
    [
        (1, 1000, 1, (0, 1)),
        (5000, 1000, 5, (4000, 1000)),
        (1000, 5000, 1, (0, 1000)),
        (101, 10, 11, (100, 1)),
        (5 * MiB + 123, 4 * MiB, 2, (4 * MiB, MiB + 123)),
    ],
)
def test_piece_count_and_bounds(content_length, length, count, last):
    assert piece_count(content_length, length) == count
    assert piece_bounds(content_length, length, count - 1) == last
    bounds = [piece_bounds(content_length, length, n) for n in range(count)]
    assert sum(size for _, size in bounds) == content_length
    assert all(offset == n * length for n, (offset, _) in enumerate(bounds))


def test_no_pieces_outside_the_task():
    assert piece_count(0, 4 * MiB) == 0
    with pytest.raises(ValueError):
        piece_bounds(0, 4 * MiB, 0)
    with pytest.raises(ValueError):
        piece_bounds(5000, 1000, 5)
    with pytest.raises(ValueError):
        piece_bounds(5000, 1000, -1)
    with pytest.raises(ValueError):
        piece_count(5000, 0)
    with pytest.raises(ValueError):
        piece_length(-1)
