#!/usr/bin/env python3
"""Create a customer API key from the shell, with the proxy's own config and database.

    .venv/bin/python scripts/create_key.py --name alice [--tier elite] [--expires-in 30d]
        [--rpm N] [--budget 20 --period month] [--models a,b] [--json]

Prints the new key alone on stdout (or, with --json, one JSON object with the same
fields as POST /admin/create-key). The key is shown this once; only its hash is kept.
Errors go to stderr with exit status 2. Same as `python scripts/keys.py create`.
"""

import argparse
import sys

from apipod_proxy import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Create an apk_ API key for a customer.")
    cli.add_create_options(parser)
    parser.set_defaults(command="create")
    sys.exit(cli.run(cli.parse_args(parser), parser))
