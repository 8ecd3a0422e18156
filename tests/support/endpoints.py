"""Calling the proxy's own endpoints (apipod_proxy.endpoints) the way the addon does,
from a synchronous test: `answer(endpoints, request)` runs the row under its guard."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mitmproxy import http

from apipod_proxy.endpoints import Endpoints
from apipod_proxy.storage.records import KeyRecord


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: what the request path puts on its FlowState before the answer."""

    client: str = ""
    user: KeyRecord | None = None


def answer(
    endpoints: Endpoints, request: http.Request, client: str = "", user: KeyRecord | None = None
) -> http.Response:
    """The endpoint table's answer to `request` (it must be one of the proxy's paths)."""
    response = asyncio.run(endpoints.answer(request, Caller(client, user)))
    assert response is not None, f"{request.method} {request.path} is not the proxy's own"
    return response
