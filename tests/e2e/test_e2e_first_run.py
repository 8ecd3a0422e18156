"""What a new user meets on a first run (issue 9, items 6 to 8), through real mitmdump.

- Plain `mitmdump --mode reverse:URL -s addons/apipod.py` (no --listen-port) listens on
  PORT, and its "ready" line names where it listens, where it forwards and the routes.
- A listen port equal to the upstream's stops start-up with one line.
- A PORT already in use: one line naming PORT, and no "ready" line.
- A relative DATABASE_PATH is the same file for the proxy and the key script, from any
  folder; a key script about to create a new database says so.
- The README's first screen, walked in a fresh clone: `make run` (its recipes), the
  upstream's two lines of `.env`, the first key and request, and Ctrl-C draining.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.harness import (
    ADMIN_SECRET,
    ROOT,
    UPSTREAM_KEY,
    Proxy,
    as_pasted,
    doc_section,
    fenced_blocks,
    free_port,
    healthy,
    spawn,
    upstream_checked,
    wait_ready,
)
from tests.support.standin import StandIn

MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
ADDON = str(ROOT / "addons" / "apipod.py")


def plain_mitmdump(upstream_url: str) -> list[str]:
    """The design card's command: no --listen-port."""
    return [MITMDUMP, "-q", "--mode", f"reverse:{upstream_url}", "-s", ADDON]


