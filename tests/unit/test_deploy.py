"""deploy/: the systemd unit and its log drop-in, logrotate, the Caddyfile and the alert
rules, each checked by its own tool when the machine has it (skipped, saying so, when
not), and by what this suite can check without it."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from apipod_proxy import metrics as metrics_module
from apipod_proxy.config import DEFAULTS
from apipod_proxy.upstream.quota import Cooldowns

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "apipod.service"
DROP_IN = DEPLOY / "apipod.service.d" / "log-to-file.conf"
LOGROTATE = DEPLOY / "logrotate" / "apipod"
INSTALL_DIR = "/opt/apipod"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; the file is checked without it by the other tests")
    return found


def unit_settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


# --- systemd ------------------------------------------------------------------------


def test_the_unit_runs_what_make_run_runs_and_stops_gracefully() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["ExecStart"] == [f"{INSTALL_DIR}/.venv/bin/python -m apipod_proxy.serve"]
    assert "$(BIN)/python -m apipod_proxy.serve" in (ROOT / "Makefile").read_text()
    assert unit["WorkingDirectory"] == [INSTALL_DIR]  # where the proxy finds .env
    assert unit["EnvironmentFile"] == [f"-{INSTALL_DIR}/.env"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # serve.py's configuration error
    # lifecycle.py drains on SIGTERM; systemd must wait out DRAIN_TIMEOUT, and more.
    assert unit["KillSignal"] == ["SIGTERM"]
    assert "signal.SIGTERM" in (ROOT / "src" / "apipod_proxy" / "lifecycle.py").read_text()
    assert int(unit["TimeoutStopSec"][0]) >= float(DEFAULTS["DRAIN_TIMEOUT"]) + 10


def test_the_drop_in_logs_json_to_the_file_logrotate_rotates() -> None:
    drop_in = unit_settings(DROP_IN.read_text())
    assert drop_in["Environment"] == ["LOG_FORMAT=json"]
    assert drop_in["StandardOutput"] == ["append:/var/log/apipod/apipod.log"]
    assert drop_in["StandardError"] == drop_in["StandardOutput"]
    assert LOGROTATE.read_text().splitlines()[4].startswith("/var/log/apipod/*.log {")


def test_systemd_analyze_verifies_the_unit_and_drop_in(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in the checkout: systemd-analyze would not find ExecStart")
    # The unit as installed in this checkout (verify checks ExecStart exists).
    (tmp_path / "apipod.service.d").mkdir()
    (tmp_path / "apipod.service").write_text(UNIT.read_text().replace(INSTALL_DIR, str(ROOT)))
    shutil.copy(DROP_IN, tmp_path / "apipod.service.d")
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "apipod.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "apipod" in line]
    assert (done.returncode, ours) == (0, [])


def test_logrotate_rotates_with_the_config(tmp_path: Path) -> None:
    logrotate = tool("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "apipod.log").write_text('{"message": "one"}\n')
    user = getpass.getuser()
    config = tmp_path / "apipod.conf"
    config.write_text(
        LOGROTATE.read_text()
        .replace("/var/log/apipod", str(logs))
        .replace("su apipod apipod", f"su {user} {user}")
    )
    state = tmp_path / "state"
    checked = subprocess.run(
        [logrotate, "-d", "-s", str(state), str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "error" not in checked.stderr.lower()
    subprocess.run([logrotate, "-f", "-s", str(state), str(config)], check=True, timeout=60)
    # copytruncate: the proxy's file stays (systemd holds it open), emptied.
    assert (logs / "apipod.log").read_text() == ""
    assert (logs / "apipod.log.1").read_text() == '{"message": "one"}\n'


# --- Caddy ----------------------------------------------------------------------------


def test_the_caddyfile_fronts_the_default_port_and_flushes_streams() -> None:
    text = (DEPLOY / "Caddyfile").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert code.count("{") == code.count("}")
    assert f"reverse_proxy 127.0.0.1:{DEFAULTS['PORT']}" in code
    assert "flush_interval -1" in code  # SSE events pass at once
    timeout = int(re.search(r"read_timeout (\d+)s", code).group(1))  # type: ignore[union-attr]
    assert timeout > float(DEFAULTS["UPSTREAM_TIMEOUT"])


def test_caddy_validates_the_caddyfile() -> None:
    caddy = tool("caddy")
    done = subprocess.run(
        [caddy, "validate", "--adapter", "caddyfile", "--config", str(DEPLOY / "Caddyfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# --- alert rules ----------------------------------------------------------------------


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


#: The series names a metric family shows, by its type.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def exported_names() -> set[str]:
    """Every series name the proxy's /metrics can show (a labelled counter shows none
    until counted, so names come from the families, not from the samples)."""
    metrics = metrics_module.Metrics()
    metrics.watch_cooldowns(Cooldowns())
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def test_every_metric_the_alert_rules_use_is_one_the_proxy_exports() -> None:
    exported = exported_names()
    used: set[str] = set()
    for rule in rules():
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        used |= set(re.findall(r"\b(apipod_[a-z_]+)\b", str(rule["expr"])))
    assert used - exported == set()
    # The four the runbook promises.
    for needed in ("apipod_requests_total", "apipod_refusals_total", "apipod_database_up"):
        assert needed in used
    names = {str(rule["alert"]) for rule in rules()}
    assert {
        "ApipodHighErrorRate",
        "ApipodAllTargetsCooling",
        "ApipodBudgetRefusals",
        "ApipodDatabaseDown",
    } <= names


def test_the_refusal_codes_the_rules_name_are_the_proxys_own() -> None:
    codes = {
        code for rule in rules() for code in re.findall(r'code="([a-z_]+)"', str(rule["expr"]))
    }
    assert codes and codes <= metrics_module.REFUSAL_CODES


def test_promtool_checks_the_rules() -> None:
    promtool = tool("promtool")
    done = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
