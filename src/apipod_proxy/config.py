"""Settings, read once from the environment (or `.env`) and validated up front.

Every problem is reported as a `ConfigError` whose message names the variable, so
the proxy and the scripts can stop with one clear line instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

#: The ADMIN_SECRET value shipped in `.env.example`; it must never be used for real.
PLACEHOLDER_ADMIN_SECRET = "change-me-to-a-long-random-secret"
MIN_ADMIN_SECRET_LENGTH = 16

DEFAULTS: dict[str, str] = {
    "ANTIGRAVITY_URL": "http://127.0.0.1:8080",
    "PORT": "8081",
    "DATABASE_PATH": "./data/proxy.db",
    # LLM upstreams can take minutes before the first byte (long contexts, thinking
    # models, antigravity-claude-proxy holding headers until the first event).
    "UPSTREAM_TIMEOUT": "300",
    "MAX_BODY_SIZE": "32m",
    # Requests per minute per key when neither the key nor its tier says otherwise.
    # 0 turns the limit off. 600 stops a runaway client without troubling an agent.
    "DEFAULT_RPM": "600",
    "TIER_RPM": "",
    # How long SIGTERM waits for in-flight requests and streams before exiting.
    "DRAIN_TIMEOUT": "30",
    "LOG_FORMAT": "text",
    # A TOML routing table; empty means the built-in one (cursor-pro-sonnet 20/80).
    "ROUTES_FILE": "",
    # Unload mitmproxy's addons a gateway never uses: each one costs time on every event.
    "TRIM_ADDONS": "true",
}

_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    antigravity_url: str
    antigravity_key: str
    admin_secret: str | None
    port: int
    database_path: Path
    upstream_timeout: float
    max_body_size: int
    default_rpm: int = 600
    tier_rpm: dict[str, int] = field(default_factory=dict)
    drain_timeout: float = 30.0
    log_format: str = "text"
    routes_file: str | None = None
    trim_addons: bool = True

    @property
    def admin_enabled(self) -> bool:
        return self.admin_secret is not None

    def rpm_for(self, tier: str, override: int | None) -> int:
        """The requests-per-minute limit of a key; 0 means unlimited."""
        if override is not None:
            return override
        return self.tier_rpm.get(tier, self.default_rpm)


def read_environment(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment layered over `.env`: the real environment wins."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build validated settings from `environ` (default: environment plus `.env`)."""
    env = read_environment() if environ is None else environ

    def get(name: str) -> str:
        value = env.get(name, "").strip()
        return value or DEFAULTS.get(name, "")

    return Settings(
        antigravity_url=_parse_url("ANTIGRAVITY_URL", get("ANTIGRAVITY_URL")),
        antigravity_key=_required("ANTIGRAVITY_KEY", get("ANTIGRAVITY_KEY")),
        admin_secret=_parse_admin_secret(get("ADMIN_SECRET")),
        port=_parse_port("PORT", get("PORT")),
        database_path=database_path(env),
        upstream_timeout=_parse_positive_float("UPSTREAM_TIMEOUT", get("UPSTREAM_TIMEOUT")),
        max_body_size=_parse_size("MAX_BODY_SIZE", get("MAX_BODY_SIZE")),
        default_rpm=_parse_rpm("DEFAULT_RPM", get("DEFAULT_RPM")),
        tier_rpm=_parse_tier_rpm(get("TIER_RPM")),
        drain_timeout=_parse_positive_float("DRAIN_TIMEOUT", get("DRAIN_TIMEOUT")),
        log_format=_parse_choice("LOG_FORMAT", get("LOG_FORMAT"), ("text", "json")),
        routes_file=get("ROUTES_FILE") or None,
        trim_addons=_parse_bool("TRIM_ADDONS", get("TRIM_ADDONS")),
    )


def database_path(environ: Mapping[str, str] | None = None) -> Path:
    """Just DATABASE_PATH, for tools that need the database and nothing else."""
    env = read_environment() if environ is None else environ
    return Path(env.get("DATABASE_PATH", "").strip() or DEFAULTS["DATABASE_PATH"])


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


def _parse_admin_secret(value: str) -> str | None:
    if not value:
        return None
    if value == PLACEHOLDER_ADMIN_SECRET:
        raise ConfigError("ADMIN_SECRET is still the .env.example placeholder; set a random value")
    if len(value) < MIN_ADMIN_SECRET_LENGTH:
        raise ConfigError(
            f"ADMIN_SECRET must be at least {MIN_ADMIN_SECRET_LENGTH} characters long"
        )
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


def _parse_tier_rpm(value: str) -> dict[str, int]:
    """`elite=1200,basic=60` -> {"elite": 1200, "basic": 60}."""
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        tier, sep, rpm = item.partition("=")
        if not sep or not tier.strip():
            raise ConfigError(f"TIER_RPM must look like elite=1200,basic=60, got {value!r}")
        limits[tier.strip()] = _parse_rpm(f"TIER_RPM ({tier.strip()})", rpm.strip())
    return limits


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return lowered in ("true", "1", "yes")


def _parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def _parse_size(name: str, value: str) -> int:
    text = value.lower().removesuffix("b")
    multiplier = _SIZE_UNITS.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in _SIZE_UNITS else text
    if not _is_whole_number(digits) or int(digits) == 0:
        raise ConfigError(f"{name} must be a size like 1048576, 512k or 32m, got {value!r}")
    return int(digits) * multiplier
