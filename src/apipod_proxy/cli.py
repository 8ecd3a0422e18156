"""The operator's command line: `apipod-keys {create,list,update,rotate,revoke,activate,
usage,requests,migrate-to,backup,restore}` (also `python scripts/keys.py ...`).

It opens the proxy's database (DATABASE_URL's PostgreSQL, else DATABASE_PATH, resolved
as config.py says) directly,
so it works whether or not the proxy runs. Revocation takes effect on the next request
of every proxy process, since each request looks its key up. Human output is an aligned
table; `--json` output is stable, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import clock, config, keys
from .config import database_path, database_url, find_env_file
from .policy import budgets
from .policy.pricing import Plans, parse_plans
from .policy.routing import RoutesError
from .storage.backend import DB_ERRORS, describe, open_store
from .storage.records import KEY_FIELDS, REQUEST_FIELDS, USAGE_FIELDS
from .storage.requestlog import DEFAULT_LIMIT, parse_limit
from .storage.sqlite import KeyStore

#: `keys.py list`'s columns without `--wide`: the ones an operator reads daily, in at
#: most 100 columns for names of up to NAME_WIDTH characters (`--wide` and `--json` show
#: all of KEY_FIELDS).
LIST_COLUMNS = [
    "id",
    "name",
    "tier",
    "active",
    "expires_at",
    "requests",
    "errors",
    "spend",
    "budget",
]
#: Longer names are cut (with `…`) in the narrow list.
NAME_WIDTH = 20
#: `keys.py requests`'s fields: the request log's, with the key's name after its id.
REQUEST_COLUMNS = [*REQUEST_FIELDS[:3], "name", *REQUEST_FIELDS[3:]]


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as left-aligned columns under a header; numbers right-aligned."""
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r[c]) for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = (
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(value) or "(none)"
    if isinstance(value, float):  # dollars: six decimals, never 2.05e-05
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def _print(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    print(json.dumps(rows, indent=2) if as_json else table(rows, columns))


def create(store: KeyStore, args: argparse.Namespace) -> int:
    name, tier, expires_in = keys.validate_new_key(
        args.name, args.tier, args.expires_in, expires_name="--expires-in"
    )
    rpm = keys.validate_rpm(args.rpm)
    given = {"budget": args.budget, "budget_period": args.period, "models": args.models}
    plan = budgets.validate_plan(
        {field: value for field, value in given.items() if value is not None}
    )
    api_key, record = store.create(name, tier, expires_in, rpm, plan)
    print(json.dumps(record.created_view(api_key)) if args.json else api_key)
    return 0


def plans() -> Plans:
    """The tiers of ROUTES_FILE (as the proxy reads it), to show what applies to keys."""
    env_file = find_env_file()
    raw = config.read_environment(env_file).get("ROUTES_FILE", "").strip()
    if not raw:
        return Plans()
    path = config.base_folder(env_file) / raw  # relative to the .env, as the proxy reads it
    try:
        with open(path, encoding="utf-8") as file:
            return Plans(parse_plans(file.read()))
    except (OSError, UnicodeDecodeError, RoutesError) as exc:
        print(f"warning: ROUTES_FILE {path}: {exc}; showing keys' own settings", file=sys.stderr)
        return Plans()


def key_objects(store: KeyStore, key_id: int | None = None) -> list[dict[str, Any]]:
    return budgets.key_objects(store.list_keys(key_id), plans())


def list_keys(store: KeyStore, args: argparse.Namespace) -> int:
    rows = key_objects(store)
    if args.json or args.wide:
        _print(rows, KEY_FIELDS, args.json)
        return 0
    for row in rows:
        if len(row["name"]) > NAME_WIDTH:
            row["name"] = row["name"][: NAME_WIDTH - 1] + "…"
    _print(rows, LIST_COLUMNS, False)
    return 0


def update(store: KeyStore, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    for name in ("name", "tier", "rpm", "budget", "models", "expires_in"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.period is not None:
        fields["budget_period"] = args.period
    for flag, name in (
        ("no_rpm", "rpm"),
        ("no_budget", "budget"),
        ("all_models", "models"),
        ("no_expiry", "expires_in"),
    ):
        if getattr(args, flag):
            fields[name] = None
    if not fields:
        raise ValueError("nothing to change: give at least one option (see update --help)")
    if store.update(args.id, budgets.validate_changes(fields, "--expires-in")) is None:
        print(f"error: no key has id {args.id}", file=sys.stderr)
        return 1
    _print(key_objects(store, args.id), KEY_FIELDS, args.json)
    return 0


def rotate(store: KeyStore, args: argparse.Namespace) -> int:
    rotated = store.rotate(args.id)
    if rotated is None:
        print(f"error: no key has id {args.id}", file=sys.stderr)
        return 1
    api_key, record = rotated
    print(json.dumps(record.created_view(api_key)) if args.json else api_key)
    return 0


def requests(store: KeyStore, args: argparse.Namespace) -> int:
    since = clock.since(args.since, "--since")
    limit = parse_limit(args.limit, "--limit")
    names = {row["id"]: row["name"] for row in store.list_keys()}
    rows = [
        {**{c: row[c] for c in REQUEST_FIELDS[:3]}, "name": names.get(row["key_id"]), **row}
        for row in store.requests(args.key, since, limit)
    ]
    _print(rows, REQUEST_COLUMNS, args.json)
    return 0


def set_active(store: KeyStore, args: argparse.Namespace) -> int:
    active = args.command == "activate"
    if not store.set_active(args.id, active):
        print(f"error: no key has id {args.id}", file=sys.stderr)
        return 1
    print(f"key {args.id} {'activated' if active else 'revoked'}")
    return 0


def usage(store: KeyStore, args: argparse.Namespace) -> int:
    since = clock.since(args.since, "--since")
    _print(store.usage(since), USAGE_FIELDS, args.json)
    return 0


def migrate_to(store: KeyStore, args: argparse.Namespace) -> int:
    from .storage.copy_to_postgres import copy_database
    from .storage.postgres import PgKeyStore

    url = database_url({"DATABASE_URL": args.url})
    if url is None:
        raise ValueError("migrate-to needs a postgresql:// URL")
    target = PgKeyStore(url, max_size=1)
    try:
        copied = copy_database(store.path, target)
    finally:
        target.close()
    summary = ", ".join(f"{count} {table}" for table, count in copied.items())
    print(f"copied {describe(store.path, None)} to {describe(store.path, url)}: {summary}")
    print("set DATABASE_URL to that URL and restart the proxies to use it")
    return 0


def backup(path: Path, url: str | None, args: argparse.Namespace) -> int:
    from .storage.backup import backup as write_backup

    counts = write_backup(path, url, args.file, force=args.force)
    print(f"backed up {describe(path, url)} to {args.file}: {_summary(counts)}")
    return 0


def restore(path: Path, url: str | None, args: argparse.Namespace) -> int:
    from .storage.backup import restore as read_backup

    counts = read_backup(path, url, args.file, force=args.force)
    print(f"restored {args.file} into {describe(path, url)}: {_summary(counts)}")
    print("restart the proxies (or let them notice) so no one serves the old keys from memory")
    return 0


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {table}" for table, count in counts.items())


def add_create_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="who the key is for")
    parser.add_argument("--tier", default=keys.DEFAULT_TIER, help="tier (default: %(default)s)")
    parser.add_argument(
        "--expires-in", help="lifetime: whole seconds or 90s, 30m, 12h, 30d, 2w (default: never)"
    )
    parser.add_argument(
        "--rpm", type=int, help="requests per minute for this key (default: the tier's; 0: none)"
    )
    add_plan_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", help="USD per period for this key (default: the tier's)")
    parser.add_argument(
        "--period", choices=("day", "month", "total"), help="the budget's period (UTC calendar)"
    )
    parser.add_argument(
        "--models", help="comma-separated model names the key may use (default: the tier's)"
    )


def add_update_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int)
    parser.add_argument("--name")
    parser.add_argument("--tier")
    rpm = parser.add_mutually_exclusive_group()
    rpm.add_argument("--rpm", type=int, help="requests per minute (0: unlimited)")
    rpm.add_argument("--no-rpm", action="store_true", help="use the tier's rpm again")
    add_plan_options(parser)
    parser.add_argument("--no-budget", action="store_true", help="use the tier's budget again")
    parser.add_argument("--all-models", action="store_true", help="use the tier's models again")
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", help="new lifetime from now: 3600, 90m, 12h, 30d")
    expiry.add_argument("--no-expiry", action="store_true", help="never expires")
    parser.add_argument("--json", action="store_true", help="print the key object as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keys.py", description="Manage apipod API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_create_options(commands.add_parser("create", help="create a key (shown once)"))
    listing = commands.add_parser(
        "list", help="all keys with their usage (requests, errors, tokens); never a key"
    )
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--wide", action="store_true", help="every column (wider than 100)")
    for name in ("revoke", "activate"):
        sub = commands.add_parser(name, help=f"{name} a key by id, effective at once")
        sub.add_argument("id", type=int)
    report = commands.add_parser(
        "usage", help="requests, errors (4xx/5xx) and tokens per key and routed model"
    )
    report.add_argument("--since", help="only the last 90m, 24h, 30d, 2w ... (to the hour)")
    report.add_argument("--json", action="store_true")
    add_update_options(commands.add_parser("update", help="change a key's settings"))
    rotation = commands.add_parser("rotate", help="new secret for a key; the old one stops")
    rotation.add_argument("id", type=int)
    rotation.add_argument("--json", action="store_true", help="print one JSON object")
    log = commands.add_parser("requests", help="the per-request log, newest first")
    log.add_argument("--key", type=int, help="only this key id")
    log.add_argument("--since", help="only the last 90m, 24h, 30d ...")
    log.add_argument("--limit", default=DEFAULT_LIMIT, help="at most N rows (%(default)s)")
    log.add_argument("--json", action="store_true")
    move = commands.add_parser(
        "migrate-to",
        help="copy the SQLite database (DATABASE_PATH) into an empty PostgreSQL database",
    )
    move.add_argument("url", help="postgresql://user:password@host:5432/database")
    save = commands.add_parser(
        "backup",
        help="copy the database (SQLite online, or PostgreSQL) into one SQLite FILE",
    )
    save.add_argument("file", type=Path, help="the backup file to write")
    save.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    load = commands.add_parser("restore", help="replace the database's contents with a backup FILE")
    load.add_argument("file", type=Path, help="a file written by `backup`")
    load.add_argument(
        "--force", action="store_true", help="even when the database already holds keys"
    )
    return parser


HANDLERS = {
    "create": create,
    "list": list_keys,
    "revoke": set_active,
    "activate": set_active,
    "usage": usage,
    "update": update,
    "rotate": rotate,
    "requests": requests,
    "migrate-to": migrate_to,
}

#: Commands that open the database themselves: given DATABASE_PATH and DATABASE_URL.
FILE_HANDLERS = {"backup": backup, "restore": restore}


#: Flags whose value may look like a negative number (`--expires-in -5d`). argparse takes
#: `-5d` for an option and says "expected one argument"; glued to its flag, the value
#: reaches the flag's own check, which says what is wrong with it.
SIGNED_VALUE_FLAGS = ("--expires-in", "--since", "--rpm", "--budget", "--limit")
_SIGNED = re.compile(r"-[0-9]")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    given = list(sys.argv[1:] if argv is None else argv)
    glued: list[str] = []
    for arg in given:
        if glued and glued[-1] in SIGNED_VALUE_FLAGS and _SIGNED.match(arg):
            glued[-1] = f"{glued[-1]}={arg}"
        else:
            glued.append(arg)
    return parser.parse_args(glued)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed command; user errors exit 2 with one line on stderr."""
    path = database_path()
    where = str(path)
    try:
        # migrate-to always reads the SQLite file, whatever DATABASE_URL says.
        url = None if args.command == "migrate-to" else database_url()
        where = describe(path, url)
        if args.command in FILE_HANDLERS:
            return FILE_HANDLERS[args.command](path, url, args)
        store = open_store(path, url) if url else NotingStore(path)
        try:
            return HANDLERS[args.command](store, args)
        finally:
            store.close()
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    except BrokenPipeError:  # `keys.py list | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, *DB_ERRORS) as exc:
        parser.exit(2, f"error: database {where}: {exc}\n")


class NotingStore(KeyStore):
    """A store that says so on stderr when it is about to create a new database file,
    so a wrong folder or `.env` shows at once instead of as an empty key list."""

    def connection(self, create: bool = False) -> sqlite3.Connection:
        if not self.path.exists():
            print(
                f"note: no database at {self.path} ({where_from()}); creating a new one",
                file=sys.stderr,
            )
        return super().connection(create)


def where_from() -> str:
    env_file = find_env_file()
    if env_file is None:
        return "no .env in this folder or at the repository root"
    return f"settings from {env_file}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(parse_args(parser, argv), parser)
