"""What the proxy knows about its upstream: the API it speaks, the models it lists, and
which of them are out of quota.

UPSTREAM_API=auto asks the upstream which endpoints it serves, without spending a
token: an empty POST to `/v1/chat/completions` and to `/v1/messages`. A served endpoint
answers 400 or 422 (or 500 from a careless server); a missing one answers "endpoint not
found" (404). The probe runs at startup, off the request path and bounded to
PROBE_TIMEOUT. Until it has answered, a request waits for the probe in flight (at most
PROBE_TIMEOUT); when nothing can be learned (the upstream is down or refuses our key),
requests are forwarded in the API they came in (as `both`), and the probe is tried again
with a later request, at most once per PROBE_RETRY_SECONDS. A forwarded request that
gets the upstream's "endpoint not found" starts a new probe: the upstream may have been
replaced by one that speaks another API.

The model check compares every routing target with the upstream's `/v1/models`, at
startup and on every routes reload, and warns once per target the upstream does not
list (upstream model ids change: claude-sonnet-4-5 became claude-sonnet-4-6).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import httpx

from ..credentials import PROXY_USER_AGENT, upstream_credentials
from ..policy.routing import RouteTable
from ..translate.directions import CHAT_PATH, MESSAGES_PATH, api_from_probe
from .models import ModelList
from .quota import Cooldowns

log = logging.getLogger("apipod")

#: Each probe request (connect, headers, body) must finish within this many seconds.
PROBE_TIMEOUT = 3.0
#: After a probe that learned nothing, the next one waits at least this long.
PROBE_RETRY_SECONDS = 10.0
#: An "endpoint not found" re-probes at most this often (a burst of 404s is one probe).
RECHECK_SECONDS = 2.0
#: What requests are forwarded as while the API is unknown: each in the API it came in.
UNKNOWN_FALLBACK = "both"
#: A probe answer is an error body; more than this is not read.
MAX_PROBE_BODY = 64 << 10

_MEANING = {
    "anthropic": "only Anthropic Messages: OpenAI chat completions are translated",
    "openai": "only OpenAI chat completions: Anthropic messages are translated",
    "both": "both APIs: requests are forwarded as they come",
}


class Upstream:
    def __init__(self, url: str, key: str, setting: str, cooldowns: Cooldowns) -> None:
        self.url = url
        self.setting = setting
        #: The API in force: the setting, or what the probe found (None: not known yet).
        self.api: str | None = None if setting == "auto" else setting
        self.cooldowns = cooldowns
        #: Routing targets the upstream's /v1/models does not list (None: not checked yet).
        self.unlisted: list[str] | None = None
        #: The startup probe and model check have finished (whatever they found).
        self.checked = False
        self._headers = {
            **upstream_credentials(key),
            "content-type": "application/json",
            "user-agent": f"{PROXY_USER_AGENT} (endpoint probe)",
        }
        self._probe: asyncio.Task[str | None] | None = None
        self._probed_at = -math.inf
        # Built once, at load (it loads CA certificates); trust_env=False as in models.py.
        self._client = httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    # --- the API ---------------------------------------------------------------------

    async def current_api(self) -> str:
        """The API to translate for; waits (bounded) for a probe while it is unknown."""
        if self.api is not None:
            return self.api
        probe = self._start_probe(min_gap=PROBE_RETRY_SECONDS)
        if probe is not None:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT + 0.5):
                    await asyncio.shield(probe)  # a client hanging up must not cancel it
            except TimeoutError:
                pass
        return self.api or UNKNOWN_FALLBACK

    def recheck(self) -> None:
        """A forwarded request got "endpoint not found": ask again (UPSTREAM_API=auto)."""
        if self.setting == "auto":
            self._start_probe(min_gap=RECHECK_SECONDS)

    def _start_probe(self, min_gap: float) -> asyncio.Task[str | None] | None:
        if self._probe is None and time.monotonic() - self._probed_at >= min_gap:
            self._probed_at = time.monotonic()
            self._probe = asyncio.create_task(self.probe(), name="apipod endpoint probe")
            self._probe.add_done_callback(self._probe_done)
        return self._probe

    def _probe_done(self, task: asyncio.Task[str | None]) -> None:
        self._probe = None

    async def probe(self) -> str | None:
        """Ask which endpoints the upstream serves; update `api` when that is learned."""
        chat, messages = await asyncio.gather(self._post(CHAT_PATH), self._post(MESSAGES_PATH))
        found = api_from_probe(chat, messages)
        if found is None:
            seen = ", ".join(
                f"{path} {answer[0] if answer else 'no answer'}"
                for path, answer in ((CHAT_PATH, chat), (MESSAGES_PATH, messages))
            )
            keeping = self.api or f"{UNKNOWN_FALLBACK} (forward each request as it came)"
            log.warning(
                "UPSTREAM_API=auto: cannot tell which API %s speaks (%s); using %s and "
                "asking again later",
                self.url,
                seen,
                keeping,
            )
            return None
        if found != self.api:
            log.info("UPSTREAM_API=auto: %s speaks %s (%s)", self.url, found, _MEANING[found])
        self.api = found
        return found

    async def _post(self, path: str) -> tuple[int, bytes] | None:
        """An empty POST: (status, start of the body), None when there is no answer."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                request = self._client.build_request(
                    "POST", self.url + path, content=b"", headers=self._headers
                )
                response = await self._client.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= MAX_PROBE_BODY:
                            break
                    return response.status_code, bytes(body[:MAX_PROBE_BODY])
                finally:
                    await response.aclose()
        except Exception as exc:  # down, hanging, not HTTP: nothing learned from this path
            log.debug("endpoint probe %s%s failed: %r", self.url, path, exc)
            return None

    # --- the models ------------------------------------------------------------------

    async def check_models(self, table: RouteTable, models: ModelList) -> None:
        """Warn about each routing target the upstream's /v1/models does not list."""
        served = await models.served_ids()
        if served is None:
            return  # the upstream did not answer: keep what the last check found
        unlisted = table.unlisted_targets(served)
        for target in unlisted:
            log.warning(
                "routing target %s is not listed by the upstream's /v1/models: requests "
                "routed to it will probably fail (was it renamed?); edit ROUTES_FILE",
                target,
            )
        self.unlisted = unlisted

    async def startup(self, table: RouteTable, models: ModelList) -> None:
        """The startup checks, side by side; each is bounded, neither raises."""
        try:
            probe = self._start_probe(min_gap=0) if self.api is None else None
            await asyncio.gather(
                *([asyncio.shield(probe)] if probe is not None else []),
                self.check_models(table, models),
            )
            if self.setting != "auto":
                log.info(
                    "UPSTREAM_API=%s: the upstream speaks %s", self.api, _MEANING[self.setting]
                )
        finally:
            self.checked = True

    # --- /health ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What `/health` shows; safe to call from the database threads."""
        return {
            "upstream_api": self.api or "unknown",
            "upstream_api_setting": self.setting,
            "upstream_checks": "done" if self.checked else "pending",
            "unlisted_models": self.unlisted,
            "cooldowns": self.cooldowns.listing(),
        }

    async def aclose(self) -> None:
        await self._client.aclose()
