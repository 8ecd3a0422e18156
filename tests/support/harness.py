"""The process harness: real `mitmdump` proxies started the way users start them.

Each proxy is started the documented way (`python -m apipod_proxy.serve`, which
execs `mitmdump -q --mode reverse:URL -s addons/apipod.py --listen-port PORT`) in
a temporary folder, so it reads no `.env` but the one a test writes.

The benchmark (`bench/`) starts its processes with the same functions: `free_port`,
`proxy_env`, `spawn`, `wait_ready` and `stop_process` are the one place that knows how
a proxy is started, waited for and stopped.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import httpx

try:
    from compression import zstd
except ImportError:  # Python before 3.14
    from backports import zstd

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "upstream-secret-key-0000"
ADMIN_SECRET = "test-admin-secret-0123456789"

#: The fields of a key object (GET /admin/keys, `keys.py list --json`), of a usage row
#: (GET /admin/usage, `keys.py usage --json`) and of a request-log row (GET
#: /admin/requests, `keys.py requests --json`), in order. Operators' scripts rely on them,
#: so the tests keep their own copy instead of importing storage/sqlite.py's.
KEY_OBJECT_FIELDS = [
    "id",
    "name",
    "tier",
    "active",
    "created_at",
    "expires_at",
    "prefix",
    "rpm",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
    "budget",
    "budget_period",
    "spend",
    "models",
]
USAGE_ROW_FIELDS = [
    "key_id",
    "name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "reasoning_tokens",
    "estimated_reasoning_tokens",
    "estimated_requests",
]
REQUEST_ROW_FIELDS = [
    "time",
    "request_id",
    "key_id",
    "model",
    "routed_model",
    "status",
    "duration_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost",
    "reasoning_tokens",
    "reasoning_estimated",
    "estimated",
]

#: The content encodings the proxy decodes in request bodies, and how to make and read them.
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}
DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": zstd.decompress,
}

#: The tool that clients offer in the tests, in OpenAI's shape and in Anthropic's.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_TOOL_ANTHROPIC: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

SERVE = [sys.executable, "-m", "apipod_proxy.serve"]


class StartError(RuntimeError):
    """A process exited, or did not become ready, while it was being started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proxy_env(
    upstream_url: str,
    port: int,
    database: Path,
    admin_secret: str = ADMIN_SECRET,
    **overrides: str | None,
) -> dict[str, str]:
    """The proxy's environment: ours without the caller's apipod settings, plus these.

    An override of None removes a variable, so that a `.env` can supply it.
    """
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ANTIGRAVITY_", "ADMIN_", "DATABASE_", "REDIS_"))
        },
        "ANTIGRAVITY_URL": upstream_url,
        "ANTIGRAVITY_KEY": UPSTREAM_KEY,
        "ADMIN_SECRET": admin_secret,
        "PORT": str(port),
        "DATABASE_PATH": str(database),
        **overrides,
    }
    return {k: v for k, v in env.items() if v is not None}


