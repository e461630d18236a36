"""Which reads of a blob form a sequential pattern, and how far ahead of one to fetch.

A nydus image read in blob order (a container start walking a directory, a whole-tree copy)
arrives as reads that each begin where an earlier one ended, give or take a small hole, and
several of them are in flight at once (nydusd serves several FUSE requests together), so
they may arrive out of order. A few streams per blob are followed; a read that continues one
extends it. Once the reads continuing a stream have added `trigger` bytes, as many bytes
again (up to `window`) are worth fetching ahead of it: a long pattern is likely to go on, a
short one (a few small files) costs nothing extra, and sparse reads stay exact. Each answer
also says where its pattern began, so the caller can tell a reader of one file from a walk
through many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Ahead", "SequentialReads"]

_STREAMS = 4  # patterns followed per blob


class Ahead(NamedTuple):
    bytes: int  # how many bytes after the read to fetch ahead now (0: none)
    began: int  # where the pattern this read continues began


@dataclass(slots=True)
class _Stream:
    began: int  # where its first read began
    end: int  # where its last read ended
    length: int  # bytes its reads after the first one added


class SequentialReads:
    def __init__(self, *, slack: int, trigger: int, window: int, blobs: int) -> None:
        self._slack = slack
        self._trigger = trigger
        self._window = window
        self._blobs = blobs
        self._streams: dict[str, list[_Stream]] = {}  # blob -> its streams, oldest first

    def read(self, blob: str, first: int, last: int) -> Ahead:
        """Note a read of bytes `first..last` of `blob`: how far ahead of it to fetch."""
        streams = self._streams.pop(blob, [])
        self._streams[blob] = streams
        while len(self._streams) > self._blobs:
            del self._streams[next(iter(self._streams))]
        for stream in streams:
            if stream.end - self._slack <= first <= stream.end + self._slack:
                stream.length += max(0, last + 1 - max(first, stream.end))
                stream.end = max(stream.end, last + 1)
                break
        else:
            stream = _Stream(first, last + 1, 0)
            streams.append(stream)
            del streams[:-_STREAMS]
        if stream.length < self._trigger:
            return Ahead(0, stream.began)
        return Ahead(min(stream.length, self._window), stream.began)
