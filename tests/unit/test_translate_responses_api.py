"""Unit tests for the Responses API translation (translate/responses_api.py,
responses_stream.py, custom_tools.py) and Cursor's Responses-shaped chat bodies.

The upstream streams are the Anthropic stand-in's own events (or Chat Completions chunks
written from them by AnthropicToOpenAIStream); the Responses events are validated
against the openai SDK's event types and fed through its Responses stream accumulator
(`ResponseStreamState`), and Cursor's chat chunks through its chat accumulator, so what
clients run reads every sequence. Hypothesis splits each stream at arbitrary points.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from apipod_proxy.metering import meter_of_body
from apipod_proxy.translate import Direction, TranslationError, direction_for
from apipod_proxy.translate.custom_tools import InputUnwrapper, unwrap, wrapped
from apipod_proxy.translate.responses_api import (
    UnsupportedParameter,
    is_responses_body,
    responses_request_to_chat,
)
from apipod_proxy.translate.responses_stream import ChatToResponsesStream
from apipod_proxy.translate.streams import AnthropicToOpenAIStream
from apipod_proxy.upstream.quota import QUOTA_CODE
from tests.support.anthropic_standin import Answer, sse, stream_events, validate

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cursor"
EVENTS = TypeAdapter(ResponseStreamEvent)
PATCH = '*** Begin Patch\n*** Update File: a.py\n-x = "old"\n+x = "new\\t😀"\n*** End Patch'
FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CUSTOM = {
    "type": "custom",
    "name": "ApplyPatch",
    "description": "Edit files",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"},
}
QUOTA = "You have exhausted your capacity on claude-sonnet-4-5. Quota will reset after 1m0s."


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "input": "Hello"}
    body.update(fields)
    return body


def feed(translator: Callable[[bytes], list[bytes]], pieces: Iterable[bytes]) -> bytes:
    out = b""
    for piece in [*pieces, b""]:
        result = translator(piece)
        assert isinstance(result, list) and len(result) <= 1
        assert all(isinstance(item, bytes) and item for item in result)
        out += b"".join(result)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def events(out: bytes) -> list[dict[str, Any]]:
    """The Responses events: `event:` names its data's type, sequence numbers count up."""
    found = []
    for raw in out.decode().split("\n\n")[:-1]:
        name, data = raw.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        found.append(payload)
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    return found


