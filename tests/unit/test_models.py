"""Unit tests for apipod_proxy.upstream.models: `GET /v1/models` merged with the proxy's names.

The upstream is a stdlib HTTP server on 127.0.0.1 in a thread: no network beyond
loopback, and every request it receives is recorded. `ModelList` is async; each test
drives it with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from apipod_proxy.upstream import models
from apipod_proxy.upstream.models import (
    CACHE_SECONDS,
    FAILURE_SECONDS,
    MODELS_PATH,
    ModelList,
)
from tests.support.gateway import LogRecords
from tests.support.standin import SilentUpstream

UPSTREAM_KEY = "upstream-key-for-model-tests"


@dataclass
class FakeUpstream:
    """What the fake answers (status, raw body) and what it was sent."""

    status: int = 200
    body: bytes = b'{"object": "list", "data": []}'
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def answer(self, payload: Any, status: int = 200) -> None:
        self.status = status
        self.body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(fake.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)


def fetch_listing(models_list: ModelList, own_names: list[str]) -> dict[str, Any]:
    return asyncio.run(models_list.listing(own_names))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """models' view of time.monotonic, moved by hand."""
    fake = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(models, "time", SimpleNamespace(monotonic=lambda: fake.now))
    return fake


def model(model_id: str, owner: str = "antigravity") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": owner}


def ids(listing: dict[str, Any]) -> list[str]:
    return [m["id"] for m in listing["data"]]


def refused_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- merging -------------------------------------------------------------------------


def test_listing_puts_upstream_models_first_then_own_names(upstream: FakeUpstream) -> None:
    upstream.answer({"object": "list", "data": [model("gemini-3-flash"), model("claude-x")]})
    listing = fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), ["cursor-pro-sonnet", "gpt-4o"])
    assert listing["object"] == "list"
    assert ids(listing) == ["gemini-3-flash", "claude-x", "cursor-pro-sonnet", "gpt-4o"]


def test_listing_keeps_upstream_entries_as_they_are(upstream: FakeUpstream) -> None:
    entry = {**model("gemini-3-flash", "google"), "extra": {"context": 1_000_000}}
    upstream.answer({"data": [entry]})
    assert fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), [])["data"] == [entry]


def test_listing_describes_own_names_in_openai_shape(upstream: FakeUpstream) -> None:
    listing = fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), ["fast"])
    assert listing["data"] == [
        {"id": "fast", "object": "model", "created": 0, "owned_by": "apipod"}
    ]


def test_listing_does_not_repeat_names_the_upstream_has(upstream: FakeUpstream) -> None:
    upstream.answer({"data": [model("gemini-3-flash", "google"), model("shared")]})
    listing = fetch_listing(
        ModelList(upstream.url, UPSTREAM_KEY), ["shared", "gemini-3-flash", "mine"]
    )
    assert ids(listing) == ["gemini-3-flash", "shared", "mine"]
    assert listing["data"][0]["owned_by"] == "google"


def test_listing_drops_upstream_entries_without_a_string_id(upstream: FakeUpstream) -> None:
    upstream.answer({"data": [model("good"), {"id": 5}, {"object": "model"}, "text", None]})
    assert ids(fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), ["mine"])) == ["good", "mine"]


def test_listing_does_not_leak_own_names_into_the_cache(upstream: FakeUpstream) -> None:
    upstream.answer({"data": [model("up")]})
    models_list = ModelList(upstream.url, UPSTREAM_KEY)
    fetch_listing(models_list, ["first"])
    assert ids(fetch_listing(models_list, ["second"])) == ["up", "second"]


# --- the upstream request --------------------------------------------------------------


def test_upstream_is_asked_with_the_upstream_key(upstream: FakeUpstream) -> None:
    fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), [])
    assert len(upstream.requests) == 1
    path, headers = upstream.requests[0]
    assert path == MODELS_PATH
    assert headers["x-api-key"] == UPSTREAM_KEY
    # OpenAI-only gateways read only Bearer.
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


