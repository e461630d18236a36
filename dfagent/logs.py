"""Structured logging: one `key=value` line per event, tagged with the request id."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["REQUEST_ID", "setup_logging"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=... logger=... rid=... msg="..." key=value ...` (extra= keys appended)."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
        "taskName",
    }

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"rid={REQUEST_ID.get()}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(
            f"{key}={_quote(value)}"
            for key, value in record.__dict__.items()
            if key not in self._STANDARD
        )
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs each access (the proxy logs its own lines), and a malformed request as an
    # error with a traceback: that is the client's fault, one warning line says it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("grpc").setLevel(logging.WARNING)  # its debug lines are per poll
    logging.getLogger("aiohttp.server").addFilter(_malformed_request_as_warning)


def _malformed_request_as_warning(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "malformed request refused: %s", (_without_secrets(exc.message),)
        record.exc_info = record.exc_text = None
    return True


_USERINFO = re.compile(r"//[^/?#\s'\"]*@")
_QUERY = re.compile(r"\?[^\s'\"]*")


def _without_secrets(message: str) -> str:
    """aiohttp's reason for refusing a request, without what it quotes of the request: the
    excerpt lines under the reason (a header line, with its credentials), and a URL's userinfo
    and query string (a password, a signature)."""
    reason = message.split("\n", 1)[0]
    return _QUERY.sub("?...", _USERINFO.sub("//", reason))
