"""The upstream pool: several Antigravity instances, chosen per request, health and quota aware.

The routing file's `[upstreams.NAME]` tables name the instances (`upstreams_from`); without
`[upstreams]` the pool is one upstream from ANTIGRAVITY_URL and ANTIGRAVITY_KEY
(`default_config`), which never ejects: exactly the single upstream of before.

Per request, after alias routing chose the model, `Pool.acquire` picks an upstream among
those that serve the model, are not ejected, not cooling for it and not full, by weight,
and returns a `Lease`: the upstream, counted in flight until the lease is released (once:
releasing again does nothing, and `with` releases it). The lease records the outcome:

- `ok()`, or `failed(Outcome...)` for a connect error, a timeout or a 5xx: `allowed_fails`
  consecutive failures eject the upstream for `eject_seconds`, doubled at each ejection in
  a row up to `eject_max_seconds`. When the time is up it is half-open: exactly one request
  (the probe) is let through; its success closes it, its failure ejects it again, longer.
  Its own `/health` is never polled (it calls Google for every account).
- `quota(reset_seconds)`: the model cools on this upstream only (quota.Cooldowns per
  upstream). An alias target is out of rotation only when it cools on every upstream that
  serves it (`cooling_everywhere`).

Sticky conversations keep their upstream while it is healthy and serves the model; they
move when it is ejected or cooling (an LRU map, capped, so memory is bounded).

`snapshot()` is each upstream's state for `/health` and `/admin/stats`. Keys are never in
a snapshot, a repr or a log line. Pure: no I/O, no mitmproxy; the clock and the random
source are passed in, so tests control both.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from ..policy.routing import RoutesError, only
from .quota import Cooldowns

#: As UPSTREAM_API (translate.directions.UPSTREAM_APIS; a test keeps them equal).
APIS = ("auto", "anthropic", "openai", "both")
#: An upstream's name: it becomes a metrics label and a log field.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Keys of one `[upstreams.NAME]` table.
UPSTREAM_KEYS = ("url", "key", "key_env", "weight", "api", "models", "max_concurrency")
#: Pool settings, as plain values in `[upstreams]` next to the upstream tables.
SETTING_KEYS = ("allowed_fails", "eject_seconds", "eject_max_seconds")
#: The name of the pool of one made from ANTIGRAVITY_URL.
DEFAULT_NAME = "default"
#: Seconds over which `snapshot()` reports the error rate.
ERROR_WINDOW = 60
#: Seconds a caller is told to wait (Retry-After) when every upstream is full.
OVERLOADED_RETRY = 1.0


class Outcome(StrEnum):
    """What became of a request sent upstream, as passive health counts it."""

    OK = "ok"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"  # a 5xx answer


@dataclass(frozen=True, slots=True)
class Upstream:
    """One instance: where it is, its key, and what it serves."""

    name: str
    url: str  # scheme://host[:port], no path
    scheme: str
    host: str
    port: int
    key: str = field(repr=False)
    weight: float = 1.0
    api: str = "auto"
    #: Only these models are served here; None: every model.
    models: frozenset[str] | None = None
    #: In-flight requests beyond which it is skipped; None: no cap.
    max_concurrency: int | None = None

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The upstreams in table order and the ejection settings; replaced whole on reload."""

    upstreams: tuple[Upstream, ...]
    #: Consecutive failures that eject an upstream; 0: never eject (the pool of one).
    allowed_fails: int = 3
    eject_seconds: float = 5.0
    eject_max_seconds: float = 300.0


class Unavailable(Exception):
    """No upstream can take the request now. `reason` is one of:

    - "unserved": no upstream serves the model;
    - "cooling": each that serves it cools for it (a quota answer);
    - "ejected": each that serves it is ejected, or its half-open probe is under way;
    - "overloaded": the others are all at max_concurrency (the caller answers 503
      `overloaded`).

    `retry_after`: seconds until one may be back (None when unknown, as for "unserved").
    """

    def __init__(self, reason: str, model: str, retry_after: float | None) -> None:
        super().__init__(f"no upstream for {model!r}: {reason}")
        self.reason = reason
        self.model = model
        self.retry_after = retry_after


# --- reading [upstreams] ------------------------------------------------------------------


