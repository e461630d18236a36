"""The agent's error hierarchy and the one table that turns an error into an HTTP status.

Every class says where the fault lies (`source`), and inherits the stdlib kind a caller may
already catch (ValueError, TimeoutError, OSError). Library exceptions are wrapped once, at the
module edge that calls the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, assert_never

__all__ = [
    "BadRequest",
    "ConfigError",
    "DfagentError",
    "IntegrityError",
    "NotProven",
    "OriginError",
    "OriginHTTPError",
    "OriginTimeout",
    "RangeNotSatisfiable",
    "StartupError",
    "StorageFull",
    "Throttled",
    "VortexError",
    "http_status",
]

Source = Literal["origin", "peer", "agent"]


class DfagentError(Exception):
    source: ClassVar[Source] = "agent"


class ConfigError(DfagentError, ValueError):
    """A config file is invalid; `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in problems))


class StartupError(DfagentError):
    """The agent cannot start (a port in use, a storage directory it cannot write)."""


class BadRequest(DfagentError, ValueError):
    """The client's request is malformed (a bad Range, a hostile digest, an unknown upstream)."""


class Throttled(DfagentError):
    """Over proxy.rate_limit: the client should slow down (429)."""


class RangeNotSatisfiable(DfagentError):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a blob of {size} bytes")
        self.size = size


class OriginError(DfagentError):
    """The origin could not be reached or answered something we cannot use."""

    source: ClassVar[Source] = "origin"


class OriginTimeout(OriginError, TimeoutError):
    pass


class OriginSizeMismatch(OriginError):
    """The origin gave the blob another size than the one it was recorded with: one of the
    two answers was wrong, and the record cannot be trusted."""


class OriginHTTPError(OriginError):
    """The origin answered with an error status that the client must see as it was
    (401 with `WWW-Authenticate`, 403, 404, ...)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"origin answered {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


class NotProven(DfagentError):
    """The registry a client named is not an origin of a cached private blob and did not
    prove that it holds it: the client gets 403."""


class IntegrityError(DfagentError):
    """Bytes did not match their recorded digest or declared length."""


class StorageFull(DfagentError, OSError):
    pass


class VortexError(DfagentError):
    """A Dragonfly peer's Vortex piece transfer failed: the connection, a malformed or
    unexpected frame, bytes that do not match the piece's digest, or an Error frame from the
    peer (`not_found` when the peer said it does not hold the piece)."""

    source: ClassVar[Source] = "peer"

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def http_status(error: DfagentError) -> int:
    """The status a client gets for an error raised before the response headers were sent."""
    match error:
        case BadRequest() | ConfigError():
            return 400
        case RangeNotSatisfiable():
            return 416
        case Throttled():
            return 429
        case OriginHTTPError(status=status):
            return status
        case NotProven():
            return 403
        case OriginTimeout():
            return 504
        case OriginError() | IntegrityError() | VortexError():
            return 502
        case StorageFull():
            return 507
        case StartupError() | DfagentError():
            return 500
        case _:
            assert_never(error)
