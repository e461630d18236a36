"""How a blob is cut into pieces: the unit of storage, of origin fetches and of the swarm.

A blob without a chunk map is cut into fixed-size pieces. A nydus data blob whose chunk map is
known is cut along its chunks: runs of whole, touching chunks of at most `CHUNK_RUN_BYTES` (a
larger chunk is a piece of its own), so that a read of whole chunks fetches exactly those
chunks, and each piece can be proven by the digests of the chunks it holds. Bytes outside every
chunk (the blob's metadata tail, any bytes between chunks) are cut into fixed-size pieces.

Two agents trade a blob's pieces only when their layouts have the same `key`.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from dfagent.nydus.chunks import Chunk, ChunkMap
from dfagent.nydus.errors import NydusFormatError
from dfagent.storage.config import MAX_PIECE_SIZE, MIN_PIECE_SIZE

__all__ = [
    "CHUNK_RUN_BYTES",
    "ChunkLayout",
    "FixedLayout",
    "PieceLayout",
    "PieceSpan",
    "piece_size_of",
]

# Neighbouring small chunks share a piece up to this size: nydus starts every file on a chunk
# of its own, so an image of small files has many chunks of a few hundred bytes. A read of
# whole chunks then costs the origin at most one such run more than it asked for at each end.
CHUNK_RUN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PieceSpan:
    """The part `[start, end)` (blob offsets) of piece `index` that a read needs."""

    index: int
    start: int
    end: int


class PieceLayout:
    """The pieces of a blob of `size` bytes: piece `i` is blob bytes `bounds(i)`."""

    __slots__ = ()
    size: int
    key: str

    @property
    def count(self) -> int:
        raise NotImplementedError

    def bounds(self, index: int) -> tuple[int, int]:
        """Blob offsets `[start, end)` of piece `index`."""
        raise NotImplementedError

    def index_of(self, offset: int) -> int:
        """The piece holding blob byte `offset`."""
        raise NotImplementedError

    def chunks(self, index: int) -> tuple[Chunk, ...]:
        """The nydus chunks piece `index` consists of; empty when it is not made of chunks
        (then nothing but the blob's whole digest proves it)."""
        return ()

    def read_ahead_end(self, position: int) -> int:
        """Where reading ahead from byte `position` should stop: the blob's end, unless the
        layout knows better."""
        return self.size

    def file_ends_within(self, first: int, last: int) -> bool:
        """Whether a file known to the layout ends inside `first..last`, bytes after it
        included: a reader of that range went on from one file into the next."""
        return False

    def spans(self, first: int, last: int) -> list[PieceSpan]:
        """The pieces the inclusive byte range `first..last` touches, with the part of each."""
        spans = []
        position = first
        end = last + 1
        index = self.index_of(first)
        while position < end:
            piece_end = min(self.bounds(index)[1], end)
            spans.append(PieceSpan(index, position, piece_end))
            position = piece_end
            index += 1
        return spans


def piece_size_of(key: str) -> int | None:
    """The piece size a layout `key` was cut with (`fixed:<size>`, `chunks:<size>:...`), or
    None for a key of another form or a size no agent can be set to (a peer's word: anything
    may come)."""
    kind, _, rest = key.partition(":")
    text = rest.partition(":")[0]
    if kind not in ("fixed", "chunks") or not text.isdigit():
        return None
    size = int(text)
    if size & (size - 1) or not MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE:
        return None
    return size


class FixedLayout(PieceLayout):
    """Pieces of `piece_size` bytes; the last holds the remainder."""

    __slots__ = ("key", "piece_size", "size")

    def __init__(self, size: int, piece_size: int) -> None:
        self.size = size
        self.piece_size = piece_size
        self.key = f"fixed:{piece_size}"

    @property
    def count(self) -> int:
        return (self.size + self.piece_size - 1) // self.piece_size

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.piece_size
        return start, min(start + self.piece_size, self.size)

    def index_of(self, offset: int) -> int:
        return offset // self.piece_size


class ChunkLayout(PieceLayout):
    """Pieces along the chunks of `chunk_map`; bytes outside chunks in pieces of at most
    `piece_size`. Raises NydusFormatError when the map does not fit a blob of `size` bytes.

    The blob up to `tail` is held as segments, not pieces: a run of chunks (one piece) or the
    bytes between runs (as many pieces as they need). Memory grows with the chunks, never with
    the bytes between them."""

    __slots__ = (
        "_file_ends",
        "_first_pieces",
        "_mapped",
        "_runs",
        "_starts",
        "chunk_map",
        "key",
        "piece_size",
        "size",
        "tail",
    )

    def __init__(self, size: int, piece_size: int, chunk_map: ChunkMap) -> None:
        if chunk_map.data_end > size:
            raise NydusFormatError(
                f"blob {chunk_map.blob_id}: chunks reach byte {chunk_map.data_end}, "
                f"the blob has {size}"
            )
        self.size = size
        self.piece_size = piece_size
        self.chunk_map = chunk_map
        packed = hashlib.sha256(chunk_map.to_bytes()).hexdigest()[:24]
        self.key = f"chunks:{piece_size}:{CHUNK_RUN_BYTES}:{packed}"
        starts: list[int] = []  # blob offset where each segment starts
        first_pieces: list[int] = []  # the index of each segment's first piece
        runs: list[tuple[Chunk, ...]] = []  # each segment's chunks; () between chunks
        position = pieces = 0
        for run in _contiguous_runs(chunk_map.chunks, CHUNK_RUN_BYTES):
            start = run[0].compressed_offset
            if start > position:  # bytes between chunks
                starts.append(position)
                first_pieces.append(pieces)
                runs.append(())
                pieces += _pieces_in(start - position, piece_size)
            starts.append(start)
            first_pieces.append(pieces)
            runs.append(run)
            pieces += 1
            position = run[-1].compressed_end
        self.tail = position  # bytes from here on are cut into fixed-size pieces
        self._mapped = pieces
        self._starts = starts
        self._first_pieces = first_pieces
        self._runs = runs
        # Every file's data starts on a chunk of its own, and only a file's last chunk may be
        # shorter than the chunk size: where such a chunk ends, a file ends.
        full = max((c.uncompressed_size for c in chunk_map.chunks), default=0)
        self._file_ends = [c.compressed_end for c in chunk_map.chunks if c.uncompressed_size < full]

    @property
    def count(self) -> int:
        return self._mapped + _pieces_in(max(0, self.size - self.tail), self.piece_size)

    def bounds(self, index: int) -> tuple[int, int]:
        if index < self._mapped:
            segment = self._segment_of_piece(index)
            start = self._starts[segment]
            end = self._starts[segment + 1] if segment + 1 < len(self._starts) else self.tail
            if self._runs[segment]:
                return start, end
            start += (index - self._first_pieces[segment]) * self.piece_size
            return start, min(start + self.piece_size, end)
        start = self.tail + (index - self._mapped) * self.piece_size
        return start, min(start + self.piece_size, self.size)

    def index_of(self, offset: int) -> int:
        if offset >= self.tail:
            return self._mapped + (offset - self.tail) // self.piece_size
        segment = bisect.bisect_right(self._starts, offset) - 1
        first = self._first_pieces[segment]
        if self._runs[segment]:
            return first
        return first + (offset - self._starts[segment]) // self.piece_size

    def chunks(self, index: int) -> tuple[Chunk, ...]:
        if index >= self._mapped:
            return ()
        return self._runs[self._segment_of_piece(index)]  # a run is a single piece

    def read_ahead_end(self, position: int) -> int:
        """The end of the file being read at `position`: a reader that just finished a file
        (`position` is where one ends) may not want the next, one in the middle of a file
        wants the rest of it, no more. Beyond the chunks: the blob's end."""
        if position >= self.tail:
            return self.size
        after = bisect.bisect_left(self._file_ends, position)
        if after < len(self._file_ends) and self._file_ends[after] == position:
            return position
        return self._file_ends[after] if after < len(self._file_ends) else self.tail

    def file_ends_within(self, first: int, last: int) -> bool:
        after = bisect.bisect_right(self._file_ends, first)
        return after < len(self._file_ends) and self._file_ends[after] <= last

    def _segment_of_piece(self, index: int) -> int:
        return bisect.bisect_right(self._first_pieces, index) - 1


def _pieces_in(size: int, piece_size: int) -> int:
    """How many pieces of at most `piece_size` bytes `size` bytes are cut into."""
    return (size + piece_size - 1) // piece_size


def _contiguous_runs(chunks: tuple[Chunk, ...], budget: int) -> list[tuple[Chunk, ...]]:
    """`chunks` (in blob order) cut into runs of neighbours with no byte between them, each
    spanning at most `budget` bytes unless it is a single larger chunk. A piece made of chunks
    then holds no byte that their digests do not prove."""
    runs: list[tuple[Chunk, ...]] = []
    first = 0
    for index in range(1, len(chunks) + 1):
        if index < len(chunks):
            chunk = chunks[index]
            touching = chunk.compressed_offset == chunks[index - 1].compressed_end
            if touching and chunk.compressed_end - chunks[first].compressed_offset <= budget:
                continue
        runs.append(chunks[first:index])
        first = index
    return runs