# --- caching ---------------------------------------------------------------------------


def test_listing_is_cached_for_cache_seconds(
    upstream: FakeUpstream, clock: SimpleNamespace
) -> None:
    upstream.answer({"data": [model("first")]})
    models_list = ModelList(upstream.url, UPSTREAM_KEY)
    assert ids(fetch_listing(models_list, [])) == ["first"]
    upstream.answer({"data": [model("second")]})
    clock.now += CACHE_SECONDS - 0.5
    assert ids(fetch_listing(models_list, [])) == ["first"]
    assert len(upstream.requests) == 1
    clock.now += 0.5
    assert ids(fetch_listing(models_list, [])) == ["second"]
    assert len(upstream.requests) == 2


def test_each_model_list_has_its_own_cache(upstream: FakeUpstream, clock: SimpleNamespace) -> None:
    fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), [])
    fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), [])
    assert len(upstream.requests) == 2


def test_a_failure_is_remembered_for_failure_seconds(
    upstream: FakeUpstream, clock: SimpleNamespace
) -> None:
    upstream.answer({"error": "down"}, status=500)
    models_list = ModelList(upstream.url, UPSTREAM_KEY)
    assert ids(fetch_listing(models_list, ["mine"])) == ["mine"]
    upstream.answer({"data": [model("back")]})
    clock.now += FAILURE_SECONDS - 0.5
    assert ids(fetch_listing(models_list, ["mine"])) == ["mine"]
    assert len(upstream.requests) == 1
    clock.now += 0.5
    assert ids(fetch_listing(models_list, ["mine"])) == ["back", "mine"]
    assert len(upstream.requests) == 2


def test_a_failure_answers_the_last_good_list(
    upstream: FakeUpstream, clock: SimpleNamespace, apipod_log: LogRecords
) -> None:
    upstream.answer({"data": [model("known")]})
    models_list = ModelList(upstream.url, UPSTREAM_KEY)
    assert ids(fetch_listing(models_list, ["mine"])) == ["known", "mine"]
    upstream.answer(b"down", status=503)
    clock.now += CACHE_SECONDS
    assert ids(fetch_listing(models_list, ["mine"])) == ["known", "mine"]
    assert len(upstream.requests) == 2
    [warning] = apipod_log.warnings()
    assert "last good list" in warning


# --- upstream failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"data": [{"id": "should-not-appear"}]}'),
        (404, b"not found"),
        (200, b"<html>not json</html>"),
        (200, b'{"data": [{"id": "cut'),
        (200, b'{"object": "list"}'),
        (200, b'{"data": {"id": "not-a-list"}}'),
        (200, b'{"data": null}'),
        (200, b'[{"id": "a-list-not-an-object"}]'),
        (200, b'"just a string"'),
        (200, b"\xff\xfe\xfa"),
    ],
    ids=[
        "http-500",
        "http-404",
        "html",
        "truncated-json",
        "no-data",
        "data-object",
        "data-null",
        "json-array",
        "json-string",
        "binary",
    ],
)
def test_upstream_failure_lists_own_names_and_warns(
    upstream: FakeUpstream, apipod_log: LogRecords, status: int, body: bytes
) -> None:
    upstream.answer(body, status)
    listing = fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), ["cursor-pro-sonnet", "gpt-4o"])
    assert listing["object"] == "list"
    assert ids(listing) == ["cursor-pro-sonnet", "gpt-4o"]
    warnings = apipod_log.warnings()
    assert len(warnings) == 1
    assert upstream.url + MODELS_PATH in warnings[0]
    assert UPSTREAM_KEY not in warnings[0]


def test_refused_connection_lists_own_names_and_warns(apipod_log: LogRecords) -> None:
    url = refused_url()
    listing = fetch_listing(ModelList(url, UPSTREAM_KEY), ["cursor-pro-sonnet"])
    assert ids(listing) == ["cursor-pro-sonnet"]
    warnings = apipod_log.warnings()
    assert len(warnings) == 1
    assert url in warnings[0]


