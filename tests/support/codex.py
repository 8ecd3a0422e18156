"""Codex CLI (npm `@openai/codex`), installed once into a cache and run one turn at a time.

- `codex_binary()` (real_upstream.py) installs the pinned package (CODEX_VERSION) into
  `~/.cache/apipod-codex` (or `$APIPOD_NPM_CACHE/apipod-codex`) as it installs Claude
  Code: it skips with one line without npm and fails under CI=true. The package is a
  small Node launcher; the native binary ships in a platform package
  (`@openai/codex-linux-x64`, an optional dependency npm installs beside it, about
  400 MB). Installed, it runs offline.
- `codex_config(base_url)` is the `config.toml` a user writes (the README's "Codex CLI"
  block, copy-paste true): a provider `apipod` with `wire_api = "responses"`.
- `run_codex(codex, workdir, base_url, key, prompt)` writes that config into a fresh
  CODEX_HOME and runs `codex exec` once, non-interactively (`EXEC_FLAGS`, `TEST_SETTINGS`):
  no approvals or sandbox, no git-repo check, no session files, no retries, and no
  network but the provider. Without `features.plugins=false` Codex syncs its plugin
  catalogue from github.com and chatgpt.com, and without `analytics.enabled=false` it
  sends metrics to ab.chatgpt.com (both seen with strace, 0.171.0).
- `ResponsesRecorder` is a tiny Responses-API upstream: it records every request and
  answers each POST /v1/responses with the typed event stream of one output item: a text
  message, or (with `offer_tool`, while Codex offers its shell tool and no tool output
  came back yet) a function call that runs `TOOL_COMMAND`. After a tool output it answers
  "The tool said: <output>".

`python -m tests.support.codex` records what Codex sends into tests/fixtures/codex/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.harness import ROOT
from tests.support.real_upstream import codex_binary
from tests.support.standin_base import Received, ThreadedServer

#: The variable the README's provider reads the apipod key from (`env_key`).
KEY_VARIABLE = "APIPOD_API_KEY"
#: The model the README's config names (the stand-ins and the recorder take any).
MODEL = "claude-sonnet-4-5"
#: The harmless command the tool turn makes Codex run, and what it prints.
TOOL_OUTPUT = "apipod-codex-ok"
TOOL_COMMAND = f"echo {TOOL_OUTPUT}"
#: Seconds one `codex exec` may take (a turn takes about a second).
CODEX_TIMEOUT = 120
FIXTURES = ROOT / "tests" / "fixtures" / "codex"

#: `codex exec`'s own flags for a run nobody watches.
EXEC_FLAGS = [
    "--skip-git-repo-check",  # the project folder is no git repository
    "--dangerously-bypass-approvals-and-sandbox",  # run the one echo, no prompt, no bwrap
    "--ephemeral",  # no session files
    "--color",
    "never",
]
#: `-c` overrides for the tests, on top of the README's config.
TEST_SETTINGS = [
    "features.plugins=false",  # else: git ls-remote github.com, api.github.com, chatgpt.com
    "analytics.enabled=false",  # else: metrics to ab.chatgpt.com
    "check_for_update_on_startup=false",
    # Fail at once: by default Codex retries a failed request 4 times and a dropped
    # stream 5 times, and waits 300 s for a silent stream.
    "model_providers.apipod.request_max_retries=0",
    "model_providers.apipod.stream_max_retries=0",
    "model_providers.apipod.stream_idle_timeout_ms=30000",
]


def codex_config(base_url: str, model: str = MODEL) -> str:
    """The `~/.codex/config.toml` that points Codex at apipod (`base_url` ends in /v1)."""
    return f"""\
model = "{model}"
model_provider = "apipod"

