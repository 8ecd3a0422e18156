"""Starting the proxy and using the key script, as an operator does from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from apipod_proxy.config import PLACEHOLDER_ADMIN_SECRET, load_settings
from tests.support.harness import ROOT, UPSTREAM_KEY, Proxy, free_port

SCRIPT = ROOT / "scripts" / "create_key.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTIGRAVITY_KEY", "ADMIN_SECRET")}
    return {**env, **values}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "ANTIGRAVITY_KEY"),
        ({"ANTIGRAVITY_KEY": "k", "ADMIN_SECRET": "short"}, "ADMIN_SECRET"),
        ({"ANTIGRAVITY_KEY": "k", "ADMIN_SECRET": PLACEHOLDER_ADMIN_SECRET}, "ADMIN_SECRET"),
        ({"ANTIGRAVITY_KEY": "k", "PORT": "http"}, "PORT"),
        ({"ANTIGRAVITY_KEY": "k", "UPSTREAM_TIMEOUT": "-1"}, "UPSTREAM_TIMEOUT"),
        ({"ANTIGRAVITY_KEY": "k", "ANTIGRAVITY_URL": "ftp://x"}, "ANTIGRAVITY_URL"),
        ({"ANTIGRAVITY_KEY": "k", "DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        ({"ANTIGRAVITY_KEY": "k", "REDIS_URL": "localhost:6379"}, "REDIS_URL"),
    ],
)
def test_bad_config_stops_the_launcher_with_one_line(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = run([sys.executable, "-m", "apipod_proxy.serve"], tmp_path, **env)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("apipod: configuration error:") and variable in line


def test_bad_config_stops_plain_mitmdump_without_a_traceback(tmp_path: Path) -> None:
    result = run(
        [
            str(MITMDUMP),
            "-q",
            "--mode",
            "reverse:http://127.0.0.1:9",
            "-s",
            str(ROOT / "addons" / "apipod.py"),
            "--listen-port",
            str(free_port()),
        ],
        tmp_path,
        ANTIGRAVITY_KEY="k",
        ADMIN_SECRET="short",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ADMIN_SECRET must be at least 16 characters" in output
    assert "Traceback" not in output


def test_init_env_writes_a_fresh_secret_once(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "apipod_proxy.serve", "init-env"], tmp_path)
    assert result.returncode == 0
    assert "ANTIGRAVITY_URL and ANTIGRAVITY_KEY" in result.stderr
    dotenv = tmp_path / ".env"
    first = dotenv.read_text()
    assert PLACEHOLDER_ADMIN_SECRET not in first
    settings = load_settings(dotenv_values(dotenv))
    assert settings.admin_secret and len(settings.admin_secret) >= 32
    run([sys.executable, "-m", "apipod_proxy.serve", "init-env"], tmp_path)
    assert dotenv.read_text() == first
    assert dotenv.stat().st_mode & 0o077 == 0


def test_create_key_script_prints_a_key_the_proxy_accepts(proxy: Proxy) -> None:
    result = run(
        [sys.executable, str(SCRIPT), "--name", "cli-user", "--expires-in", "1h"],
        proxy.workdir,
        DATABASE_PATH=str(proxy.database),
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and key.startswith("apk_")
    proxy.keys.append(key)
    response = httpx.get(f"{proxy.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert UPSTREAM_KEY not in response.text


def test_create_key_script_json_matches_the_admin_endpoint(proxy: Proxy) -> None:
    result = run(
        [sys.executable, str(SCRIPT), "--name", "json-user", "--tier", "pro", "--json"],
        proxy.workdir,
        DATABASE_PATH=str(proxy.database),
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    proxy.keys.append(created["api_key"])
    assert set(created) == {"api_key", "id", "name", "tier", "created_at", "expires_at"}
    assert (created["name"], created["tier"], created["expires_at"]) == ("json-user", "pro", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--expires-in", "soon"], "--expires-in must be"),
        (["--name", " "], "name is required"),
    ],
)
def test_create_key_script_errors_go_to_stderr(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run([sys.executable, str(SCRIPT), *args], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("trim", ["true", "false"])
def test_the_proxy_works_with_and_without_mitmproxys_unused_addons(
    make_proxy, standin, trim: str
) -> None:
    proxy = make_proxy(standin.url, TRIM_ADDONS=trim)
    key = proxy.create_key()
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "cursor-pro-sonnet", "messages": []},
    )
    assert response.status_code == 200
    assert response.json()["model"] in ("claude-sonnet-4-5", "gemini-3-flash")
    assert ("unloaded 27 mitmproxy addons" in proxy.log()) is (trim == "true")


def test_an_unreachable_database_url_stops_startup_with_one_line_and_no_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/apipod"
    result = run(
        [sys.executable, "-m", "apipod_proxy.serve"],
        tmp_path,
        ANTIGRAVITY_KEY="k",
        DATABASE_URL=url,
        PORT=str(free_port()),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DATABASE_URL postgresql://app@127.0.0.1:" in output
    assert "s3cret-pw" not in output and "Traceback" not in output
