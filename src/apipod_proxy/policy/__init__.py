"""What the proxy decides about a request: its route, its price, whether it may run.

    routing.py     the routing table (TOML, hot reload): weighted, sticky, around cooling models
    pricing.py     prices and tiers, a request's cost; open_routes_file, the one ROUTES_FILE check
    budgets.py     what applies to a key, periods, the in-memory spend ledger, the 403/429 refusals
    ratelimit.py   per-key token buckets, in this process
    shared.py      the same buckets, and spend, shared by every replica in Redis (REDIS_URL)
    forwarding.py  what reaches the upstream (FORWARDED), the client's address past front proxies

May import: base modules, storage.records, translate/, mitmproxy.

Of storage/ only the records every layer shares (KeyRecord, usage and spend rows,
periods): no SQL, so the SQL layer can take policy's types without a circle.
"""
