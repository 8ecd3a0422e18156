"""Start the proxy: `python -m apipod_proxy.serve [extra mitmdump args]`.

It validates the configuration first (one clear line on error, exit 2), then
replaces itself with exactly the documented command:

    mitmdump -q --mode reverse:$ANTIGRAVITY_URL -s addons/apipod.py --listen-port $PORT

A PORT already in use stops it with one line that names PORT.

`make run` and the Docker image both start the proxy this way.
`python -m apipod_proxy.serve init-env` creates `.env` from `.env.example` with a
freshly generated ADMIN_SECRET, for a first run on a fresh clone.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path

from .config import (
    PLACEHOLDER_ADMIN_SECRET,
    PLACEHOLDER_UPSTREAM_KEY,
    ConfigError,
    Settings,
    load_settings,
)
from .endpoints import ENDPOINTS
from .lifecycle import listen_problem
from .policy.forwarding import Forwarding
from .policy.pricing import open_routes_file
from .policy.routing import RoutesError

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addons" / "apipod.py"


def mitmdump_command(settings: Settings, extra: list[str]) -> list[str]:
    mitmdump = Path(sys.executable).with_name("mitmdump")
    return [
        str(mitmdump),
        "-q",
        "--mode",
        f"reverse:{settings.antigravity_url}",
        "-s",
        os.path.relpath(ADDON),
        "--listen-port",
        str(settings.port),
        *extra,
    ]


def init_env(target: Path = Path(".env"), example: Path = ROOT / ".env.example") -> None:
    """Create `.env` once; never touch an existing one."""
    if target.exists():
        return
    text = example.read_text().replace(PLACEHOLDER_ADMIN_SECRET, secrets.token_urlsafe(32))
    target.write_text(text)
    target.chmod(0o600)
    print(
        f"Created {target} with a fresh ADMIN_SECRET.\n"
        "Edit ANTIGRAVITY_URL and ANTIGRAVITY_KEY in it to point at your upstream.",
        file=sys.stderr,
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["init-env"]:
        init_env()
        return
    try:
        settings = load_settings()
        if settings.routes_file:
            open_routes_file(
                settings.routes_file, forwarding=Forwarding(ENDPOINTS)
            )  # as the proxy will: routes and [prices]
    except (ConfigError, RoutesError) as exc:
        print(f"apipod: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.antigravity_key == PLACEHOLDER_UPSTREAM_KEY:
        print(
            "apipod: warning: ANTIGRAVITY_KEY is still the .env.example placeholder; "
            "upstream calls will be refused until you set it",
            file=sys.stderr,
        )
    if "--listen-port" not in argv and (
        problem := listen_problem("", settings.port, "PORT", [settings.antigravity_url])
    ):
        print(f"apipod: {problem}", file=sys.stderr)
        sys.exit(2)
    command = mitmdump_command(settings, argv)
    print(f"apipod: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
