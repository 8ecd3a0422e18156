"""Apipod Smart Proxy: an OpenAI-compatible gateway built as a mitmproxy addon.

`addons/apipod.py` builds the addon from `addon.py`. The folders, from the bottom up
(each `__init__.py` lists its modules and what it may import):

    translate/      OpenAI <-> Anthropic requests, answers, streams and errors (pure)
    storage/        keys, usage, spend and the request log, in SQLite or PostgreSQL
    policy/         routing, prices and plans, budgets, rate limits, what is forwarded
    upstream/       the upstream's API, its model list, its quota answers
    endpoints/      the paths the proxy answers itself: /health, /metrics, /admin/*, /account
    pipeline/       the request path's stages: admission, rewrite, answers, accounting

The top level ties them together:

    addon.py        the mitmproxy hooks; only addons/apipod.py imports it
    gateway.py      Gateway: all long-lived state, built once at load
    lifecycle.py    start-up, PORT and the listener, timed jobs, draining, shutdown
    clientapi.py    ClientApi: the API a client speaks, its error shapes and translation
    connections.py  client timeouts, MAX_CONNECTIONS, the lingering close after a 413
    flowstate.py    what the proxy knows about one request, on flow.metadata
    cli.py          apipod-keys, scripts/keys.py and scripts/create_key.py
    serve.py        `make run`'s launcher and .env creation

and below the folders, the base modules any of them may import:

    bodies.py       bodies decoded within a size limit, strict JSON parsing
    clock.py        the one timestamp format (ISO 8601, UTC), usage hours, durations
    config.py       the settings table (SETTINGS): options, environment and .env
    credentials.py  the client's key, the refusal reasons, the swap for the upstream key
    errors.py       every error code as one table (CODES), error bodies, mitmproxy's failures
    jsonenc.py      the one JSON encoder: bodies, stream events and log lines
    keys.py         key format, hashing, what a new key may be
    logs.py         log setup, the access line, lines for repeated failures
    metering.py     token usage merged per field, for every path
    metrics.py      Prometheus metrics
    mitm_compat.py  everything that relies on mitmproxy internals, checked at load

Base modules: bodies, clock, config, credentials, errors, jsonenc, keys, logs, metering,
metrics, mitm_compat.

No import circle, not even under TYPE_CHECKING; tests/unit/test_layout.py checks these
rules and the layout table in docs/reference.md.
"""