def wait_for_lines(proxy: Proxy, text: str) -> list[str]:
    """The log lines holding `text`, once there are some (the log trails the socket)."""
    deadline = time.monotonic() + 10
    while not (lines := [x for x in proxy.log().splitlines() if text in x]):
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    return lines


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run until exit; a proxy that starts serving instead fails with TimeoutExpired."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIGRAVITY_", "ADMIN_"))}
    base.pop("DATABASE_PATH", None)
    return subprocess.run(
        command, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_plain_mitmdump_listens_on_port_and_says_where(
    make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    # The harness puts PORT in the environment and waits for /health on it.
    proxy = make_proxy(standin.url, command=plain_mitmdump(standin.url))
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {proxy.create_key()}"},
        json={"model": "gemini-3-flash", "messages": []},
    )
    assert response.status_code == 200
    [ready] = wait_for_lines(proxy, "apipod ready:")
    assert "listening on " in ready and f"http://0.0.0.0:{proxy.port}" in ready
    assert f"forwarding to {standin.url}" in ready
    assert "routes built in" in ready


def test_forwarding_to_itself_stops_startup_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    env = {"ANTIGRAVITY_KEY": "k", "ANTIGRAVITY_URL": upstream, "PORT": str(port)}
    env["DATABASE_PATH"] = str(tmp_path / "proxy.db")
    for command in (plain_mitmdump(upstream), [sys.executable, "-m", "apipod_proxy.serve"]):
        result = run(command, tmp_path, **env)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        [line] = [x for x in output.splitlines() if "the proxy would forward to itself" in x]
        assert f"PORT {port} is also the upstream's port ({upstream})" in line
        assert "apipod ready" not in output and "Traceback" not in output


def test_a_port_in_use_is_one_line_naming_port_and_no_ready_line(
    tmp_path: Path, standin: StandIn
) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        env = {"ANTIGRAVITY_KEY": "k", "ANTIGRAVITY_URL": standin.url, "PORT": str(port)}
        env["DATABASE_PATH"] = str(tmp_path / "proxy.db")
        # `make run` (the launcher) and plain mitmdump.
        for command in ([sys.executable, "-m", "apipod_proxy.serve"], plain_mitmdump(standin.url)):
            result = run(command, tmp_path, **env)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            [line] = [x for x in output.splitlines() if "already in use" in x]
            assert f"PORT {port} is already in use" in line
            assert "apipod ready" not in output
            assert "--mode" not in output  # mitmproxy's hint does not apply to PORT


def copy_of_the_repository(folder: Path) -> Path:
    """The package, scripts and addon in a fresh 'repository' of their own, so that its
    root `.env` is the test's (the package finds its root from its own location)."""
    repo = folder / "repo"
    shutil.copytree(ROOT / "src" / "apipod_proxy", repo / "src" / "apipod_proxy")
    for name in ("scripts/keys.py", "addons/apipod.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    (repo / "pyproject.toml").write_text("")
    return repo


def test_relative_database_path_is_one_file_for_the_proxy_and_the_script_anywhere(
    tmp_path: Path, make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    repo = copy_of_the_repository(tmp_path)
    (repo / ".env").write_text(
        f"ANTIGRAVITY_URL={standin.url}\nANTIGRAVITY_KEY={UPSTREAM_KEY}\n"
        f"ADMIN_SECRET={ADMIN_SECRET}\nDATABASE_PATH=./data/proxy.db\n"
    )
    python_path = {"PYTHONPATH": str(repo / "src")}
    command = [MITMDUMP, "-q", "--mode", f"reverse:{standin.url}"]
    command += ["-s", str(repo / "addons" / "apipod.py")]
    # Started from a folder without .env: the repository root's is used.
    proxy = make_proxy(
        standin.url,
        command=command,
        ANTIGRAVITY_URL=None,
        ANTIGRAVITY_KEY=None,
        ADMIN_SECRET=None,
        DATABASE_PATH=None,
        **python_path,
    )
    proxy.create_key("made-over-http")
    assert (repo / "data" / "proxy.db").is_file()

    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    keys_py = [sys.executable, str(repo / "scripts" / "keys.py")]
    listed = run([*keys_py, "list", "--json"], elsewhere, **python_path)
    assert listed.returncode == 0, listed.stderr
    assert [key["name"] for key in json.loads(listed.stdout)] == ["made-over-http"]
    assert listed.stderr == ""
    assert not (elsewhere / "data").exists()

    # A key made from yet another folder is one the running proxy accepts.
    made = run([*keys_py, "create", "--name", "from-a-shell"], tmp_path, **python_path)
    assert made.returncode == 0, made.stderr
    response = httpx.get(
        f"{proxy.url}/v1/models", headers={"authorization": f"Bearer {made.stdout.strip()}"}
    )
    assert response.status_code == 200


def test_a_key_script_about_to_create_a_new_database_says_so(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_PATH=./nothing-here/proxy.db\n")
    keys_py = [sys.executable, str(ROOT / "scripts" / "keys.py")]
    result = run([*keys_py, "list"], tmp_path)
    assert result.returncode == 0
    expected = tmp_path / "nothing-here" / "proxy.db"
    assert f"note: no database at {expected} (settings from {tmp_path / '.env'})" in (result.stderr)
    again = run([*keys_py, "list"], tmp_path)
    assert again.stderr == ""


def test_a_set_option_wins_over_the_environment(
    make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    command = [*plain_mitmdump(standin.url), "--set", "apipod_upstream_timeout=7"]
    proxy = make_proxy(standin.url, command=command, UPSTREAM_TIMEOUT="30")
    [ready] = wait_for_lines(proxy, "apipod ready:")
    assert "upstream timeout 7s" in ready


def test_an_option_in_mitmproxys_config_yaml_applies(
    tmp_path: Path, make_proxy: Callable[..., Proxy], standin: StandIn
) -> None:
    confdir = tmp_path / "mitmproxy-conf"
    confdir.mkdir()
    (confdir / "config.yaml").write_text("apipod_upstream_timeout: 8\n")  # a number, unquoted
    command = [*plain_mitmdump(standin.url), "--set", f"confdir={confdir}"]
    proxy = make_proxy(standin.url, command=command)
    [ready] = wait_for_lines(proxy, "apipod ready:")
    assert "upstream timeout 8s" in ready


# --- the README's first screen, in a fresh clone -------------------------------------------


def fresh_clone(folder: Path) -> Path:
    """The repository's tracked files (`git ls-files`, as a clone has them, with their
    uncommitted edits) in `folder`, with no .env, data/ or .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0 or shutil.which("git") is None:
        pytest.skip("not a git checkout: no tracked files to clone")
    clone = folder / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    assert not (clone / ".env").exists() and not (clone / "data").exists()
    return clone


def make_recipe(clone: Path, target: str) -> list[str]:
    """The command of a one-line Makefile recipe, with this venv's Python for $(BIN)/python
    (so `make run` is run as written without reinstalling the package)."""
    makefile = (clone / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)\n(?!\t)", makefile, re.M)
    assert match, f"Makefile has no one-line recipe for {target}"
    return match[1].replace("$(BIN)/python", sys.executable).split()


def dotenv_with(text: str, values: dict[str, str]) -> str:
    """`.env` text with these variables set as a user edits them in place."""
    for name, value in values.items():
        text, found = re.subn(rf"^#? ?{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert found, f".env has no {name} line to edit"
    return text


def test_the_readme_first_screen_works_in_a_fresh_clone(tmp_path: Path, standin: StandIn) -> None:
    clone = fresh_clone(tmp_path)
    readme = (clone / "README.md").read_text()
    assert "Ctrl-C" in doc_section("README.md", "Stop")
    (start,) = fenced_blocks(doc_section("README.md", "Quick start"), "bash")
    assert [line.split()[:2] for line in start.splitlines()] == [["make", "run"], ["make", "test"]]
    # The package, its scripts and `.venv/bin/python` as a clone's `make run` installs
    # them: this venv's interpreter, importing the clone's own src/.
    (clone / ".venv").symlink_to(Path(sys.prefix))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANTIGRAVITY_", "ADMIN_"))},
        "PYTHONPATH": str(clone / "src"),
        "PORT": str(port),  # a free port where a newcomer gets 8081
        "HOME": str(tmp_path),
    }
    for name in ("DATABASE_PATH", "DATABASE_URL", "REDIS_URL", "ROUTES_FILE"):
        env.pop(name, None)

    # `make run`, first the `.env:` recipe: .env from .env.example with a fresh secret.
    subprocess.run(make_recipe(clone, ".env"), cwd=clone, env=env, check=True, timeout=30)
    dotenv = (clone / ".env").read_text()
    secret = re.search(r"^ADMIN_SECRET=(.+)$", dotenv, re.M)
    assert secret and secret[1] != ADMIN_SECRET and len(secret[1]) >= 16
    # "Point the proxy at your upstream with two lines of .env": the README's lines,
    # with the stand-in's address and key.
    (lines,) = fenced_blocks(doc_section("README.md", "Quick start"), "ini")
    names = [line.split("=")[0] for line in lines.splitlines()]
    assert names == ["ANTIGRAVITY_URL", "ANTIGRAVITY_KEY"]
    edited = dict(zip(names, [standin.url, UPSTREAM_KEY], strict=True))
    (clone / ".env").write_text(dotenv_with(dotenv, edited))

    # Then the `run:` recipe, in the foreground as a terminal would hold it.
    log = tmp_path / "make-run.log"
    process = spawn(make_recipe(clone, "run"), clone, log, env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, healthy(url), log.read_text)
        upstream_checked(url)  # its start-up probes of the stand-in are done
        standin.reset()

        # "First key and first request", pasted in another terminal at the clone's root.
        (block,) = fenced_blocks(doc_section("README.md", "First key and first request"), "bash")
        assert "export PORT=8081" in block
        pasted = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + as_pasted(block, port)],
            cwd=clone,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": env["PYTHONPATH"]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = pasted.stdout
        assert pasted.returncode == 0, pasted.stderr + out
        assert pasted.stderr == ""  # no curl meter, no warnings
        completion, stream = out.split("\n", 1)
        assert json.loads(completion)["object"] == "chat.completion"  # ends in a newline
        assert stream.startswith("data: {") and stream.rstrip().endswith("data: [DONE]")
        routed = [r.json()["model"] for r in standin.received]  # both, routed by the alias
        assert len(routed) == 2 and set(routed) <= {"claude-sonnet-4-5", "gemini-3-flash"}
        assert (clone / "data" / "proxy.db").is_file()  # the key went where the proxy reads

        # "Stop": Ctrl-C while a stream is in flight; the stream finishes, then exit 0.
        key = subprocess.run(
            [sys.executable, "scripts/create_key.py", "--name", "drain"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        headers = {
            "authorization": f"Bearer {key}",
            "x-standin-chunks": "5",
            "x-standin-interval": "0.3",
        }
        body = {"model": "gemini-3-flash", "stream": True, "messages": []}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", headers=headers, json=body, timeout=30
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGINT)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and len([x for x in rest if x.startswith("data: {")]) >= 4
        assert process.wait(timeout=30) == 0, log.read_text()
        assert "stop signal: draining 1 in-flight requests" in log.read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The usage the stop wrote: alice's two requests and the drained stream.
    usage = run(
        [sys.executable, "scripts/keys.py", "usage", "--json"], clone, PYTHONPATH=env["PYTHONPATH"]
    )
    assert usage.returncode == 0, usage.stderr
    counted: dict[str, int] = {}  # a row per key and routed model: the alias drew both
    for row in json.loads(usage.stdout):
        counted[row["name"]] = counted.get(row["name"], 0) + row["requests"]
    assert counted == {"alice": 2, "drain": 1}
    assert readme.startswith("# Apipod Smart Proxy\n")
