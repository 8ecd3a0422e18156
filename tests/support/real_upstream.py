"""The real tier: npm packages installed once into a cache, and the real
antigravity-claude-proxy run offline in front of the fake Google backend.

- `npm_package(spec, binary, cache)` installs an npm package (pinned) into a cache
  folder (`~/.cache/<cache>`, or `$APIPOD_NPM_CACHE/<cache>`) and returns its path;
  Claude Code's and Codex CLI's tests and this tier share it. Without npm the test
  skips with one line; under CI=true it fails instead.
- `start_antigravity(workdir, fake)` runs the package on a free port, with an API key,
  its HOME in `workdir` (so its config dir, `~/.config/antigravity-proxy/`, holds a
  pre-seeded OAuth account and needs no browser), under `node --import offline.mjs`
  so that every Google host goes to `fake` and nothing reaches the internet.

`python -m tests.support.real_upstream` installs the three packages (Codex CLI too) into
their caches ahead of the tests (`make test` does, so that a first install does not count
against a test's timeout); without npm it says so and exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.google_fake import GoogleFake
from tests.support.harness import UPSTREAM_KEY, Proxy, free_port, stop_process, wait_ready
from tests.support.services import in_ci

ANTIGRAVITY_VERSION = "2.0.4"
ANTIGRAVITY = f"antigravity-claude-proxy@{ANTIGRAVITY_VERSION}"
#: Claude Code from the npm registry (a major version: its tests follow the newest 2.x).
CLAUDE_CODE = "@anthropic-ai/claude-code@2"
#: Codex CLI, pinned: its requests are recorded as fixtures (tests/support/codex.py).
CODEX_VERSION = "0.171.0"
CODEX = f"@openai/codex@{CODEX_VERSION}"
OFFLINE = Path(__file__).parent / "node" / "offline.mjs"
ACCOUNT_EMAIL = "fake-account@example.com"


#: The words of the skip without Node or npm, by which conftest folds them into one line.
NO_NPM = "not installed: the real-upstream, Claude Code and Codex tests need Node and npm"


def npm_cache(name: str) -> Path:
    root = os.environ.get("APIPOD_NPM_CACHE")
    return Path(root) / name if root else Path.home() / ".cache" / name


def npm_package(spec: str, binary: str, cache: str) -> Path:
    """`binary` (relative to the install folder) of npm `spec`, installed once into the
    cache folder `cache`. Skips (fails under CI=true) when npm or node is missing."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} {NO_NPM}; to run them, apt-get install nodejs npm"
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    folder = npm_cache(cache)
    target = folder / binary
    stamp = folder / ".installed-spec"
    if target.exists() and not stamp.exists():
        stamp.write_text(spec)  # installed before stamps existed
    if not target.exists() or stamp.read_text() != spec:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), spec],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm install {spec} failed:\n{done.stderr[-2000:]}"
        stamp.write_text(spec)
    assert target.exists(), f"npm installed {spec} but {target} is missing"
    return target


def claude_code_binary() -> Path:
    """`claude` (its tests and the real tier's share the install)."""
    return npm_package(CLAUDE_CODE, "node_modules/.bin/claude", "apipod-claude-code")


def codex_binary() -> Path:
    """`codex`: a Node launcher whose native binary npm installs beside it, from the
    platform package (`@openai/codex-linux-x64`, about 400 MB); it runs offline."""
    return npm_package(CODEX, "node_modules/.bin/codex", "apipod-codex")


def antigravity_package() -> Path:
    """The folder of the installed package (its src/ is the reference for the fake)."""
    entry = npm_package(
        ANTIGRAVITY, "node_modules/antigravity-claude-proxy/src/index.js", "apipod-antigravity"
    )
    return entry.parents[1]


@dataclass
class Antigravity:
    """A running antigravity-claude-proxy and the fake Google backend behind it."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path
    fake: GoogleFake
    key: str = UPSTREAM_KEY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "antigravity.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


def seed_home(home: Path) -> None:
    """The package's config dir with one OAuth account (the fake refreshes its token)
    and a config that answers a used-up quota at once instead of waiting for its reset."""
    config_dir = home / ".config" / "antigravity-proxy"
    config_dir.mkdir(parents=True, exist_ok=True)
    accounts = {
        "accounts": [
            {
                "email": ACCOUNT_EMAIL,
                "source": "oauth",
                "refreshToken": "1//fake-refresh-token",
                "enabled": True,
                "addedAt": "2026-01-01T00:00:00.000Z",
            }
        ],
        "settings": {},
        "activeIndex": 0,
    }
    (config_dir / "accounts.json").write_text(json.dumps(accounts, indent=2))
    # maxWaitBeforeErrorMs: with the default (2 min) a quota error of "60s" waits a minute.
    (config_dir / "config.json").write_text(json.dumps({"maxWaitBeforeErrorMs": 1}))


def start_antigravity(workdir: Path, fake: GoogleFake, package: Path | None = None) -> Antigravity:
    package = package or antigravity_package()
    home = workdir / "antigravity-home"
    seed_home(home)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PORT": str(port),
        "API_KEY": UPSTREAM_KEY,
        "APIPOD_FAKE_GOOGLE": fake.url,
        "NO_COLOR": "1",
    }
    log = (home / "antigravity.log").open("wb")
    process = subprocess.Popen(
        ["node", "--import", str(OFFLINE), str(package / "src" / "index.js")],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Antigravity(process, port, home, fake)

    def ready() -> bool:
        try:
            return httpx.get(f"{running.url}/health", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_ready(process, ready, running.log)
    return running


def claude_code_env(home: Path, base_url: str, key: str, model: str | None) -> dict[str, str]:
    """The environment `claude -p` runs in against `base_url` (no telemetry, no update).
    `model` None: no model variable at all, so Claude Code sends its own default names."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    if model is not None:
        env |= {"ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model}
    return env


def claude_says(claude_code: Path, env: dict[str, str], cwd: Path, proxy: Proxy) -> str:
    """What `claude -p "Say hello"` printed, run in `env` from `cwd`; a failed run fails
    the test with Claude Code's output and the tail of `proxy`'s log."""
    done = subprocess.run(
        [str(claude_code), "-p", "Say hello"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{proxy.log()[-3000:]}"
    return done.stdout


#: The line conftest points every skip for a missing npm at.
NPM_SKIP_LINE = npm_package.__code__.co_firstlineno


def main() -> None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        print("real_upstream: node/npm not found; the real-upstream tests will skip")
        return
    for install in (antigravity_package, claude_code_binary, codex_binary):
        print(f"real_upstream: {install()}")


if __name__ == "__main__":
    main()
