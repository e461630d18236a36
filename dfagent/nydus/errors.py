"""What goes wrong with nydus metadata and chunks: a malformed structure, or a chunk that does
not prove out against its recorded digest."""

from __future__ import annotations

from dfagent.errors import DfagentError, IntegrityError

__all__ = ["ChunkMismatch", "NydusFormatError"]


class NydusFormatError(DfagentError, ValueError):
    """Nydus metadata (bootstrap, chunk-info array, TOC) is malformed, truncated or hostile;
    the message names the structure and the field."""


class ChunkMismatch(IntegrityError):
    """A chunk's bytes do not decode to content with the chunk's recorded digest."""

    def __init__(self, chunk_index: int, reason: str) -> None:
        super().__init__(f"chunk {chunk_index}: {reason}")
        self.chunk_index = chunk_index
        self.reason = reason
