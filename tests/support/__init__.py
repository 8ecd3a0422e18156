"""What the tests (and bench/) share, imported as a package: `from tests.support.harness
import start_proxy`. No test edits sys.path.

    harness.py            real mitmdump proxies, started as `make run` starts them
    gateway.py            the in-process harness: a loaded Apipod in mitmproxy's taddons
    endpoints.py          the endpoint table's answer, run from a synchronous test
    stages.py             one pipeline stage built alone from its parts, no addon
    standin.py            the stand-in upstream the tests own (both APIs), recording requests
    standin_base.py       what the stand-ins share: a threaded aiohttp server, awkward SSE
    anthropic_standin.py  an upstream that speaks only Anthropic Messages, as the real one
    openai_standin.py     an upstream that speaks only OpenAI Chat Completions
    upstream_console.py   what the real upstream serves besides its API (config, console)
    google_fake.py        a fake Google backend for the real antigravity-claude-proxy
    real_upstream.py      the real tier's npm packages (`python -m tests.support.real_upstream`)
    codex.py              Codex CLI run once offline, and a Responses-API stand-in recording it
    services.py           PostgreSQL and Redis: a fresh schema and key prefix per test
    strategies.py         Hypothesis helpers shared by the property tests
    tcpgate.py            a TCP forwarder a test can cut or hang
    node/                 offline.mjs: sends the real upstream's Google hosts to google_fake

May import: apipod_proxy, mitmproxy.

Never the tests themselves (tests.unit, tests.e2e) nor bench/, which imports this.
"""
