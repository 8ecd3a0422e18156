"""docker-compose.yml agrees with the proxy's graceful shutdown.

The proxy drains requests and streams for up to DRAIN_TIMEOUT on SIGTERM; Docker
sends SIGKILL after `stop_grace_period`, so the grace period must be longer, and the
comment beside it must not say the opposite of what the proxy does.
"""

from __future__ import annotations

import re
from pathlib import Path

from apipod_proxy.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def documented_drain_timeout() -> float:
    """DRAIN_TIMEOUT's default, from the settings table (which the README's agrees with)."""
    return float(DEFAULTS["DRAIN_TIMEOUT"])


def test_stop_grace_period_outlasts_the_drain_timeout() -> None:
    match = re.search(r"^\s*stop_grace_period:\s*(\d+)s\s*$", COMPOSE.read_text(), re.M)
    assert match, "docker-compose.yml sets no stop_grace_period in seconds"
    assert int(match[1]) > documented_drain_timeout()


def test_compose_does_not_say_mitmdump_cuts_streams_on_sigterm() -> None:
    text = COMPOSE.read_text().lower()
    assert "does not drain" not in text
    assert "drain_timeout" in text
