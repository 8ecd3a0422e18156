"""End to end: selling plans. Budgets priced per model, allow-lists, key rotation, the
request log, `/account` and the billing endpoints, through real mitmdump processes
driven by the openai SDK."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import (
    ADMIN_SECRET,
    ROOT,
    Proxy,
    bearer,
    doc_section,
    fenced_blocks,
    run_pasted,
    wait_for,
)
from tests.support.standin import StandIn

ADMIN = {"x-admin-secret": ADMIN_SECRET}
GEMINI = "gemini-3-flash"
CLAUDE = "claude-sonnet-4-5"
#: USD per million tokens. The stand-in's plain answer (11 prompt, 5 completion tokens)
#: costs 11 * 100 + 5 * 400 = 3100 per million: $0.0031.
PRICES = f"""
[prices."{GEMINI}"]
input = 100.0
output = 400.0
cached_input = 10.0

[prices."{CLAUDE}"]
input = 3.0
output = 15.0
cached_input = 0.3

[tiers.trial]
budget = 0.01
budget_period = "day"
models = ["{GEMINI}"]
"""
PLAIN_COST = 0.0031
#: Tests on `priced` run on SQLite and on PostgreSQL (DATABASE_URL).
BOTH_BACKENDS = True
MESSAGES = [{"role": "user", "content": "hi"}]


def keys_cli(proxy: Proxy, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "keys.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **proxy.database_env()},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def served_until_refused(sdk: openai.OpenAI) -> tuple[int, openai.RateLimitError]:
    """Send plain requests (up to 10) until one is refused with a 429: how many were
    served, and the refusal."""
    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(10):
            sdk.chat.completions.create(model=GEMINI, messages=MESSAGES)
            served += 1
    return served, refused.value


def account(proxy: Proxy, key: str) -> dict[str, object]:
    response = httpx.get(f"{proxy.url}/account", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def logged(proxy: Proxy, key_id: int) -> list[dict[str, object]]:
    response = httpx.get(f"{proxy.url}/admin/requests?key_id={key_id}&limit=1000", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(
        '[aliases.cursor-pro-sonnet]\ntargets = { "claude-sonnet-4-5" = 20, '
        '"gemini-3-flash" = 80 }\n' + PRICES
    )
    return path


@pytest.fixture
def priced(
    make_proxy: Callable[..., Proxy],
    upstream: StandIn,
    routes_file: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> Proxy:
    database = {"DATABASE_URL": request.getfixturevalue("pg_url")} if backend != "sqlite" else {}
    return make_proxy(upstream.url, ROUTES_FILE=str(routes_file), **database)


def refused_soon(proxy: Proxy, key: str) -> openai.PermissionDeniedError:
    """The key's refusal by `proxy`: at once on SQLite, within a second on PostgreSQL,
    where another process's key change arrives by NOTIFY."""
    deadline = time.monotonic() + (1.0 if "DATABASE_URL" in proxy.env else 0.0)
    while True:
        try:
            client(proxy, key).chat.completions.create(model=GEMINI, messages=MESSAGES)
        except openai.PermissionDeniedError as refused:
            return refused
        assert time.monotonic() < deadline, "the key is still accepted"
        time.sleep(0.02)


# --- budgets ---------------------------------------------------------------------------


