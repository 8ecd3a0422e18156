#!/usr/bin/env python3
"""Manage API keys: create, list, revoke, activate, usage. See `--help`.

python scripts/keys.py create --name alice [--tier T] [--expires-in 30d] [--rpm N] [--json]
python scripts/keys.py list [--json]
python scripts/keys.py revoke ID | activate ID
python scripts/keys.py usage [--since 24h] [--json]
"""

import sys

from apipod_proxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
