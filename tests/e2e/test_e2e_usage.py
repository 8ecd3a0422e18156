"""End to end: what the client sees of usage, and what the operator sees of it.

- A stream whose client did not ask for usage never shows it, even when the upstream
  puts the usage the proxy asked for on the finish chunk instead of a separate
  `choices: []` chunk; the proxy still counts it, and writes that chunk again whatever
  text it holds (half an emoji included).
- Usage rows and key objects show `errors` (requests answered 4xx or 5xx) beside
  `requests`, so failed requests do not look billable.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.harness import ADMIN_SECRET, Proxy, chat_stream_chunks
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}


def stream_body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": "gemini-3-flash", "stream": True, "messages": messages, **extra}


def stream_chunks(proxy: Proxy, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming chat completion; the JSON of every `data:` event but [DONE]."""
    headers = {"authorization": f"Bearer {key}", "x-standin-usage-on-finish": "1"}
    return chat_stream_chunks(proxy, headers, body)


def test_usage_on_the_finish_chunk_is_hidden_from_a_client_that_did_not_ask(
    proxy: Proxy, upstream: StandIn
) -> None:
    key_id, key = proxy.new_key("finish-usage")
    chunks = stream_chunks(proxy, key, stream_body())

    # The proxy asked for usage upstream, and the upstream put it on the finish chunk.
    assert upstream.received[-1].json()["stream_options"] == {"include_usage": True}
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    assert "usage" in finish[0] and finish[0]["usage"] is None
    assert all(c.get("usage") is None for c in chunks), chunks
    # ... and counted it all the same.
    [row] = proxy.usage_rows(key_id, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)


def test_a_finish_chunk_with_a_lone_surrogate_is_written_again_escaped(
    proxy: Proxy, upstream: StandIn
) -> None:
    """Issue 18: the finish chunk written again without its usage had its own encoder, and
    half an emoji ("\\ud83d", escaped on the wire) in it raised UnicodeEncodeError in the
    stream. Now the client gets it with \\u escapes, and the usage is counted."""
    key_id, key = proxy.new_key("finish-surrogate")
    text = "cut emoji \ud83d"
    body = stream_body(messages=[{"role": "user", "content": text}])
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "x-standin-usage-on-finish": "1",
        "x-standin-finish-echo": "1",
    }
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        headers=headers,
        content=json.dumps(body).encode(),  # httpx's json= cannot write a lone surrogate
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    [finish] = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish["choices"][0]["delta"] == {"content": text}
    assert finish["usage"] is None
    [row] = proxy.usage_rows(key_id, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)


def test_usage_on_the_finish_chunk_reaches_a_client_that_asked(
    proxy: Proxy, upstream: StandIn
) -> None:
    _, key = proxy.new_key("asked-usage")
    chunks = stream_chunks(proxy, key, stream_body(stream_options={"include_usage": True}))
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1
    assert with_usage[0]["usage"]["completion_tokens"] == 3
    assert with_usage[0]["choices"][0]["finish_reason"] == "stop"


def test_failed_requests_are_counted_as_errors_beside_requests(proxy: Proxy) -> None:
    """One answer, one upstream 429 and one upstream 502: 3 requests, of which 2 errors."""
    key_id, key = proxy.new_key("errors")
    body = {"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}
    statuses = []
    for status in (None, "429", "502"):
        headers = {"authorization": f"Bearer {key}"}
        if status:
            headers["x-standin-status"] = status
        statuses.append(
            httpx.post(f"{proxy.url}/v1/chat/completions", headers=headers, json=body).status_code
        )
    assert statuses == [200, 429, 502]

    [row] = proxy.usage_rows(key_id, 3)
    assert (row["requests"], row["errors"]) == (3, 2)
    assert list(row)[3:5] == ["requests", "errors"]
    [listed] = [
        k
        for k in httpx.get(f"{proxy.url}/admin/keys", headers=ADMIN).json()["data"]
        if k["id"] == key_id
    ]
    assert (listed["requests"], listed["errors"]) == (3, 2)
    [cli_row] = [r for r in proxy.usage_from_cli() if r["key_id"] == key_id]
    assert (cli_row["requests"], cli_row["errors"]) == (3, 2)
