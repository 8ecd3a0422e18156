"""The invariant of a billing system (issue 17, item 5): after a burst of concurrent
requests, every place that counts them agrees with what the upstream reported.

For every path (client API x upstream API x streamed or not), on SQLite and on
PostgreSQL, a burst of requests goes through the proxy, and these are compared:

- the tokens the upstream reported (the fake Google backend's log behind the real
  antigravity-claude-proxy; the OpenAI stand-in's log);
- what the client was shown, where it asked for usage;
- the usage rows (/admin/usage), the request log (/admin/requests), the key's
  spend (/admin/keys), /account, and /v1/dashboard/billing/usage.

A mismatch fails with a table of every source's figures, the wrong ones marked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.google_fake import Script
from tests.support.harness import ADMIN_SECRET, Proxy, bearer, start_proxy, wait_for
from tests.support.openai_standin import OpenAIStandIn
from tests.support.real_upstream import Antigravity

BOTH_BACKENDS = True
ADMIN = {"x-admin-secret": ADMIN_SECRET}
MODEL = "claude-sonnet-4-5"
PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3}  # USD per million tokens
ROUTES = f"""
[prices."{MODEL}"]
input = {PRICE["input"]}
output = {PRICE["output"]}
cached_input = {PRICE["cached_input"]}
"""
BURST = 6
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Figures:
    prompt: int | None = None  # cached part included
    cached: int | None = None
    completion: int | None = None
    cost: float | None = None

    def __add__(self, other: Figures) -> Figures:
        def plus(a: Any, b: Any) -> Any:
            return None if a is None or b is None else a + b

        return Figures(*(plus(a, b) for a, b in zip(astuple(self), astuple(other), strict=True)))


def cost_of(figures: Figures) -> float:
    assert figures.prompt is not None and figures.cached is not None
    assert figures.completion is not None
    return (
        (figures.prompt - figures.cached) * PRICE["input"]
        + figures.cached * PRICE["cached_input"]
        + figures.completion * PRICE["output"]
    ) / 1e6


@pytest.fixture(scope="module")
def proxies(
    tmp_path_factory: pytest.TempPathFactory, backend_env: dict[str, str]
) -> Iterator[Callable[[str], Proxy]]:
    """One proxy per upstream URL for the module (keys keep the tests apart)."""
    started: dict[str, Proxy] = {}

    def proxy_for(url: str) -> Proxy:
        if url not in started:
            workdir = tmp_path_factory.mktemp("reconcile")
            routes = workdir / "routes.toml"
            routes.write_text(ROUTES)
            started[url] = start_proxy(
                workdir, url, UPSTREAM_API="auto", ROUTES_FILE=str(routes), **backend_env
            )
        return started[url]

    yield proxy_for
    for running in started.values():
        running.stop()


def send_openai(proxy: Proxy, key: str, stream: bool) -> Figures:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    if stream:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in chunks if chunk.usage][-1]
    else:
        usage = client.chat.completions.create(model=MODEL, messages=HI).usage  # type: ignore[arg-type]
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details and details.cached_tokens is not None else 0
    return Figures(usage.prompt_tokens, cached, usage.completion_tokens)


def send_anthropic(proxy: Proxy, key: str, stream: bool) -> Figures:
    client = anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)
    ask: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": HI}
    if stream:
        with client.messages.stream(**ask) as events:
            usage = events.get_final_message().usage
    else:
        usage = client.messages.create(**ask).usage
    cached = usage.cache_read_input_tokens or 0
    prompt = usage.input_tokens + cached + (usage.cache_creation_input_tokens or 0)
    return Figures(prompt, cached, usage.output_tokens)


def total(figures: list[Figures]) -> Figures:
    found = Figures(0, 0, 0, 0.0)
    for one in figures:
        found = found + one
    return found


def ledger(proxy: Proxy, key_id: int, key: str) -> dict[str, Figures]:
    """What each of the proxy's records says of the key, once all BURST are counted."""
    rows = proxy.usage_rows(key_id, BURST)
    logged = wait_for(
        lambda: (
            len(
                found := httpx.get(
                    f"{proxy.url}/admin/requests?key_id={key_id}&limit=1000", headers=ADMIN
                ).json()["data"]
            )
            >= BURST
            and found
        )
    )
    [listed] = [
        k
        for k in httpx.get(f"{proxy.url}/admin/keys", headers=ADMIN).json()["data"]
        if k["id"] == key_id
    ]
    account = httpx.get(f"{proxy.url}/account", headers=bearer(key)).json()
    billing = httpx.get(f"{proxy.url}/v1/dashboard/billing/usage", headers=bearer(key)).json()
    return {
        "usage rows": Figures(
            sum(r["prompt_tokens"] for r in rows),
            None,
            sum(r["completion_tokens"] for r in rows),
            sum(r["cost"] for r in rows),
        ),
        "request log": total(
            [
                Figures(r["prompt_tokens"], r["cached_tokens"], r["completion_tokens"], r["cost"])
                for r in logged
            ]
        ),
        "key spend": Figures(
            listed["prompt_tokens"], None, listed["completion_tokens"], listed["spend"]
        ),
        "/account": Figures(
            sum(u["prompt_tokens"] for u in account["usage"]),
            None,
            sum(u["completion_tokens"] for u in account["usage"]),
            account["spend"],
        ),
        "billing usage": Figures(None, None, None, billing["total_usage"] / 100),
    }


