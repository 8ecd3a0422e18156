"""Unit tests for pipeline/rewrite.py: the Rewrite stage built alone from its parts.

A request as admission leaves it (`stages.admitted`: its FlowState, the key's record),
a Router drawing a fixed number, Plans, Cooldowns and an upstream that speaks the API it
is told. What is checked is what would be forwarded (headers, path, the very bytes) or
the refusal, in the client's API. Which requests reach this stage at all (targets,
keys) is test_admission.py's.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from apipod_proxy import keys
from apipod_proxy.config import Settings
from apipod_proxy.flowstate import FlowState, state_of
from apipod_proxy.pipeline.rewrite import Rewrite
from apipod_proxy.policy.pricing import Price, PriceTable, Tier
from apipod_proxy.policy.routing import Router, parse_routes
from apipod_proxy.storage.records import KeyRecord
from apipod_proxy.translate import Direction
from tests.support import stages
from tests.support.gateway import (
    UPSTREAM_KEY,
    ConstantDraw,
    chat_body,
    error_of,
    make_flow,
    make_settings,
    run,
)

CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-3-flash"
ALICE = KeyRecord(1, "alice", "elite", True, "2024-01-01T00:00:00Z", None, "apk_abcd")
#: 100 per million input, 400 output, 10 cached; a tier allowed Gemini alone.
PRICES = PriceTable(
    prices={GEMINI: Price(100.0, 400.0, 10.0)},
    tiers={"trial": Tier(rpm=1, budget=0.01, budget_period="day", models=(GEMINI,))},
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def stage(settings: Settings) -> Rewrite:
    return stages.rewrite(settings)


def prepare(stage: Rewrite, flow: http.HTTPFlow, user: KeyRecord | None = ALICE) -> http.HTTPFlow:
    """What the `request` hook has the stage do with an admitted request."""
    state = stages.admitted(flow, user)
    flow.response = run(stage.prepare(flow, state))
    return flow


def authed(
    stage: Rewrite,
    key: str | None = None,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: bytes = b'{"model":"gpt-4o","messages":[]}',
    headers: list[tuple[str, str]] | None = None,
    user: KeyRecord | None = ALICE,
) -> http.HTTPFlow:
    """An admitted request whose client sent `key` as its Bearer token."""
    key = key or keys.generate_key()
    all_headers = [("authorization", f"Bearer {key}"), *(headers or [])]
    return prepare(stage, make_flow(method, path, body, all_headers), user)


def state(flow: http.HTTPFlow) -> FlowState:
    found = state_of(flow)
    assert found is not None
    return found


def sent(flow: http.HTTPFlow) -> Any:
    """The body that would be forwarded, parsed."""
    return json.loads(flow.request.raw_content or b"")


# --- credential swap ---------------------------------------------------------------------


def test_credentials_are_swapped_for_the_upstream_key(stage: Rewrite) -> None:
    flow = authed(
        stage,
        body=chat_body(),
        headers=[
            ("x-api-key", "client-x-api-key"),
            ("x-goog-api-key", "client-goog-key"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("content-type", "application/json"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("x-request-id", "req-123"),
        ],
    )
    assert flow.response is None
    sent = flow.request.headers
    # Our key, as both Anthropic-style and OpenAI-only upstreams read it; never the client's.
    assert sent.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    assert "proxy-authorization" not in sent
    assert "x-goog-api-key" not in sent
    assert sent.get_all("x-api-key") == [UPSTREAM_KEY]
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"] == "OpenAI/Python 1.0"
    assert sent["x-request-id"] == "req-123"


def test_a_key_in_x_api_key_is_replaced_by_the_upstream_key(stage: Rewrite) -> None:
    """The Anthropic SDK and Claude Code send the key as x-api-key."""
    key = keys.generate_key()
    flow = prepare(stage, make_flow(body=chat_body(), headers=[("x-api-key", key)]))
    assert flow.response is None
    assert flow.request.headers.get_all("x-api-key") == [UPSTREAM_KEY]


def test_client_key_is_nowhere_in_the_forwarded_request(stage: Rewrite) -> None:
    key = keys.generate_key()
    flow = authed(stage, key, body=chat_body(), headers=[("x-api-key", key)])
    assert key not in str(flow.request.headers.fields)
    assert key.encode() not in flow.request.raw_content


def test_get_requests_are_swapped_too(stage: Rewrite) -> None:
    flow = authed(stage, method="GET", path="/v1/batches", body=b"")
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


def test_every_spelling_of_a_client_credential_is_removed(stage: Rewrite) -> None:
    flow = authed(
        stage,
        body=chat_body(),
        headers=[
            ("X-Api-Key", "c1"),
            ("x-api-key", "c2"),
            ("X-Goog-Api-Key", "d"),
            ("Proxy-Authorization", "e"),
            ("Proxy-Foo", "f"),
            ("Api-Key", "g"),
            ("Cookie", "session=h"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "admin.internal"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Accept", "*/*"),
        ],
    )
    assert flow.response is None
    sent = flow.request.headers
    assert sent.get_all("x-api-key") == [UPSTREAM_KEY]
    assert sent.get_all("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    for name in ("x-goog-api-key", "proxy-authorization", "proxy-foo", "api-key", "cookie"):
        assert name not in sent
    for name in ("x-forwarded-host", "forwarded", "x-real-ip"):
        assert name not in sent
    # Ours, from the client admission read (mitmproxy's test client: 127.0.0.1 over TLS).
    assert sent.get_all("x-forwarded-for") == [state(flow).client] == ["127.0.0.1"]
    assert sent.get_all("x-forwarded-proto") == [state(flow).client_proto] == ["https"]
    assert sent["accept"] == "*/*"


# --- routing -----------------------------------------------------------------------------


@pytest.mark.parametrize(("draw", "target"), [(0.1, CLAUDE), (0.9, GEMINI)])
def test_cursor_pro_sonnet_is_rewritten(settings: Settings, draw: float, target: str) -> None:
    stage = stages.rewrite(settings, router=Router(rng=ConstantDraw(draw)))
    flow = authed(stage, body=chat_body("cursor-pro-sonnet", stream=True, temperature=0.2))
    assert flow.response is None
    body = json.loads(flow.request.content or b"")
    assert body["model"] == target
    assert body["stream"] is True
    assert body["temperature"] == 0.2
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (state(flow).requested_model, state(flow).routed_model) == ("cursor-pro-sonnet", target)


def test_rewritten_body_keeps_non_ascii_text(stage: Rewrite) -> None:
    body = json.dumps(
        {"model": "cursor-pro-sonnet", "messages": [{"role": "user", "content": "привет 👋"}]},
        ensure_ascii=False,
    ).encode()
    flow = authed(stage, body=body)
    assert json.loads(flow.request.content or b"")["messages"][0]["content"] == "привет 👋"


def test_rewritten_body_has_a_matching_content_length(stage: Rewrite) -> None:
    body = chat_body("cursor-pro-sonnet")
    flow = authed(stage, body=body, headers=[("content-length", str(len(body)))])
    assert int(flow.request.headers["content-length"]) == len(flow.request.raw_content or b"")


@pytest.mark.parametrize(
    "body",
    [
        b'{ "model" : "gpt-4o",\n  "messages": [],  "x": 1.0e2 }',
        b'{"model":"claude-sonnet-4-5","messages":[{"content":"\\u00e9"}]}',
        b'{"model":"Cursor-Pro-Sonnet","messages":[]}',
        b'\xef\xbb\xbf{"model":"gemini-3-flash","messages":[]}',
    ],
)
def test_other_models_are_forwarded_as_the_object_checked(stage: Rewrite, body: bytes) -> None:
    flow = authed(stage, body=body)
    assert flow.response is None
    # Written from the parsed object, never the raw bytes (which another reader may read
    # differently): the same document, compact.
    assert sent(flow) == json.loads(body.decode("utf-8-sig"))
    assert state(flow).requested_model == state(flow).routed_model


def test_a_plain_body_that_changes_nothing_goes_out_as_its_very_bytes(stage: Rewrite) -> None:
    body = chat_body(GEMINI)
    flow = authed(stage, body=body)
    assert flow.response is None and flow.request.raw_content == body


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1, 2, 3]",
        b'"cursor-pro-sonnet"',
        b'{"messages": []}',
        b'{"model": 5}',
        b'{"model": null}',
        b'{"model": ["cursor-pro-sonnet"]}',
    ],
)
def test_bodies_without_a_string_model_are_refused(stage: Rewrite, body: bytes) -> None:
    flow = authed(stage, body=body)
    assert flow.response is not None
    assert flow.response.status_code == 400
    assert error_of(flow.response)["code"] in ("invalid_json", "invalid_model")
    assert state(flow).requested_model is None


def test_an_operator_row_is_forwarded_as_sent(stage: Rewrite) -> None:
    body = chat_body("cursor-pro-sonnet")
    flow = authed(stage, path="/v2/x", body=body)
    assert flow.response is None
    assert flow.request.raw_content == body
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


def test_an_alias_with_every_target_cooling_is_429_without_the_upstream(stage: Rewrite) -> None:
    stage.cooldowns.mark_for(CLAUDE, 30, 60)
    stage.cooldowns.mark_for(GEMINI, 50, 60)
    flow = authed(stage, body=chat_body("cursor-pro-sonnet"))
    assert flow.response is not None and flow.response.status_code == 429
    assert 29 <= int(flow.response.headers["retry-after"]) <= 30
    assert json.loads(flow.response.content or b"")["error"]["code"] == "upstream_quota_exhausted"
    assert state(flow).forwarded_at is None


def test_an_anthropic_client_gets_the_cooling_answer_in_its_shape(stage: Rewrite) -> None:
    stage.cooldowns.mark_for(CLAUDE, 30, 60)
    stage.cooldowns.mark_for(GEMINI, 50, 60)
    flow = authed(stage, path="/v1/messages", body=chat_body("cursor-pro-sonnet", max_tokens=5))
    assert flow.response is not None and flow.response.status_code == 429
    payload = json.loads(flow.response.content or b"")
    assert payload["type"] == "error"
    assert (payload["error"]["type"], payload["error"]["code"]) == (
        "rate_limit_error",
        "upstream_quota_exhausted",
    )


def test_an_alias_routes_around_a_cooling_target(stage: Rewrite) -> None:
    stage.cooldowns.mark_for(GEMINI, 90, 60)
    # The draw (0.9) picks Gemini; cooling, the alias goes to its other target.
    flow = authed(stage, body=chat_body("cursor-pro-sonnet"))
    assert flow.response is None and sent(flow)["model"] == CLAUDE


def test_naming_a_cooled_model_directly_is_still_forwarded(stage: Rewrite) -> None:
    stage.cooldowns.mark_for(GEMINI, 90, 60)
    flow = authed(stage, body=chat_body(GEMINI))
    assert flow.response is None and sent(flow)["model"] == GEMINI


# --- body checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"model": "x",}', b'{"model": NaN}', b'{"model": "\xff"}', b"[" * 50_000],
)
def test_malformed_json_to_v1_is_400(stage: Rewrite, body: bytes) -> None:
    flow = authed(stage, body=body)
    assert flow.response is not None
    assert flow.response.status_code == 400
    error = error_of(flow.response)
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"


def test_malformed_json_outside_v1_is_forwarded(stage: Rewrite) -> None:
    flow = authed(stage, path="/other", body=b"{not json")
    assert flow.response is None


def test_a_number_out_of_range_in_a_body_written_again_is_400(stage: Rewrite) -> None:
    body = b'{"model": "cursor-pro-sonnet", "messages": [], "temperature": 1e400}'
    flow = authed(stage, body=body)
    assert flow.response is not None and flow.response.status_code == 400
    error = error_of(flow.response)
    assert (error["code"], error["message"]) == (
        "invalid_json",
        "A number in the body is out of range",
    )


def test_a_model_endpoint_takes_only_json(stage: Rewrite) -> None:
    flow = authed(stage, body=chat_body(), headers=[("content-type", "text/plain")])
    assert flow.response is not None and flow.response.status_code == 400
    assert error_of(flow.response)["code"] == "unsupported_content_type"


def test_gzip_body_is_routed_and_forwarded_decoded(settings: Settings) -> None:
    stage = stages.rewrite(settings, router=Router(rng=ConstantDraw(0.1)))
    flow = authed(
        stage,
        body=gzip.compress(chat_body("cursor-pro-sonnet")),
        headers=[("content-encoding", "gzip"), ("content-type", "application/json")],
    )
    assert flow.response is None
    assert "content-encoding" not in flow.request.headers
    assert sent(flow)["model"] == CLAUDE


def test_gzip_body_of_other_model_is_forwarded_decoded(stage: Rewrite) -> None:
    compressed = gzip.compress(chat_body("gpt-4o"))
    flow = authed(stage, body=compressed, headers=[("content-encoding", "gzip")])
    assert flow.response is None
    assert "content-encoding" not in flow.request.headers
    assert sent(flow) == json.loads(chat_body("gpt-4o"))


def test_undecodable_gzip_is_400(stage: Rewrite) -> None:
    flow = authed(stage, body=b"definitely not gzip", headers=[("content-encoding", "gzip")])
    assert flow.response is not None
    assert flow.response.status_code == 400
    assert error_of(flow.response)["code"] == "invalid_encoding"


def test_a_body_larger_decoded_than_max_body_size_is_413(stage: Rewrite) -> None:
    padding = " " * (stage.settings.max_body_size + 1)
    bomb = gzip.compress(b'{"model": "gpt-4o", "messages": []' + padding.encode() + b"}")
    flow = authed(stage, body=bomb, headers=[("content-encoding", "gzip")])
    assert flow.response is not None and flow.response.status_code == 413
    assert error_of(flow.response)["code"] == "request_too_large"


def test_multipart_passes_untouched(stage: Rewrite) -> None:
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        b'cursor-pro-sonnet\r\n--xyz\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.wav"\r\n\r\n\xff\xfe\x00garbage\r\n--xyz--\r\n'
    )
    flow = authed(
        stage,
        path="/v1/audio/transcriptions",
        body=body,
        headers=[("content-type", "Multipart/Form-Data; boundary=xyz")],
    )
    assert flow.response is None
    assert flow.request.raw_content == body
    assert flow.request.headers["x-api-key"] == UPSTREAM_KEY


# --- an OpenAI stream's usage ------------------------------------------------------------


def test_an_openai_stream_is_asked_for_its_usage_chunk(stage: Rewrite) -> None:
    flow = authed(stage, body=chat_body(GEMINI, stream=True))
    assert sent(flow)["stream_options"] == {"include_usage": True}
    assert state(flow).strip_usage_chunk is True  # asked by us: the client never sees it


def test_a_stream_that_asked_for_its_usage_keeps_it(stage: Rewrite) -> None:
    body = chat_body(GEMINI, stream=True, stream_options={"include_usage": True})
    flow = authed(stage, body=body)
    assert flow.request.raw_content == body
    assert state(flow).strip_usage_chunk is False


# --- the key's plan ----------------------------------------------------------------------


def test_model_outside_the_tiers_list_is_403(stage: Rewrite) -> None:
    stage.plans.apply(PRICES)
    flow = authed(stage, body=chat_body(CLAUDE), user=replace(ALICE, tier="trial"))
    assert flow.response is not None and flow.response.status_code == 403
    assert error_of(flow.response)["code"] == "model_not_allowed"
    assert authed(stage, body=chat_body(GEMINI), user=replace(ALICE, tier="trial")).response is None


def test_a_budgeted_key_is_refused_an_unpriced_model_before_forwarding(stage: Rewrite) -> None:
    stage.plans.apply(PRICES)
    budgeted = replace(ALICE, budget=5.0)
    for model in ("GEMINI-3-FLASH", "gemini-3-flash-20250101"):
        flow = authed(stage, body=chat_body(model), user=budgeted)
        assert flow.response is not None and flow.response.status_code == 403
        assert error_of(flow.response)["code"] == "model_not_priced"
    # A name with a space is no model id at all: refused before pricing (bodies.py).
    flow = authed(stage, body=chat_body("gemini-3-flash "), user=budgeted)
    assert flow.response is not None and flow.response.status_code == 400
    assert error_of(flow.response)["code"] == "invalid_model"
    # No budget: served, for free, with nothing to hold.
    flow = authed(stage, body=chat_body("GEMINI-3-FLASH"))
    assert flow.response is None
    assert state(flow).hold_estimate == 0


def test_a_budgeted_key_gets_the_estimate_its_hold_is_for(stage: Rewrite) -> None:
    stage.plans.apply(PRICES)
    flow = authed(stage, body=chat_body(GEMINI, max_tokens=20), user=replace(ALICE, budget=0.012))
    assert flow.response is None
    # "user" and "hi": 6 characters, 2 tokens at $100; 20 output tokens at $400 per million.
    assert state(flow).hold_estimate == pytest.approx((2 * 100 + 20 * 400) / 1e6)


# --- translation -------------------------------------------------------------------------


@pytest.fixture
def over_claude(settings: Settings) -> Rewrite:
    return stages.rewrite(settings, upstream=stages.FixedUpstream("anthropic"))


def test_an_openai_request_is_sent_as_anthropic_messages(over_claude: Rewrite) -> None:
    flow = authed(
        over_claude, body=chat_body(GEMINI, stream=True, stream_options={"include_usage": True})
    )
    assert flow.response is None
    assert flow.request.path == "/v1/messages"
    body = json.loads(flow.request.content or b"")
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 8192 and body["stream"] is True
    assert "stream_options" not in body
    assert flow.request.headers["anthropic-version"] == "2023-06-01"
    assert state(flow).include_usage is True
    assert state(flow).direction is Direction.OPENAI_TO_ANTHROPIC


def test_what_cannot_be_translated_is_400_in_the_clients_shape(over_claude: Rewrite) -> None:
    flow = authed(over_claude, body=chat_body(GEMINI, n=3))
    assert flow.response is not None and flow.response.status_code == 400
    error = json.loads(flow.response.content or b"")["error"]
    assert (error["code"], error["param"]) == ("unsupported_by_upstream", "n")
    assert flow.request.path == "/v1/chat/completions"  # never rewritten, never forwarded


def test_an_empty_body_that_needs_translating_is_refused(over_claude: Rewrite) -> None:
    flow = authed(over_claude, body=b"")
    assert flow.response is not None and flow.response.status_code == 400


def test_messages_pass_through_to_an_anthropic_upstream(over_claude: Rewrite) -> None:
    flow = authed(over_claude, path="/v1/messages", body=chat_body(GEMINI, max_tokens=10))
    assert flow.response is None and flow.request.path == "/v1/messages"
    assert json.loads(flow.request.content or b"")["max_tokens"] == 10
    assert state(flow).direction is None


def test_messages_are_sent_as_chat_completions_to_an_openai_upstream(settings: Settings) -> None:
    stage = stages.rewrite(settings, upstream=stages.FixedUpstream("openai"))
    flow = authed(stage, path="/v1/messages", body=chat_body(GEMINI, max_tokens=10))
    assert flow.response is None and flow.request.path == "/v1/chat/completions"
    assert sent(flow)["max_tokens"] == 10
    assert state(flow).direction is Direction.ANTHROPIC_TO_OPENAI


def test_the_upstream_is_asked_its_api_only_for_an_api_call(settings: Settings) -> None:
    class Unasked(stages.FixedUpstream):
        async def current_api(self) -> str:
            raise AssertionError("asked")

    stage = stages.rewrite(settings, upstream=Unasked())
    flow = authed(stage, method="GET", path="/v1/batches", body=b"")
    assert flow.response is None and state(flow).direction is None


# --- patterns and the default route --------------------------------------------------------


class KnownModels:
    """The upstream's model list as the stage asks it (`known_ids`), counted."""

    def __init__(self, ids: set[str] | None) -> None:
        self.ids = None if ids is None else frozenset(ids)
        self.asked = 0

    async def known_ids(self) -> frozenset[str] | None:
        self.asked += 1
        return self.ids