def accumulate(payloads: list[dict[str, Any]], tools: list[Any] | None = None) -> Any:
    """The SDK's accumulator over validated events; its final Response (None: none)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=tools or [], text_format=omit)
    for payload in payloads:
        if payload["type"] == "response.failed":
            # ResponseError.code is a closed list of OpenAI's own codes; the SDK builds
            # events without validating (construct_type), so the proxy's code reads fine.
            event = construct_type(type_=ResponseStreamEvent, value=payload)
        else:
            event = EVENTS.validate_python(payload)  # stricter than the SDK reads them
        state.handle_event(event)  # type: ignore[arg-type]
    return state._completed_response


def anthropic_stream(answer: Answer) -> bytes:
    return b"".join(stream_events(answer, json_piece=4))


def standin(**fields: Any) -> Answer:
    return Answer("claude-sonnet-4-5", 25, fields.pop("cache_read", 0), **fields)


def responses_stream(body: dict[str, Any]) -> Any:
    translated = Direction.RESPONSES_TO_ANTHROPIC.request(body)
    return Direction.RESPONSES_TO_ANTHROPIC.stream("alias", True, translated.context)


# --- requests -----------------------------------------------------------------------


def test_a_string_input_and_instructions_become_system_and_user() -> None:
    chat = responses_request_to_chat(request(instructions="Be brief")).body
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Hello"},
    ]


def test_items_become_messages_with_tool_calls_and_results() -> None:
    body = request(
        tools=[FUNCTION, CUSTOM],
        input=[
            {"type": "message", "role": "developer", "content": "Rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "Fix it"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "ApplyPatch",
             "input": PATCH},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "custom_tool_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "applied"}]},
        ],
    )  # fmt: skip
    chat = responses_request_to_chat(body).body
    assert chat["messages"] == [
        {"role": "system", "content": "Rules"},
        {"role": "user", "content": "Fix it"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "ApplyPatch", "arguments": wrapped(PATCH)}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "applied"},
    ]  # fmt: skip
    custom = chat["tools"][1]["function"]
    assert custom["parameters"]["required"] == ["input"]
    assert "start: /.+/s" in custom["parameters"]["properties"]["input"]["description"]
    # ... and the Messages translation on top is what the strict stand-in accepts.
    validate(Direction.RESPONSES_TO_ANTHROPIC.request(body).body)


def test_images_sampling_reasoning_and_limits_map() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    body = request(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "See"}, image]}],
        max_output_tokens=2000,
        temperature=0.5,
        top_p=0.9,
        reasoning={"effort": "high", "summary": "auto"},
        parallel_tool_calls=False,
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "get_weather"},
        stream=True,
    )
    chat = responses_request_to_chat(body).body
    assert chat["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": image["image_url"]},
    }
    assert chat["max_tokens"] == 2000 and chat["reasoning_effort"] == "high"
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["stream_options"] == {"include_usage": True}
    forwarded = Direction.RESPONSES_TO_ANTHROPIC.request(body).body
    validate(forwarded)
    assert forwarded["thinking"] == {"type": "enabled", "budget_tokens": 1999}


def test_dropped_fields_are_not_forwarded() -> None:
    body = request(
        include=["reasoning.encrypted_content"],
        store=False,
        truncation="auto",
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        text={"verbosity": "low"},
        metadata={"a": "b"},
        tools=[{"type": "web_search"}, FUNCTION],
    )
    forwarded = Direction.RESPONSES_TO_ANTHROPIC.request(body).body
    validate(forwarded)
    assert [tool["name"] for tool in forwarded["tools"]] == ["get_weather"]


def test_the_tools_codex_always_sends_are_dropped_and_its_functions_kept() -> None:
    """Codex CLI sends a `namespace` of sub-agent functions, `web_search` and (with some
    models) `tool_search` on every request (tests/fixtures/codex/)."""
    namespace = {"type": "namespace", "name": "multi_agent_v1", "tools": [FUNCTION]}
    search = {"type": "tool_search", "execution": "client"}
    body = request(tools=[FUNCTION, namespace, {"type": "web_search"}, search])
    forwarded = Direction.RESPONSES_TO_ANTHROPIC.request(body).body
    validate(forwarded)
    assert [tool["name"] for tool in forwarded["tools"]] == ["get_weather"]


@pytest.mark.parametrize("kind", ["file_search", "computer_use_preview", "code_interpreter"])
def test_other_hosted_tools_are_refused_by_name(kind: str) -> None:
    with pytest.raises(TranslationError) as caught:
        responses_request_to_chat(request(tools=[FUNCTION, {"type": kind}]))
    payload = caught.value.openai_payload()["error"]
    assert kind in payload["message"] and payload["param"] == "tools[1]"


@pytest.mark.parametrize("name", ["previous_response_id", "conversation"])
def test_stored_state_is_refused_with_unsupported_parameter(name: str) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        responses_request_to_chat(request(**{name: "resp_1"}))
    payload = caught.value.openai_payload()["error"]
    assert payload["code"] == "unsupported_parameter" and payload["param"] == name
    assert "whole conversation" in payload["message"]


@pytest.mark.parametrize("kind", ["file_search", "computer_use_preview", "code_interpreter"])
def test_hosted_tools_are_refused_by_name(kind: str) -> None:
    with pytest.raises(TranslationError) as caught:
        responses_request_to_chat(request(tools=[{"type": kind}]))
    assert kind in caught.value.message and caught.value.param == "tools[0]"


def test_json_schema_is_mapped_for_openai_and_refused_over_anthropic() -> None:
    form = {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}
    body = request(text={"format": form})
    chat = Direction.RESPONSES_TO_OPENAI.request(body).body
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
    }
    with pytest.raises(TranslationError) as caught:
        Direction.RESPONSES_TO_ANTHROPIC.request(body)
    assert caught.value.param == "response_format"


def test_directions() -> None:
    assert direction_for("POST", "/v1/responses", "anthropic") is Direction.RESPONSES_TO_ANTHROPIC
    assert direction_for("POST", "/v1/responses", "openai") is Direction.RESPONSES_TO_OPENAI
    assert direction_for("POST", "/v1/responses", "both") is Direction.RESPONSES_TO_OPENAI
    cursor = {"model": "m", "input": []}
    assert direction_for("POST", "/v1/chat/completions", "anthropic", cursor) is (
        Direction.CURSOR_TO_ANTHROPIC
    )
    assert direction_for("POST", "/v1/chat/completions", "both", cursor) is (
        Direction.CURSOR_TO_OPENAI
    )
    chat = {"model": "m", "messages": []}
    assert direction_for("POST", "/v1/chat/completions", "both", chat) is None
    assert not is_responses_body({"input": "x", "messages": []})


# --- whole answers --------------------------------------------------------------------


def whole(answer: Answer, body: dict[str, Any]) -> Response:
    translated = Direction.RESPONSES_TO_ANTHROPIC.request(body)
    content = json.dumps(answer.message(stream=False)).encode()
    out = Direction.RESPONSES_TO_ANTHROPIC.answer(200, content, "alias", context=translated.context)
    return Response.model_validate_json(out.content)


def test_a_whole_answer_is_a_response_object() -> None:
    answer = standin(text="Hi.", thinking="Thinking it over.", signature="s", cache_read=5)
    response = whole(answer, request(instructions="Be brief"))
    assert response.status == "completed" and response.model == "alias"
    assert response.output_text == "Hi."
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Thinking it over."  # type: ignore[union-attr]
    assert response.instructions == "Be brief"
    assert response.usage is not None
    assert response.usage.input_tokens == 30 and response.usage.output_tokens > 0
    assert response.usage.input_tokens_details.cached_tokens == 5
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    # Accounting reads the translated body's usage in the Responses API's names.
    usage = meter_of_body(response.model_dump()).usage()
    assert (usage.prompt_tokens, usage.cached_tokens) == (30, 5)


def test_whole_tool_calls_keep_their_ids_and_custom_input() -> None:
    tool = {"id": "toolu_9", "name": "ApplyPatch", "input": {"input": PATCH}}
    response = whole(standin(text="", tool=tool), request(tools=[FUNCTION, CUSTOM]))
    (call,) = response.output
    assert call.type == "custom_tool_call"
    assert (call.call_id, call.name, call.input) == ("toolu_9", "ApplyPatch", PATCH)
    tool = {"id": "toolu_8", "name": "get_weather", "input": {"city": "Paris"}}
    response = whole(standin(text="", tool=tool), request(tools=[FUNCTION, CUSTOM]))
    (call,) = response.output
    assert call.type == "function_call" and call.call_id == "toolu_8"
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_max_tokens_is_incomplete() -> None:
    answer = standin(text="cut")
    message = {**answer.message(stream=False), "stop_reason": "max_tokens"}
    translated = Direction.RESPONSES_TO_ANTHROPIC.request(request())
    out = Direction.RESPONSES_TO_ANTHROPIC.answer(
        200, json.dumps(message).encode(), "alias", context=translated.context
    )
    response = Response.model_validate_json(out.content)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_a_quota_answer_is_429_in_openais_shape() -> None:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                  "message": QUOTA}}).encode()  # fmt: skip
    out = Direction.RESPONSES_TO_ANTHROPIC.answer(400, body, "alias")
    assert out.status == 429 and out.headers["retry-after"] == "60"
    assert json.loads(out.content)["error"]["code"] == QUOTA_CODE


# --- streams --------------------------------------------------------------------------

TEXT_ANSWER = standin(text="Hello there, friend.", thinking="Let me think.", signature="sig")
TOOL_ANSWER = standin(text="Calling.", tool={"id": "toolu_1", "name": "get_weather",
                                             "input": {"city": "Paris"}})  # fmt: skip
CUSTOM_ANSWER = standin(text="", tool={"id": "toolu_2", "name": "ApplyPatch",
                                       "input": {"input": PATCH}})  # fmt: skip


def translated_stream(answer: Answer, pieces: list[bytes] | None = None) -> list[dict[str, Any]]:
    data = anthropic_stream(answer)
    stream = responses_stream(request(stream=True, tools=[FUNCTION, CUSTOM]))
    return events(feed(stream, pieces if pieces is not None else [data]))


@settings(max_examples=40, deadline=None)
@given(
    answer=st.sampled_from([TEXT_ANSWER, TOOL_ANSWER, CUSTOM_ANSWER]),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_any_split_gives_the_same_events(answer: Answer, cuts: list[int]) -> None:
    data = anthropic_stream(answer)
    whole_run = translated_stream(answer)
    split_run = translated_stream(answer, split(data, cuts))

    def shape(found: list[dict[str, Any]]) -> list[Any]:
        return [(e["type"], e.get("delta"), e.get("text"), e.get("input")) for e in found]

    assert shape(split_run) == shape(whole_run)
    assert accumulate(split_run, [FUNCTION, CUSTOM]) is not None


def test_a_text_stream_through_the_sdk() -> None:
    found = translated_stream(TEXT_ANSWER)
    kinds = [e["type"] for e in found]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for opened, closed in (
        ("response.output_item.added", "response.output_item.done"),
        ("response.content_part.added", "response.content_part.done"),
        ("response.reasoning_summary_part.added", "response.reasoning_summary_part.done"),
    ):
        assert kinds.count(opened) == kinds.count(closed) > 0
    assert "response.reasoning_summary_text.delta" in kinds
    response = accumulate(found)
    assert response.output_text == "Hello there, friend."
    assert response.output[0].summary[0].text == "Let me think."
    assert response.usage.input_tokens == 25 and response.usage.output_tokens > 0


def test_a_function_call_stream_through_the_sdk() -> None:
    found = translated_stream(TOOL_ANSWER)
    assert "response.function_call_arguments.delta" in [e["type"] for e in found]
    done = next(e for e in found if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "get_weather"
    response = accumulate(found, [FUNCTION])
    call = response.output[-1]
    assert (call.type, call.call_id, json.loads(call.arguments)) == (
        "function_call",
        "toolu_1",
        {"city": "Paris"},
    )


def test_a_custom_tool_call_streams_its_input_as_text() -> None:
    found = translated_stream(CUSTOM_ANSWER)
    deltas = [e["delta"] for e in found if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 3 and "".join(deltas) == PATCH  # piece by piece, not at the end
    response = accumulate(found, [CUSTOM])
    call = response.output[-1]
    assert (call.type, call.call_id, call.name, call.input) == (
        "custom_tool_call",
        "toolu_2",
        "ApplyPatch",
        PATCH,
    )


def test_each_event_is_forwarded_as_its_input_arrives() -> None:
    data = anthropic_stream(TEXT_ANSWER)
    stream = responses_stream(request(stream=True))
    first_delta = data.index(b"text_delta")
    end = data.index(b"\n\n", first_delta) + 2
    out = b"".join(stream(data[:end]))
    assert b"response.output_text.delta" in out and b"Hello" in out


def test_max_tokens_in_a_stream_is_incomplete() -> None:
    data = anthropic_stream(standin(text="cut")).replace(b'"end_turn"', b'"max_tokens"')
    found = events(feed(responses_stream(request(stream=True)), [data]))
    assert found[-1]["type"] == "response.incomplete"
    assert found[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    accumulate(found)


def test_a_quota_error_in_the_stream_is_response_failed_with_the_quota_code() -> None:
    noted = []
    stream = responses_stream(request(stream=True))
    stream.on_quota = noted.append
    data = sse("error", {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": QUOTA}})  # fmt: skip
    found = events(feed(stream, [data]))
    assert [e["type"] for e in found] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert found[-1]["response"]["error"]["code"] == QUOTA_CODE
    assert noted and stream.quota is not None
    assert accumulate(found) is None


def test_a_cut_stream_fails_and_keeps_what_was_delivered() -> None:
    data = anthropic_stream(TEXT_ANSWER)
    cut = data[: data.index(b"event: message_delta")]
    stream = responses_stream(request(stream=True))
    found = events(feed(stream, [cut]))
    assert found[-1]["type"] == "response.failed"
    assert found[-1]["response"]["error"]["code"] == "upstream_stream_incomplete"
    assert stream.usage.estimated
    accumulate(found)


def test_an_openai_upstreams_chunks_translate_directly() -> None:
    chat = AnthropicToOpenAIStream("m", include_usage=True)
    chunks = feed(chat, [anthropic_stream(TOOL_ANSWER)])
    stream = ChatToResponsesStream("alias")
    found = events(feed(stream, [chunks[i : i + 9] for i in range(0, len(chunks), 9)]))
    response = accumulate(found, [FUNCTION])
    assert response.output_text == "Calling."
    assert stream.usage.prompt_tokens == 25 and not stream.usage.estimated


# --- Cursor's Responses-shaped chat bodies --------------------------------------------


def cursor_body(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_cursors_recorded_bodies_translate(name: str) -> None:
    body = cursor_body(name)
    if not is_responses_body(body):
        return  # the Chat Completions shapes are the request translation's to check
    translated = Direction.CURSOR_TO_ANTHROPIC.request(body)
    validate(translated.body)
    assert translated.include_usage is (body.get("stream_options") or {}).get(
        "include_usage", False
    )


def chat_accumulate(out: bytes) -> Any:
    state = ChatCompletionStreamState()
    for raw in out.decode().split("\n\n")[:-1]:
        data = raw.removeprefix("data: ")
        if data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate_json(data))
    assert out.endswith(b"data: [DONE]\n\n")
    return state.get_final_completion()


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_cursor_reads_chat_chunks_with_a_custom_tools_text(cuts: list[int]) -> None:
    body = cursor_body("agent_responses_shape.json")
    translated = Direction.CURSOR_TO_ANTHROPIC.request(body)
    stream = Direction.CURSOR_TO_ANTHROPIC.stream("alias", True, translated.context)
    data = anthropic_stream(CUSTOM_ANSWER)
    out = feed(stream, split(data, cuts))
    completion = chat_accumulate(out)
    (call,) = completion.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "toolu_2",
        "ApplyPatch",
        PATCH,
    )
    assert completion.usage is not None and completion.usage.prompt_tokens == 25


def test_cursor_without_include_usage_gets_no_usage_chunk() -> None:
    body = {**cursor_body("agent_responses_shape.json"), "stream_options": None}
    translated = Direction.CURSOR_TO_OPENAI.request(body)
    assert translated.body["stream_options"] == {"include_usage": True}  # asked upstream
    stream = Direction.CURSOR_TO_OPENAI.stream(
        "alias", translated.include_usage, translated.context
    )
    chunks = feed(AnthropicToOpenAIStream("m", include_usage=True), [anthropic_stream(TEXT_ANSWER)])
    out = feed(stream, [chunks])
    assert b'"choices":[]' not in out and b'"usage":{' not in out
    completion = chat_accumulate(out)
    assert completion.choices[0].message.content == "Hello there, friend."
    assert stream.usage.prompt_tokens == 25  # metered all the same


# --- custom tool input ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.just(PATCH),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    spaced=st.booleans(),
)
def test_the_input_unwraps_across_any_split(text: str, cuts: list[int], spaced: bool) -> None:
    arguments = json.dumps({"input": text}, indent=1 if spaced else None)
    unwrapper = InputUnwrapper()
    points = sorted({0, len(arguments), *(c % (len(arguments) + 1) for c in cuts)})
    out = "".join(unwrapper.feed(arguments[a:b]) for a, b in itertools.pairwise(points))
    assert out + unwrapper.finish() == text
    assert unwrap(arguments) == text


def test_arguments_of_another_shape_come_out_whole() -> None:
    unwrapper = InputUnwrapper()
    arguments = '{"patch": "x", "input": "y"}'
    assert unwrapper.feed(arguments) == "" and unwrapper.finish() == "y"
    assert unwrap("not json") == "not json"


# --- the policies read Responses bodies too ---------------------------------------------


def test_a_responses_conversation_keeps_its_key_as_it_grows() -> None:
    from apipod_proxy.policy.routing import conversation_key

    opening = [{"role": "user", "content": [{"type": "input_text", "text": "Fix it"}]}]
    first = request(instructions="Rules", input=opening)
    later = request(
        instructions="Rules",
        input=[*opening, {"type": "function_call_output", "call_id": "c", "output": "ok"}],
    )
    other = request(instructions="Rules", input=[{"role": "user", "content": "Other"}])
    assert conversation_key(1, None, first) == conversation_key(1, None, later)
    assert conversation_key(1, None, first) != conversation_key(1, None, other)
    assert conversation_key(1, None, request(input="a")) != conversation_key(
        1, None, request(input="b")
    )


def test_a_responses_hold_reads_its_prompt_and_max_output_tokens() -> None:
    from apipod_proxy.policy.budgets import output_allowance, prompt_chars

    body = request(instructions="1234", input=[{"role": "user", "content": "5678"}])
    assert prompt_chars(body) >= 8
    assert output_allowance({**body, "max_output_tokens": 77}) == 77
