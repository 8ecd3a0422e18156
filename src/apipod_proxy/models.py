"""`GET /v1/models`: the upstream's list merged with the proxy's own model names.

Cursor validates a custom key with this call and only offers models it lists, so
aliases must appear here. The upstream list is fetched by the proxy itself (with the
upstream key), cached for a minute, and when it cannot be had the aliases are still
listed: a flaky upstream must not make Cursor call a good key bad.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from typing import Any

log = logging.getLogger("apipod")

CACHE_SECONDS = 60.0
FETCH_TIMEOUT = 5.0
MODELS_PATH = "/v1/models"


class ModelList:
    def __init__(self, upstream_url: str, upstream_key: str) -> None:
        self._url = upstream_url + MODELS_PATH
        self._key = upstream_key
        self._cached: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0

    def upstream_models(self) -> list[dict[str, Any]]:
        """The upstream's models, from cache when fresh; [] when it fails. Blocking."""
        if self._cached is not None and time.monotonic() - self._fetched_at < CACHE_SECONDS:
            return self._cached
        request = urllib.request.Request(self._url, headers={"x-api-key": self._key})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                data = json.load(response).get("data")
            if not isinstance(data, list):
                raise ValueError("no 'data' list in the answer")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("GET %s failed, listing the proxy's own models only: %s", self._url, exc)
            return []
        self._cached = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        self._fetched_at = time.monotonic()
        return self._cached

    def listing(self, own_names: list[str]) -> dict[str, Any]:
        """OpenAI's list shape: the upstream's models, then our names it lacks."""
        models = list(self.upstream_models())
        known = {m["id"] for m in models}
        models += [
            {"id": name, "object": "model", "created": 0, "owned_by": "apipod"}
            for name in own_names
            if name not in known
        ]
        return {"object": "list", "data": models}
