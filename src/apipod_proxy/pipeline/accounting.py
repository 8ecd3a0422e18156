"""Accounting: what a request cost and used, counted once, in one home.

    hold       before forwarding, a budgeted key's estimated cost is held against its
               budget (here, and in Redis for every replica with REDIS_URL)
    finish     when a request ends (answered, failed or cut): metrics, usage, cost,
               the budget ledger, the request log, the access line; the hold is
               settled to the cost, and the cost added in Redis (`charging`)
    flush      about once a second (Lifecycle's timer) and at shutdown: usage, spend
               and the request log in one database transaction

`ChargeBeforeRelease` is the sub-addon that holds a priced answer's end until its cost
is in Redis. Metering (what a stream or a body reports, and the estimates when it
reports nothing) is in metering.py and usage.py; prices in policy/pricing.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Container
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .. import clock, logs
from ..bodies import BodyError, decoded
from ..errors import Refusal
from ..flowstate import Traffic, state_of
from ..logs import printable
from ..policy import budgets
from ..policy.shared import SPEND_TTL_SECONDS
from ..storage.backend import DB_ERRORS, error_text
from .usage import Usage, usage_from_body

if TYPE_CHECKING:
    from mitmproxy import http

    from ..config import Settings
    from ..flowstate import FlowState
    from ..metrics import Metrics
    from ..policy.budgets import SpendLedger
    from ..policy.pricing import Plans
    from ..policy.routing import Router
    from ..policy.shared import SharedSpend
    from ..storage.records import KeyRecord, SpendRows
    from ..storage.requestlog import RequestLog
    from ..storage.sqlite import KeyStore
    from ..upstream.models import ModelList
    from .usage import UsageRecorder

log = logging.getLogger("apipod")

#: Larger non-streaming responses are not parsed for usage (they are forwarded all the same).
MAX_USAGE_BODY = 4 << 20
#: Redis being away is logged at most this often.
REDIS_WARNING_SECONDS = 60.0


@dataclass(slots=True)
class Accounting:
    settings: Settings
    router: Router
    plans: Plans
    metrics: Metrics
    models: ModelList
    ledger: SpendLedger
    usage: UsageRecorder
    request_log: RequestLog
    store: KeyStore
    pool: ThreadPoolExecutor
    traffic: Traffic
    #: REDIS_URL: budget spend added up across replicas as it happens.
    shared_spend: SharedSpend | None = None
    _spend_warned: float = -REDIS_WARNING_SECONDS
    _spend_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # --- before forwarding: the budget hold ----------------------------------------------

    async def hold(self, record: KeyRecord, state: FlowState) -> Refusal | None:
        """Hold the request's estimated cost against a budgeted key's budget, here and
        (REDIS_URL) for every replica; the refusal when it does not fit (budgets.py).
        From memory and Redis only, never the database."""
        budget, period = budgets.budget_of(record, self.plans)
        if budget is None or period is None:
            return None
        shared, amount = self.shared_spend, state.hold_estimate
        if shared is not None and amount <= 0:  # no hold script to read the spend with
            await self._refresh_shared_spend(shared, record)
        now = clock.now_text()
        refusal = budgets.budget_refusal(record, self.plans, self.ledger, now, amount)
        if refusal is not None or amount <= 0:  # nothing to hold: no priced model
            return refusal
        hold_id = secrets.token_hex(8)
        if shared is not None:
            slot = (record.id, period, budgets.period_start(period, now))
            try:
                known = self.ledger.spent(record.id, period, now)
                admitted, spent, held = await shared.hold(slot, budget, amount, hold_id, known)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_away(exc)  # this process's holds decide meanwhile
            else:
                self.ledger.note_shared({slot: spent})
                if not admitted:
                    return budgets.quota_refusal(budget, period, spent, held, amount, now)
        self.ledger.hold(record.id, hold_id, amount)
        state.hold_id = hold_id
        return None

    async def _refresh_shared_spend(self, shared: SharedSpend, record: KeyRecord) -> None:
        """Read a budgeted key's spend fresh from Redis before admitting it: the ledger only
        hears of other replicas' requests when one of its own ends, which may be long ago."""
        try:
            budget, period = budgets.budget_of(record, self.plans)
            if budget is None or period is None:
                return
            now = clock.now_text()
            slot = (record.id, period, budgets.period_start(period, now))
            self.ledger.note_shared(await shared.totals([slot]))
        except (RedisError, OSError, TimeoutError):
            pass  # the ledger's own figure decides; _share_spend reports the outage
        except Exception:  # never let a bug here forward or fail the request
            log.exception("internal error reading shared spend")

    # --- when a request ends -------------------------------------------------------------

    def finish(self, flow: http.HTTPFlow, status: int | None) -> None:
        """Count and log a request once, whether it ended in a response (`status`) or an
        error (None): metrics, usage, cost, ledger, request log, the cost in Redis
        (`state.charging`), and the access line."""
        state = state_of(flow)
        if state is None or state.finished:
            return
        state.finished = True
        self.traffic.in_flight.discard(flow.id)
        if state.timer is not None:
            state.timer.cancel()
        if state.watcher is not None:
            self.metrics.active_streams.dec()
        if status is None:
            forwarded = state.forwarded_at is not None
            status = 504 if state.timed_out else logs.failure_status(flow.error, forwarded)
        try:
            self._account(flow, state, status)
        except Exception:  # accounting must never break the proxy, nor skip the log line
            log.exception("internal error accounting %s", logs.shown_path(flow))
        logs.access(flow, state, status)

    def _account(self, flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        model = printable(state.routed_model or "")
        label = self.metrics.model_label(model, self._known_models(model))
        self.metrics.requests.labels(label, str(status)).inc()
        self.metrics.duration.observe(time.perf_counter() - state.started)
        if status >= 400 and state.forwarded_at is None and flow.response is not None:
            self.metrics.count_refusal(flow.response.raw_content)  # the proxy's own answer
        # The budget hold is settled to the cost below (0 for a failure) in any case.
        release = self._release_hold(state)
        added: SpendRows = {}
        if state.user is not None and state.forwarded_at is not None:
            # A stream's figures are its watcher's, also when the client hung up (`error`):
            # estimated from what was delivered if its usage never came (metering.py).
            usage = _usage_of(flow, state)
            # What the upstream failed (5xx, unreachable, timeout) costs nothing.
            cost = self.cost(model, usage) if status < 500 else 0.0
            added = self.ledger.add(state.user.id, cost, clock.now_text())
            self.usage.add(state.user.id, model, status, usage, cost)
            self.request_log.add(
                state.request_id,
                state.user.id,
                state.requested_model and printable(state.requested_model),
                model or None,
                status,
                time.perf_counter() - state.started,
                usage,
                cost,
            )
            if usage.prompt_tokens or usage.completion_tokens:
                self.metrics.tokens.labels(label, "prompt").inc(usage.prompt_tokens)
                self.metrics.tokens.labels(label, "completion").inc(usage.completion_tokens)
        if (added or release) and (shared := self.shared_spend) is not None:
            task = asyncio.get_running_loop().create_task(self._share_spend(shared, added, release))
            self._spend_tasks.add(task)  # a reference until done
            task.add_done_callback(self._spend_tasks.discard)
            state.charging = task

    def cost(self, model: str, usage: Usage) -> float:
        """USD for `usage` at `model`'s price; estimated reasoning tokens at the output
        price too with BILL_REASONING_ESTIMATE=on."""
        extra = usage.billable_reasoning(self.settings.bill_reasoning_estimate == "on")
        completion = usage.completion_tokens + extra
        return self.plans.cost(model, usage.prompt_tokens, usage.cached_tokens, completion)

    def _known_models(self, model: str) -> Container[str]:
        """Model names that may be metric labels: the routing table's, the upstream's list."""
        table = self.router.table
        if model in self.models.ids or model in table.aliases or model in table.renames:
            return (model,)
        return table.targets()

    def _release_hold(self, state: FlowState) -> tuple[int, str] | None:
        """Drop the request's budget hold here; (key id, hold id) to drop in Redis."""
        if state.hold_id is None or state.user is None:
            return None
        release = (state.user.id, state.hold_id)
        self.ledger.release(*release)
        state.hold_id = None
        return release

    async def _share_spend(
        self, shared: SharedSpend, added: SpendRows, release: tuple[int, str] | None = None
    ) -> None:
        """Add a request's cost in Redis and drop its hold, at once; every replica's
        total goes into the ledger. A hold Redis does not hear of lapses (HOLD_TTL)."""
        try:
            self.ledger.note_shared(await shared.add(added, SPEND_TTL_SECONDS, release))
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_away(exc)

    def _redis_away(self, exc: BaseException) -> None:
        # The database still shares spend with every flush; say so once a minute.
        now = time.monotonic()
        if now - self._spend_warned >= REDIS_WARNING_SECONDS:
            self._spend_warned = now
            log.warning(
                "Redis unreachable, spend is shared by the database only and budget holds"
                " are per process: %s",
                f"{type(exc).__name__}: {exc}".strip().rstrip(":"),
            )

    # --- the database ----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write usage, spend and the request log in one transaction, and re-read every
        process's spend; on failure keep it all for the next."""
        batch = self.usage.take()
        requests = self.request_log.take()
        self.ledger.take()
        loop = asyncio.get_running_loop()
        try:
            spend = await loop.run_in_executor(self.pool, self.store.record_usage, *batch, requests)
        except DB_ERRORS as exc:
            log.error("usage flush failed, will retry: %s", error_text(exc))
            self.usage.give_back(*batch)
            self.request_log.give_back(requests)
            self.ledger.give_back()
            return
        self.ledger.settle(spend)

    def final_flush(self) -> None:
        """At shutdown, on the calling thread: whatever the last periodic flush did not see."""
        if not (self.usage or self.request_log):
            return
        batch = self.usage.take()
        try:
            self.store.record_usage(*batch, self.request_log.take())
        except Exception:
            log.exception("final usage flush failed; %d buckets lost", len(batch[0]))


def _usage_of(flow: http.HTTPFlow, state: FlowState) -> Usage:
    if state.watcher is not None:
        return state.watcher.usage
    response = flow.response
    if response is None or "json" not in response.headers.get("content-type", ""):
        return Usage()
    try:
        return usage_from_body(decoded(response, MAX_USAGE_BODY))
    except BodyError:  # too large or oddly encoded: forwarded all the same, not counted
        return Usage()


class ChargeBeforeRelease:
    """Hold a priced answer's end until its cost is in Redis (REDIS_URL).

    mitmproxy calls `response` before the end of the message reaches the client, streamed
    or not, and calls this sub-addon after `Apipod.response` has started the charge. The
    client's next request, on whichever replica, is then admitted against a spend that
    includes this one. The wait is bounded by policy/shared.TIMEOUT; without Redis, or for
    a request that costs nothing, there is nothing to wait for.
    """

    async def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and state.charging is not None:
            await asyncio.wait({state.charging})
