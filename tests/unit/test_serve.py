"""Unit tests for apipod_proxy.serve: the documented command and the first .env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from apipod_proxy import serve
from apipod_proxy.config import PLACEHOLDER_ADMIN_SECRET, load_settings
from apipod_proxy.policy.pricing import open_routes_file
from apipod_proxy.policy.routing import RoutesError


def settings(**env: str):
    return load_settings({"ANTIGRAVITY_KEY": "k", **env})


def test_the_command_is_the_documented_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(serve.ROOT)
    command = serve.mitmdump_command(
        settings(ANTIGRAVITY_URL="http://10.0.0.5:9000", PORT="9999"), ["--set", "x=1"]
    )
    assert command[0] == str(Path(sys.executable).with_name("mitmdump"))
    assert command[1:] == [
        "-q",
        "--mode",
        "reverse:http://10.0.0.5:9000",
        "-s",
        "addons/apipod.py",
        "--listen-port",
        "9999",
        "--set",
        "x=1",
    ]


def test_the_addon_path_works_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = serve.mitmdump_command(settings(), [])[5]
    assert os.path.samefile(tmp_path / script, serve.ADDON)


def test_init_env_makes_a_private_env_with_a_fresh_secret(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    serve.init_env(target)
    values = dotenv_values(target)
    assert values["ADMIN_SECRET"] != PLACEHOLDER_ADMIN_SECRET
    assert len(values["ADMIN_SECRET"] or "") >= 32
    assert values["ANTIGRAVITY_KEY"] == serve.PLACEHOLDER_UPSTREAM_KEY
    assert target.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other.env"
    serve.init_env(other)
    assert dotenv_values(other)["ADMIN_SECRET"] != values["ADMIN_SECRET"]


def test_init_env_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    target.write_text("ANTIGRAVITY_KEY=mine\n")
    serve.init_env(target)
    assert target.read_text() == "ANTIGRAVITY_KEY=mine\n"


def test_the_pre_check_refuses_bad_prices_as_the_proxy_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: the pre-check read only the routes, so `make run` started a proxy that
    then refused the same file at load for its [prices]."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[prices."claude-sonnet-4-5"]\ninput = -1\noutput = 15\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTIGRAVITY_KEY", "k")
    monkeypatch.setenv("ROUTES_FILE", str(routes))

    def started(*args: object) -> None:
        raise AssertionError(f"the proxy was started: {args}")

    monkeypatch.setattr(serve, "listen_problem", lambda *args: None)
    monkeypatch.setattr(serve.os, "execv", started)
    with pytest.raises(SystemExit) as stopped:
        serve.main([])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"apipod: configuration error: ROUTES_FILE {routes}: ")
    assert "input must be zero or more" in line
    # The proxy's own load refuses it with the same words.
    with pytest.raises(RoutesError, match="input must be zero or more"):
        open_routes_file(str(routes))
