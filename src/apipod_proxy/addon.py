"""The mitmproxy addon: the hooks, each handing the flow to the pipeline stage that owns it.

requestheaders  admission (pipeline/admission.py): request id, the client's API, what is
                not forwarded, the key and its rate limit, all before the body is read
request         the proxy's own endpoints (endpoints/) answer; else rewrite
                (pipeline/rewrite.py): credentials, body checks, routing, translation;
                then a budgeted key's hold (pipeline/accounting.py) and the upstream timeout
responseheaders answers (pipeline/answers.py): SSE streamed as it arrives, watched for usage
response/error  answers: whole answers in the client's API; accounting: usage, spend,
                metrics, the request log and the access line, once per request

`Lifecycle` (start-up, timed jobs, drain, shutdown) builds the `Gateway` at load and
hands it here; the stages get the parts of it they use. Until then no hook runs:
mitmproxy starts serving only once every addon has loaded.
"""

from __future__ import annotations

import dataclasses
import logging

from mitmproxy import http
from mitmproxy.net.http import http1

from . import logs
from .config import Settings
from .connections import ConnectionPolicy, expects_body
from .flowstate import FlowState, state_of
from .gateway import Gateway
from .lifecycle import Lifecycle
from .pipeline.accounting import Accounting, ChargeBeforeRelease
from .pipeline.admission import Admission
from .pipeline.answers import Answers
from .pipeline.rewrite import Rewrite
from .policy.routing import Router

log = logging.getLogger("apipod")


class Apipod:
    """The hooks. `addons` are its sub-addons: mitmproxy loads and calls them after it,
    in that order; none of them holds a reference back to this one."""

    def __init__(self, settings: Settings | None = None, router: Router | None = None) -> None:
        self.lifecycle = Lifecycle(settings, router, on_load=self._loaded)
        self.connections = ConnectionPolicy()
        self.addons = [self.lifecycle, self.connections, ChargeBeforeRelease()]
        self.gateway: Gateway | None = None

    def _loaded(self, gateway: Gateway) -> None:
        """Loading succeeded: build the stages from the gateway."""
        self.gateway = gateway
        self.admission = _stage(Admission, gateway)
        self.rewrite = _stage(Rewrite, gateway)
        self.answers = _stage(Answers, gateway)
        self.endpoints = gateway.endpoints
        self.accounting: Accounting = gateway.accounting
        self.connections.setup(gateway.settings)

    # --- request path ----------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self.admission.start(flow)
        try:
            flow.response = await self.admission.admit(flow, state)
        except Exception:  # never let a bug wave an unauthenticated request through
            log.exception("internal error authenticating %s", logs.shown_path(flow))
            flow.response = state.api.error(500, "Internal proxy error", "internal_error")
        state.answered_by_proxy = flow.response is not None
        if flow.response is not None and expects_body(flow.request):
            self._answer_unread(flow)

    def _answer_unread(self, flow: http.HTTPFlow) -> None:
        """A request refused on its headers: answered and closed now, its body never read,
        so a slow or large body holds neither a connection nor memory. Logged here: the
        flow mitmproxy goes on with ends as a client disconnect."""
        response = flow.response
        assert response is not None
        self.answers.headers(flow)  # the request id
        response.headers["connection"] = "close"
        if self.connections.close_unread(flow.client_conn, http1.assemble_response(response)):
            self.accounting.finish(flow, response.status_code)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is not None:
            return
        try:
            flow.response = await self._answer_or_prepare(flow, state)
        except Exception:  # a bug must answer 500, never forward a half-processed request
            log.exception("internal error handling %s", logs.shown_path(flow))
            flow.response = state.api.error(500, "Internal proxy error", "internal_error")
            state.answered_by_proxy = True
            return
        if flow.response is None:
            self.answers.forwarded(flow, state)

    async def _answer_or_prepare(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> http.Response | None:
        """The proxy's own answer (an endpoint of its own, or a refusal), or None once the
        request is ready to forward. Runs under `request`'s guard: whatever raises here
        is answered 500, never forwarded."""
        own = await self.endpoints.answer(flow.request, state)  # never raises: one guard
        if own is not None:
            return own
        refusal = await self.rewrite.prepare(flow, state)
        if refusal is None and state.user is not None:
            held = await self.accounting.hold(state.user, state)
            refusal = None if held is None else state.api.refuse(held)
        state.answered_by_proxy = refusal is not None
        return refusal

    # --- response path ---------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.answers.headers(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        try:
            self.answers.whole(flow)
        except Exception:  # the answer goes out untranslated rather than not at all
            log.exception("internal error translating %s", logs.shown_path(flow))
        self.accounting.finish(flow, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        self.accounting.finish(flow, None)


def _stage[T](stage: type[T], gateway: Gateway) -> T:
    """A pipeline stage, its fields taken from the gateway's parts of the same names
    (a stage's fields are what it may use; a unit test fills them with its own)."""
    parts = {
        f.name: getattr(gateway, f.name)
        for f in dataclasses.fields(stage)  # type: ignore[arg-type]
        if not f.name.startswith("_")
    }
    return stage(**parts)