def test_budget_refuses_with_insufficient_quota_and_an_update_lifts_it(
    priced: Proxy, upstream: StandIn
) -> None:
    key_id, key = priced.new_key("budget", budget=0.01, budget_period="month")
    sdk = client(priced, key)
    served, error = served_until_refused(sdk)
    # $0.0031 each: 0.0093 is under $0.01, the 4th overshoots (documented), the 5th is refused.
    assert served == 4
    assert len([r for r in upstream.received if r.path == "/v1/chat/completions"]) == 4
    assert error.code == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert int(error.response.headers["retry-after"]) > 0
    message = error.body["message"]  # type: ignore[index]
    assert "$0.01 per month" in message and "resets at" in message

    # /account and the billing endpoints show the same spend, from the proxy itself.
    seen = wait_for(lambda: (a := account(priced, key))["usage"] and a)
    assert seen["spend"] == pytest.approx(4 * PLAIN_COST)
    assert seen["budget"] == 0.01 and seen["budget_period"] == "month"
    assert seen["resets_at"].endswith("-01T00:00:00Z")
    assert seen["usage"][0]["requests"] == 4
    assert seen["usage"][0]["cost"] == pytest.approx(4 * PLAIN_COST)
    headers = bearer(key)
    subscription = httpx.get(f"{priced.url}/v1/dashboard/billing/subscription", headers=headers)
    assert subscription.json()["hard_limit_usd"] == 0.01
    assert subscription.json()["object"] == "billing_subscription"
    billing = httpx.get(f"{priced.url}/v1/dashboard/billing/usage", headers=headers).json()
    assert billing == {"object": "list", "total_usage": pytest.approx(4 * PLAIN_COST * 100)}
    before = len(upstream.received)

    keys_cli(priced, "update", str(key_id), "--budget", "1")
    # The very next request is admitted.
    sdk.chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert len(upstream.received) == before + 1
    listed = json.loads(keys_cli(priced, "list", "--json"))
    (row,) = [r for r in listed if r["id"] == key_id]
    assert row["budget"] == 1.0 and row["budget_period"] == "month"
    wait_for(lambda: json.loads(keys_cli(priced, "list", "--json"))[-1]["spend"] > 0.015)


def test_tier_budget_per_day_and_the_tiers_allow_list(priced: Proxy) -> None:
    _, key = priced.new_key("trial", tier="trial")
    sdk = client(priced, key)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model=CLAUDE, messages=MESSAGES)
    served, refused = served_until_refused(sdk)
    assert served == 4
    assert "per day" in refused.body["message"]  # type: ignore[index]
    seen = account(priced, key)
    assert (seen["budget"], seen["budget_period"], seen["models"]) == (0.01, "day", [GEMINI])


def test_stream_is_charged_at_its_end_cached_tokens_at_their_price(priced: Proxy) -> None:
    key_id, key = priced.new_key("stream")
    stream = client(priced, key).chat.completions.create(
        model=GEMINI,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={
            "x-standin-prompt-tokens": "200000",
            "x-standin-cached-tokens": "150000",
            "x-standin-chunks": "7",
        },
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    assert usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached == 150000
    # 50 000 input at $100, 150 000 cached at $10, 7 output at $400 per million: $6.5028.
    expected = (usage.prompt_tokens - cached) * 100 + cached * 10 + usage.completion_tokens * 400
    expected /= 1_000_000
    (row,) = wait_for(lambda: logged(priced, key_id))
    assert round(row["cost"], 2) == round(expected, 2) == 6.5
    assert row["cost"] == pytest.approx(expected, abs=1e-9)
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
        200000,
        150000,
        7,
    )
    assert account(priced, key)["spend"] == pytest.approx(expected)


def test_failed_upstream_requests_cost_nothing(
    priced: Proxy, make_proxy: Callable[..., Proxy], routes_file: Path
) -> None:
    key_id, key = priced.new_key("failures")
    sdk = client(priced, key)
    for status in (500, 503):
        with pytest.raises(openai.InternalServerError):
            # The failed answer even carries a usage object: it is not charged.
            sdk.chat.completions.create(
                model=GEMINI,
                messages=MESSAGES,
                extra_headers={"x-standin-status": str(status), "x-standin-error-usage": "1"},
            )
    rows = wait_for(lambda: len(r := logged(priced, key_id)) == 2 and r)
    assert [row["status"] for row in rows] == [503, 500]
    assert [row["cost"] for row in rows] == [0, 0]
    assert account(priced, key)["spend"] == 0
    # Unreachable upstream: 502, no cost either.
    dead = make_proxy("http://127.0.0.1:9", ROUTES_FILE=str(routes_file))
    dead_id, dead_key = dead.new_key("dead")
    with pytest.raises(openai.InternalServerError):
        client(dead, dead_key).chat.completions.create(model=GEMINI, messages=MESSAGES)
    (row,) = wait_for(lambda: logged(dead, dead_id))
    assert (row["status"], row["cost"]) == (502, 0)


