"""The proxy's life outside requests: start-up, timed jobs, draining, shutdown.

`Lifecycle` is a sub-addon of `Apipod` (listed in its `addons`), so mitmproxy loads it
with the gateway. It implements only `load`, `configure`, `running` and `done`: mitmproxy
offers every request event to every addon, and one without request hooks costs nothing
per request.

load     register the apipod options, read the settings, check where the proxy will
         listen and forward, open the database, and hand `Apipod` its `Runtime`
running  (the listener is up) say "ready", unload unused mitmproxy addons, take over
         SIGTERM/SIGINT, start the usage flush and routes reload, and ask the upstream
         which API it speaks and which models it lists (upstream.py; in the background)
         (and, on PostgreSQL, follow key changes by other replicas)
done     stop the jobs, write the last usage, stop the database threads
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode
from mitmproxy.utils import asyncio_utils

from . import config, logs, mitm_compat
from .config import ConfigError, Settings
from .endpoints import Endpoints
from .policy.pricing import open_routes_file
from .policy.routing import RoutesError, RoutesFile
from .policy.shared import SharedLimiter, SharedSpend
from .storage.backend import DB_ERRORS, describe, error_text, key_cache_for, open_store
from .storage.keycache import KeyCache
from .storage.postgres import KeyVersionWatcher, PgKeyStore
from .storage.requestlog import PRUNE_SECONDS, RequestLog
from .storage.sqlite import KeyStore
from .upstream.models import ModelList
from .upstream.probe import Upstream

if TYPE_CHECKING:
    from .addon import Apipod

log = logging.getLogger("apipod")
T = TypeVar("T")

#: mitmproxy options a gateway needs, applied unless the user set them (`--set`).
GATEWAY_OPTIONS: dict[str, Any] = {
    # Customers (and Cursor's backend) connect from public addresses.
    "block_global": False,
    # Connect upstream only when a request is forwarded: refused requests open no
    # upstream connection, and a down upstream yields an answer instead of a dropped client.
    "connection_strategy": "lazy",
}
#: How often ROUTES_FILE is checked for edits.
ROUTES_POLL_SECONDS = 2.0
#: How often counted usage is written to the database.
USAGE_FLUSH_SECONDS = 1.0
_LOOPBACK = {"", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"}


@dataclass(slots=True)
class Runtime:
    """What the request path needs once loading succeeded, assigned in one step."""

    settings: Settings
    store: KeyStore
    key_cache: KeyCache
    #: The paths the proxy answers itself (endpoints/), with what their handlers need.
    endpoints: Endpoints
    models: ModelList
    pool: ThreadPoolExecutor
    request_log: RequestLog
    upstream: Upstream
    routes: RoutesFile | None = None
    #: REDIS_URL: rate limits shared by every replica (without it: per process).
    shared_limiter: SharedLimiter | None = None
    #: REDIS_URL: budget spend added up across replicas as it happens.
    shared_spend: SharedSpend | None = None
    #: /health's own thread: a load balancer's check must not queue behind database
    #: work that hangs on `pool` (its ping is bounded, pgstore.PING_WAIT).
    health_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="apipod-health")
    )

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class Lifecycle:
    def __init__(self, gateway: Apipod) -> None:
        self.gateway = gateway
        self._tasks: list[asyncio.Task[None]] = []
        #: PORT, when mitmdump had no --listen-port and bound its default port meanwhile.
        self._move_to_port: int | None = None
        self._held: mitm_compat.HeldErrors | None = None
        self._key_watcher: KeyVersionWatcher | None = None

    # --- load ----------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        if problem := mitm_compat.incompatibility():
            self._fail(problem)
            return
        config.add_options(loader)
        deferred = ctx.options.deferred  # `--set apipod_…` and config.yaml, held until now
        for name, value in list(deferred.items()):
            # config.yaml gives `apipod_port: 9000` as a number; the options are text.
            if name.startswith(config.OPTION_PREFIX) and isinstance(value, int | float):
                deferred[name] = str(value).lower()
        try:
            ctx.options.process_deferred()  # apply them now, before reading them
        except (exceptions.OptionsError, TypeError, ValueError) as exc:
            for name in [n for n in deferred if n.startswith(config.OPTION_PREFIX)]:
                del deferred[name]  # reported once here, not again by mitmproxy
            self._fail(str(exc))
            return
        gateway = self.gateway
        settings = gateway.given_settings
        try:
            if settings is None:
                settings = config.load_settings(options=config.option_values(ctx.options))
            logs.setup(settings.log_format)
            port_name = self._apply_options(settings)
            self._check_addresses(settings, port_name)
            # Opened now, not on first use: a SQLite file created now (later a vanished
            # file is an error, not a fresh start), or PostgreSQL reached and migrated.
            store = open_store(settings.database_path, settings.database_url, create_missing=False)
            store.open()
            routes = None
            if settings.routes_file:
                routes = open_routes_file(
                    settings.routes_file, gateway.router, gateway.plans, gateway.forwarding
                )
            gateway.ledger.base = store.current_spend()  # every key's spend, at start
        except (ConfigError, RoutesError) as exc:
            # Logged at ERROR during startup: mitmdump prints the line and exits.
            self._fail(str(exc))
            return
        except (OSError, *DB_ERRORS) as exc:
            name = "DATABASE_URL" if settings.database_url else "DATABASE_PATH"
            where = describe(settings.database_path, settings.database_url)
            self._fail(f"{name} {where}: {error_text(exc)}")
            return
        upstream = Upstream(
            settings.antigravity_url,
            settings.antigravity_key,
            settings.upstream_api,
            gateway.cooldowns,
        )
        models = ModelList(settings.antigravity_url, settings.antigravity_key)
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="apipod-db")
        health_pool = ThreadPoolExecutor(1, thread_name_prefix="apipod-health")
        gateway.runtime = Runtime(
            settings=settings,
            store=store,
            key_cache=key_cache_for(store),
            endpoints=Endpoints(
                settings,
                store,
                gateway.metrics,
                router=gateway.router,
                routes=routes,
                plans=gateway.plans,
                upstream=upstream,
                cooldowns=gateway.cooldowns,
                ledger=gateway.ledger,
                models=models,
                pool=pool,
                health_pool=health_pool,
            ),
            models=models,
            pool=pool,
            request_log=RequestLog(settings.request_log_days),
            upstream=upstream,
            routes=routes,
            health_pool=health_pool,
        )
        if settings.redis_url:
            limiter = SharedLimiter.from_url(settings.redis_url, settings.redis_prefix)
            gateway.runtime.shared_limiter = limiter
            gateway.runtime.shared_spend = SharedSpend(limiter.redis, settings.redis_prefix)
        mitm_compat.install_json_error_pages()
        if not settings.admin_enabled:
            log.warning("ADMIN_SECRET is not set: the admin API is disabled")

    def _fail(self, message: str) -> None:
        """Stop start-up with one line (mitmdump exits on an ERROR logged at start-up)."""
        if self._held is not None:  # not moving to PORT after all: only our line matters
            self._held.release(replay=False)
            self._held = None
        logs.startup_error(message)

    def _apply_options(self, settings: Settings) -> str:
        """The gateway's mitmproxy options, where the user did not choose otherwise."""
        options = ctx.options
        wanted = {**GATEWAY_OPTIONS, "body_size_limit": str(settings.max_body_size)}
        options.update(**{k: v for k, v in wanted.items() if not mitm_compat.user_set(options, k)})
        if options.listen_port is not None:
            return "--listen-port"
        # No --listen-port: PORT decides. mitmdump loads scripts while it binds its
        # default port, so `running` moves the listener to PORT (see _listen_on_port).
        options.update(listen_port=settings.port)
        self._move_to_port = settings.port
        self._held = mitm_compat.HeldErrors.install()
        return "PORT"

    def _check_addresses(self, settings: Settings, port_name: str) -> None:
        """Refuse to forward to ourselves; report a port in use before mitmproxy binds."""
        upstreams = reverse_targets(ctx.options.mode)
        if not runs_in_front_of(ctx.options.mode, settings.antigravity_url):
            log.warning(
                "mitmdump --mode %s does not forward to ANTIGRAVITY_URL=%s; "
                "run it with --mode reverse:%s",
                ",".join(ctx.options.mode),
                settings.antigravity_url,
                settings.antigravity_url,
            )
        probe = self._move_to_port is not None and ctx.options.server
        for host, port in listen_addresses(ctx.options):
            if problem := listen_problem(host, port, port_name, upstreams, probe):
                raise ConfigError(problem)

    def configure(self, updated: set[str]) -> None:
        if "termlog_verbosity" in updated:
            # mitmproxy logs every connection at INFO. Under `-q` nothing shows those
            # lines, yet each record is built (~5% of the loop with many short streams):
            # let mitmproxy's loggers drop what its terminal log would drop anyway.
            level = logging.getLevelName(ctx.options.termlog_verbosity.upper())
            if isinstance(level, int):
                logging.getLogger("mitmproxy").setLevel(level)

    # --- running -------------------------------------------------------------------------

    async def running(self) -> None:
        runtime = self.gateway.runtime
        if runtime is None:
            return
        if self._move_to_port is not None and ctx.options.server:
            await self._listen_on_port(self._move_to_port)
        settings = runtime.settings
        if settings.trim_addons:
            self._trim_addons()
        loop = asyncio.get_running_loop()
        # Replace mitmdump's handlers, which stop at once and cut streams mid-flight.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal)
        self._every(USAGE_FLUSH_SECONDS, self.flush, "usage flush")
        if isinstance(runtime.store, PgKeyStore):  # key changes by other replicas
            self._key_watcher = KeyVersionWatcher(runtime.store).start()
        if (routes := runtime.routes) is not None:

            async def reload() -> None:
                if await runtime.db(routes.reload_if_changed):
                    await runtime.upstream.check_models(self.gateway.router.table, runtime.models)

            self._every(ROUTES_POLL_SECONDS, reload, "routes reload")
        # In the background: requests wait for the probe only while the API is unknown.
        self._tasks.append(
            asyncio_utils.create_task(
                runtime.upstream.startup(self.gateway.router.table, runtime.models),
                name="apipod upstream checks",
                keep_ref=True,
            )
        )
        if runtime.request_log.enabled:
            self._every(PRUNE_SECONDS, self._prune_request_log, "request log pruning", now=True)
        # mitmproxy calls `running` once its listeners are up: "ready" means ready.
        server = ctx.master.addons.get("proxyserver")
        listening = server.listen_addrs() if server is not None else []
        log.info(
            "apipod ready: listening on %s, forwarding to %s, routes %s, database %s, "
            "rate limits %s, upstream timeout %gs, UPSTREAM_API %s",
            ", ".join(f"http://{_host(a[0])}:{a[1]}" for a in listening) or "(nothing)",
            ", ".join(reverse_targets(ctx.options.mode)) or settings.antigravity_url,
            settings.routes_file or "built in",
            describe(settings.database_path, settings.database_url),
            "shared (REDIS_URL)" if settings.redis_url else "per process",
            settings.upstream_timeout,
            settings.upstream_api,
        )

    async def _listen_on_port(self, port: int) -> None:
        """Serve each mode on PORT (`reverse:URL@PORT`), in place of mitmdump's default."""
        modes = [spec if "@" in spec else f"{spec}@{port}" for spec in ctx.options.mode]
        ok = True
        if modes != ctx.options.mode:
            ctx.options.update(mode=modes)
            # mitmproxy restarts its servers on a mode change; wait until it is done.
            ok = await mitm_compat.restart_servers()
        if self._held is not None:
            # The default port's failures no longer matter once PORT is served.
            self._held.release(replay=not ok)
            self._held = None

    def _every(
        self, seconds: float, job: Callable[[], Awaitable[object]], name: str, now: bool = False
    ) -> None:
        """Run `job` every `seconds` (first at once with `now`) until shutdown; one failure
        never stops the loop."""

        async def loop() -> None:
            first = now
            while True:
                await asyncio.sleep(0 if first else seconds)
                first = False
                try:
                    await job()
                except Exception:
                    log.exception("%s failed", name)

        self._tasks.append(asyncio_utils.create_task(loop(), name=f"apipod {name}", keep_ref=True))

    def _trim_addons(self) -> None:
        unloaded = mitm_compat.trim_addons()
        log.info(
            "unloaded %d mitmproxy addons a gateway does not use (TRIM_ADDONS=false keeps them)",
            unloaded,
        )

    # --- graceful shutdown ---------------------------------------------------------------

    def _on_stop_signal(self) -> None:
        if self.gateway.draining:  # a second signal: stop now
            log.warning("second stop signal: exiting without waiting")
            ctx.master.shutdown()
            return
        self.gateway.draining = True
        asyncio_utils.create_task(self._drain(), name="apipod drain", keep_ref=True)

    async def _drain(self) -> None:
        """Stop listening, let in-flight requests finish, flush usage, then exit."""
        in_flight = self.gateway.in_flight
        assert self.gateway.runtime is not None
        timeout = self.gateway.runtime.settings.drain_timeout
        log.info("stop signal: draining %d in-flight requests (up to %gs)", len(in_flight), timeout)
        ctx.options.update(server=False)  # closes the listening socket only
        deadline = time.monotonic() + timeout
        while in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if in_flight:
            log.warning("drain timeout: %d requests still in flight are cut", len(in_flight))
        await self.flush()
        log.info("drained; exiting")
        ctx.master.shutdown()

    # --- usage batches -------------------------------------------------------------------

    async def flush(self) -> None:
        """Write usage, spend and the request log in one transaction, and re-read every
        process's spend; on failure keep it all for the next."""
        usage, runtime, ledger = self.gateway.usage, self.gateway.runtime, self.gateway.ledger
        if runtime is None:
            return
        batch = usage.take()
        requests = runtime.request_log.take()
        ledger.take()
        try:
            spend = await runtime.db(runtime.store.record_usage, *batch, requests)
        except DB_ERRORS as exc:
            log.error("usage flush failed, will retry: %s", error_text(exc))
            usage.give_back(*batch)
            runtime.request_log.give_back(requests)
            ledger.give_back()
            return
        ledger.settle(spend)

    async def _prune_request_log(self) -> None:
        runtime = self.gateway.runtime
        assert runtime is not None
        log_ = runtime.request_log
        if deleted := await runtime.db(runtime.store.prune_requests, log_.cutoff()):
            log.info("request log: pruned %d rows older than %d days", deleted, log_.days)

    def done(self) -> None:
        if self._held is not None:
            self._held.release(replay=False)
            self._held = None
        for task in self._tasks:
            task.cancel()
        mitm_compat.restore_error_pages()
        runtime, usage = self.gateway.runtime, self.gateway.usage
        if runtime is None:
            return
        if usage or runtime.request_log:  # whatever the last periodic flush did not see
            batch = usage.take()
            try:
                runtime.store.record_usage(*batch, runtime.request_log.take())
            except Exception:
                log.exception("final usage flush failed; %d buckets lost", len(batch[0]))
        runtime.pool.shutdown(wait=True)
        runtime.health_pool.shutdown(wait=True)
        if self._key_watcher is not None:
            self._key_watcher.stop()
        runtime.store.close()


