"""Structured, levelled logging that never prints a secret.

Decisions:
- Records carry their fields as `extra={"fields": {...}}`; the text format
  renders them as `key=value` pairs after the message, the JSON format as keys
  of one object per line. `kv()` builds that `extra` so call sites stay short.
- JSON lines carry `ts` in UTC with milliseconds and a `Z`; text lines keep
  the local `asctime` a person reads on a terminal.
- Redaction is a logging filter holding the set of secret strings known to the
  process (API tokens, webhook api_keys, AWS secrets); every rendered line is
  scrubbed, whatever code path produced it. Secrets are registered where they
  enter the process (config, token file, integration records).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

MASK = "***"


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: `log.info("delivered", extra=kv(integration=i, seq=s))`."""
    return {"fields": fields}


class SecretRedactor:
    """The process's known secrets; `scrub` replaces each with `***`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        # Very short strings would mask ordinary words; such secrets are refused by
        # validation anyway, and a 1-3 character "secret" protects nothing.
        if secret and len(secret) >= 4:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


redactor = SecretRedactor()

_CONTROL = dict.fromkeys(range(32), " ")
# C0 and C1 control characters and DEL, shown escaped (see `escape_controls`).
_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def shorten(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` characters with "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_text(text: str) -> str:
    """Text from outside (a receiver's answer, an exception) made safe to store and show:
    known secrets masked, control characters (forged log lines) flattened."""
    return redactor.scrub(text).translate(_CONTROL)


def escape_controls(text: str, keep: str = "") -> str:
    """Text from outside made safe to put on a terminal: control characters (escape
    sequences, bells, carriage returns) shown as `\\x1b` etc., but those in `keep`."""
    table = _ESCAPED if not keep else {k: v for k, v in _ESCAPED.items()
                                       if chr(k) not in keep}
    return text.translate(table)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={_render(v)}" for k, v in fields.items())
        return redactor.scrub(base)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _utc_millis(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return redactor.scrub(orjson.dumps(obj, default=str).decode())


def _utc_millis(created: float) -> str:
    """RFC 3339 in UTC with milliseconds (`2026-11-28T10:33:23.123Z`): sortable, unambiguous
    across hosts and zones, and precise enough to order a burst of lines."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


def _render(value: Any) -> str:
    # Field values quote the outside world (receivers' answers): no line breaks
    # or other control characters may forge log lines.
    text = str(value).translate(_CONTROL)
    return f'"{text}"' if (" " in text or not text) else text


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: too much at ingest rates.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # botocore's debug output dumps whole signed requests: noise, and no place for
    # anything near a credential. Their warnings still come through.
    for name in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))


class Throttle:
    """One log line per `interval` seconds for a condition that can repeat thousands of
    times a second (refused connections, failing accepts), with a count of the rest.

    `hit()` counts one occurrence and returns how many to report now (this one and
    those kept quiet since the last report), or 0 while the interval has not passed.
    """

    def __init__(self, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._count = 0

    def hit(self) -> int:
        self._count += 1
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self.interval
        count, self._count = self._count, 0
        return count
