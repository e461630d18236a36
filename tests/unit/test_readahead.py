from __future__ import annotations

from dfagent.engine.readahead import SequentialReads

KIB = 1024


def reads() -> SequentialReads:
    return SequentialReads(slack=64 * KIB, trigger=1024 * KIB, window=4096 * KIB, blobs=2)


def test_a_long_sequential_pattern_is_read_ahead_of_by_as_much_again_up_to_the_window():
    seq = reads()
    windows = [seq.read("a", i * 256 * KIB, (i + 1) * 256 * KIB - 1).bytes for i in range(24)]
    assert windows[:4] == [0, 0, 0, 0]  # under the trigger: exact
    assert windows[4] == 1024 * KIB
    assert windows[8] == 2048 * KIB
    assert windows[-1] == 4096 * KIB


def test_sparse_reads_and_short_runs_are_never_read_ahead_of():
    seq = reads()
    assert all(
        seq.read("a", i * 8 * 1024 * KIB, i * 8 * 1024 * KIB + 512 * KIB).bytes == 0
        for i in range(50)
    )
    short = [seq.read("b", o, o + 100 * KIB - 1) for o in (0, 100 * KIB, 300 * KIB)]
    assert [ahead.bytes for ahead in short] == [0, 0, 0]


def test_interleaved_streams_and_small_holes_keep_their_patterns():
    seq = reads()
    got = []
    for i in range(8):  # two readers, each sequential, their reads interleaved, holes of 4 KiB
        got.append(seq.read("a", i * 260 * KIB, i * 260 * KIB + 256 * KIB - 1))
        got.append(
            seq.read(
                "a", 100 * 1024 * KIB + i * 256 * KIB, 100 * 1024 * KIB + (i + 1) * 256 * KIB - 1
            )
        )
    assert got[-2].bytes > 0 and got[-1].bytes > 0
    assert got[-2].began == 0 and got[-1].began == 100 * 1024 * KIB


def test_only_the_latest_blobs_are_followed():
    seq = reads()
    for i in range(4):
        seq.read("a", i * 512 * KIB, (i + 1) * 512 * KIB - 1)
    seq.read("b", 0, 10)
    seq.read("c", 0, 10)  # "a" is forgotten: its pattern starts again
    assert seq.read("a", 2048 * KIB, 2560 * KIB - 1).bytes == 0


def test_each_answer_says_where_its_pattern_began():
    seq = reads()
    seq.read("a", 5000 * KIB, 5100 * KIB - 1)  # another reader elsewhere in the blob
    walk = [seq.read("a", o * KIB, (o + 200) * KIB - 1) for o in range(300, 3000, 204)]
    assert {ahead.began for ahead in walk} == {300 * KIB}  # holes of 4 KiB: one walk
    assert seq.read("a", 5100 * KIB, 5200 * KIB - 1).began == 5000 * KIB
