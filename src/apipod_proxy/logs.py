"""Log setup and the one access line per request.

The `apipod` logger writes to stdout on its own handler, so its lines appear even
under `mitmdump -q` (which silences mitmproxy's own log below ERROR). Keys never
reach a log line: only key ids and names are written, and anything quoted from
mitmproxy's error messages is redacted and shortened first.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TYPE_CHECKING

from mitmproxy import http

if TYPE_CHECKING:
    from .addon import FlowState

log = logging.getLogger("apipod")

_KEYISH = re.compile(r"apk_[A-Za-z0-9_\-]*|(?i:(x-api-key|authorization)\S*\s*\S+)")


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")


def setup() -> None:
    """Attach the stdout handler once (the addon may be reloaded)."""
    if any(getattr(h, "_apipod", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_UTCFormatter())
    handler._apipod = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def startup_error(message: str) -> None:
    """Report a fatal setup problem through the root logger, which mitmdump watches
    during startup: it prints the line and exits non-zero instead of serving."""
    logging.getLogger().error("apipod: %s", message)


def redact(text: str, limit: int = 160) -> str:
    text = _KEYISH.sub("[redacted]", text)
    return text if len(text) <= limit else text[:limit] + "..."


def failure_status(message: str) -> int:
    """The status mitmproxy answered with when a flow ended in an error."""
    lowered = message.lower()
    if "client disconnected" in lowered or "killed" in lowered:
        return 499  # the client went away; nothing was sent (nginx's convention)
    if "body_size_limit" in lowered and "request" in lowered:
        return 413
    if "from client" in lowered:
        return 400
    return 502


def access(flow: http.HTTPFlow, state: FlowState, status: int | None) -> None:
    """Write the request's access line; `status` is None when the flow errored."""
    duration_ms = (time.perf_counter() - state.started) * 1000
    request = flow.request
    user = f"{state.user.id}:{state.user.name}" if state.user else "-"
    parts = [request.method, request.path.partition("?")[0]]
    error = None
    if status is None:
        message = flow.error.msg if flow.error else "unknown error"
        status = 504 if state.timed_out else failure_status(message)
        error = redact(message)
    parts += [str(status), f"{duration_ms:.1f}ms", f"key={user}"]
    if state.requested_model is not None:
        parts.append(f"model={state.requested_model}->{state.routed_model}")
    if error:
        parts.append(f'error="{error}"')
    log.info(" ".join(parts))
