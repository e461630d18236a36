"""Value types that config files spell in human units: sizes, durations, listen addresses."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ByteSize", "Duration", "ListenAddress", "finite"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE | re.ASCII)
_MAX_SIZE = 2**63 - 1  # what sqlite and a float (a size x a watermark) still hold
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ByteSize(int):
    """A byte count written as `1MiB`, `50GiB`, `4096` or `1.5GB`; printed in the largest
    binary unit that divides it exactly."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 1MiB, got a boolean")
        if isinstance(value, int):
            return cls._checked(value)
        if not isinstance(value, str):
            raise ValueError(f"expected a size such as 1MiB, got {type(value).__name__}")
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected a size such as 512KiB, 1MiB or 50GiB, got {value!r}")
        number, unit = match.groups()
        scaled = Fraction(number) * _SIZE_UNITS[(unit or "B").upper()]  # exact, never inf
        if scaled.denominator != 1:
            raise ValueError(f"{value!r} is not a whole number of bytes")
        return cls._checked(int(scaled))

    @classmethod
    def _checked(cls, count: int) -> ByteSize:
        if count < 0:
            raise ValueError("a size cannot be negative")
        if count > _MAX_SIZE:
            raise ValueError(f"too large (at most {_MAX_SIZE} bytes)")
        return cls(count)

    def __str__(self) -> str:
        for unit in ("TiB", "GiB", "MiB", "KiB"):
            factor = _SIZE_UNITS[unit.upper()]
            if self and self % factor == 0:
                return f"{self // factor}{unit}"
        return f"{int(self)}B"

    __repr__ = __str__


class Duration(float):
    """Seconds written as `500ms`, `5s`, `10m`, `1h30m`, `7d`, or a bare number of seconds."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 5s, got a boolean")
        if isinstance(value, int | float):
            return cls._checked(value, value)
        if not isinstance(value, str):
            raise ValueError(f"expected a duration such as 5s, got {type(value).__name__}")
        text = value.strip()
        if not text or _DURATION.sub("", text):
            raise ValueError(f"expected a duration such as 500ms, 5s, 10m or 1h, got {value!r}")
        return cls._checked(
            sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION.findall(text)), value
        )

    @classmethod
    def _checked(cls, seconds: float, value: object) -> Duration:
        """`seconds` as a Duration, unless it is negative, NaN, infinite or beyond a float."""
        seconds = finite(seconds, "duration", value, " such as 5s")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return cls(seconds)

    def __str__(self) -> str:
        for unit in ("d", "h", "m", "s"):
            factor = _DURATION_UNITS[unit]
            if self and self % factor == 0:
                return f"{int(self // factor)}{unit}"
        return f"{round(self * 1000)}ms" if self else "0s"

    __repr__ = __str__


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """`host:port` or `[v6]:port` to bind; port 0 asks the kernel for a free port."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: object) -> ListenAddress:
        if not isinstance(value, str):
            raise ValueError(f"expected host:port, got {type(value).__name__}")
        host, sep, port_text = value.rpartition(":")
        if not sep or not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"expected host:port (IPv6 as [::1]:port), got {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"[{host}] is not an IPv6 address") from None
        elif ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, as [{host}]:{port_text}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        if not host:
            raise ValueError(f"no host in {value!r}; use 0.0.0.0:{port} to listen everywhere")
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def finite(number: float, kind: str, shown: object, example: str = "") -> float:
    """`number` as a float; ValueError (naming a `kind`, with an `example`, and showing
    `shown` as written) when it is NaN, infinite or beyond a float."""
    try:
        value = float(number)
    except OverflowError:
        raise ValueError(f"too large for a {kind}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite {kind}{example}, got {shown!r}")
    return value