def test_silent_upstream_times_out_to_own_names(
    monkeypatch: pytest.MonkeyPatch,
    apipod_log: LogRecords,
    silent_upstream: SilentUpstream,
) -> None:
    monkeypatch.setattr(models, "FETCH_TIMEOUT", 0.2)
    url = silent_upstream.url
    started = time.monotonic()
    assert ids(fetch_listing(ModelList(url, UPSTREAM_KEY), ["mine"])) == ["mine"]
    assert time.monotonic() - started < 2
    [warning] = apipod_log.warnings()
    assert "0.2s" in warning


def test_concurrent_callers_share_one_bounded_fetch(
    monkeypatch: pytest.MonkeyPatch,
    apipod_log: LogRecords,
    silent_upstream: SilentUpstream,
) -> None:
    """Eight clients asking at once open one upstream connection and all get the aliases."""
    monkeypatch.setattr(models, "FETCH_TIMEOUT", 0.5)
    url, accepted = silent_upstream.url, silent_upstream.accepted
    models_list = ModelList(url, UPSTREAM_KEY)

    async def eight() -> list[dict[str, Any]]:
        return await asyncio.gather(*(models_list.listing(["alias"]) for _ in range(8)))

    started = time.monotonic()
    answers = asyncio.run(eight())
    assert time.monotonic() - started < 3
    assert [ids(a) for a in answers] == [["alias"]] * 8
    assert len(accepted) == 1
    assert len(apipod_log.warnings()) == 1
    # The failure is remembered: the next caller is answered without a new attempt.
    started = time.monotonic()
    assert ids(fetch_listing(models_list, ["alias"])) == ["alias"]
    assert time.monotonic() - started < 0.2
    assert len(accepted) == 1


def test_a_caller_that_goes_away_does_not_cancel_the_shared_fetch(
    upstream: FakeUpstream,
) -> None:
    upstream.answer({"data": [model("up")]})
    models_list = ModelList(upstream.url, UPSTREAM_KEY)

    async def scenario() -> dict[str, Any]:
        leaver = asyncio.create_task(models_list.listing([]))
        stayer = asyncio.create_task(models_list.listing(["mine"]))
        await asyncio.sleep(0)
        leaver.cancel()
        return await stayer

    assert ids(asyncio.run(scenario())) == ["up", "mine"]
    assert len(upstream.requests) == 1


def test_proxy_variables_are_not_used(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list comes from where traffic goes, whatever *_proxy variables say."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, refused_url())
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    upstream.answer({"data": [model("direct")]})
    assert ids(fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), [])) == ["direct"]


def test_an_oversized_answer_is_refused(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, apipod_log: LogRecords
) -> None:
    monkeypatch.setattr(models, "MAX_LIST_BYTES", 100)
    upstream.answer({"data": [model(f"m{i}") for i in range(10)]})
    assert ids(fetch_listing(ModelList(upstream.url, UPSTREAM_KEY), ["mine"])) == ["mine"]
    assert "100 bytes" in apipod_log.warnings()[0]


def test_failure_with_no_own_names_is_an_empty_list(apipod_log: LogRecords) -> None:
    empty = {"object": "list", "data": []}
    assert fetch_listing(ModelList(refused_url(), UPSTREAM_KEY), []) == empty


def test_an_unexpected_error_still_answers_the_aliases(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, apipod_log: LogRecords
) -> None:
    """An exception in the addon's request hook would let mitmproxy forward the flow."""
    models_list = ModelList(upstream.url, UPSTREAM_KEY)

    async def broken() -> list[dict[str, Any]]:
        raise KeyError("a bug")

    monkeypatch.setattr(models_list, "_get", broken)
    assert ids(fetch_listing(models_list, ["mine"])) == ["mine"]
    assert "a bug" in apipod_log.warnings()[0]
