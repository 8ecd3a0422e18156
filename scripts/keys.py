#!/usr/bin/env python3
"""Manage API keys: create, list, update, rotate, revoke, activate, usage, requests,
backup, restore.
See `--help`.

python scripts/keys.py create --name alice [--tier T] [--expires-in 30d] [--rpm N]
    [--budget 20 --period month] [--models a,b] [--json]
python scripts/keys.py list [--json]
python scripts/keys.py update ID [--name N] [--tier T] [--rpm N|--no-rpm] [--budget X|--no-budget]
    [--period P] [--models a,b|--all-models] [--expires-in D|--no-expiry] [--json]
python scripts/keys.py rotate ID [--json]
python scripts/keys.py revoke ID | activate ID
python scripts/keys.py usage [--since 24h] [--json]
python scripts/keys.py requests [--key ID] [--since 24h] [--limit N] [--json]
python scripts/keys.py backup FILE [--force] | restore FILE [--force]
"""

import sys

from apipod_proxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
