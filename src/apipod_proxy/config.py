"""Settings: one table (`SETTINGS`), read once from options, environment and `.env`.

Each setting is declared once, as a `Setting` row: its variable, default, parser, help
and whether it is a secret. Everything else is derived from the table: the defaults of
the `Settings` dataclass, the mitmproxy options (`--set apipod_upstream_timeout=60`), the
README's settings table and `.env.example` (`python -m apipod_proxy.config --write`
regenerates both; a unit test checks they agree).

Where a value comes from, first match wins: an explicit mitmproxy option (`--set
apipod_…`, or `~/.mitmproxy/config.yaml`), the process environment, `.env`, the
default. Secrets (ANTIGRAVITY_KEY, ADMIN_SECRET) are never options: a `--set` shows in
`ps`. `.env` is the one in the current folder, else the one at the repository root; a
relative path (DATABASE_PATH, ROUTES_FILE) is relative to the folder of that `.env`, or
to the repository root when there is none, so the proxy and the key scripts open the
same database from any folder.

Every problem is reported as a `ConfigError` whose message names the variable, so
the proxy and the scripts can stop with one clear line instead of a traceback.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

#: The ADMIN_SECRET value shipped in `.env.example`; it must never be used for real.
PLACEHOLDER_ADMIN_SECRET = "change-me-to-a-long-random-secret"
PLACEHOLDER_UPSTREAM_KEY = "replace-with-your-antigravity-key"
MIN_ADMIN_SECRET_LENGTH = 16
#: The repository (an editable install, as `make run` and the Dockerfile make).
ROOT = Path(__file__).resolve().parents[2]
#: mitmproxy option names are the setting's field with this prefix.
OPTION_PREFIX = "apipod_"

_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table."""

    env: str
    default: str
    parse: Callable[[str, str], Any]
    help: str
    secret: bool = False
    #: How the README shows the default, when the raw default says too little.
    shown_default: str | None = None
    #: The value `.env.example` ships, when it is not the default.
    example: str | None = None
    #: A relative value is resolved against the `.env` folder (see module docstring).
    is_path: bool = False

    @property
    def field(self) -> str:
        return self.env.lower()

    @property
    def option(self) -> str:
        return OPTION_PREFIX + self.field


def _required(name: str, value: str) -> str:
    if not value:
        raise ConfigError(f"{name} is required but not set (see .env.example)")
    return value


def _parse_url(name: str, value: str) -> str:
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _parse_admin_secret(name: str, value: str) -> str | None:
    if not value:
        return None
    if value == PLACEHOLDER_ADMIN_SECRET:
        raise ConfigError(f"{name} is still the .env.example placeholder; set a random value")
    if len(value) < MIN_ADMIN_SECRET_LENGTH:
        raise ConfigError(f"{name} must be at least {MIN_ADMIN_SECRET_LENGTH} characters long")
    return value