def differences(truth: Figures, sources: dict[str, Figures]) -> list[str]:
    """A table of every source's figures; '≠' marks a figure that differs from truth."""

    def cell(value: Any, right: Any) -> str:
        if value is None:
            return "-"
        text = f"{value:.8f}" if isinstance(value, float) else str(value)
        same = value == pytest.approx(right, rel=1e-9, abs=1e-12)
        return text if same else f"{text} ≠"

    header = f"{'source':<16}{'prompt':>14}{'cached':>14}{'completion':>14}{'cost':>20}"
    lines = [header, f"{'upstream':<16}" + "".join(f"{cell(v, v):>14}" for v in astuple(truth)[:3])]
    lines[-1] += f"{cell(truth.cost, truth.cost):>20}"
    wrong = False
    for name, figures in sources.items():
        cells = [cell(v, t) for v, t in zip(astuple(figures), astuple(truth), strict=True)]
        wrong |= any(c.endswith("≠") for c in cells)
        lines.append(f"{name:<16}" + "".join(f"{c:>14}" for c in cells[:3]) + f"{cells[3]:>20}")
    return lines if wrong else []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("upstream_api", ["anthropic", "openai"])
@pytest.mark.parametrize("client_api", ["openai", "anthropic"])
def test_every_record_of_a_burst_agrees_with_the_upstream(
    client_api: str,
    upstream_api: str,
    stream: bool,
    proxies: Callable[[str], Proxy],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if upstream_api == "anthropic":
        real: Antigravity = request.getfixturevalue("antigravity")
        real.fake.default = Script(prompt_tokens=25, cached_tokens=5, completion_tokens=3)
        proxy = proxies(real.url)
    else:
        standin: OpenAIStandIn = request.getfixturevalue("gpt_upstream")
        standin.cached_tokens = 5
        proxy = proxies(standin.url)
    key_id, key = proxy.new_key(f"reconcile-{client_api}-{upstream_api}-{stream}", budget=100.0)
    send = send_openai if client_api == "openai" else send_anthropic
    with ThreadPoolExecutor(BURST) as pool:
        shown = list(pool.map(lambda _: send(proxy, key, stream), range(BURST)))

    if upstream_api == "anthropic":
        answered = real.fake.answered
        reported = [
            Figures(a.prompt_tokens, a.cached_tokens, a.completion_tokens) for a in answered
        ]
    else:
        reported = [
            Figures(r.prompt_tokens, r.cached_tokens, r.output_tokens) for r in standin.reported
        ]
    assert len(reported) == BURST, "the upstream did not answer every request once"
    truth = total(reported)
    truth.cost = sum(cost_of(one) for one in reported)
    client = total(shown)
    client.cost = None
    sources = {"client shown": client, **ledger(proxy, key_id, key)}
    table = differences(truth, sources)
    assert not table, (
        f"{client_api} client, {upstream_api} upstream, {'streamed' if stream else 'plain'}:\n"
        + "\n".join(table)
    )