# --- mitmproxy's modes and addresses ------------------------------------------------------


def reverse_targets(modes: list[str]) -> list[str]:
    """The upstream URLs of mitmdump's `reverse:` modes."""
    targets = []
    for spec in modes:
        mode = ProxyMode.parse(spec)
        if isinstance(mode, ReverseMode):
            host, port = mode.address
            targets.append(f"{mode.scheme}://{_host(host)}:{port}")
    return targets


def listen_addresses(options: Any) -> list[tuple[str, int]]:
    """Where mitmproxy will listen for each mode: (host, port); host "" is every interface."""
    addresses = []
    for spec in options.mode:
        mode = ProxyMode.parse(spec)
        port = mode.listen_port(options.listen_port)
        if port is not None:
            addresses.append((mode.listen_host(options.listen_host), port))
    return addresses


def listen_problem(
    host: str, port: int, name: str, upstreams: list[str], probe: bool = True
) -> str | None:
    """Why the proxy cannot listen on (host, port), in one line naming `name`, or None."""
    for url in upstreams:
        upstream = urlsplit(url)
        if upstream.port == port and upstream.hostname in {*_LOOPBACK, host}:
            return (
                f"{name} {port} is also the upstream's port ({url}): the proxy would forward "
                f"to itself; set {name} to another port"
            )
    if probe and port_in_use(host, port):
        return (
            f"{name} {port} is already in use on {host or 'all interfaces'} (another proxy "
            f"running?); stop it or set {name} to a free port"
        )
    return None


def port_in_use(host: str, port: int) -> bool:
    """Whether binding (host, port) fails with EADDRINUSE, as mitmproxy's bind would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def runs_in_front_of(modes: list[str], url: str) -> bool:
    """True when one of mitmdump's modes is `reverse:` to the configured upstream."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for spec in modes:
        mode = ProxyMode.parse(spec)
        if isinstance(mode, ReverseMode) and (mode.scheme, mode.address) == (
            parts.scheme,
            (parts.hostname, port),
        ):
            return True
    return False


def _host(host: str) -> str:
    if not host:
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host
