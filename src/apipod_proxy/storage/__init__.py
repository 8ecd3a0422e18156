"""Where keys, usage, spend and the request log are kept: SQLite, or PostgreSQL.

    records.py           what storage hands out: KeyRecord, usage counts, spend rows,
                         periods, field lists (no SQL)
    migrations.py        the schema: the ordered migrations both backends apply
    sqlite.py            SQLite: connections and the queries both backends run (KeyStore)
    postgres.py          PostgreSQL: sqlite.py's SQL rewritten for it, key changes by
                         LISTEN/NOTIFY
    backend.py           which one holds them (DATABASE_PATH or DATABASE_URL)
    keycache.py          key lookups from memory while the database is unchanged
    copy_to_postgres.py  `keys.py migrate-to`: copying a SQLite database into PostgreSQL
    backup.py            `keys.py backup` / `restore`: one portable SQLite file, either backend
    requestlog.py        the per-request log, buffered and written with the usage batches

May import: base modules.

The bottom layer: it knows tables and rows, not what a price, a route or a request is.
"""
