#!/usr/bin/env python3
"""Create a customer API key from the shell, with the proxy's own config and database.

    python scripts/create_key.py --name alice [--tier elite] [--expires-in 30d] [--json]

Prints the new key alone on stdout (or, with --json, one JSON object with the same
fields as POST /admin/create-key). The key is shown this once; only its hash is kept.
Errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

from apipod_proxy import keys
from apipod_proxy.config import database_path
from apipod_proxy.store import KeyStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create an apk_ API key for a customer.")
    parser.add_argument("--name", required=True, help="who the key is for")
    parser.add_argument("--tier", default=keys.DEFAULT_TIER, help="tier (default: %(default)s)")
    parser.add_argument(
        "--expires-in", help="lifetime: whole seconds or 90s, 30m, 12h, 30d (default: never)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        name, tier, expires_in = keys.validate_new_key(args.name, args.tier, args.expires_in)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    path = database_path()
    try:
        api_key, record = KeyStore(path).create(name, tier, expires_in)
    except (OSError, sqlite3.Error) as exc:
        parser.exit(2, f"error: database {path}: {exc}\n")
    print(json.dumps(record.created_view(api_key)) if args.json else api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
