"""Where keys, usage, spend and the request log are kept: SQLite, or PostgreSQL.

    sqlite.py      SQLite: connection, migrations, the key queries both backends run, KeyRecord
    postgres.py    PostgreSQL: sqlite.py's SQL rewritten for it, key changes by LISTEN/NOTIFY
    backend.py     which one holds them (DATABASE_PATH or DATABASE_URL): what the others open
    keycache.py    key lookups from memory while the database is unchanged
    migrate.py     `keys.py migrate-to`: copying a SQLite database into PostgreSQL
    requestlog.py  the per-request log, buffered and written with the usage batches

May import: base modules.

The bottom layer: it knows tables and rows, not what a price, a route or a request is.
"""
