"""The upstream's model list: fetched, cached, and merged with the proxy's own names.

`GET /v1/models` (endpoints/model_list.py) answers from it, and so do the model-drift
check (upstream/probe.py) and the metrics' model labels. Cursor validates a custom key
with that call and only offers models it lists, so aliases must appear there. The
upstream list is fetched by the proxy itself (with the upstream key), cached for a
minute, and when it cannot be had the last good list and the aliases are still listed:
a flaky upstream must not make Cursor call a good key bad.

The fetch runs on the event loop with an async client, bounded to FETCH_TIMEOUT as a
whole, never on the database threads: a hanging upstream must not stall `/health`, key
lookups or the admin API. Concurrent callers share one fetch, and a failure is
remembered for FAILURE_SECONDS, so a down upstream costs one attempt per few seconds,
not one per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from ..credentials import PROXY_USER_AGENT, upstream_credentials

log = logging.getLogger("apipod")

CACHE_SECONDS = 60.0
#: The whole fetch (connect, headers, body) must finish within this many seconds.
FETCH_TIMEOUT = 2.0
#: After a failed fetch, answer from what is known for this long before trying again.
FAILURE_SECONDS = 5.0
#: A models list is a few kilobytes; a larger answer is not a models list.
MAX_LIST_BYTES = 4 << 20
#: Where the upstream lists its models (OpenAI's path).
MODELS_PATH = "/v1/models"

Models = list[dict[str, Any]]


class ModelList:
    def __init__(self, upstream_url: str, upstream_key: str) -> None:
        self._url = upstream_url + MODELS_PATH
        self._key = upstream_key
        self._good: Models | None = None  # the last list the upstream gave
        self.ids: frozenset[str] = frozenset()  # the model ids of that list
        self._fetched_at = self._failed_at = float("-inf")
        self._fetch: asyncio.Task[Models] | None = None
        # Made once, here (at load): building a client loads CA certificates, tens of
        # milliseconds that must not stall the event loop on every fetch. trust_env=False:
        # the list comes from where traffic goes, not via a *_proxy variable. No pooled
        # connections: a fetch a minute does not need one kept open.
        self._client = httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def upstream_models(self) -> Models:
        """The upstream's models: fresh from cache, else fetched (one fetch at a time).

        Never raises and never waits longer than FETCH_TIMEOUT; on failure it answers
        the last good list, or [] when there never was one.
        """
        now = time.monotonic()
        if self._good is not None and now - self._fetched_at < CACHE_SECONDS:
            return self._good
        if now - self._failed_at < FAILURE_SECONDS:
            return self._good or []
        if self._fetch is None:
            self._fetch = asyncio.create_task(self._fetch_bounded(), name="apipod models fetch")
            self._fetch.add_done_callback(self._fetch_done)
        # shield: a client hanging up must not cancel the fetch other callers wait for.
        return await asyncio.shield(self._fetch)

    def _fetch_done(self, task: asyncio.Task[Models]) -> None:
        self._fetch = None

    async def _fetch_bounded(self) -> Models:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                models = await self._get()
        # Whatever goes wrong, the answer is the aliases: the addon must never see an error
        # here, since an exception in its `request` hook would let mitmproxy forward the flow.
        except Exception as exc:
            self._failed_at = time.monotonic()
            reason = str(exc) or f"no answer within {FETCH_TIMEOUT:g}s"
            if self._good is None:
                log.warning(
                    "GET %s failed, listing the proxy's own models only: %s", self._url, reason
                )
                return []
            log.warning(
                "GET %s failed, listing the last good list and the proxy's own models: %s",
                self._url,
                reason,
            )
            return self._good
        self._keep(models)
        return models

    async def known_ids(self) -> frozenset[str] | None:
        """The ids of `upstream_models` (for patterns and the default route), None while
        the upstream never gave a list. Bounded and never raises, like it."""
        await self.upstream_models()
        return self.ids if self._good is not None else None

    async def served_ids(self) -> set[str] | None:
        """The model ids the upstream lists now (for the drift check), None when it cannot
        be had within FETCH_TIMEOUT. A success refreshes the cache; a failure is not
        remembered, so it never makes a client's listing skip its own attempt."""
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                models = await self._get()
        except Exception as exc:
            reason = str(exc) or f"no answer within {FETCH_TIMEOUT:g}s"
            log.warning("model check: GET %s failed: %s", self._url, reason)
            return None
        self._keep(models)
        return set(self.ids)

    def _keep(self, models: Models) -> None:
        self._good, self._fetched_at = models, time.monotonic()
        self.ids = frozenset(m["id"] for m in models)

    async def _get(self) -> Models:
        body = bytearray()
        headers = {**upstream_credentials(self._key), "user-agent": f"{PROXY_USER_AGENT} (models)"}
        async with self._client.stream("GET", self._url, headers=headers) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise ValueError(f"answer over {MAX_LIST_BYTES} bytes")
        data = json.loads(body).get("data")
        if not isinstance(data, list):
            raise ValueError("no 'data' list in the answer")
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def listing(self, own_names: list[str]) -> dict[str, Any]:
        """OpenAI's list shape: the upstream's models, then our names it lacks."""
        models = list(await self.upstream_models())
        known = {m["id"] for m in models}
        models += [
            {"id": name, "object": "model", "created": 0, "owned_by": "apipod"}
            for name in own_names
            if name not in known
        ]
        return {"object": "list", "data": models}