def parse_url(value: object, where: str) -> tuple[str, str, str, int]:
    """(url, scheme, host, port) of an upstream's `url`; RoutesError saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise RoutesError(f'{where} needs url = "http://host:port"')
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise RoutesError(f"{where} url is not a valid URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise RoutesError(f"{where} url must be an http:// or https:// URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise RoutesError(f"{where} url must not hold a user or password (use key_env)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RoutesError(f"{where} url must be scheme://host[:port] only, got {value!r}")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}", parts.scheme, host, port


def _positive(value: object, where: str, whole: bool = False) -> float:
    kind = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
        noun = "a whole number above 0" if whole else "a positive number"
        raise RoutesError(f"{where} must be {noun}, got {value!r}")
    return value


def _key(spec: dict[str, Any], where: str, environ: Mapping[str, str]) -> str:
    if "key" in spec and "key_env" in spec:
        raise RoutesError(f"{where} takes key or key_env, not both")
    if "key_env" in spec:
        variable = spec["key_env"]
        if not isinstance(variable, str) or not variable:
            raise RoutesError(f"{where} key_env must name an environment variable")
        key = environ.get(variable, "")
        if not key:
            raise RoutesError(f"{where} key_env: environment variable {variable} is not set")
        return key
    if "key" in spec:
        if not isinstance(spec["key"], str) or not spec["key"]:
            raise RoutesError(f"{where} key must be a non-empty string (better: key_env)")
        return spec["key"]
    raise RoutesError(f'{where} needs key_env = "NAME_OF_VARIABLE" (or key)')


def upstream_from(name: str, spec: object, environ: Mapping[str, str]) -> Upstream:
    """One `[upstreams.NAME]` table, validated; RoutesError names the table."""
    where = f"[upstreams.{name}]"
    if not _NAME.fullmatch(name):
        raise RoutesError(f"{where}: names are letters, digits, '_', '.', '-' (at most 64)")
    if not isinstance(spec, dict):
        raise RoutesError(f"{where} must be a table")
    only(spec, UPSTREAM_KEYS, where)
    url, scheme, host, port = parse_url(spec.get("url"), where)
    key = _key(spec, where, environ)
    weight = float(_positive(spec.get("weight", 1), f"{where} weight"))
    api = spec.get("api", "auto")
    if api not in APIS:
        raise RoutesError(f"{where} api must be one of {', '.join(APIS)}, got {api!r}")
    models = spec.get("models")
    if models is not None:
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise RoutesError(f'{where} models must be a list of model names, like ["m1"]')
        models = frozenset(models)
    cap = spec.get("max_concurrency")
    if cap is not None:
        cap = int(_positive(cap, f"{where} max_concurrency", whole=True))
    return Upstream(name, url, scheme, host, port, key, weight, api, models, cap)


def upstreams_from(
    document: dict[str, Any], environ: Mapping[str, str] | None = None
) -> PoolConfig | None:
    """The pool a routing file's document (routing.read_toml) names; None without
    `[upstreams]`. RoutesError, one line naming the table and key, when it is invalid."""
    if "upstreams" not in document:
        return None
    section = document["upstreams"]
    if not isinstance(section, dict):
        raise RoutesError("[upstreams] must be a table")
    environ = os.environ if environ is None else environ
    tables = {name: spec for name, spec in section.items() if isinstance(spec, dict)}
    settings = {name: value for name, value in section.items() if name not in tables}
    if unknown := sorted(set(settings) - set(SETTING_KEYS)):
        raise RoutesError(
            f"unknown keys in [upstreams]: {', '.join(unknown)} (upstreams are tables "
            f"[upstreams.NAME]; settings: {', '.join(SETTING_KEYS)})"
        )
    if not tables:
        raise RoutesError("[upstreams] needs at least one [upstreams.NAME] table")
    upstreams = tuple(upstream_from(name, spec, environ) for name, spec in tables.items())
    fails = settings.get("allowed_fails", 3)
    allowed = int(_positive(fails, "[upstreams] allowed_fails", whole=True))
    eject = float(_positive(settings.get("eject_seconds", 5), "[upstreams] eject_seconds"))
    most = float(_positive(settings.get("eject_max_seconds", 300), "[upstreams] eject_max_seconds"))
    if most < eject:
        raise RoutesError("[upstreams] eject_max_seconds must be at least eject_seconds")
    return PoolConfig(upstreams, allowed, eject, most)


def default_config(url: str, key: str, api: str = "auto") -> PoolConfig:
    """The pool of one from ANTIGRAVITY_URL and ANTIGRAVITY_KEY (already validated by
    config.py): never ejected and never capped, as the single upstream always was."""
    full, scheme, host, port = parse_url(url.rstrip("/") or url, "ANTIGRAVITY_URL")
    upstream = Upstream(DEFAULT_NAME, full, scheme, host, port, key, 1.0, api)
    return PoolConfig((upstream,), allowed_fails=0)


# --- state --------------------------------------------------------------------------------


class _Health:
    """One upstream's live state. Held by leases, so an upstream removed by a reload
    still counts its requests down."""

    __slots__ = (
        "cooldowns",
        "ejected_until",
        "ejections",
        "failures",
        "in_flight",
        "probing",
        "window",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self.cooldowns = Cooldowns(clock)
        self.failures = 0  # consecutive
        self.ejections = 0  # in a row; 0: closed (healthy)
        self.ejected_until = 0.0
        self.probing = False  # the half-open probe is in flight
        self.in_flight = 0
        #: [second, requests, failures] per second with an outcome, oldest first.
        self.window: deque[list[int]] = deque()

    def state(self, now: float) -> str:
        if not self.ejections:
            return "healthy"
        return "ejected" if now < self.ejected_until else "half-open"

    def count(self, now: float, failed: bool) -> None:
        second = int(now)
        if self.window and self.window[-1][0] == second:
            bucket = self.window[-1]
        else:
            bucket = [second, 0, 0]
            self.window.append(bucket)
        bucket[1] += 1
        bucket[2] += failed
        self.forget(now)

    def forget(self, now: float) -> None:
        while self.window and self.window[0][0] <= now - ERROR_WINDOW:
            self.window.popleft()


class Lease:
    """A request's hold on an upstream: in flight until `release` (idempotent).

    Record the outcome with `ok`, `failed` or `quota` (each releases); `with pool.acquire(...)
    as lease:` releases on the way out whatever happens, counting no outcome when none
    was recorded (a request the client cancelled says nothing about the upstream).
    """

    __slots__ = ("_done", "_health", "_pool", "model", "probe", "upstream")

    def __init__(
        self, pool: Pool, upstream: Upstream, health: _Health, model: str, probe: bool
    ) -> None:
        self._pool = pool
        self._health = health
        self._done = False
        self.upstream = upstream
        self.model = model
        #: This request is the half-open probe: its outcome opens or closes the upstream.
        self.probe = probe

    @property
    def released(self) -> bool:
        return self._done

    def release(self, outcome: Outcome | None = None) -> None:
        """Out of flight, counting `outcome` (None: none) the first time; later: nothing."""
        self._pool._finish(self, outcome)

    def ok(self) -> None:
        self.release(Outcome.OK)

    def failed(self, outcome: Outcome) -> None:
        self.release(outcome)

    def quota(self, reset_seconds: float | None) -> float | None:
        """A quota answer: cool this (upstream, model) for `reset_seconds` (the pool's
        default when None, at most its cap). The upstream answered, so for health it is
        an ok. Returns the reset time in force, or None when already released."""
        return self._pool._quota(self, reset_seconds)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Pool:
    """The upstreams in force and their health, quota and in-flight counts.

    A routing.Section: `prepare` reads a routing file's document and `apply` puts it in
    force, keeping the state of upstreams whose name stays. The request path uses it on
    the event loop, `/health` on the database threads, hence one lock (uncontended).
    """

    def __init__(
        self,
        default: PoolConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        quota_default: float = 60.0,
        quota_cap: float = math.inf,
        sticky_max: int = 10_000,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.default = default
        self._clock = clock
        self._random = (rng or random.Random()).random
        self.quota_default = quota_default
        self.quota_cap = quota_cap
        self.sticky_max = sticky_max
        self._environ = environ
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}
        #: conversation key -> upstream name, most recently used last.
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self.config = default
        self.apply(None)

    # -- routing.Section ------------------------------------------------------------------

    def prepare(self, document: dict[str, Any]) -> PoolConfig | None:
        return upstreams_from(document, self._environ)

    def apply(self, config: PoolConfig | None) -> None:
        """Put `config` in force (None: the default pool of one). Upstreams keeping their
        name keep their health and cooldowns only when their url stays too."""
        config = config or self.default
        with self._lock:
            old = {u.name: u for u in self.config.upstreams}
            health: dict[str, _Health] = {}
            for upstream in config.upstreams:
                kept = self._health.get(upstream.name)
                same = upstream.name in old and old[upstream.name].url == upstream.url
                health[upstream.name] = kept if kept is not None and same else _Health(self._clock)
            self.config = config
            self._health = health

    # -- choice ---------------------------------------------------------------------------

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.config.upstreams

    def acquire(self, model: str, conversation: str | None = None) -> Lease:
        """A lease on the upstream to send a request for `model` to; Unavailable when none
        can take it. `conversation` (routing.conversation_key) keeps it on one upstream."""
        now = self._clock()
        with self._lock:
            config = self.config
            serving = [u for u in config.upstreams if u.serves(model)]
            if not serving:
                raise Unavailable("unserved", model, None)
            usable: list[Upstream] = []
            cooling: list[float] = []
            ejected: list[float] = []
            full = False
            for upstream in serving:
                health = self._health[upstream.name]
                state = health.state(now)
                if state == "ejected" or (state == "half-open" and health.probing):
                    ejected.append(max(health.ejected_until - now, 0.0))
                    continue
                until = health.cooldowns.active(now).get(model)
                if until is not None:
                    cooling.append(until - now)
                    continue
                cap = upstream.max_concurrency
                if cap is not None and health.in_flight >= cap:
                    full = True
                    continue
                usable.append(upstream)
            if not usable:
                if full:
                    raise Unavailable("overloaded", model, OVERLOADED_RETRY)
                if ejected:
                    soonest = min([*ejected, *cooling])
                    raise Unavailable("ejected", model, soonest)
                raise Unavailable("cooling", model, min(cooling))
            chosen = self._sticky_choice(conversation, model, usable, now)
            if chosen is None:
                chosen = self._weighted(usable)
                if conversation is not None:
                    self._bind(conversation, chosen.name)
            health = self._health[chosen.name]
            probe = health.state(now) == "half-open"
            if probe:
                health.probing = True
            health.in_flight += 1
            return Lease(self, chosen, health, model, probe)

    def _sticky_choice(
        self, conversation: str | None, model: str, usable: list[Upstream], now: float
    ) -> Upstream | None:
        """The conversation's upstream when it is usable and healthy; None: choose anew
        (and the binding moves). Full for now, it keeps the binding but not this request."""
        if conversation is None or (name := self._sticky.get(conversation)) is None:
            return None
        self._sticky.move_to_end(conversation)
        health = self._health.get(name)
        if health is not None and health.state(now) == "healthy":
            home = next((u for u in usable if u.name == name), None)
            if home is not None:
                return home
            upstream = next(u for u in self.config.upstreams if u.name == name)
            cap = upstream.max_concurrency
            full = cap is not None and health.in_flight >= cap
            if full and upstream.serves(model) and model not in health.cooldowns.active(now):
                return self._weighted(usable)
        del self._sticky[conversation]
        return None

    def _bind(self, conversation: str, name: str) -> None:
        self._sticky[conversation] = name
        self._sticky.move_to_end(conversation)
        while len(self._sticky) > self.sticky_max:
            self._sticky.popitem(last=False)

    def _weighted(self, usable: list[Upstream]) -> Upstream:
        if len(usable) == 1:
            return usable[0]
        draw = self._random() * sum(u.weight for u in usable)
        for upstream in usable:
            draw -= upstream.weight
            if draw < 0:
                return upstream
        return usable[-1]

    def sticky_upstream(self, conversation: str) -> str | None:
        """The upstream a conversation is bound to (without touching its recency)."""
        with self._lock:
            return self._sticky.get(conversation)

    def sticky_count(self) -> int:
        with self._lock:
            return len(self._sticky)

    # -- outcomes -------------------------------------------------------------------------

    def _finish(self, lease: Lease, outcome: Outcome | None) -> bool:
        """Release `lease` counting `outcome`; False when it was released already."""
        now = self._clock()
        with self._lock:
            if lease._done:
                return False
            lease._done = True
            health = lease._health
            health.in_flight -= 1
            if lease.probe:
                health.probing = False
            if outcome is None:
                return True
            failed = outcome is not Outcome.OK
            health.count(now, failed)
            if not failed:
                health.failures = 0
                # Only the probe closes an ejected upstream; a straggler sent before the
                # ejection does not.
                if lease.probe or health.state(now) == "healthy":
                    health.ejections = 0
                return True
            state = health.state(now)
            if lease.probe:
                self._eject(health, now)
            elif state == "healthy":
                health.failures += 1
                allowed = self.config.allowed_fails
                if allowed and health.failures >= allowed:
                    self._eject(health, now)
            return True

    def _eject(self, health: _Health, now: float) -> None:
        config = self.config
        seconds = min(config.eject_seconds * 2**health.ejections, config.eject_max_seconds)
        health.ejections += 1
        health.failures = 0
        health.ejected_until = now + seconds

    def _quota(self, lease: Lease, reset_seconds: float | None) -> float | None:
        if not self._finish(lease, Outcome.OK):
            return None
        return lease._health.cooldowns.mark_for(
            lease.model, reset_seconds, self.quota_default, self.quota_cap
        )

    # -- quota, seen from routing ---------------------------------------------------------

    def cooling_on(self, name: str, model: str) -> bool:
        with self._lock:
            health = self._health.get(name)
        return health is not None and model in health.cooldowns.active()

    def cooling_everywhere(self, model: str) -> bool:
        """`model` cools on every upstream that serves it (and one does): an alias then
        routes around it. Cooling on some only is invisible to routing."""
        now = self._clock()
        with self._lock:
            serving = [self._health[u.name] for u in self.config.upstreams if u.serves(model)]
        return bool(serving) and all(model in h.cooldowns.active(now) for h in serving)

    def cooling_among(self, models: Iterable[str]) -> frozenset[str]:
        """Those of `models` cooling everywhere: what the router's `avoid` takes."""
        return frozenset(m for m in models if self.cooling_everywhere(m))

    def earliest_reset(self, model: str) -> float | None:
        """When `model` is back on the first upstream serving it; None: it cools nowhere."""
        now = self._clock()
        with self._lock:
            serving = [self._health[u.name] for u in self.config.upstreams if u.serves(model)]
        times = [h.cooldowns.active(now).get(model) for h in serving]
        if not times or any(t is None for t in times):
            return None
        return min(t for t in times if t is not None)

    # -- seen from outside ----------------------------------------------------------------

    def in_flight(self, name: str) -> int:
        with self._lock:
            health = self._health.get(name)
            return health.in_flight if health is not None else 0

    def state_of(self, name: str) -> str:
        with self._lock:
            return self._health[name].state(self._clock())

    def snapshot(self) -> list[dict[str, Any]]:
        """Each upstream, in table order, for `/health` and `/admin/stats` (no keys)."""
        now = self._clock()
        rows = []
        with self._lock:  # then each Cooldowns' own lock, never the other way round
            for upstream in self.config.upstreams:
                health = self._health[upstream.name]
                health.forget(now)
                requests = sum(b[1] for b in health.window)
                failures = sum(b[2] for b in health.window)
                state = health.state(now)
                rows.append(
                    {
                        "name": upstream.name,
                        "url": upstream.url,
                        "weight": upstream.weight,
                        "api": upstream.api,
                        "models": sorted(upstream.models) if upstream.models else None,
                        "state": state,
                        "ejected_until": _moment(health.ejected_until)
                        if state == "ejected"
                        else None,
                        "in_flight": health.in_flight,
                        "max_concurrency": upstream.max_concurrency,
                        "requests": requests,
                        "failures": failures,
                        "error_rate": round(failures / requests, 4) if requests else 0.0,
                        "window_seconds": ERROR_WINDOW,
                        "cooling": health.cooldowns.listing(now),
                    }
                )
        return rows


def _moment(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
