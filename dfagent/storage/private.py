"""The cache is private to the agent's user: directories 0700, files 0600.

Blob files may be private image layers and the index names every digest this node holds, so
no other user on the node may read either. New directories and files are created with
`DIR_MODE` and `FILE_MODE` (a umask can only take bits away); `make_private` tightens what an
older agent, a umask or an operator left readable by others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "make_private"]

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = 0o077  # group and world bits


def make_private(root: Path, shards: str) -> list[str]:
    """Make `root`, everything directly in it, and the shard directories in `root/shards`
    (with their files) owner-only; the paths that were looser, relative to `root`. `root`
    may be a symbolic link (its target is made private); links inside it are left alone.

    A shard directory that is already owner-only was written by an agent that creates every
    file owner-only, so its files are looked at only when the directory itself was looser:
    start-up stays one `stat` per shard, not per blob. Files go before their directory, so an
    interrupted pass is finished by the next start.
    """
    base = root.resolve()
    tightened: list[Path] = []
    for path in (base, *_entries(base)):
        _tighten(path, tightened)
    for shard in _entries(base / shards):
        mode = _mode(shard)
        if mode is None or not stat.S_ISDIR(mode) or not mode & _OTHERS:
            continue
        for path in _entries(shard):
            _tighten(path, tightened)
        _tighten(shard, tightened)
    return [path.relative_to(base).as_posix() for path in tightened]


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def _tighten(path: Path, tightened: list[Path]) -> None:
    mode = _mode(path)
    if mode is None or stat.S_ISLNK(mode) or not mode & _OTHERS:
        return
    os.chmod(path, DIR_MODE if stat.S_ISDIR(mode) else FILE_MODE)
    tightened.append(path)
