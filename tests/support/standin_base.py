"""What every stand-in upstream shares: a threaded aiohttp server that records every
request, writes SSE events in awkward pieces, and logs the usage it reports.

The stand-ins (standin.StandIn, anthropic_standin, openai_standin) run in-process on a
private event loop in a thread, so a test can start one, steer it with plain method
calls, and read what it received.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

#: The user-agent of the requests the proxy makes itself (apipod_proxy.credentials).
PROXY_USER_AGENT = "apipod-proxy"

#: Pause between the pieces of a split write, so they leave in separate TCP segments and
#: reach the reader in separate reads.
SPLIT_PAUSE = 0.003


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reported:
    """The token counts one answer reported, so tests can check exact accounting."""

    model: str
    stream: bool
    input_tokens: int
    cached_tokens: int
    output_tokens: int

    @property
    def prompt_tokens(self) -> int:
        """OpenAI's prompt_tokens: the input including its cached part."""
        return self.input_tokens + self.cached_tokens


class ThreadedServer:
    """Start/stop on a private loop; subclasses add their routes in `routes`."""

    #: The largest request body aiohttp reads.
    client_max_size = 64 << 20

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.received: list[Received] = []
        #: The proxy's own requests (endpoint probe, model list), kept out of `received`.
        self.own_requests: list[Received] = []
        self.reported: list[Reported] = []
        #: Split each streamed event across TCP writes (and join others into one write).
        self.split_writes = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset(self) -> None:
        self.received.clear()
        self.own_requests.clear()
        self.reported.clear()

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.client_max_size)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def record(self, request: web.Request) -> Received:
        headers = {name.lower(): value for name, value in request.headers.items()}
        entry = Received(request.method, request.path_qs, headers, await request.read())
        mine = headers.get("user-agent", "").startswith(PROXY_USER_AGENT)
        (self.own_requests if mine else self.received).append(entry)
        return entry


class SplitWriter:
    """Writes SSE events so that their boundaries fall anywhere across TCP reads.

    With splitting on, each event is cut in two: its head leaves at once, its tail
    leaves together with the head of the next event, after a short pause. So readers
    see events split across reads and several events' pieces in one read.
    """

    def __init__(self, response: web.StreamResponse, split: bool) -> None:
        self.response = response
        self.split = split
        self._tail = b""
        self.written: list[bytes] = []

    async def _write(self, data: bytes) -> None:
        if data:
            self.written.append(data)
            await self.response.write(data)

    async def send(self, event: bytes) -> None:
        if not self.split:
            await self._write(event)
            return
        cut = max(1, len(event) // 2)
        await self._write(self._tail + event[:cut])
        self._tail = event[cut:]
        await asyncio.sleep(SPLIT_PAUSE)

    async def flush(self) -> None:
        """Send the held tail now (before a pause, so the client has every event so far)."""
        await self._write(self._tail)
        self._tail = b""

    async def close(self) -> None:
        await self.flush()
        await self.response.write_eof()