def _limit_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def spawn(
    command: list[str],
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    file_limit: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` with its stdout and stderr in `log`, and RLIMIT_NOFILE `file_limit`
    (soft and hard) if given.

    `python -m apipod_proxy.serve` execs mitmdump, so the PID is the proxy's own.
    """
    limit = None if file_limit is None else lambda: _limit_files(file_limit)
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit
        )


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    describe: Callable[[], str],
    seconds: float = 30,
) -> None:
    """Poll `ready` until it is true; StartError (with `describe()`, say the log) if the
    process exits first or `seconds` pass. Connection errors count as not ready yet."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"exited with {process.returncode}:\n{describe()}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise StartError(f"did not become ready in {seconds:g}s:\n{describe()}")


def bearer(key: str) -> dict[str, str]:
    """The header that presents `key` the way OpenAI clients do."""
    return {"authorization": f"Bearer {key}"}


def chat_stream_chunks(
    proxy: Proxy, headers: dict[str, str], body: dict[str, Any]
) -> list[dict[str, Any]]:
    """POST a streaming chat completion through `proxy`; the JSON of every `data:` event
    but [DONE], in order."""
    chunks = []
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", headers=headers, json=body, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks


def wait_for[T](condition: Callable[[], T], timeout: float = 10.0) -> T:
    """Call `condition` until it returns something true, and return that; an
    AssertionError when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def healthy(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200


def upstream_checked(url: str, seconds: float = 10) -> dict[str, object]:
    """Wait until the proxy's startup checks of its upstream (the endpoint probe, the
    model check) are done, so their requests never land in a test's record of what the
    upstream received; /health's body then."""
    deadline = time.monotonic() + seconds
    while True:
        health = httpx.get(f"{url}/health", timeout=2).json()
        if health.get("upstream_checks", "done") == "done" or time.monotonic() > deadline:
            return dict(health)
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10) -> int:
    """SIGTERM (the proxy drains), then SIGKILL after `grace` seconds; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Proxy:
    """A running proxy process and what tests need to talk to it."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    env: dict[str, str]
    keys: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.workdir / "data" / "proxy.db"

    def execute_sql(self, sql: str) -> None:
        """Run one statement on this proxy's database, behind the proxy's back."""
        if "DATABASE_URL" in self.env:
            import psycopg

            with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
                conn.execute(sql)
            return
        import sqlite3

        with sqlite3.connect(self.database) as db:
            db.execute(sql)

    def database_env(self) -> dict[str, str]:
        """The settings naming this proxy's database, for the CLI or another proxy."""
        names = ("DATABASE_PATH", "DATABASE_URL")
        return {name: self.env[name] for name in names if name in self.env}

    def log(self) -> str:
        return (self.workdir / "proxy.log").read_text(errors="replace")

    def new_key(self, name: str = "tester", **fields: object) -> tuple[int, str]:
        """Create a key through the admin API: its id and its plaintext (kept in `keys`)."""
        response = httpx.post(
            f"{self.url}/admin/create-key",
            headers={"x-admin-secret": ADMIN_SECRET},
            json={"name": name, **fields},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        self.keys.append(created["api_key"])
        return created["id"], created["api_key"]

    def create_key(self, name: str = "tester", **fields: object) -> str:
        return self.new_key(name, **fields)[1]

    def usage_rows(self, key_id: int, requests: int) -> list[dict[str, Any]]:
        """This key's /admin/usage rows, once `requests` requests are counted (usage is
        flushed about once a second), or as they are after 10 s."""
        deadline = time.monotonic() + 10
        while True:
            response = httpx.get(
                f"{self.url}/admin/usage", headers={"x-admin-secret": ADMIN_SECRET}
            )
            rows = [row for row in response.json()["data"] if row["key_id"] == key_id]
            if sum(row["requests"] for row in rows) >= requests or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)

    def usage_from_cli(self) -> list[dict[str, object]]:
        """`scripts/keys.py usage --json` on this proxy's database (works once it exited)."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "keys.py"), "usage", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.database_env()},
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop(self) -> int:
        return stop_process(self.process)


def start_proxy(
    workdir: Path,
    upstream_url: str,
    dotenv: str | None = None,
    command: list[str] | None = None,
    *,
    file_limit: int | None = None,
    **overrides: str | None,
) -> Proxy:
    """Start a proxy and wait until /health answers.

    `dotenv` is written to the proxy's `.env`; an override of None removes a variable
    from the environment, so that `.env` supplies it. `command` replaces the launcher
    (SERVE), e.g. with a plain mitmdump command line. `file_limit` sets the process's
    RLIMIT_NOFILE (soft and hard).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if dotenv is not None:
        (workdir / ".env").write_text(dotenv)
    port = free_port()
    defaults = {"UPSTREAM_TIMEOUT": "30", "DEFAULT_RPM": "0"}
    env = proxy_env(upstream_url, port, workdir / "data" / "proxy.db", **{**defaults, **overrides})
    process = spawn(command or SERVE, workdir, workdir / "proxy.log", env, file_limit=file_limit)
    proxy = Proxy(process, port, workdir, env)
    try:
        wait_ready(process, healthy(proxy.url), proxy.log)
    except StartError as exc:
        raise RuntimeError(f"proxy {exc}") from None
    upstream_checked(proxy.url)
    return proxy


# --- the README and docs/, run as a newcomer pastes them -----------------------------------


def doc_section(page: str, title: str) -> str:
    """The text of the section titled `title` (`#` to `###`) of `page` (`README.md` or
    `docs/NAME.md`), up to the next heading of the same or a higher level."""
    text = (ROOT / page).read_text()
    match = re.search(rf"^(#{{1,3}}) {re.escape(title)}\n", text, re.M)
    assert match, f"{page} has no section {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M)
    body, fenced = [], False
    for line in text[match.end() :].splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and end.match(line):
            break
        body.append(line)
    return "".join(body)


def fenced_blocks(section: str, language: str) -> list[str]:
    """The code blocks of `language` (```bash, ```toml, ...) in `section`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def as_pasted(script: str, port: int) -> str:
    """Doc bash blocks pointed at `port`: the `export PORT=8081` line and any
    hard-coded `localhost:8081` name it instead."""
    script = re.sub(r"^export PORT=8081\b", f"export PORT={port}", script, flags=re.M)
    return script.replace("localhost:8081", f"127.0.0.1:{port}")


def run_pasted(proxy: Proxy, blocks: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run doc bash blocks in the proxy's folder the way a user pastes them after
    `make run` (a `.venv` and `scripts/` at hand, `PORT` exported), against this proxy's
    real port."""
    (proxy.workdir / ".venv").symlink_to(Path(sys.prefix))
    (proxy.workdir / "scripts").symlink_to(ROOT / "scripts")
    script = "set -euo pipefail\n" + as_pasted("\n".join(blocks), proxy.port)
    return subprocess.run(
        ["bash", "-c", script],
        cwd=proxy.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "PORT": str(proxy.port)},
    )
