"""Unit tests for apipod_proxy.cli: the keys command line, run in-process on a temp database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apipod_proxy import cli, clock, keys
from apipod_proxy.cli import table
from apipod_proxy.storage.backend import open_store
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.gateway import cli_create as create
from tests.support.gateway import run_cli as main
from tests.support.gateway import run_cli_exit as main_exit
from tests.support.harness import KEY_OBJECT_FIELDS as LIST_COLUMNS
from tests.support.harness import USAGE_ROW_FIELDS as USAGE_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
#: Every test runs on SQLite and on PostgreSQL (DATABASE_URL): the CLI behaves the same.
BOTH_BACKENDS = True


@pytest.fixture(autouse=True)
def db_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest
) -> Path:
    """DATABASE_PATH (or DATABASE_URL) for the CLI; run from an empty folder: no `.env`."""
    path = tmp_path / "data" / "proxy.db"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("DATABASE_PATH", str(path))
    KeyStore(path).connection(create=True)  # the proxy made it (a new one is noted on stderr)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    if backend == "postgresql":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
    return path


@pytest.fixture
def store(db_path: Path) -> Iterator[KeyStore]:
    opened = open_store(db_path, os.environ.get("DATABASE_URL"))
    yield opened
    opened.close()


# --- create ----------------------------------------------------------------------------


def test_create_prints_only_the_key(capsys: pytest.CaptureFixture[str], store: KeyStore) -> None:
    code, out, err = main(capsys, "create", "--name", "alice")
    assert code == 0
    assert err == ""
    assert out.endswith("\n")
    api_key = out.strip()
    assert out == api_key + "\n"
    assert keys.looks_like_key(api_key)
    found = store.find(keys.hash_key(api_key))
    assert found is not None
    assert found.name == "alice"
    assert found.tier == keys.DEFAULT_TIER


def test_create_json_shape(capsys: pytest.CaptureFixture[str], store: KeyStore) -> None:
    created = create(capsys, "--name", "bob", "--tier", "basic")
    assert set(created) == {"api_key", "id", "name", "tier", "created_at", "expires_at"}
    assert (created["name"], created["tier"], created["expires_at"]) == ("bob", "basic", None)
    assert isinstance(created["id"], int)
    found = store.find(keys.hash_key(created["api_key"]))
    assert found is not None
    assert found.id == created["id"]
    assert found.created_at == created["created_at"]


def test_create_with_expires_in_sets_the_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    created = create(capsys, "--name", "temp", "--expires-in", "2h")
    assert created["expires_at"] > created["created_at"]
    assert created["expires_at"] >= clock.ago(-2 * 3600 + 5)


@pytest.mark.parametrize("rpm", ["0", "30", "1000000"])
def test_create_stores_the_rpm(
    capsys: pytest.CaptureFixture[str], store: KeyStore, rpm: str
) -> None:
    created = create(capsys, "--name", "limited", "--rpm", rpm)
    found = store.find(keys.hash_key(created["api_key"]))
    assert found is not None
    assert found.rpm == int(rpm)


def test_create_without_rpm_stores_none(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    created = create(capsys, "--name", "default")
    found = store.find(keys.hash_key(created["api_key"]))
    assert found is not None
    assert found.rpm is None


@pytest.mark.parametrize(
    "argv",
    [
        ("--name", "   "),
        ("--name", "x", "--rpm", "-1"),
        ("--name", "x", "--rpm", "1000001"),
        ("--name", "x", "--expires-in", "soon"),
        ("--name", "x", "--expires-in", "0"),
        ("--name", "bad\nname"),
    ],
)
def test_create_refuses_bad_input_with_exit_2_and_one_line(
    capsys: pytest.CaptureFixture[str], store: KeyStore, argv: tuple[str, ...]
) -> None:
    code, err = main_exit(capsys, "create", *argv)
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert store.list_keys() == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "error: --expires-in must be whole seconds or a string like"),
        ("0", "error: --expires-in must be positive\n"),
        ("-5d", "error: --expires-in must be positive\n"),
        ("-1", "error: --expires-in must be positive\n"),
    ],
)
def test_expires_in_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str], store: KeyStore, value: str, message: str
) -> None:
    """Not the JSON field `expires_in`, nor argparse's "expected one argument" for -5d."""
    code, err = main_exit(capsys, "create", "--name", "x", "--expires-in", value)
    assert code == 2
    assert err.startswith(message)
    assert "expires_in" not in err and "expected one argument" not in err
    assert store.list_keys() == []