[model_providers.apipod]
name = "Apipod"
base_url = "{base_url}"
env_key = "{KEY_VARIABLE}"
wire_api = "responses"
"""


@dataclass
class CodexRun:
    returncode: int
    stdout: str  # the final message
    stderr: str  # the transcript: the prompt, each command run, errors
    last_message: str  # what `-o` wrote: the final message

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_codex(
    codex: Path,
    workdir: Path,
    base_url: str,
    key: str,
    prompt: str,
    *,
    model: str = MODEL,
    headers: dict[str, str] | None = None,
    timeout: float = CODEX_TIMEOUT,
) -> CodexRun:
    """One `codex exec` turn against `base_url`, with HOME and CODEX_HOME in `workdir`;
    `headers` go on every request Codex makes (the provider's `http_headers`)."""
    home = workdir / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(codex_config(base_url, model))
    project = workdir / "project"
    project.mkdir(exist_ok=True)
    last = workdir / "last-message.txt"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "CODEX_HOME": str(home),
        KEY_VARIABLE: key,
        "NO_COLOR": "1",
    }
    if "RUST_LOG" in os.environ:  # RUST_LOG=debug: Codex's log on stderr
        env["RUST_LOG"] = os.environ["RUST_LOG"]
    settings = list(TEST_SETTINGS)
    if headers:
        table = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in headers.items())
        settings.append(f"model_providers.apipod.http_headers={{ {table} }}")
    overrides = [arg for setting in settings for arg in ("-c", setting)]
    command = [str(codex), "exec", *overrides, *EXEC_FLAGS, "-C", str(project), "-o", str(last)]
    done = subprocess.run(
        [*command, prompt],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    message = last.read_text() if last.exists() else ""
    return CodexRun(done.returncode, done.stdout, done.stderr, message)


# --- a recording Responses-API upstream ----------------------------------------------------


def sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


class ResponsesRecorder(ThreadedServer):
    """Records every request; answers POST /v1/responses with a canned stream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Offer a shell call (while a shell tool is offered and no output came back).
        self.offer_tool = False
        self.text = "Hello from the recorder."
        #: Send only these event types (None: the whole typed sequence).
        self.only: set[str] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        entry = await self.record(request)
        if request.method == "POST" and request.path == "/v1/responses":
            return await self.respond(request, entry.json())
        return web.json_response(
            {"error": {"message": f"no route {request.method} {request.path}"}}, status=404
        )

    async def respond(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in self.events(body):
            await response.write(sse(event))
        await response.write_eof()
        return response

    def events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        number = len(self.received)
        rid = f"resp_rec_{number}"
        model = body.get("model", MODEL)
        answered = any(
            isinstance(item, dict) and item.get("type") == "function_call_output"
            for item in body.get("input") or []
        )
        tool = shell_tool(body.get("tools") or [])
        if self.offer_tool and tool is not None and not answered:
            item: dict[str, Any] = {
                "type": "function_call",
                "id": f"fc_rec_{number}",
                "call_id": f"call_rec_{number}",
                "name": tool["name"],
                "arguments": json.dumps(shell_arguments(tool)),
                "status": "completed",
            }
        else:
            text = self.text
            if answered:
                text = "The tool said: " + tool_outputs(body)
            item = {
                "type": "message",
                "id": f"msg_rec_{number}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        events = full_stream(rid, model, item)
        if self.only is not None:
            events = [event for event in events if event["type"] in self.only]
        return [{**event, "sequence_number": n} for n, event in enumerate(events)]


#: The usage the recorder reports for every answer.
USAGE = {
    "input_tokens": 25,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 30,
}


def full_stream(rid: str, model: str, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The typed events of a one-item answer, as the Responses API streams it."""
    base = {"id": rid, "object": "response", "model": model, "created_at": 1700000000}
    started = {**item, "status": "in_progress"}
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        started["content"] = []
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        middle = [
            {"type": "response.content_part.added", **where, "content_index": 0, "part": part},
            *(
                {"type": "response.output_text.delta", **where, "content_index": 0, "delta": d}
                for d in pieces(text)
            ),
            {"type": "response.output_text.done", **where, "content_index": 0, "text": text},
            {
                "type": "response.content_part.done",
                **where,
                "content_index": 0,
                "part": item["content"][0],
            },
        ]
    else:
        started["arguments"] = ""
        arguments = item["arguments"]
        middle = [
            *(
                {"type": "response.function_call_arguments.delta", **where, "delta": d}
                for d in pieces(arguments, 9)
            ),
            {"type": "response.function_call_arguments.done", **where, "arguments": arguments},
        ]
    return [
        {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}},
        {
            "type": "response.in_progress",
            "response": {**base, "status": "in_progress", "output": []},
        },
        {"type": "response.output_item.added", "output_index": 0, "item": started},
        *middle,
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {
            "type": "response.completed",
            "response": {**base, "status": "completed", "output": [item], "usage": USAGE},
        },
    ]


