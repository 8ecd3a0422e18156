"""Unit tests for the plan commands of apipod_proxy.cli: create with a plan, update,
rotate, list with spend and budget (tiers from ROUTES_FILE), and requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apipod_proxy import cli, clock, keys
from apipod_proxy.storage.records import UsageCounts
from apipod_proxy.storage.sqlite import KeyStore
from tests.support.gateway import cli_create as create
from tests.support.gateway import run_cli as main
from tests.support.gateway import run_cli_exit as main_exit
from tests.support.harness import REQUEST_ROW_FIELDS as REQUEST_FIELDS


@pytest.fixture(autouse=True)
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data" / "proxy.db"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("DATABASE_PATH", str(path))
    monkeypatch.delenv("ROUTES_FILE", raising=False)
    return path


@pytest.fixture
def store(db_path: Path) -> KeyStore:
    return KeyStore(db_path)


def listed(capsys: pytest.CaptureFixture[str]) -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in json.loads(main(capsys, "list", "--json")[1])}


def test_create_with_budget_period_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    key = create(capsys, "--name", "a", "--budget", "20", "--period", "month", "--models", "x,y")
    row = listed(capsys)[key["id"]]
    assert (row["budget"], row["budget_period"], row["models"], row["spend"]) == (
        20.0,
        "month",
        ["x", "y"],
        0,
    )


def test_create_with_a_bad_budget_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = main_exit(capsys, "create", "--name", "a", "--budget", "lots")
    assert code == 2 and "budget must be a number" in err


def test_update_sets_and_clears_settings(capsys: pytest.CaptureFixture[str]) -> None:
    key = create(capsys, "--name", "a", "--rpm", "5", "--expires-in", "1d", "--models", "x")
    code, out, _ = main(
        capsys,
        "update", str(key["id"]), "--name", "b", "--tier", "gold", "--no-rpm", "--budget", "2.5",
        "--period", "day", "--all-models", "--no-expiry", "--json",
    )  # fmt: skip
    assert code == 0
    (row,) = json.loads(out)
    assert (row["name"], row["tier"], row["rpm"], row["expires_at"]) == ("b", "gold", None, None)
    assert (row["budget"], row["budget_period"], row["models"]) == (2.5, "day", None)
    code, out, _ = main(capsys, "update", str(key["id"]), "--no-budget", "--expires-in", "2d")
    assert code == 0 and out.startswith("id ")
    row = listed(capsys)[key["id"]]
    assert row["budget"] is None and row["expires_at"] > clock.ago(-86400)


def test_update_needs_a_change_and_a_known_id(capsys: pytest.CaptureFixture[str]) -> None:
    key = create(capsys, "--name", "a")
    code, err = main_exit(capsys, "update", str(key["id"]))
    assert code == 2 and "nothing to change" in err
    code, _, err = main(capsys, "update", "99", "--name", "x")
    assert code == 1 and "no key has id 99" in err
    code, err = main_exit(capsys, "update", str(key["id"]), "--rpm", "5", "--no-rpm")
    assert code == 2


def test_rotate_prints_a_new_key_and_the_old_one_stops(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    code, old, _ = main(capsys, "create", "--name", "a")
    record = store.find(keys.hash_key(old.strip()))
    assert record is not None
    code, new, _ = main(capsys, "rotate", str(record.id))
    assert code == 0 and keys.looks_like_key(new.strip()) and new != old
    assert store.find(keys.hash_key(old.strip())) is None
    assert store.find(keys.hash_key(new.strip())).id == record.id  # type: ignore[union-attr]
    code, out, _ = main(capsys, "rotate", str(record.id), "--json")
    assert json.loads(out)["id"] == record.id
    assert main(capsys, "rotate", "99")[0] == 1


def test_list_reads_tiers_from_routes_file(
    capsys: pytest.CaptureFixture[str],
    store: KeyStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[tiers.trial]\nbudget = 1.5\nbudget_period = "day"\nmodels = ["m"]\n')
    monkeypatch.setenv("ROUTES_FILE", str(routes))
    key = create(capsys, "--name", "a", "--tier", "trial")
    store.record_usage(
        {(key["id"], "m", clock.hour_of(clock.now_text())): UsageCounts(1, 1, cost=0.25)}, {}
    )
    row = listed(capsys)[key["id"]]
    assert (row["budget"], row["budget_period"], row["spend"], row["models"]) == (
        1.5,
        "day",
        0.25,
        ["m"],
    )
    code, out, _ = main(capsys, "list")
    assert "0.25" in out and "1.5" in out
    routes.write_text("[tiers.trial\n")
    code, out, err = main(capsys, "list", "--json")
    assert code == 0 and "warning: ROUTES_FILE" in err
    assert json.loads(out)[0]["budget"] is None


def test_requests_lists_the_log_newest_first(
    capsys: pytest.CaptureFixture[str], store: KeyStore
) -> None:
    a = create(capsys, "--name", "a")
    b = create(capsys, "--name", "b")
    now = clock.now_text()
    rows = [
        (now, f"r{i}", k["id"], "m", "m", 200, 1, 1, 0, 1, 0.0, 0, False, i == 2)
        for i, k in enumerate([a, b, a])
    ]
    store.record_usage({}, {}, rows)
    code, out, _ = main(capsys, "requests", "--key", str(a["id"]), "--since", "1h", "--json")
    assert code == 0
    printed = json.loads(out)
    assert [r["request_id"] for r in printed] == ["r2", "r0"]
    assert all(list(r) == cli.REQUEST_COLUMNS for r in printed)
    assert [*REQUEST_FIELDS[:3], "name", *REQUEST_FIELDS[3:]] == cli.REQUEST_COLUMNS
    assert [r["name"] for r in printed] == ["a", "a"]
    code, out, _ = main(capsys, "requests", "--limit", "1")
    header, line = out.strip().split("\n")
    assert header.split() == cli.REQUEST_COLUMNS and "r2" in line
    assert line.split()[3] == "a"  # the key's name, after its id
    assert line.split()[-1] == "yes"  # r2's figures are estimated (a cut stream)
    assert [r["estimated"] for r in printed] == [True, False]
    code, err = main_exit(capsys, "requests", "--limit", "0")
    assert code == 2 and "--limit must be a whole number" in err


def test_negative_budget_and_bad_expiry_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    key = create(capsys, "--name", "a")
    code, err = main_exit(capsys, "update", str(key["id"]), "--budget", "-5")
    assert code == 2 and "budget must be between 0" in err
    code, err = main_exit(capsys, "update", str(key["id"]), "--expires-in", "soon")
    assert code == 2 and "--expires-in must be" in err
