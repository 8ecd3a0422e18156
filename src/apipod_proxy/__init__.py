"""Apipod Smart Proxy: an OpenAI-compatible gateway built as a mitmproxy addon.

`addons/apipod.py` builds the addon from `addon.py`. The folders, from the bottom up
(each `__init__.py` lists its modules and what it may import):

    translate/      OpenAI <-> Anthropic requests, answers, streams and errors (pure)
    storage/        keys, usage, spend and the request log, in SQLite or PostgreSQL
    policy/         routing, prices and plans, budgets, rate limits, what is forwarded
    upstream/       the upstream's API, its model list, its quota answers
    endpoints/      the paths the proxy answers itself: /health, /metrics, /admin/*, /account
    pipeline/       the request path's stages: who is calling, usage counting

The top level ties them together:

    addon.py        the mitmproxy hooks; only addons/apipod.py imports it
    lifecycle.py    start-up, PORT and the listener, timed jobs, draining, shutdown
    connections.py  client timeouts, MAX_CONNECTIONS, the lingering close after a 413
    flowstate.py    what the proxy knows about one request, on flow.metadata
    cli.py          apipod-keys, scripts/keys.py and scripts/create_key.py
    serve.py        `make run`'s launcher and .env creation

and below the folders, the base modules any of them may import:

    bodies.py       bodies decoded within a size limit, strict JSON, the JSON encoder
    config.py       the settings table (SETTINGS): options, environment and .env
    errors.py       error responses, and the messages for mitmproxy's own failures
    keys.py         key format, hashing, lifetimes
    logs.py         log setup and the access line
    metering.py     token usage merged per field, for every path
    metrics.py      Prometheus metrics
    mitm_compat.py  everything that relies on mitmproxy internals, checked at load
    ratelog.py      log lines for repeated failures, once per interval with a count

Base modules: bodies, config, errors, keys, logs, metering, metrics, mitm_compat, ratelog.

No import circle, not even under TYPE_CHECKING; tests/unit/test_layout.py checks these
rules and the README's layout table.
"""
