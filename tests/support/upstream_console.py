"""What antigravity-claude-proxy 2.0.4 serves besides its API, for the stand-ins.

The real upstream answers these to anyone who reaches it, without its key: its config
(the upstream key and the web UI password in clear), the operator's Google accounts,
their quotas, and a console page that reconfigures it. A proxy in front of it must never
forward a customer there; tests assert that none of these requests arrives (every
request is recorded by `ThreadedServer.record`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

#: The console's web UI password in the stand-in's /api/config.
WEBUI_PASSWORD = "standin-webui-password"
CONSOLE_HTML = (
    "<!doctype html><html><head><title>Antigravity Console</title></head>"
    "<body><h1>Antigravity Console</h1><button>Add account</button></body></html>"
)
PATHS = ("/api/config", "/api/accounts", "/account-limits", "/")

Record = Callable[[web.Request], Awaitable[Any]]


def add_console_routes(app: web.Application, record: Record, upstream_key: str | None) -> None:
    """Add the upstream's own routes to `app` (before its catch-all route)."""

    def serving(payload: Callable[[], Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            await record(request)
            body = payload()
            if isinstance(body, str):
                return web.Response(text=body, content_type="text/html")
            return web.json_response(body)

        return handler

    config = {
        "config": {"apiKey": upstream_key or "", "webuiPassword": WEBUI_PASSWORD, "port": 8080}
    }
    accounts = {"accounts": [{"email": "operator@example.com", "enabled": True, "status": "ok"}]}
    limits = {"accounts": [{"email": "operator@example.com", "limits": {"gemini-3-flash": 1.0}}]}
    app.router.add_route("*", "/api/config", serving(lambda: config))
    app.router.add_route("*", "/api/accounts", serving(lambda: accounts))
    app.router.add_route("*", "/account-limits", serving(lambda: limits))
    app.router.add_route("*", "/", serving(lambda: CONSOLE_HTML))
