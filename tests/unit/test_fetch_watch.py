"""How a reader waiting for another peer's fetch tells that the fetch has stalled."""

from __future__ import annotations

from dfagent.engine.fetcher import _FetchWatch


def test_a_fetch_counts_as_stalled_after_a_second_without_bytes_or_five_before_the_first():
    now = [0.0]
    watch = _FetchWatch(clock=lambda: now[0])
    assert not watch.stalled("a:1", 0)
    now[0] = 3.0
    assert not watch.stalled("a:1", 0), "no byte yet: the registry may still be answering"
    now[0] = 5.1
    assert watch.stalled("a:1", 0)
    assert not watch.stalled("a:1", 4096), "bytes arrived: the watch starts over"
    now[0] = 5.9
    assert not watch.stalled("a:1", 4096)
    now[0] = 6.2
    assert watch.stalled("a:1", 4096)
    now[0] = 6.5
    assert not watch.stalled("a:1", 4096), "reported at most once a period"
    assert not watch.stalled("b:1", 4096), "another peer is watched afresh"
