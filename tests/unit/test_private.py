from __future__ import annotations

import os
import stat
from pathlib import Path

from dfagent.storage.private import make_private


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_everything_looser_is_made_owner_only_and_reported(tmp_path):
    root = tmp_path / "cache"
    shard = root / "blobs" / "ab"
    shard.mkdir(parents=True)
    (root / "index.sqlite").write_bytes(b"")
    (root / "tmp").mkdir()
    (shard / "ab12").write_bytes(b"layer")
    owner_only = root / "lock"
    owner_only.write_bytes(b"")
    owner_only.chmod(0o600)
    for path in (root, root / "blobs", shard, root / "tmp"):
        path.chmod(0o755)
    for path in (root / "index.sqlite", shard / "ab12"):
        path.chmod(0o644)

    tightened = make_private(root, "blobs")

    assert set(tightened) == {
        ".", "blobs", "blobs/ab", "blobs/ab/ab12", "index.sqlite", "tmp"
    }  # fmt: skip
    for path in (root, root / "blobs", shard, root / "tmp"):
        assert mode(path) == 0o700, path
    for path in (root / "index.sqlite", shard / "ab12", owner_only):
        assert mode(path) == 0o600, path
    assert make_private(root, "blobs") == []


def test_symbolic_links_and_their_targets_are_left_alone(tmp_path):
    root = tmp_path / "cache"
    (root / "blobs").mkdir(parents=True, mode=0o700)
    root.chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    outside.chmod(0o644)
    (root / "elsewhere").symlink_to(outside)

    assert make_private(root, "blobs") == ["."]
    assert mode(outside) == 0o644


def test_a_linked_cache_directory_is_made_private_where_it_is(tmp_path):
    real = tmp_path / "disk" / "cache"
    (real / "blobs").mkdir(parents=True, mode=0o700)
    real.chmod(0o755)
    link = tmp_path / "cache"
    link.symlink_to(real)

    assert make_private(link, "blobs") == ["."]
    assert mode(real) == 0o700


def test_a_missing_cache_is_nothing_to_do(tmp_path):
    assert make_private(tmp_path / "none", "blobs") == []
