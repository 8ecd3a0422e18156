"""What a new user meets on a first run (issue 9, items 6 to 8), through real mitmdump.

- Plain `mitmdump --mode reverse:URL -s addons/apipod.py` (no --listen-port) listens on
  PORT, and its "ready" line names where it listens, where it forwards and the routes.
- A listen port equal to the upstream's stops start-up with one line.
- A PORT already in use: one line naming PORT, and no "ready" line.
- A relative DATABASE_PATH is the same file for the proxy and the key script, from any
  folder; a key script about to create a new database says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.harness import ADMIN_SECRET, ROOT, UPSTREAM_KEY, Proxy, free_port
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
