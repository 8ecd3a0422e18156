"""Unit tests for apipod_proxy.config: defaults, validation and where values come from."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
from dotenv import dotenv_values

from apipod_proxy import config
from apipod_proxy.config import (
    DEFAULTS,
    MIN_ADMIN_SECRET_LENGTH,
    PLACEHOLDER_ADMIN_SECRET,
    SETTINGS,
    ConfigError,
    Settings,
    database_path,
    load_settings,
    read_environment,
)

ALL_VARIABLES = (
    "ANTIGRAVITY_URL",
    "ANTIGRAVITY_KEY",
    "ADMIN_SECRET",
    "PORT",
    "DATABASE_PATH",
    "UPSTREAM_TIMEOUT",
    "MAX_BODY_SIZE",
)
REPO = Path(__file__).resolve().parents[2]
GOOD_SECRET = "s3cr3t-" + "x" * 20


def settings_from(**overrides: str) -> Settings:
    """load_settings over an explicit mapping: the real environment plays no part."""
    env = {"ANTIGRAVITY_KEY": "upstream-key", **overrides}
    return load_settings(env)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No apipod variable in the process environment, a cwd without `.env`, and a
    stand-in repository root (`tmp_path/repo`) without one either."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("")
    monkeypatch.setattr(config, "ROOT", repo)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --- defaults ----------------------------------------------------------------------


def test_defaults_apply_when_only_the_upstream_key_is_set() -> None:
    settings = settings_from()
    assert settings.antigravity_url == "http://127.0.0.1:8080"
    assert settings.antigravity_key == "upstream-key"
    assert settings.admin_secret is None
    assert settings.port == 8081
    assert settings.database_path == config.ROOT / "data" / "proxy.db"
    assert settings.upstream_timeout == 300.0
    assert settings.max_body_size == 32 * 1024 * 1024


def test_blank_values_fall_back_to_defaults() -> None:
    settings = settings_from(PORT="  ", UPSTREAM_TIMEOUT="", ANTIGRAVITY_URL=" ")
    assert settings.port == int(DEFAULTS["PORT"])
    assert settings.upstream_timeout == float(DEFAULTS["UPSTREAM_TIMEOUT"])
    assert settings.antigravity_url == DEFAULTS["ANTIGRAVITY_URL"]


def test_values_are_stripped_of_surrounding_whitespace() -> None:
    settings = settings_from(ANTIGRAVITY_KEY="  k  ", PORT=" 9000 ")
    assert settings.antigravity_key == "k"
    assert settings.port == 9000


def test_settings_are_frozen() -> None:
    settings = settings_from()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


# --- ANTIGRAVITY_KEY -----------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_antigravity_key_is_required(value: str | None) -> None:
    env = {} if value is None else {"ANTIGRAVITY_KEY": value}
    with pytest.raises(ConfigError, match="ANTIGRAVITY_KEY"):
        load_settings(env)


# --- ANTIGRAVITY_URL -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://upstream:8080", "http://upstream:8080"),
        ("https://upstream.example", "https://upstream.example"),
        ("http://upstream:8080/", "http://upstream:8080"),
        ("http://upstream:8080/base//", "http://upstream:8080/base"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_valid_urls_are_accepted_without_trailing_slash(value: str, expected: str) -> None:
    assert settings_from(ANTIGRAVITY_URL=value).antigravity_url == expected


@pytest.mark.parametrize(
    "value",
    [
        "ftp://upstream",
        "upstream:8080",
        "127.0.0.1:8080",
        "http://",
        "http:///path",
        "//upstream:8080",
        "http://upstream:99999",
        "http://upstream:abc",
        "http://upstream:-1",
    ],
)
def test_invalid_urls_are_rejected_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="ANTIGRAVITY_URL"):
        settings_from(ANTIGRAVITY_URL=value)


def test_unbalanced_ipv6_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ANTIGRAVITY_URL"):
        settings_from(ANTIGRAVITY_URL="http://[::1:8080")


# --- PORT ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("65535", 65535), ("8081", 8081)])
def test_port_accepts_the_valid_range(value: str, expected: int) -> None:
    assert settings_from(PORT=value).port == expected


@pytest.mark.parametrize("value", ["0", "65536", "-1", "abc", "80.5", "1e3", "0x50"])
def test_invalid_port_is_rejected_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="PORT"):
        settings_from(PORT=value)


# --- UPSTREAM_TIMEOUT ----------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("2.5", 2.5), ("600", 600.0), ("0.001", 0.001)])
def test_upstream_timeout_accepts_positive_numbers(value: str, expected: float) -> None:
    assert settings_from(UPSTREAM_TIMEOUT=value).upstream_timeout == expected


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "abc", "5s"])
def test_invalid_upstream_timeout_is_rejected_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="UPSTREAM_TIMEOUT"):
        settings_from(UPSTREAM_TIMEOUT=value)


# --- MAX_BODY_SIZE -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1048576", 1048576),
        ("512k", 512 * 1024),
        ("32m", 32 * 1024**2),
        ("1g", 1024**3),
        ("10K", 10 * 1024),
        ("10MB", 10 * 1024**2),
        ("7b", 7),
    ],
)
def test_max_body_size_parses_units(value: str, expected: int) -> None:
    assert settings_from(MAX_BODY_SIZE=value).max_body_size == expected


@pytest.mark.parametrize("value", ["0", "0k", "-1", "1.5m", "k", "b", "abc", "12x", "1 m"])
def test_invalid_max_body_size_is_rejected_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="MAX_BODY_SIZE"):
        settings_from(MAX_BODY_SIZE=value)


def test_superscript_digit_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="MAX_BODY_SIZE"):
        settings_from(MAX_BODY_SIZE="²m")


# --- ADMIN_SECRET --------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "    "])
def test_missing_admin_secret_disables_the_admin_api(value: str | None) -> None:
    overrides = {} if value is None else {"ADMIN_SECRET": value}
    settings = settings_from(**overrides)
    assert settings.admin_secret is None
    assert settings.admin_enabled is False


def test_admin_secret_of_sixteen_characters_is_accepted() -> None:
    secret = "a" * 16
    settings = settings_from(ADMIN_SECRET=secret)
    assert settings.admin_secret == secret
    assert settings.admin_enabled is True


@pytest.mark.parametrize("length", [1, 8, 15])
def test_admin_secret_shorter_than_sixteen_is_rejected(length: int) -> None:
    with pytest.raises(ConfigError, match="ADMIN_SECRET"):
        settings_from(ADMIN_SECRET="a" * length)


def test_admin_secret_length_counts_characters_after_stripping() -> None:
    with pytest.raises(ConfigError, match="ADMIN_SECRET"):
        settings_from(ADMIN_SECRET="   " + "a" * 15 + "   ")


def test_placeholder_admin_secret_is_rejected_despite_its_length() -> None:
    assert len(PLACEHOLDER_ADMIN_SECRET) >= MIN_ADMIN_SECRET_LENGTH
    with pytest.raises(ConfigError, match=r"ADMIN_SECRET.*placeholder"):
        settings_from(ADMIN_SECRET=PLACEHOLDER_ADMIN_SECRET)


def test_placeholder_constant_matches_env_example() -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    assert f"ADMIN_SECRET={PLACEHOLDER_ADMIN_SECRET}\n" in example.read_text()


# --- error messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ANTIGRAVITY_URL", "nope"),
        ("PORT", "nope"),
        ("UPSTREAM_TIMEOUT", "nope"),
        ("MAX_BODY_SIZE", "nope"),
        ("ADMIN_SECRET", "short"),
    ],
)
def test_every_error_names_its_variable_and_only_that_one(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(**{name: value})
    message = str(info.value)
    assert name in message
    others = [other for other in ALL_VARIABLES if other != name]
    assert not any(other in message for other in others)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- read_environment and .env -------------------------------------------------------


def test_read_environment_reads_a_dotenv_file(clean_env: Path) -> None:
    env_file = clean_env / "custom.env"
    env_file.write_text("ANTIGRAVITY_KEY=from-file\nPORT=9999\n")
    env = read_environment(env_file)
    assert env["ANTIGRAVITY_KEY"] == "from-file"
    assert env["PORT"] == "9999"


def test_real_environment_wins_over_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = clean_env / ".env"
    env_file.write_text("ANTIGRAVITY_KEY=from-file\nPORT=9999\n")
    monkeypatch.setenv("ANTIGRAVITY_KEY", "from-environment")
    env = read_environment(env_file)
    assert env["ANTIGRAVITY_KEY"] == "from-environment"
    assert env["PORT"] == "9999"


def test_read_environment_without_file_is_just_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "1234")
    env = read_environment(clean_env / "does-not-exist.env")
    assert env["PORT"] == "1234"
    assert "ANTIGRAVITY_KEY" not in env


def test_read_environment_with_none_ignores_dotenv(clean_env: Path) -> None:
    (clean_env / ".env").write_text("ANTIGRAVITY_KEY=from-file\n")
    assert "ANTIGRAVITY_KEY" not in read_environment(None)


def test_dotenv_variable_without_value_is_ignored(clean_env: Path) -> None:
    env_file = clean_env / ".env"
    env_file.write_text("ADMIN_SECRET\nPORT=9999\n")
    env = read_environment(env_file)
    assert "ADMIN_SECRET" not in env
    assert env["PORT"] == "9999"


def test_load_settings_defaults_to_dotenv_in_the_working_directory(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        f"ANTIGRAVITY_KEY=from-file\nADMIN_SECRET={GOOD_SECRET}\nPORT=9100\n"
    )
    settings = load_settings()
    assert settings.antigravity_key == "from-file"
    assert settings.admin_secret == GOOD_SECRET
    assert settings.port == 9100


def test_load_settings_reports_missing_key_when_nothing_is_configured(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="ANTIGRAVITY_KEY"):
        load_settings()


def test_environment_can_blank_a_dotenv_admin_secret(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text(f"ANTIGRAVITY_KEY=k\nADMIN_SECRET={GOOD_SECRET}\n")
    monkeypatch.setenv("ADMIN_SECRET", "")
    assert load_settings().admin_enabled is False


# --- database_path -------------------------------------------------------------------


def test_database_path_default_is_under_the_repository_root() -> None:
    assert database_path({}) == config.ROOT / "data" / "proxy.db"


def test_database_path_from_mapping_is_stripped() -> None:
    assert database_path({"DATABASE_PATH": "  /var/lib/apipod/keys.db  "}) == Path(
        "/var/lib/apipod/keys.db"
    )


def test_blank_database_path_uses_default() -> None:
    assert database_path({"DATABASE_PATH": "   "}) == config.ROOT / DEFAULTS["DATABASE_PATH"]


def test_database_path_does_not_need_other_settings(clean_env: Path) -> None:
    (clean_env / ".env").write_text("DATABASE_PATH=/tmp/only-this.db\n")
    # No ANTIGRAVITY_KEY anywhere, yet database_path() still answers.
    assert database_path() == Path("/tmp/only-this.db")


def test_load_settings_uses_database_path(tmp_path: Path) -> None:
    target = tmp_path / "keys.db"
    assert settings_from(DATABASE_PATH=str(target)).database_path == target


# --- where a relative DATABASE_PATH points ---------------------------------------------


def test_relative_database_path_is_relative_to_the_dotenv_folder(clean_env: Path) -> None:
    (clean_env / ".env").write_text("ANTIGRAVITY_KEY=k\nDATABASE_PATH=./keys/proxy.db\n")
    expected = clean_env / "keys" / "proxy.db"
    assert load_settings().database_path == expected
    assert database_path() == expected


def test_without_a_local_dotenv_the_repository_root_one_is_used(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config.ROOT / ".env").write_text("ANTIGRAVITY_KEY=from-root\nDATABASE_PATH=db/x.db\n")
    elsewhere = clean_env / "deep" / "folder"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    settings = load_settings()
    assert settings.antigravity_key == "from-root"
    assert settings.database_path == config.ROOT / "db" / "x.db"
    assert database_path() == config.ROOT / "db" / "x.db"


def test_without_any_dotenv_relative_paths_are_under_the_repository_root(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTIGRAVITY_KEY", "k")
    monkeypatch.setenv("ROUTES_FILE", "routes.toml")
    settings = load_settings()
    assert settings.database_path == config.ROOT / "data" / "proxy.db"
    assert settings.routes_file == str(config.ROOT / "routes.toml")


def test_absolute_database_path_is_kept(clean_env: Path) -> None:
    (clean_env / ".env").write_text("ANTIGRAVITY_KEY=k\nDATABASE_PATH=/var/lib/apipod/k.db\n")
    assert load_settings().database_path == Path("/var/lib/apipod/k.db")


# --- one table: options, precedence, generated documentation ------------------------------


def test_the_dataclass_has_one_field_per_setting_in_table_order() -> None:
    assert [f.name for f in dataclasses.fields(Settings)] == [s.field for s in SETTINGS]


def test_dataclass_defaults_are_the_table_defaults(tmp_path: Path) -> None:
    parsed = load_settings({"ANTIGRAVITY_KEY": "k"})
    bare = Settings("u", "k", None, 1, tmp_path, 1.0, 1)
    for f in dataclasses.fields(Settings):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            assert getattr(bare, f.name) == getattr(parsed, f.name), f.name


def test_precedence_option_over_environment_over_dotenv_over_default(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text(
        "ANTIGRAVITY_KEY=k\nUPSTREAM_TIMEOUT=10\nDRAIN_TIMEOUT=11\nDEFAULT_RPM=12\n"
    )
    monkeypatch.setenv("UPSTREAM_TIMEOUT", "20")
    monkeypatch.setenv("DRAIN_TIMEOUT", "21")
    settings = load_settings(options={"UPSTREAM_TIMEOUT": "30"})
    assert settings.upstream_timeout == 30  # option
    assert settings.drain_timeout == 21  # environment
    assert settings.default_rpm == 12  # .env
    assert settings.max_body_size == 32 * 1024 * 1024  # default


def test_a_bad_option_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"UPSTREAM_TIMEOUT \(option apipod_upstream_timeout\)"):
        load_settings({"ANTIGRAVITY_KEY": "k"}, options={"UPSTREAM_TIMEOUT": "soon"})


class FakeLoader:
    def __init__(self) -> None:
        self.options: dict[str, tuple[type, object, str]] = {}

    def add_option(self, name: str, typespec: type, default: object, help: str) -> None:
        self.options[name] = (typespec, default, help)


def test_every_setting_but_the_secrets_is_an_option() -> None:
    loader = FakeLoader()
    config.add_options(loader)
    assert set(loader.options) == {s.option for s in SETTINGS if not s.secret}
    assert "apipod_upstream_timeout" in loader.options
    assert not any("key" in name or "secret" in name for name in loader.options)
    assert all(default == "" for _, default, _ in loader.options.values())


def test_option_values_are_the_ones_set() -> None:
    options = types.SimpleNamespace(apipod_port="9000", apipod_log_format="")
    # A SimpleNamespace has no `in`; option_values checks membership with `in`.
    values = config.option_values(OptionsLike(vars(options)))
    assert values == {"PORT": "9000"}


class OptionsLike(dict):
    def __getattr__(self, name: str) -> object:
        return self[name]


def readme_settings_rows() -> dict[str, list[str]]:
    """The settings table of docs/reference.md, parsed: variable -> [option, default, meaning]."""
    text = (REPO / "docs" / "reference.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_readme_table_agrees_with_the_settings_table() -> None:
    rows = readme_settings_rows()
    assert list(rows) == [s.env for s in SETTINGS], "python -m apipod_proxy.config --write"
    for s in SETTINGS:
        option, default, meaning = rows[s.env]
        assert option == ("(secret: no option)" if s.secret else f"`{s.option}`")
        assert default == (s.shown_default or f"`{s.default}`")
        assert meaning == s.help


def test_env_example_agrees_with_the_settings_table() -> None:
    example = dotenv_values(REPO / ".env.example")
    assert list(example) == [s.env for s in SETTINGS], "python -m apipod_proxy.config --write"
    for s in SETTINGS:
        assert example[s.env] == (s.example if s.example is not None else s.default)
    assert (REPO / ".env.example").read_text() == config.env_example()


# --- DATABASE_URL, REDIS_URL -------------------------------------------------------------


def test_without_service_urls_the_database_is_sqlite_and_limits_per_process() -> None:
    settings = settings_from()
    assert (settings.database_url, settings.redis_url) == (None, None)
    assert settings.redis_prefix == "apipod:"


def test_service_urls_are_read() -> None:
    settings = settings_from(
        DATABASE_URL="postgresql://app:pw@db:5432/apipod",
        REDIS_URL="redis://cache:6379/0",
        REDIS_PREFIX="tenant1:",
    )
    assert settings.database_url == "postgresql://app:pw@db:5432/apipod"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.redis_prefix == "tenant1:"
    assert settings_from(DATABASE_URL="postgres://db/x").database_url == "postgres://db/x"
    assert settings_from(REDIS_URL="rediss://cache:6380/1").redis_url == "rediss://cache:6380/1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://app:hunter22@db/x"),
        ("DATABASE_URL", "sqlite:///data/proxy.db"),
        ("REDIS_URL", "http://app:hunter22@cache:6379"),
    ],
)
def test_a_service_url_of_another_kind_is_refused_without_echoing_a_password(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        settings_from(**{variable: value})
    assert "hunter22" not in str(info.value)