def patterned(settings: Settings, ids: set[str] | None) -> Rewrite:
    table = parse_routes(
        '[patterns]\n"claude-opus-*" = "claude-opus-4-5-thinking"\n'
        '[default_route]\ntarget = "gemini-3-flash"\n'
    )
    return stages.rewrite(settings, router=Router(table), models=KnownModels(ids))


def test_a_pattern_routes_an_unlisted_name(settings: Settings) -> None:
    stage = patterned(settings, {"claude-opus-4-5-thinking", GEMINI})
    flow = authed(stage, body=chat_body("claude-opus-4-8"))
    assert flow.response is None
    assert sent(flow)["model"] == "claude-opus-4-5-thinking"
    assert state(flow).requested_model == "claude-opus-4-8"


def test_the_default_route_takes_another_unlisted_name_and_a_listed_one_passes(
    settings: Settings,
) -> None:
    stage = patterned(settings, {"claude-opus-4-5-thinking", GEMINI, "served"})
    assert sent(authed(stage, body=chat_body("gpt-5")))["model"] == GEMINI
    assert sent(authed(stage, body=chat_body("served")))["model"] == "served"


def test_without_the_upstreams_list_a_name_passes_as_asked(settings: Settings) -> None:
    stage = patterned(settings, None)
    assert sent(authed(stage, body=chat_body("claude-opus-4-8")))["model"] == "claude-opus-4-8"


def test_a_table_without_patterns_never_asks_for_the_list(settings: Settings) -> None:
    models = KnownModels({GEMINI})
    stage = stages.rewrite(settings, router=Router(parse_routes("")), models=models)
    authed(stage, body=chat_body("claude-opus-4-8"))
    assert models.asked == 0


def test_the_allow_list_is_of_the_asked_name_or_its_pattern(settings: Settings) -> None:
    stage = patterned(settings, {"claude-opus-4-5-thinking", GEMINI})
    # A tier allowed the routed model only: the asked name is not on its list.
    stage.plans.apply(PriceTable(tiers={"trial": Tier(models=(GEMINI,))}))
    trial = replace(ALICE, tier="trial")
    refused = authed(stage, body=chat_body("gpt-5"), user=trial)
    assert refused.response is not None and refused.response.status_code == 403
    assert error_of(refused.response)["code"] == "model_not_allowed"
    # A tier allowed the pattern: what it matches is allowed.
    stage.plans.apply(PriceTable(tiers={"trial": Tier(models=("claude-opus-*",))}))
    flow = authed(stage, body=chat_body("claude-opus-4-8"), user=trial)
    assert flow.response is None and sent(flow)["model"] == "claude-opus-4-5-thinking"
