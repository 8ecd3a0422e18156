"""Log setup, the one access line per request, and rate-limited lines for floods.

The `apipod` logger writes to stdout on its own handler, so its lines appear even
under `mitmdump -q` (which silences mitmproxy's own log below ERROR). With
LOG_FORMAT=json every line is one JSON object, for log shippers.

Keys never reach a log line: only key ids and names are written, and anything quoted
from mitmproxy's error messages is redacted and shortened first.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import http

from .flowstate import FlowState
from .jsonenc import json_text
from .mitm_compat import says

log = logging.getLogger("apipod")

_KEYISH = re.compile(
    r"apk_[A-Za-z0-9_\-]*|(?i:(x-api-key|authorization)\S*\s*(bearer\s+|basic\s+)?\S+)"
)


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates escaped (`\\n`, `\\ud800`),
    so a value a client chose can neither forge a log line nor break the UTF-8 output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _utf8(line: str) -> str:
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _utf8(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "access", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _utf8(json_text(line, spaced=True))


def setup(log_format: str = "text") -> None:
    """Attach the stdout handler once (the addon may be loaded again)."""
    for old in [h for h in log.handlers if getattr(h, "_apipod", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._apipod = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


#: Longer paths are cut in the access line.
MAX_LOGGED_PATH = 2048


def startup_error(message: str) -> None:
    """Report a fatal setup problem through the root logger, which mitmdump watches
    during startup: it prints the line and exits non-zero instead of serving."""
    logging.getLogger().error("apipod: %s", message)


def redact(text: str, limit: int = 160) -> str:
    text = _KEYISH.sub("[redacted]", text)
    return text if len(text) <= limit else text[:limit] + "..."


def shown_path(flow: http.HTTPFlow, limit: int = 160) -> str:
    """The request's path for a log line: no query string, keys redacted, printable."""
    return shown(flow.request.path, limit)


def shown(path: str, limit: int = 160) -> str:
    """`path` for a log line: no query string, keys redacted, printable."""
    return redact(printable(path.partition("?")[0]), limit)


def failure_status(error: mflow.Error | None, forwarded: bool) -> int:
    """The status a client saw when its flow ended in an error.

    Before the request was forwarded an error is the client's (bad HTTP, too large);
    after, the upstream's.
    """
    message = error.msg if error else ""
    if says(message, "client_disconnected") or says(message, "killed"):
        return 499  # the client went away; nothing was sent (nginx's convention)
    if says(message, "request_too_large"):
        return 413
    return 502 if forwarded else 400


def access(flow: http.HTTPFlow, state: FlowState, status: int) -> None:
    """Write the request's access line: the client's method and path, and the
    upstream's path after ` → ` when a translation sent the request elsewhere."""
    user = state.user
    # A client may put its key in the path, too.
    path = shown(state.client_path or flow.request.path, MAX_LOGGED_PATH)
    upstream_path = shown_path(flow, MAX_LOGGED_PATH)
    fields: dict[str, Any] = {
        "request_id": state.request_id,
        "method": printable(flow.request.method),
        "path": path,
        "upstream_path": upstream_path if upstream_path != path else None,
        "status": status,
        "duration_ms": round((time.perf_counter() - state.started) * 1000, 1),
        "key_id": user.id if user else None,
        "key_name": user.name if user else None,
        "model": None if state.requested_model is None else printable(state.requested_model),
        "routed_model": None if state.routed_model is None else printable(state.routed_model),
    }
    if flow.error and flow.response is None:
        fields["error"] = redact(flow.error.msg)
    text = (
        f"{fields['method']} {path}"
        + (f" → {upstream_path}" if fields["upstream_path"] else "")
        + f" {status} {fields['duration_ms']}ms "
        f"key={f'{user.id}:{user.name}' if user else '-'} id={state.request_id}"
    )
    if fields["model"] is not None:
        text += f" model={fields['model']}->{fields['routed_model']}"
    if "error" in fields:
        text += f' error="{fields["error"]}"'
    log.info(text, extra={"access": fields})


# --- floods ------------------------------------------------------------------------------

#: Seconds between two lines of one kind of repeated failure.
RATE_LOG_INTERVAL = 10.0


class RateLimitedLog:
    """Log lines for repeated failures, at most once per interval per kind, with a count.

    A flood (a client opening thousands of connections, a process out of file
    descriptors) repeats one failure thousands of times a second; one line per event
    would fill disks and hide everything else. The first occurrence is logged at once;
    later ones are counted and the count is logged with the next line once the
    interval has passed.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = RATE_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `kind` was logged in the last interval.

        Returns True when a line was written. The line ends with how many times
        `kind` happened since the previous line.
        """
        now = self.clock()
        self._count[kind] = self._count.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return False
        count = self._count.pop(kind)
        self._last[kind] = now
        if last is None:
            self.logger.log(level, message, *args)
        else:
            self.logger.log(
                level, message + " (%d times in the last %.0fs)", *args, count, now - last
            )
        return True
