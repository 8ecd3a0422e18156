"""Unit tests for apipod_proxy.logs: escaping, redaction, statuses, formats."""

from __future__ import annotations

import json
import logging

import pytest
from mitmproxy import flow as mflow

from apipod_proxy import logs


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain model-1.5", "plain model-1.5"),
        ("a\nb", "a\\nb"),
        ("a\r\x1b[31m", "a\\r\\x1b[31m"),
        ("\ud800", "\\ud800"),
        ("ünïcødé 👋", "ünïcødé 👋"),
    ],
)
def test_printable_escapes_what_could_forge_or_break_a_line(text: str, escaped: str) -> None:
    assert logs.printable(text) == escaped
    assert "\n" not in logs.printable(text)
    logs.printable(text).encode("utf-8")


@pytest.mark.parametrize(
    "message",
    [
        "unexpected server response: b'x-api-key: upstream-secret'",
        "Authorization: Bearer abc.def",
        "saw apk_AbCdEf0123456789abcdef0123456789abcdef01234 in a header",
    ],
)
def test_redact_removes_credentials(message: str) -> None:
    redacted = logs.redact(message)
    for secret in ("upstream-secret", "abc.def", "apk_AbCd"):
        assert secret not in redacted
    assert "[redacted]" in redacted


def test_redact_shortens_long_messages() -> None:
    assert len(logs.redact("x" * 1000)) == 163


@pytest.mark.parametrize(
    ("message", "forwarded", "status"),
    [
        ("Client disconnected.", True, 499),
        ("killed", False, 499),
        ("Request body exceeds mitmproxy's body_size_limit.", False, 413),
        ("HTTP/1 protocol error: bad chunk", False, 400),
        ("[Errno 111] Connect call failed", True, 502),
        ("server closed connection", True, 502),
    ],
)
def test_failure_status(message: str, forwarded: bool, status: int) -> None:
    assert logs.failure_status(mflow.Error(message), forwarded) == status


def record(message: str, **access: object) -> logging.LogRecord:
    item = logging.LogRecord("apipod", logging.INFO, __file__, 1, message, None, None)
    if access:
        item.access = access
    return item


def test_text_lines_are_utc_and_utf8_safe() -> None:
    line = logs.TextFormatter().format(record("hello \ud800"))
    assert line.endswith(" INFO hello \\ud800")
    assert line[:23].count("-") == 2 and line[23] == "Z"
    line.encode("utf-8")


def test_json_lines_carry_the_access_fields() -> None:
    line = logs.JsonFormatter().format(record("GET / 200", status=200, request_id="req_1"))
    parsed = json.loads(line)
    assert parsed["message"] == "GET / 200"
    assert (parsed["level"], parsed["status"], parsed["request_id"]) == ("info", 200, "req_1")
    assert parsed["time"].endswith("Z")


def test_setup_installs_one_handler_and_switches_format() -> None:
    logger = logging.getLogger("apipod")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        logs.setup("text")
        logs.setup("json")
        ours = [h for h in logger.handlers if getattr(h, "_apipod", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, logs.JsonFormatter)
        assert logger.propagate is False
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
