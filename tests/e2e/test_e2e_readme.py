"""The README's examples after `make run`, and those of docs/clients.md and docs/operations.md,
run as a newcomer would paste them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support.harness import (
    ADMIN_SECRET,
    UPSTREAM_KEY,
    as_pasted,
    doc_section,
    fenced_blocks,
    run_pasted,
)
from tests.support.standin import StandIn


def test_try_it_examples_work_against_a_real_proxy(
    make_proxy, standin: StandIn, tmp_path: Path
) -> None:
    first, more, operate = (
        fenced_blocks(doc_section("README.md", "First key and first request"), "bash"),
        fenced_blocks(doc_section("README.md", "More to try"), "bash"),
        fenced_blocks(doc_section("docs/operations.md", "Operate it"), "bash"),
    )
    assert (len(first), len(more), len(operate)) == (1, 2, 2)
    blocks = first + more + operate
    # The proxy takes its secret and database from .env, as after `make run`.
    dotenv = f"ADMIN_SECRET={ADMIN_SECRET}\nDATABASE_PATH=./data/proxy.db\n"
    proxy = make_proxy(standin.url, dotenv=dotenv, ADMIN_SECRET=None, DATABASE_PATH=None)
    standin.reset()
    result = run_pasted(proxy, blocks, tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert re.search(r'"api_key":"apk_[A-Za-z0-9_-]{43}".*"name":"bob"', out)
    assert '"object": "chat.completion"' in out
    assert out.count('"object": "chat.completion.chunk"') >= 2
    assert "data: [DONE]" in out
    assert "HTTP/1.1 401" in out and "HTTP/1.1 403" in out
    assert '{"status":"ok","database":"ok","admin":true,"upstream_api":"both"' in out
    # "Operate it": the CLI and the admin API, on the key "Try it" created first.
    assert "key 1 revoked" in out and "key 1 activated" in out
    assert re.search(r"^id +name +tier +active", out, re.M)
    assert re.search(r"^ +1 +alice +elite +yes", out, re.M)
    assert out.count('{"id":1,"active":') == 2
    assert '{"data":[{"id":1,"name":"alice"' in out
    assert 'apipod_requests_total{model="' in out
    # Both completions went upstream, routed and with the upstream's key only.
    routed = [r.json()["model"] for r in standin.received]
    assert len(routed) == 2
    assert set(routed) <= {"claude-sonnet-4-5", "gemini-3-flash"}
    assert all(r.headers["x-api-key"] == UPSTREAM_KEY for r in standin.received)


def test_client_examples_run_against_a_real_proxy(proxy, standin: StandIn) -> None:
    """The Python snippets of docs/clients.md, with the real port and a real key."""
    blocks = fenced_blocks(doc_section("docs/clients.md", "Clients"), "python")
    assert len(blocks) == 3
    key = proxy.create_key("readme-clients")
    for block in blocks:
        code = block.replace("http://localhost:8081", proxy.url).replace("apk_...", key)
        if "print(" not in code:  # the Responses example prints its own answer
            code += "\nprint(reply.choices[0].message.content if 'reply' in dir() else "
            code += "message.content[0].text)\n"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("hello from ")


def test_dashboard_endpoint_examples_work(proxy, tmp_path: Path) -> None:
    """The curl lines of "Dashboard" (docs/operations.md), with the admin secret and PORT
    in the environment."""
    (block,) = fenced_blocks(doc_section("docs/operations.md", "Dashboard"), "bash")
    script = "set -euo pipefail\n" + as_pasted(block, proxy.port)
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "ADMIN_SECRET": ADMIN_SECRET,
            "PORT": str(proxy.port),
        },
    )
    assert result.returncode == 0, result.stderr
    answers, text, decoder = [], result.stdout, json.JSONDecoder()
    while text.strip():  # curl prints each answer without a newline after it
        answer, end = decoder.raw_decode(text.strip())
        answers.append(answer)
        text = text.strip()[end:]
    stats, routes, series = answers
    assert {"requests_per_second", "active_streams", "error_rate"} <= set(stats)
    assert routes["source"] == {"kind": "built-in"} and "cursor-pro-sonnet" in routes["aliases"]
    assert series["bucket"] == "hour" and len(series["buckets"]) == 24
