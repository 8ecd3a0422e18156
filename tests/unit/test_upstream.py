"""Unit tests for apipod_proxy.upstream.probe: UPSTREAM_API=auto's probe, the model check and
what /health shows. The upstream is an httpx MockTransport: no sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apipod_proxy.policy.routing import DEFAULT_TABLE, Alias, RouteTable
from apipod_proxy.upstream import probe as upstream_module
from apipod_proxy.upstream.probe import UNKNOWN_FALLBACK, Upstream
from apipod_proxy.upstream.quota import Cooldowns
from tests.support.gateway import captured_log

KEY = "upstream-key-for-probe-tests"
NOT_FOUND = {
    "type": "error",
    "error": {"type": "not_found_error", "message": "Endpoint POST {} not found"},
}


def anthropic_only(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/messages":
        return httpx.Response(400, json={"type": "error", "error": {"message": "bad body"}})
    body = json.loads(json.dumps(NOT_FOUND).replace("{}", request.url.path))
    return httpx.Response(404, json=body)


def openai_only(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/chat/completions":
        return httpx.Response(400, json={"error": {"message": "We could not parse the JSON body"}})
    return httpx.Response(404, json={"error": {"message": "Invalid URL", "code": "unknown_url"}})


def both(request: httpx.Request) -> httpx.Response:
    return httpx.Response(422, json={"detail": "missing"})


def refusing(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": {"message": "bad key"}})


def make(handler: Callable[[httpx.Request], httpx.Response], setting: str = "auto") -> Upstream:
    found = Upstream("http://upstream.test", KEY, setting, Cooldowns())
    found._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return found


@pytest.mark.parametrize(
    ("handler", "api"),
    [(anthropic_only, "anthropic"), (openai_only, "openai"), (both, "both")],
)
def test_the_probe_tells_the_apis_apart(
    handler: Callable[[httpx.Request], httpx.Response], api: str
) -> None:
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    with captured_log() as log:
        assert asyncio.run(make(recording).current_api()) == api
    assert sorted(r.url.path for r in seen) == ["/v1/chat/completions", "/v1/messages"]
    # Empty bodies spend no tokens; the key goes both ways, as to every upstream request.
    assert all(r.content == b"" for r in seen)
    assert all(r.headers["x-api-key"] == KEY for r in seen)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in seen)
    assert any(f"speaks {api}" in line for line in log.lines())


def test_a_refused_or_failed_probe_learns_nothing_and_forwards_as_is() -> None:
    async def go() -> tuple[str, str | None]:
        found = make(refusing)
        return await found.current_api(), found.api

    with captured_log() as log:
        assert asyncio.run(go()) == (UNKNOWN_FALLBACK, None)
    assert any("cannot tell which API" in line for line in log.warnings())


def test_a_hanging_upstream_does_not_hold_a_request_past_the_probe_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_module, "PROBE_TIMEOUT", 0.2)

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    async def go() -> tuple[str, float]:
        found = Upstream("http://upstream.test", KEY, "auto", Cooldowns())
        found._client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
        loop = asyncio.get_running_loop()
        started = loop.time()
        api = await found.current_api()
        return api, loop.time() - started

    api, seconds = asyncio.run(go())
    assert api == UNKNOWN_FALLBACK and seconds < 2


def test_a_set_value_is_never_probed() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise AssertionError("probed")

    found = make(fail, "anthropic")
    assert asyncio.run(found.current_api()) == "anthropic"
    found.recheck()  # no loop needed: a set value never starts a probe


def test_a_recheck_picks_up_a_replaced_upstream() -> None:
    answers = {"handler": both}

    async def go() -> list[str | None]:
        found = make(lambda request: answers["handler"](request))
        seen = [await found.current_api()]
        answers["handler"] = anthropic_only
        found.recheck()  # within RECHECK_SECONDS of the first probe: none yet
        assert found._probe is None
        found._probed_at -= 10  # later
        found.recheck()
        assert found._probe is not None
        await found._probe
        seen.append(found.api)
        found.recheck()  # within RECHECK_SECONDS of the last: no new probe
        seen.append("probing" if found._probe is not None else None)
        return seen

    assert asyncio.run(go()) == ["both", "anthropic", None]


class FakeModels:
    def __init__(self, served: set[str] | None) -> None:
        self.served = served

    async def served_ids(self) -> set[str] | None:
        return self.served


def test_the_model_check_warns_once_per_unlisted_target() -> None:
    found = make(both, "both")
    with captured_log() as log:
        served = FakeModels({"gemini-3-flash", "claude-opus-4-5-thinking"})
        asyncio.run(found.check_models(DEFAULT_TABLE, served))  # type: ignore[arg-type]
    assert found.unlisted == ["claude-sonnet-4-5"]
    warnings = [w for w in log.warnings() if "not listed" in w]
    assert len(warnings) == 1 and "claude-sonnet-4-5" in warnings[0]
    # An upstream that does not answer leaves the last finding.
    asyncio.run(found.check_models(DEFAULT_TABLE, FakeModels(None)))  # type: ignore[arg-type]
    assert found.unlisted == ["claude-sonnet-4-5"]


def test_the_model_check_counts_the_targets_of_patterns_and_the_default_route() -> None:
    found = make(both, "both")
    table = RouteTable(
        aliases={"mix": Alias.from_weights({"a": 1, "b": 1})},
        patterns={"claude-opus-*": "opus-x", "claude-haiku-*": "mix"},
        default_route="fallback-y",
    )
    asyncio.run(found.check_models(table, FakeModels({"a", "b"})))  # type: ignore[arg-type]
    # An alias a pattern names counts by its own targets, not as a model.
    assert found.unlisted == ["opus-x", "fallback-y"]


def test_health_before_and_after_the_startup_checks() -> None:
    found = make(anthropic_only)
    before: dict[str, Any] = found.health()
    assert before["upstream_api"] == "unknown" and before["upstream_checks"] == "pending"
    assert before["unlisted_models"] is None
    served = FakeModels({"claude-sonnet-4-5", "gemini-3-flash", "claude-opus-4-5-thinking"})
    asyncio.run(found.startup(DEFAULT_TABLE, served))  # type: ignore[arg-type]
    after = found.health()
    assert (after["upstream_api"], after["upstream_checks"]) == ("anthropic", "done")
    assert after["unlisted_models"] == [] and after["cooldowns"] == []
