"""Logging: secrets are masked in every format, and outside text cannot forge log lines."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from eventstreamd import logs


@pytest.fixture
def capture() -> logging.Handler:
    handler = logging.StreamHandler(io.StringIO())
    return handler


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_masked_and_lines_not_forged(fmt: str, capture: logging.StreamHandler) -> None:
    logs.setup_logging("info", fmt)
    root = logging.getLogger()
    capture.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [capture]
    logs.redactor.add("sekrit-value-123")
    logging.getLogger("t").warning(
        "failed with sekrit-value-123",
        extra=logs.kv(reason="HTTP 500: a\n2026-01-01 INFO forged line", key="sekrit-value-123"))
    out = capture.stream.getvalue()
    assert "sekrit-value-123" not in out and logs.MASK in out
    assert out.count("\n") == 1  # one record, one line
    if fmt == "json":
        assert orjson.loads(out)["reason"].startswith("HTTP 500")


def test_clean_text() -> None:
    logs.redactor.add("another-secret-9")
    assert logs.clean_text("x another-secret-9\r\ny") == f"x {logs.MASK}  y"


def test_json_timestamps_are_utc_with_milliseconds(capture: logging.StreamHandler) -> None:
    import re

    logs.setup_logging("info", "json")
    root = logging.getLogger()
    capture.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [capture]
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_795_000_000.25  # 2026-11-18T11:06:40.250Z
    root.handle(record)
    line = orjson.loads(capture.stream.getvalue())
    assert line["ts"] == "2026-11-18T11:06:40.250Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