def test_a_price_change_applies_to_the_next_request(priced: Proxy, routes_file: Path) -> None:
    key_id, key = priced.new_key("reload")
    sdk = client(priced, key)
    sdk.chat.completions.create(model=GEMINI, messages=MESSAGES)
    routes_file.write_text(routes_file.read_text().replace("input = 100.0", "input = 1000.0"))
    wait_for(lambda: "routing table reloaded" in priced.log())
    sdk.chat.completions.create(model=GEMINI, messages=MESSAGES)
    rows = wait_for(lambda: len(r := logged(priced, key_id)) == 2 and r)
    assert [row["cost"] for row in rows] == pytest.approx([0.0130, PLAIN_COST])


def test_unpriced_model_is_free_and_warned_about_once(priced: Proxy) -> None:
    key_id, key = priced.new_key("unpriced")
    sdk = client(priced, key)
    for _ in range(2):
        sdk.chat.completions.create(model="gemini-3-pro-high", messages=MESSAGES)
    rows = wait_for(lambda: len(r := logged(priced, key_id)) == 2 and r)
    assert [row["cost"] for row in rows] == [0, 0]
    assert priced.log().count("'gemini-3-pro-high' has no price") == 1


# --- allow-lists -----------------------------------------------------------------------


def test_allow_list_refuses_other_models_and_filters_the_model_list(
    priced: Proxy, upstream: StandIn
) -> None:
    _, key = priced.new_key("allow", models=["cursor-pro-sonnet"])
    sdk = client(priced, key)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        # What the alias routes to, asked for directly, is not allowed.
        sdk.chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert refused.value.code == "model_not_allowed"
    assert "cursor-pro-sonnet" in refused.value.body["message"]  # type: ignore[index]
    assert not [r for r in upstream.received if r.path == "/v1/chat/completions"]
    answer = sdk.chat.completions.create(model="cursor-pro-sonnet", messages=MESSAGES)
    assert answer.model in (CLAUDE, GEMINI)
    assert [m.id for m in sdk.models.list()] == ["cursor-pro-sonnet"]
    # The Anthropic path refuses in Anthropic's shape.
    response = httpx.post(
        f"{priced.url}/v1/messages",
        headers={"x-api-key": key},
        json={"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "error"
    assert response.json()["error"]["code"] == "model_not_allowed"


# --- rotation --------------------------------------------------------------------------


def test_rotation_refuses_the_old_secret_at_once_in_every_process(
    priced: Proxy, make_proxy: Callable[..., Proxy], upstream: StandIn, routes_file: Path
) -> None:
    second = make_proxy(upstream.url, ROUTES_FILE=str(routes_file), **priced.database_env())
    key_id, old = priced.new_key("rotate", budget=5)
    for proxy in (priced, second):
        client(proxy, old).chat.completions.create(model=GEMINI, messages=MESSAGES)
    new = keys_cli(priced, "rotate", str(key_id)).strip()
    assert new.startswith("apk_") and new != old
    for proxy in (priced, second):
        assert refused_soon(proxy, old).code == "invalid_api_key"
        client(proxy, new).chat.completions.create(model=GEMINI, messages=MESSAGES)
    # Over the admin API too; the answer is the new secret with the same record.
    rotated = httpx.post(f"{priced.url}/admin/rotate-key", headers=ADMIN, json={"id": key_id})
    assert rotated.status_code == 200
    assert rotated.json()["id"] == key_id and rotated.json()["name"] == "rotate"
    newest = rotated.json()["api_key"]
    refused_soon(second, new)
    client(second, newest).chat.completions.create(model=GEMINI, messages=MESSAGES)

    def usage() -> list[dict[str, object]]:
        rows = json.loads(keys_cli(priced, "usage", "--json"))
        return [r for r in rows if r["key_id"] == key_id and r["requests"] == 5] and rows

    rows = wait_for(usage)
    (row,) = [r for r in rows if r["key_id"] == key_id]
    assert row["cost"] == pytest.approx(5 * PLAIN_COST)
    # Every process re-reads the spend of all with its next usage flush.
    for proxy in (priced, second):
        seen = wait_for(lambda p=proxy: (a := account(p, newest))["spend"] > 0.015 and a)
        assert seen["spend"] == pytest.approx(5 * PLAIN_COST)
        assert seen["budget"] == 5


# --- the customer's view ---------------------------------------------------------------


def test_account_shows_only_the_callers_key_and_refuses_revoked_keys(priced: Proxy) -> None:
    a_id, a_key = priced.new_key("alice", expires_in="30d")
    b_id, b_key = priced.new_key("bob")
    client(priced, a_key).chat.completions.create(model=GEMINI, messages=MESSAGES)
    seen = wait_for(lambda: (a := account(priced, a_key))["usage"] and a)
    assert set(seen) == {
        "id", "name", "tier", "expires_at", "rpm", "models", "budget", "budget_period",
        "spend", "resets_at", "usage",
    }  # fmt: skip
    assert (seen["id"], seen["name"], seen["budget"], seen["models"]) == (a_id, "alice", None, None)
    assert set(seen["usage"][0]) == {  # type: ignore[index]
        "date", "model", "requests", "prompt_tokens", "completion_tokens", "cost",
        "reasoning_tokens", "estimated_reasoning_tokens", "estimated_requests",
    }  # fmt: skip
    other = account(priced, b_key)
    assert (other["id"], other["spend"], other["usage"]) == (b_id, 0, [])
    headers = bearer(a_key)
    subscription = httpx.get(f"{priced.url}/dashboard/billing/subscription", headers=headers)
    assert subscription.json()["access_until"] > time.time() + 29 * 86400
    assert subscription.json()["has_payment_method"] is True
    bad = httpx.get(
        f"{priced.url}/v1/dashboard/billing/usage?start_date=yesterday", headers=headers
    )
    assert bad.status_code == 400
    httpx.post(f"{priced.url}/admin/revoke-key", headers=ADMIN, json={"id": a_id})
    refused = httpx.get(f"{priced.url}/account", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "inactive_api_key"
    assert httpx.get(f"{priced.url}/account").status_code == 401


# --- the request log -------------------------------------------------------------------


def test_request_log_holds_exactly_the_requests_served(priced: Proxy, upstream: StandIn) -> None:
    key_id, key = priced.new_key("log", models=[GEMINI])
    sdk = client(priced, key)
    for n in range(3):
        sdk.chat.completions.create(
            model=GEMINI, messages=MESSAGES, extra_headers={"x-request-id": f"served-{n}"}
        )
    with pytest.raises(openai.PermissionDeniedError):  # refused by the proxy: not logged
        sdk.chat.completions.create(
            model=CLAUDE, messages=MESSAGES, extra_headers={"x-request-id": "refused"}
        )
    rows = wait_for(lambda: len(r := logged(priced, key_id)) == 3 and r)
    assert [row["request_id"] for row in rows] == ["served-2", "served-1", "served-0"]
    assert rows[0] == {
        "time": rows[0]["time"],
        "request_id": "served-2",
        "key_id": key_id,
        "model": GEMINI,
        "routed_model": GEMINI,
        "status": 200,
        "duration_ms": rows[0]["duration_ms"],
        "prompt_tokens": 11,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "cost": pytest.approx(PLAIN_COST),
        "reasoning_tokens": 0,
        "reasoning_estimated": False,
        "estimated": False,
    }
    printed = json.loads(keys_cli(priced, "requests", "--key", str(key_id), "--json"))
    assert [row["request_id"] for row in printed] == ["served-2", "served-1", "served-0"]
    limited = httpx.get(
        f"{priced.url}/admin/requests?key_id={key_id}&since=1h&limit=1", headers=ADMIN
    )
    assert [row["request_id"] for row in limited.json()["data"]] == ["served-2"]
    assert "served-0" in keys_cli(priced, "requests", "--since", "1h")


def test_old_request_log_rows_are_pruned(
    priced: Proxy, make_proxy: Callable[..., Proxy], upstream: StandIn
) -> None:
    key_id, key = priced.new_key("prune")
    client(priced, key).chat.completions.create(model=GEMINI, messages=MESSAGES)
    wait_for(lambda: logged(priced, key_id))
    priced.execute_sql(
        "INSERT INTO request_log (time, request_id, key_id, status, duration_ms)"
        f" VALUES ('2020-01-01T00:00:00Z', 'ancient', {int(key_id)}, 200, 1)"
    )
    assert [r["request_id"] for r in logged(priced, key_id)][-1] == "ancient"
    # Pruning runs at start, then hourly: a second process on the same file prunes it.
    make_proxy(upstream.url, REQUEST_LOG_DAYS="7", **priced.database_env())
    rows = wait_for(lambda: len(r := logged(priced, key_id)) == 1 and r)
    assert rows[0]["request_id"] != "ancient"


def test_request_log_days_0_writes_nothing(
    make_proxy: Callable[..., Proxy], upstream: StandIn
) -> None:
    proxy = make_proxy(upstream.url, REQUEST_LOG_DAYS="0")
    key_id, key = proxy.new_key("nolog")
    client(proxy, key).chat.completions.create(model=GEMINI, messages=MESSAGES)
    usage = wait_for(
        lambda: [r for r in json.loads(keys_cli(proxy, "usage", "--json")) if r["key_id"] == key_id]
    )
    assert usage[0]["requests"] == 1  # usage still counted
    with sqlite3.connect(proxy.database) as conn:
        assert conn.execute("SELECT count(*) FROM request_log").fetchone()[0] == 0


# --- the worked example of docs/routing.md ------------------------------------------


def test_readme_plans_and_budgets_example_runs_as_written(
    make_proxy: Callable[..., Proxy], standin: StandIn, tmp_path: Path
) -> None:
    section = doc_section("docs/routing.md", "Plans and budgets")
    (toml,) = fenced_blocks(section, "toml")
    blocks = fenced_blocks(section, "bash")
    assert len(blocks) == 3
    workdir = tmp_path / "proxy0"  # where make_proxy starts its first proxy
    workdir.mkdir()
    (workdir / "routes.toml").write_text(toml)
    dotenv = (
        f"ADMIN_SECRET={ADMIN_SECRET}\nDATABASE_PATH=./data/proxy.db\nROUTES_FILE=routes.toml\n"
    )
    proxy = make_proxy(standin.url, dotenv=dotenv, ADMIN_SECRET=None, DATABASE_PATH=None)
    result = run_pasted(proxy, blocks, tmp_path)
    out = result.stdout
    print(out)
    assert result.returncode == 0, result.stderr + out
    assert '"object": "chat.completion"' in out
    assert '"code":"model_not_allowed"' in out and "Allowed models: gemini-3-flash" in out
    account_line = next(line for line in out.splitlines() if line.startswith('{"id":1,'))
    seen = json.loads(account_line)
    # 11 prompt tokens at $0.50 and 5 completion tokens at $3.00 per million.
    assert seen["spend"] == pytest.approx((11 * 0.5 + 5 * 3.0) / 1e6)
    assert (seen["budget"], seen["budget_period"], seen["rpm"]) == (1.0, "total", 20)
    assert seen["usage"][0]["cost"] == pytest.approx(seen["spend"])
    assert (
        '"data":[{"id":"gemini-3-flash"' in out
        and "claude-sonnet-4-5" not in out.split('"data":[{"id":"gemini-3-flash"')[1].split("\n")[0]
    )
    assert '"hard_limit_usd":40.0' in out
    assert '{"object":"list","total_usage":' in out
    assert "403\n200\n" in out
    assert re.search(r"^time +request_id +key_id", out, re.M)