def _parse_port(name: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    return port


def _parse_positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _is_whole_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_rpm(name: str, value: str) -> int:
    if not _is_whole_number(value):
        raise ConfigError(f"{name} must be a whole number of requests per minute, got {value!r}")
    return int(value)


def _parse_tier_rpm(name: str, value: str) -> dict[str, int]:
    """`elite=1200,basic=60` -> {"elite": 1200, "basic": 60}."""
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        tier, sep, rpm = item.partition("=")
        if not sep or not tier.strip():
            raise ConfigError(f"{name} must look like elite=1200,basic=60, got {value!r}")
        limits[tier.strip()] = _parse_rpm(f"{name} ({tier.strip()})", rpm.strip())
    return limits


def _parse_days(name: str, value: str) -> int:
    if not _is_whole_number(value) or int(value) > 36500:
        raise ConfigError(f"{name} must be a whole number of days (0 turns it off), got {value!r}")
    return int(value)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return lowered in ("true", "1", "yes")


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value.lower() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return parse


def _optional_text(name: str, value: str) -> str | None:
    return value or None


def _parse_max_connections(name: str, value: str) -> int | None:
    if not value:
        return None
    if not _is_whole_number(value) or int(value) == 0:
        raise ConfigError(f"{name} must be a whole number above 0, got {value!r}")
    return int(value)


def _service_url(*schemes: str) -> Callable[[str, str], str | None]:
    """A URL of one of `schemes`, or None when empty; an error never shows a password."""

    def parse(name: str, value: str) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in schemes:
            shown = value.rsplit("@", 1)[-1]
            raise ConfigError(f"{name} must be a {schemes[0]}:// URL, got ...{shown!r}")
        return value

    return parse


def _parse_networks(name: str, value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """`10.0.0.1, 192.168.0.0/16, ::1` -> the networks (an address is a /32 or /128)."""
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list addresses or networks like 10.0.0.1,192.168.0.0/16, got {item!r}"
            ) from None
    return tuple(networks)


def _parse_path(name: str, value: str) -> Path:
    return Path(value).expanduser()


def _parse_size(name: str, value: str) -> int:
    text = value.lower().removesuffix("b")
    multiplier = _SIZE_UNITS.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in _SIZE_UNITS else text
    if not _is_whole_number(digits) or int(digits) == 0:
        raise ConfigError(f"{name} must be a size like 1048576, 512k or 32m, got {value!r}")
    return int(digits) * multiplier


# --- the table -------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ANTIGRAVITY_URL",
        "http://127.0.0.1:8080",
        _parse_url,
        "The upstream the proxy forwards to (`http://` or `https://`).",
    ),
    Setting(
        "ANTIGRAVITY_KEY",
        "",
        _required,
        "Sent upstream as `x-api-key` and `Authorization: Bearer`. Clients never see it.",
        secret=True,
        shown_default="(required)",
        example=PLACEHOLDER_UPSTREAM_KEY,
    ),
    Setting(
        "ADMIN_SECRET",
        "",
        _parse_admin_secret,
        "Guards `/admin/*` and `/metrics` (header `x-admin-secret`, or `Authorization: "
        "Bearer`). At least 16 characters, not the `.env.example` placeholder. Unset, they "
        "answer 503 `admin_disabled`.",
        secret=True,
        shown_default="(none: admin API off)",
        example=PLACEHOLDER_ADMIN_SECRET,
    ),
    Setting(
        "PORT",
        "8081",
        _parse_port,
        "Where the proxy listens (all interfaces). Plain `mitmdump` without `--listen-port` "
        "uses it too; an explicit `--listen-port` wins.",
    ),
    Setting(
        "DATABASE_PATH",
        "./data/proxy.db",
        _parse_path,
        "The SQLite file holding keys and usage, unless `DATABASE_URL` is set; its folder is "
        "created. A relative path is relative to the folder of the `.env` in use, else to the "
        "repository root.",
        is_path=True,
    ),
    # LLM upstreams can take minutes before the first byte (long contexts, thinking
    # models, antigravity-claude-proxy holding headers until the first event).
    Setting(
        "UPSTREAM_TIMEOUT",
        "300",
        _parse_positive_float,
        "Seconds to wait for the upstream's response headers before answering 504. LLM "
        "upstreams can take minutes to the first token, and antigravity-claude-proxy holds "
        "its headers until then. A stream that has started is never cut.",
    ),
    Setting(
        "MAX_BODY_SIZE",
        "32m",
        _parse_size,
        "Largest request body (bytes, or with `k`/`m`/`g`); larger gets 413.",
    ),
    # 0 turns the limit off. 600 stops a runaway client without troubling an agent.
    Setting(
        "DEFAULT_RPM",
        "600",
        _parse_rpm,
        "Requests per minute per key unless the key or its tier says otherwise; `0` is unlimited.",
    ),
    Setting(
        "TIER_RPM",
        "",
        _parse_tier_rpm,
        "Per-tier limits, e.g. `elite=1200,trial=30`.",
        shown_default="(none)",
    ),
    Setting(
        "DRAIN_TIMEOUT",
        "30",
        _parse_positive_float,
        "Seconds a stop signal waits for requests in flight.",
    ),
    Setting(
        "LOG_FORMAT",
        "text",
        _choice("text", "json"),
        "`text`, or `json` for one JSON object per line.",
    ),
    Setting(
        "ROUTES_FILE",
        "",
        _optional_text,
        "A TOML routing table, with prices and tiers, re-read when it changes; see "
        "docs/routing.md. A relative path resolves like DATABASE_PATH.",
        shown_default="(none: built-in table)",
        is_path=True,
    ),
    # antigravity-claude-proxy speaks only Anthropic Messages; other gateways speak both
    # APIs or OpenAI only. `auto` asks the upstream (an empty POST spends no tokens).
    Setting(
        "UPSTREAM_API",
        "auto",
        _choice("auto", "anthropic", "openai", "both"),
        "The API the upstream speaks: `anthropic` (OpenAI clients are translated), "
        "`openai` (Anthropic clients are translated), `both` (nothing is), or `auto` "
        'to find out at startup; see docs/routing.md, "Upstreams".',
    ),
    # antigravity-claude-proxy's quota answers name their reset time; this is for those
    # that do not.
    Setting(
        "QUOTA_COOLDOWN",
        "60",
        _parse_positive_float,
        "Seconds a model whose upstream quota ran out stays out of alias rotation when "
        "the upstream names no reset time.",
    ),
    # An upstream's reset time is believed up to this long; a longer one (8760 h has been
    # seen accepted) is cut short and logged.
    Setting(
        "QUOTA_COOLDOWN_MAX",
        "21600",
        _parse_positive_float,
        "The longest a model whose upstream quota ran out stays out of alias rotation, in "
        "seconds (6 h); a longer reset time named by the upstream is cut to it and logged.",
    ),
    Setting(
        "DATABASE_URL",
        "",
        _service_url("postgresql", "postgres"),
        "`postgresql://user:password@host:5432/db` puts keys and usage in PostgreSQL instead "
        'of DATABASE_PATH, shared by replicas on any host; see docs/scaling.md, "Scaling out".',
        secret=True,
        shown_default="(none: SQLite)",
    ),
    Setting(
        "REDIS_URL",
        "",
        _service_url("redis", "rediss", "unix"),
        "`redis://host:6379/0` shares rate limits and budget spend between replicas; without "
        'it limits are per process. See docs/scaling.md, "Scaling out".',
        secret=True,
        shown_default="(none: per process)",
    ),
    Setting(
        "REDIS_PREFIX",
        "apipod:",
        _optional_text,
        "Prefix of every Redis key the proxy writes, so deployments can share a Redis.",
    ),
    # Each of mitmproxy's default addons costs time on every event.
    Setting(
        "TRIM_ADDONS",
        "true",
        _parse_bool,
        "Unload the mitmproxy addons a gateway never uses (faster; see docs/scaling.md, "
        '"Performance"). '
        "`false` keeps them, for options such as `--set save_stream_file=…`.",
    ),
    # --- client connections (connections.py) ---
    Setting(
        "CLIENT_HEADER_TIMEOUT",
        "30",
        _parse_positive_float,
        "Seconds a client has to send complete request headers, from opening the connection "
        "(or from the first byte of a later request on keep-alive); then 408 "
        "`request_timeout` (or a plain close if nothing was sent). See docs/operations.md, "
        '"Reliability".',
    ),
    Setting(
        "CLIENT_BODY_TIMEOUT",
        "30",
        _parse_positive_float,
        "Seconds a client may pause between reads of a request body; then 408 "
        '`request_timeout` and a close. See docs/security.md, "Limits".',
    ),
    Setting(
        "UNAUTHENTICATED_BODY_BUFFER",
        "4m",
        _parse_size,
        "Bytes of request bodies without a customer key (the admin API, the dashboard) held "
        "in memory at once, all connections together; past it 413 `request_too_large` and a "
        'close. See docs/security.md, "Limits".',
    ),
    Setting(
        "IDLE_TIMEOUT",
        "120",
        _parse_positive_float,
        "Seconds a keep-alive connection may sit idle between requests before it is closed.",
    ),
    Setting(
        "MAX_CONNECTIONS",
        "",
        _parse_max_connections,
        "Open client connections at most; past it a new connection gets 503 `overloaded`. "
        "By default (file limit - 256) / 2, after raising the soft file limit to the hard one.",
        shown_default="(from the file limit)",
    ),
    # --- plans and budgets (budgets.py, requestlog.py) ---
    Setting(
        "REQUEST_LOG_DAYS",
        "30",
        _parse_days,
        "Days the per-request log (`keys.py requests`, `GET /admin/requests`) is kept, pruned "
        'hourly; `0` turns it off. See docs/routing.md, "Plans and budgets".',
    ),
    # --- security (forwarding.py, admin.py) ---
    Setting(
        "TRUSTED_PROXIES",
        "",
        _parse_networks,
        "Addresses or networks (`10.0.0.5,192.168.0.0/16`) of front proxies whose "
        "`X-Forwarded-For` and `X-Forwarded-Proto` name the client; from others they are "
        "dropped. See docs/security.md.",
        shown_default="(none)",
    ),
    Setting(
        "ADMIN_AUTH_LIMIT",
        "10",
        _parse_rpm,
        "Failed admin authentications per minute per client address; past it 429 "
        "`admin_auth_throttled` (a burst of this many, then one per 60/N s); `0` is unlimited.",
    ),
    # --- usage accounting (metering.py) ---
    Setting(
        "BILL_REASONING_ESTIMATE",
        "off",
        _choice("on", "off"),
        "`on` bills reasoning tokens estimated from the thinking delivered (characters / 4) "
        "at the model's output price, when the upstream does not report them. "
        '`off` records them apart, unbilled. See docs/operations.md, "Usage accounting".',
    ),
)
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}
#: The raw defaults, by variable.
DEFAULTS: dict[str, str] = {s.env: s.default for s in SETTINGS}


