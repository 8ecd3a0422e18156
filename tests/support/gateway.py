"""The in-process test harness: a loaded Apipod in mitmproxy's `taddons`, and its log.

No sockets: flows come from `mitmproxy.test.tflow`, the addon (with its `Lifecycle`
sub-addon) is loaded inside `taddons.context`, and async hooks run on a short-lived
event loop. The unit tests and the hook fuzzer share this one harness.

The keys command line (apipod_proxy.cli) is run in-process the same way: `run_cli`,
`run_cli_exit` and `cli_create` call its `main` and return what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http, options
from mitmproxy.addons import block, proxyserver
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons, tflow, tutils

from apipod_proxy import cli, keys
from apipod_proxy.addon import Apipod
from apipod_proxy.config import Settings
from apipod_proxy.policy.routing import Router
from apipod_proxy.storage.records import KeyRecord
from tests.support.harness import free_port

UPSTREAM_URL = "http://127.0.0.1:9"
UPSTREAM_KEY = "upstream-key-for-tests-0000"
ADMIN_SECRET = "admin-secret-for-tests-0123456789"


class LogRecords(logging.Handler):
    """Every record a logger emits, whatever its other handlers and propagate flag."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def warnings(self) -> list[str]:
        return self.at(logging.WARNING)


@contextlib.contextmanager
def captured_log(name: str = "apipod") -> Iterator[LogRecords]:
    logger = logging.getLogger(name)
    handler, level = LogRecords(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def isolated_globals() -> Iterator[None]:
    """Undo what loading the addon changes outside it: mitmproxy's error renderer and
    the 'apipod' logger (its stdout handler, level and propagate flag)."""
    renderer = _http1.make_error_response
    logger = logging.getLogger("apipod")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield
    finally:
        _http1.make_error_response = renderer
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


class ConstantDraw(random.Random):
    """A random source that always draws `value` (20/80 alias: < 0.2 is Claude)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_settings(folder: Path, **overrides: Any) -> Settings:
    base = Settings(
        antigravity_url=UPSTREAM_URL,
        antigravity_key=UPSTREAM_KEY,
        admin_secret=ADMIN_SECRET,
        # Loading checks that PORT is free: a proxy of the user's own (`make run` on
        # 8081 beside `make test`) must not fail the tests.
        port=free_port(),
        database_path=folder / "data" / "proxy.db",
        upstream_timeout=60.0,
        max_body_size=1024 * 1024,
        # No endpoint probe: each request is forwarded in its own API unless a test
        # says which API the upstream speaks.
        upstream_api="both",
    )
    return replace(base, **overrides)


def make_flow(
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: bytes = b"",
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]] | None = None,
    raw: bool = False,
) -> http.HTTPFlow:
    """A client request. `raw`: the body exactly as received (no content-length added)."""
    fields = [(_bytes(k), _bytes(v)) for k, v in headers or []]
    request = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers(fields),
        content=b"" if raw else body,
    )
    if raw:
        request.raw_content = body
    return tflow.tflow(req=request)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def chat_body(model: str = "gpt-4o", **extra: Any) -> bytes:
    """A Chat Completions body with one user message, "hi"."""
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def error_of(response: http.Response | None) -> dict[str, Any]:
    """The `error` object of one of the proxy's own JSON errors, in OpenAI's shape."""
    assert response is not None
    assert response.headers["content-type"] == "application/json"
    payload = json.loads(response.content)
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]


@dataclass
class Gateway:
    """A loaded addon, its mitmproxy context and what it logged."""

    addon: Apipod
    tctx: taddons.context
    draw: ConstantDraw
    log: LogRecords
    settings: Settings
    records: dict[str, KeyRecord] = field(default_factory=dict)

    def new_key(
        self, name: str = "alice", expires_in: int | None = None, tier: str = "elite"
    ) -> tuple[str, KeyRecord]:
        return self.addon.gateway.store.create(name, tier, expires_in)

    def install_key(self, plaintext: str, name: str, expires_in: int | None = None) -> KeyRecord:
        """Create a key, then give it a plaintext the caller knows."""
        _, record = self.new_key(name, expires_in)
        self.sql(
            "UPDATE users SET key_hash = ?, key_prefix = ? WHERE id = ?",
            keys.hash_key(plaintext),
            keys.display_prefix(plaintext),
            record.id,
        )
        self.records[plaintext] = record
        return record

    def sql(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.settings.database_path)) as conn, conn:
            return conn.execute(statement, params).fetchall()

    def send(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """requestheaders then, unless refused, request: what mitmproxy does."""

        async def go() -> None:
            await self.addon.requestheaders(flow)
            if flow.response is None:
                await self.addon.request(flow)

        run(go())
        return flow

    def authed(
        self,
        key: str,
        method: str = "POST",
        path: str = "/v1/chat/completions",
        body: bytes = b'{"model":"gpt-4o","messages":[]}',
        headers: list[tuple[str, str]] | None = None,
    ) -> http.HTTPFlow:
        all_headers = [("authorization", f"Bearer {key}"), *(headers or [])]
        return self.send(make_flow(method, path, body, all_headers))

    def flush(self) -> None:
        """What the periodic usage flush does every second."""
        run(self.addon.lifecycle.flush())

    def lines(self) -> list[str]:
        return self.log.lines()

    def exceptions(self) -> list[str]:
        return [r.getMessage() for r in self.log.records if r.exc_info]


def mitm_context(mode: str = f"reverse:{UPSTREAM_URL}") -> taddons.context:
    """mitmproxy's test context, with Block and Proxyserver (they declare options the
    addon sets). `server=False`: nothing listens, and the addon does not probe its port,
    so no test depends on PORT being free on the machine."""
    return taddons.context(
        block.Block(),
        proxyserver.Proxyserver(),
        options=options.Options(mode=[mode], server=False),
    )


@contextlib.contextmanager
def open_gateway(
    folder: Path,
    router: Router | None = None,
    mode: str = f"reverse:{UPSTREAM_URL}",
    mitm_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[Gateway]:
    """Load an Apipod with `make_settings(folder, **overrides)`; unload it afterwards.

    `mitm_options` are set before loading, as `--set` would. `server=False`: nothing
    listens, and the addon does not probe its port."""
    settings = make_settings(folder, **overrides)
    draw = ConstantDraw(0.9)
    addon = Apipod(settings=settings, router=router or Router(rng=draw))
    with isolated_globals(), captured_log() as log:
        tctx = mitm_context(mode)
        try:
            tctx.options.update(**(mitm_options or {}))
            tctx.master.addons.add(addon)
            logger = logging.getLogger("apipod")
            # Keep test output quiet: the records are in `log`, not on stdout.
            logger.handlers[:] = [h for h in logger.handlers if not getattr(h, "_apipod", False)]
            yield Gateway(addon, tctx, draw, log, settings)
        finally:
            addon.lifecycle.done()
            tctx.__exit__(None, None, None)


# --- the keys command line, in-process ---------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `keys.py ARGV`: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_exit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str]:
    """Run `keys.py ARGV` where argparse exits: the exit code and stderr."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    return info.value.code, capsys.readouterr().err


def cli_create(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """`keys.py create --json EXTRA`: the created key's object."""
    code, out, _ = run_cli(capsys, "create", "--json", *extra)
    assert code == 0
    return dict(json.loads(out))
