"""What the proxy knows about one request, kept on `flow.metadata`.

It imports only `clientapi` from the package at run time, so every other module (the
pipeline stages, the access log) can use it without importing one another.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .clientapi import ClientApi

if TYPE_CHECKING:
    from mitmproxy import http

    from .pipeline.usage import SseWatcher
    from .storage.records import KeyRecord
    from .translate import Direction
    from .translate.responses_api import ResponsesContext
    from .translate.responses_stream import Chained
    from .translate.streams import _SseTranslator

#: The key of the proxy's state in `flow.metadata`.
STATE = "apipod"


@dataclass(slots=True)
class FlowState:
    """What the proxy knows about one request, kept on `flow.metadata`."""

    request_id: str
    #: The API the client speaks, read once from the request as it came in.
    api: ClientApi = ClientApi.OPENAI
    started: float = field(default_factory=time.perf_counter)
    #: The client's address and scheme, past trusted front proxies (forwarding.py).
    client: str = ""
    client_proto: str = "http"
    #: The path (with query) as the client sent it, before any rewrite points the
    #: request at the upstream's endpoint: the access line shows both.
    client_path: str = ""
    #: One of the proxy's own paths answered without a customer key (endpoints/).
    internal: bool = False
    user: KeyRecord | None = None
    requested_model: str | None = None
    routed_model: str | None = None
    forwarded_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    strip_usage_chunk: bool = False
    answered_by_proxy: bool = False
    #: The translation this request needs (None: forwarded in the API it came in).
    direction: Direction | None = None
    #: A translated OpenAI stream asked for its usage chunk.
    include_usage: bool = False
    #: What a translated Responses answer needs from its request (custom tools, echo).
    translation_context: ResponsesContext | None = None
    #: What watches (and maybe translates) an SSE answer; it holds the stream's usage.
    watcher: SseWatcher | _SseTranslator | Chained | None = None
    finished: bool = False
    #: The request body's size, for a prompt estimate when a stream reports no usage.
    request_chars: int = 0
    #: Adding this request's cost to the spend every replica reads (REDIS_URL).
    charging: asyncio.Task[None] | None = None
    #: A budgeted request's estimated cost (budgets.hold_estimate), and the id of its
    #: hold on the budget while it is in progress (settled in `_account`).
    hold_estimate: float = 0.0
    hold_id: str | None = None


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(STATE)


@dataclass(slots=True)
class Traffic:
    """The requests in progress, and whether the proxy is draining (a stop signal came):
    shared by the stages that start and end requests and by the drain."""

    in_flight: set[str] = field(default_factory=set)
    draining: bool = False