def _default(env: str) -> Any:
    setting = BY_ENV[env]
    return setting.parse(env, setting.default)


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated settings; one field per row of SETTINGS, in the same order."""

    antigravity_url: str
    antigravity_key: str
    admin_secret: str | None
    port: int
    database_path: Path
    upstream_timeout: float
    max_body_size: int
    default_rpm: int = _default("DEFAULT_RPM")
    tier_rpm: dict[str, int] = field(default_factory=dict)
    drain_timeout: float = _default("DRAIN_TIMEOUT")
    log_format: str = _default("LOG_FORMAT")
    routes_file: str | None = _default("ROUTES_FILE")
    upstream_api: str = _default("UPSTREAM_API")
    quota_cooldown: float = _default("QUOTA_COOLDOWN")
    quota_cooldown_max: float = _default("QUOTA_COOLDOWN_MAX")
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = _default("REDIS_PREFIX")
    trim_addons: bool = _default("TRIM_ADDONS")
    # --- client connections (connections.py) ---
    client_header_timeout: float = _default("CLIENT_HEADER_TIMEOUT")
    client_body_timeout: float = _default("CLIENT_BODY_TIMEOUT")
    unauthenticated_body_buffer: int = _default("UNAUTHENTICATED_BODY_BUFFER")
    idle_timeout: float = _default("IDLE_TIMEOUT")
    max_connections: int | None = _default("MAX_CONNECTIONS")  # None: from the file limit
    request_log_days: int = _default("REQUEST_LOG_DAYS")
    # --- security (forwarding.py, admin.py) ---
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    admin_auth_limit: int = _default("ADMIN_AUTH_LIMIT")
    bill_reasoning_estimate: str = _default("BILL_REASONING_ESTIMATE")

    @property
    def admin_enabled(self) -> bool:
        return self.admin_secret is not None

    def rpm_for(self, tier: str, override: int | None) -> int:
        """The requests-per-minute limit of a key; 0 means unlimited."""
        if override is not None:
            return override
        return self.tier_rpm.get(tier, self.default_rpm)


# --- where values come from -------------------------------------------------------------


def find_env_file(cwd: Path | None = None) -> Path | None:
    """`.env` in the current folder, else at the repository root, else None."""
    for folder in (cwd or Path.cwd(), ROOT):
        if (folder / ".env").is_file():
            return (folder / ".env").absolute()
    return None


def base_folder(env_file: Path | None) -> Path:
    """What a relative path is relative to: the `.env` folder, else the repository root."""
    if env_file is not None:
        return env_file.parent
    return ROOT if (ROOT / "pyproject.toml").is_file() else Path.cwd()


def read_environment(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment layered over `env_file`: the real environment wins."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_settings(
    environ: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    base: Path | None = None,
) -> Settings:
    """Validated settings from `options` (explicit mitmproxy options, by variable), then
    `environ` (default: the environment over the `.env` found), then the defaults.

    Relative paths are resolved against `base` (default: see `base_folder`)."""
    if environ is None:
        env_file = find_env_file()
        environ, base = read_environment(env_file), base or base_folder(env_file)
    base = base or base_folder(None)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        name, raw = setting.env, (options or {}).get(setting.env, "").strip()
        if raw:
            name = f"{setting.env} (option {setting.option})"
        else:
            raw = environ.get(setting.env, "").strip() or setting.default
        value = setting.parse(name, raw)
        if setting.is_path and value is not None:
            value = str(base / value) if isinstance(value, str) else base / value
        values[setting.field] = value
    return Settings(**values)


def database_path(environ: Mapping[str, str] | None = None, base: Path | None = None) -> Path:
    """Just DATABASE_PATH, for tools that need the database and nothing else."""
    if environ is None:
        env_file = find_env_file()
        environ, base = read_environment(env_file), base or base_folder(env_file)
    raw = environ.get("DATABASE_PATH", "").strip() or DEFAULTS["DATABASE_PATH"]
    return (base or base_folder(None)) / _parse_path("DATABASE_PATH", raw)


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """Just DATABASE_URL (PostgreSQL), or None: the database is SQLite at DATABASE_PATH."""
    if environ is None:
        environ = read_environment(find_env_file())
    raw = environ.get("DATABASE_URL", "").strip()
    return BY_ENV["DATABASE_URL"].parse("DATABASE_URL", raw)


# --- mitmproxy options --------------------------------------------------------------------


def add_options(loader: Any) -> None:
    """Register every non-secret setting as a mitmproxy option (`apipod_port`, ...).

    Options are strings and empty by default, so that an option the user did not set
    falls back to the environment, `.env` and the default."""
    for setting in SETTINGS:
        if not setting.secret:
            default = setting.shown_default or setting.default
            loader.add_option(
                setting.option,
                str,
                "",
                f"{setting.env}: {setting.help.replace('`', '')} Default: {default}. "
                "Empty: from the environment or .env.",
            )


def option_values(options: Any) -> dict[str, str]:
    """The apipod options the user set, by variable name."""
    return {
        s.env: value
        for s in SETTINGS
        if not s.secret and s.option in options and (value := getattr(options, s.option))
    }


# --- generated documentation -------------------------------------------------------------

#: The page holding the generated settings and error tables (the README links to it).
DOCS_PAGE = "docs/reference.md"
README_START = "<!-- settings table: generated by `python -m apipod_proxy.config --write` -->"
README_END = "<!-- end of settings table -->"
ENV_EXAMPLE_HEADER = """\
# Apipod Smart Proxy configuration. `make run` copies this file to .env on first run
# (with a freshly generated ADMIN_SECRET). Precedence: an explicit mitmproxy option
# (--set apipod_...) > the real environment > this file > the default. Generated from
# the settings table in src/apipod_proxy/config.py (python -m apipod_proxy.config --write).
"""


def readme_table() -> str:
    rows = ["| Variable | Option | Default | Meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        option = "(secret: no option)" if s.secret else f"`{s.option}`"
        default = s.shown_default or f"`{s.default}`"
        rows.append(f"| `{s.env}` | {option} | {default} | {s.help} |")
    return "\n".join(rows)


def env_example() -> str:
    blocks = [ENV_EXAMPLE_HEADER]
    for s in SETTINGS:
        value = s.example if s.example is not None else s.default
        comment = textwrap.fill(
            s.help.replace("`", ""), 88, initial_indent="# ", subsequent_indent="# "
        )
        blocks.append(f"{comment}\n{s.env}={value}\n")
    return "\n".join(blocks)


def between_markers(text: str, start: str, end: str, table: str, what: str) -> str:
    """`text` with what stands between the markers `start` and `end` replaced by `table`
    (the README's generated tables: settings here, error codes in errors.py)."""
    before, found_start, rest = text.partition(start)
    _, found_end, after = rest.partition(end)
    if not found_start or not found_end:
        raise ValueError(f"{DOCS_PAGE} lacks the {what} markers")
    return f"{before}{start}\n{table}\n{end}{after}"


def with_readme_table(readme: str) -> str:
    """`readme` with the text between the settings markers replaced by `readme_table()`."""
    return between_markers(readme, README_START, README_END, readme_table(), "settings table")


def main(argv: list[str]) -> int:
    """`--write`: regenerate the README table and `.env.example` from SETTINGS."""
    if argv != ["--write"]:
        print(readme_table())
        return 0
    readme = ROOT / DOCS_PAGE
    readme.write_text(with_readme_table(readme.read_text()))
    (ROOT / ".env.example").write_text(env_example())
    print(f"wrote {readme} and {ROOT / '.env.example'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
