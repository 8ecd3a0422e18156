"""The process harness: real `mitmdump` proxies started the way users start them.

Each proxy is started the documented way (`python -m apipod_proxy.serve`, which
execs `mitmdump -q --mode reverse:URL -s addons/apipod.py --listen-port PORT`) in
a temporary folder, so it reads no `.env` but the one a test writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "upstream-secret-key-0000"
ADMIN_SECRET = "test-admin-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def log(self) -> str:
        return (self.workdir / "proxy.log").read_text(errors="replace")

    def create_key(self, name: str = "tester", **fields: object) -> str:
        response = httpx.post(
            f"{self.url}/admin/create-key",
            headers={"x-admin-secret": ADMIN_SECRET},
            json={"name": name, **fields},
        )
        assert response.status_code == 201, response.text
        key = response.json()["api_key"]
        self.keys.append(key)
        return key

    def usage_from_cli(self) -> list[dict[str, object]]:
        """`scripts/keys.py usage --json` on this proxy's database (works once it exited)."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "keys.py"), "usage", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "DATABASE_PATH": str(self.database)},
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_proxy(
    workdir: Path, upstream_url: str, dotenv: str | None = None, **overrides: str | None
) -> Proxy:
    """Start a proxy and wait until /health answers.

    `dotenv` is written to the proxy's `.env`; an override of None removes a variable
    from the environment, so that `.env` supplies it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if dotenv is not None:
        (workdir / ".env").write_text(dotenv)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTIGRAVITY_", "ADMIN_"))},
        "ANTIGRAVITY_URL": upstream_url,
        "ANTIGRAVITY_KEY": UPSTREAM_KEY,
        "ADMIN_SECRET": ADMIN_SECRET,
        "PORT": str(port),
        "DATABASE_PATH": str(workdir / "data" / "proxy.db"),
        "UPSTREAM_TIMEOUT": "30",
        "DEFAULT_RPM": "0",
        **overrides,
    }
    env = {k: v for k, v in env.items() if v is not None}
    with open(workdir / "proxy.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "apipod_proxy.serve"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proxy = Proxy(process, port, workdir, env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited with {process.returncode}:\n{proxy.log()}")
        try:
            if httpx.get(f"{proxy.url}/health", timeout=1).status_code == 200:
                return proxy
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(f"proxy did not become healthy:\n{proxy.log()}")