@pytest.mark.parametrize(("value", "days"), [("1w", 7), ("2W", 14), ("30D", 30), ("30d", 30)])
def test_expires_in_takes_weeks_and_either_case(
    capsys: pytest.CaptureFixture[str], value: str, days: int
) -> None:
    earliest = clock.expiry_after(days * 86400)
    created = create(capsys, "--name", "temp", "--expires-in", value)
    assert earliest <= created["expires_at"] <= clock.expiry_after(days * 86400)


def test_since_with_a_negative_value_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    _, err = main_exit(capsys, "usage", "--since", "-2h")
    assert err == "error: --since must be positive\n"


def test_create_key_script_names_the_flag_too(db_path: Path) -> None:
    script = str(ROOT / "scripts" / "create_key.py")
    done = subprocess.run(
        [sys.executable, script, "--name", "x", "--expires-in", "-5d"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_PATH": str(db_path)},
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (2, "error: --expires-in must be positive\n")


# --- list ------------------------------------------------------------------------------


def test_list_json_is_an_array_with_the_documented_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = create(capsys, "--name", "alice")
    second = create(capsys, "--name", "bob", "--rpm", "5", "--expires-in", "1d")
    code, out, _ = main(capsys, "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list)
    assert [row["id"] for row in rows] == [first["id"], second["id"]]
    for row in rows:
        assert list(row) == LIST_COLUMNS
        assert row["active"] is True
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (0, 0, 0)
        assert row["errors"] == 0
        assert row["last_used_at"] is None
    assert rows[0]["prefix"] == first["api_key"][: len(rows[0]["prefix"])]
    assert rows[1]["rpm"] == 5
    assert rows[1]["expires_at"] == second["expires_at"]


def test_list_never_prints_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    created = create(capsys, "--name", "alice")
    _, as_json, _ = main(capsys, "list", "--json")
    _, as_table, _ = main(capsys, "list")
    assert created["api_key"] not in as_json
    assert created["api_key"] not in as_table


def test_list_json_of_no_keys_is_an_empty_array(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main(capsys, "list", "--json")
    assert code == 0
    assert json.loads(out) == []


def spans(line: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]


def test_list_table_columns_are_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    create(capsys, "--name", "al")
    create(capsys, "--name", "bartholomew-the-long", "--tier", "basic", "--rpm", "120")
    create(capsys, "--name", "cy", "--expires-in", "30d", "--rpm", "5")
    code, out, _ = main(capsys, "list", "--wide")
    assert code == 0
    header, *rows = out.rstrip("\n").split("\n")
    assert len(rows) == 3
    assert header.split() == LIST_COLUMNS
    header_spans = spans(header)
    for row in rows:
        assert row == row.rstrip()
        row_spans = spans(row)
        assert len(row_spans) == len(LIST_COLUMNS), row
        for column, (head, cell) in enumerate(zip(header_spans, row_spans, strict=True)):
            # Text columns share the header's left edge, number columns its right edge.
            assert head[0] == cell[0] or head[1] == cell[1], (LIST_COLUMNS[column], row)
    for column in ("name", "tier", "created_at", "expires_at", "prefix", "last_used_at"):
        index = LIST_COLUMNS.index(column)
        starts = {spans(line)[index][0] for line in (header, *rows)}
        assert len(starts) == 1, column
    for column in ("id", "requests", "prompt_tokens", "completion_tokens"):
        index = LIST_COLUMNS.index(column)
        ends = {spans(line)[index][1] for line in (header, *rows)}
        assert len(ends) == 1, column


def test_list_table_shows_missing_values_as_dashes_and_active_as_yes_no(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    kept = create(capsys, "--name", "kept")
    gone = create(capsys, "--name", "gone")
    store.set_active(gone["id"], False)
    _, out, _ = main(capsys, "list", "--wide")
    lines = out.rstrip("\n").split("\n")
    cells = {line.split()[1]: line.split() for line in lines[1:]}
    active = LIST_COLUMNS.index("active")
    expires = LIST_COLUMNS.index("expires_at")
    assert cells["kept"][active] == "yes"
    assert cells["gone"][active] == "no"
    assert cells["kept"][expires] == "-"
    assert cells["kept"][0] == str(kept["id"])


def test_list_of_no_keys_prints_the_header(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main(capsys, "list", "--wide")
    assert code == 0
    assert out.split() == LIST_COLUMNS
    code, out, _ = main(capsys, "list")
    assert out.split() == cli.LIST_COLUMNS


def test_list_fits_100_columns_and_wide_shows_every_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    create(capsys, "--name", "customer-with-a-long-name-indeed", "--budget", "250.5")
    create(capsys, "--name", "bob", "--tier", "elite", "--expires-in", "365d")
    code, out, _ = main(capsys, "list")
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert max(map(len, lines)) <= 100, out
    assert lines[0].split() == cli.LIST_COLUMNS
    assert "customer-with-a-lon…" in out and "bob" in out and "250.5" in out
    _, wide, _ = main(capsys, "list", "--wide")
    assert wide.split("\n")[0].split() == LIST_COLUMNS
    assert max(map(len, wide.split("\n"))) > 100
    assert "customer-with-a-long-name-indeed" in wide


# --- revoke / activate ---------------------------------------------------------------------


def test_revoke_and_activate(capsys: pytest.CaptureFixture[str], store: KeyStore) -> None:
    created = create(capsys, "--name", "alice")
    key_hash = keys.hash_key(created["api_key"])

    code, out, err = main(capsys, "revoke", str(created["id"]))
    assert (code, err) == (0, "")
    assert "revoked" in out
    found = store.find(key_hash)
    assert found is not None
    assert found.active is False

    code, out, err = main(capsys, "activate", str(created["id"]))
    assert (code, err) == (0, "")
    assert "activated" in out
    found = store.find(key_hash)
    assert found is not None
    assert found.active is True


def test_revoke_touches_only_the_named_key(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    first = create(capsys, "--name", "first")
    second = create(capsys, "--name", "second")
    main(capsys, "revoke", str(second["id"]))
    states = {row["id"]: row["active"] for row in store.list_keys()}
    assert states == {first["id"]: True, second["id"]: False}


@pytest.mark.parametrize("command", ["revoke", "activate"])
def test_unknown_id_exits_1_with_an_error_on_stderr(
    capsys: pytest.CaptureFixture[str], store: KeyStore, command: str
) -> None:
    create(capsys, "--name", "alice")
    code, out, err = main(capsys, command, "999")
    assert code == 1
    assert out == ""
    assert "999" in err
    assert err.startswith("error:")


def test_non_numeric_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = main_exit(capsys, "revoke", "abc")
    assert code == 2
    assert "abc" in err


# --- usage ---------------------------------------------------------------------------------


def hour_ago(hours: int) -> str:
    return clock.hour_of(clock.ago(hours * 3600))


def test_usage_since_json_reports_recent_counts_only(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    alice = create(capsys, "--name", "alice")
    bob = create(capsys, "--name", "bob")
    now = clock.format_time(clock.utcnow())
    store.record_usage(
        {
            (alice["id"], "gemini", hour_ago(0)): UsageCounts(3, 3, 0, 0, 100, 40),
            (alice["id"], "gemini", hour_ago(2)): UsageCounts(2, 1, 1, 0, 10, 4),
            (alice["id"], "claude", hour_ago(1)): UsageCounts(1, 0, 0, 1, 7, 0),
            (bob["id"], "gemini", hour_ago(72)): UsageCounts(50, 50, 0, 0, 5000, 5000),
        },
        {alice["id"]: now, bob["id"]: clock.ago(72 * 3600)},
    )
    code, out, _ = main(capsys, "usage", "--since", "24h", "--json")
    assert code == 0
    rows = json.loads(out)
    assert all(list(row) == USAGE_COLUMNS for row in rows)
    by_model = {(row["key_id"], row["model"]): row for row in rows}
    assert set(by_model) == {(alice["id"], "gemini"), (alice["id"], "claude")}
    gemini = by_model[(alice["id"], "gemini")]
    assert (gemini["name"], gemini["requests"], gemini["errors"]) == ("alice", 5, 1)
    assert (gemini["prompt_tokens"], gemini["completion_tokens"]) == (110, 44)
    claude = by_model[(alice["id"], "claude")]
    assert (claude["requests"], claude["prompt_tokens"], claude["completion_tokens"]) == (1, 7, 0)
    assert claude["errors"] == 1

    code, out, _ = main(capsys, "usage", "--json")
    assert code == 0
    everything = {(row["key_id"], row["model"]): row["requests"] for row in json.loads(out)}
    assert everything[(bob["id"], "gemini")] == 50


def test_usage_also_shows_in_list(capsys: pytest.CaptureFixture[str], store: KeyStore) -> None:
    alice = create(capsys, "--name", "alice")
    now = clock.format_time(clock.utcnow())
    store.record_usage(
        {
            (alice["id"], "a", hour_ago(0)): UsageCounts(4, 2, 1, 1, 20, 8),
            (alice["id"], "b", hour_ago(0)): UsageCounts(1, 1, 0, 0, 5, 1),
        },
        {alice["id"]: now},
    )
    _, out, _ = main(capsys, "list", "--json")
    (row,) = json.loads(out)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (5, 25, 9)
    assert row["errors"] == 2
    assert row["last_used_at"] == now


def test_usage_table_has_the_usage_columns(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    alice = create(capsys, "--name", "alice")
    store.record_usage({(alice["id"], "m", hour_ago(0)): UsageCounts(3, 1, 1, 1, 2, 3)}, {})
    code, out, _ = main(capsys, "usage", "--since", "1h")
    assert code == 0
    header, row = out.rstrip("\n").split("\n")
    assert header.split() == USAGE_COLUMNS
    assert header.split()[3:5] == ["requests", "errors"]
    assert row.split() == [str(alice["id"]), "alice", "m", "3", "2", "2", "3", "0", "0", "0", "0"]


@pytest.mark.parametrize("since", ["yesterday", "24x", "-1h", "0h", "1.5h", "h"])
def test_usage_with_an_invalid_since_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, err = main_exit(capsys, "usage", f"--since={since}")
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1


def test_usage_invalid_since_error_names_since(capsys: pytest.CaptureFixture[str]) -> None:
    _, err = main_exit(capsys, "usage", "--since", "yesterday")
    assert "since" in err
    assert "expires_in" not in err


# --- table -------------------------------------------------------------------------------------


def test_table_right_aligns_numbers_and_left_aligns_text() -> None:
    text = table(
        [{"n": 5, "s": "ab", "f": 1.5}, {"n": 12345, "s": "abcdef", "f": 10.25}],
        ["n", "s", "f"],
    )
    header, first, second = text.split("\n")
    assert first.index("5") + 1 == second.index("12345") + len("12345")
    assert header.index("n") + 1 == second.index("12345") + len("12345")
    assert first.index("ab") == second.index("abcdef") == header.index("s")
    assert first.rindex("1.5") + 3 == second.rindex("10.25") + 5 == header.index("f") + 1


@pytest.mark.parametrize("empty", [None, ""])
def test_table_shows_none_and_empty_strings_as_a_dash(empty: str | None) -> None:
    text = table([{"a": empty, "b": "x"}], ["a", "b"])
    assert text.split("\n")[1].split() == ["-", "x"]


def test_table_shows_bools_as_yes_and_no_left_aligned() -> None:
    text = table([{"flag": True, "n": 1}, {"flag": False, "n": 2}], ["flag", "n"])
    _, yes_line, no_line = text.split("\n")
    assert yes_line.split() == ["yes", "1"]
    assert no_line.split() == ["no", "2"]
    assert yes_line.index("yes") == no_line.index("no") == 0


def test_table_zero_is_a_number_not_a_dash() -> None:
    text = table([{"n": 0}, {"n": 10}], ["n"])
    assert text.split("\n")[1:] == [" 0", "10"]


def test_table_column_with_a_missing_value_is_text() -> None:
    text = table([{"rpm": None}, {"rpm": 600}], ["rpm"])
    _, missing, number = text.split("\n")
    assert (missing, number) == ("-", "600")


def test_table_columns_are_two_spaces_apart_and_lines_have_no_trailing_spaces() -> None:
    text = table([{"a": "x", "b": "y"}, {"a": "long", "b": "z"}], ["a", "b"])
    lines = text.split("\n")
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].index("y") == len("long") + 2


def test_table_of_no_rows_is_the_header() -> None:
    assert table([], ["id", "name"]).split() == ["id", "name"]
    assert "\n" not in table([], ["id", "name"])


def test_table_widens_a_column_for_a_long_header() -> None:
    text = table([{"completion_tokens": 1}], ["completion_tokens"])
    header, row = text.split("\n")
    assert len(header) == len(row) == len("completion_tokens")
    assert row.endswith("1")