def pieces(text: str, size: int = 6) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def shell_tool(tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function tool Codex runs shell commands with, if it offered one."""
    for name in ("exec_command", "shell_command", "shell"):
        for tool in tools:
            if tool.get("type") == "function" and tool.get("name") == name:
                return tool
    return None


def shell_arguments(tool: dict[str, Any]) -> dict[str, Any]:
    """Arguments that make `tool` run TOOL_COMMAND, by the names its schema declares."""
    properties = (tool.get("parameters") or {}).get("properties") or {}
    if "cmd" in properties:
        return {"cmd": TOOL_COMMAND}
    if properties.get("command", {}).get("type") == "array":
        return {"command": ["bash", "-lc", TOOL_COMMAND]}
    return {"command": TOOL_COMMAND}


def tool_outputs(body: dict[str, Any]) -> str:
    outputs = [
        item.get("output")
        for item in body.get("input") or []
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]
    return "; ".join(o if isinstance(o, str) else json.dumps(o) for o in outputs)


# --- fixtures: what Codex sends ------------------------------------------------------------

#: What `fixture` writes for the folder a run used (its paths vary from run to run).
WORKDIR_PLACEHOLDER = "/home/user"


def fixture(received: Received, workdir: Path) -> dict[str, Any]:
    """A request as a fixture: the authorization header left out, the run's folder and
    the recorder's port replaced, so that two recordings differ only in ids and dates."""
    headers = {k: v for k, v in received.headers.items() if k != "authorization"}
    headers["host"] = re.sub(r":\d+$", ":8081", headers.get("host", ""))
    text = json.dumps(
        {"method": received.method, "path": received.path, "headers": headers, "body": None}
    )
    record = json.loads(text.replace(str(workdir), WORKDIR_PLACEHOLDER))
    body = received.body.decode().replace(str(workdir), WORKDIR_PLACEHOLDER)
    record["body"] = json.loads(body)
    return record


def record_fixtures(codex: Path, folder: Path = FIXTURES) -> list[Path]:
    """Run Codex against the recorder and write what it sent: `request.json` (a text turn,
    the README's model), `request-tool-output.json` (the request after it ran the offered
    shell call) and `request-gpt-5.5.json` (a model Codex knows: other tools and fields)."""
    folder.mkdir(parents=True, exist_ok=True)
    recorder = ResponsesRecorder().start()
    written = []
    try:
        runs = [
            ("request.json", MODEL, False, 0),
            ("request-tool-output.json", MODEL, True, 1),
            ("request-gpt-5.5.json", "gpt-5.5", False, 0),
        ]
        for name, model, tool, index in runs:
            recorder.reset()
            recorder.offer_tool = tool
            with tempfile.TemporaryDirectory() as scratch:
                workdir = Path(scratch)
                prompt = f"Run {TOOL_COMMAND}" if tool else "Say hello"
                run = run_codex(
                    codex, workdir, f"{recorder.url}/v1", "apk_fixture", prompt, model=model
                )
                assert run.returncode == 0, run.describe()
                record = fixture(recorder.received[index], workdir)
            path = folder / name
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    finally:
        recorder.stop()
    return written


def main() -> None:
    for path in record_fixtures(codex_binary()):
        print(f"codex: wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
