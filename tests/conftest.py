"""Fixtures shared by every test folder, and the markers that sort tests by kind.

`tests/unit/` holds fast, in-process tests; `tests/e2e/` starts real `mitmdump`
processes in front of stand-in upstreams (see harness.py). Every test under `e2e/`
is marked `e2e`, so `pytest -m "not e2e and not slow"` is a quick local loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.google_fake import GoogleFake
from tests.support.harness import UPSTREAM_KEY, Proxy, start_proxy
from tests.support.openai_standin import OpenAIStandIn
from tests.support.real_upstream import (
    NO_NPM,
    NPM_SKIP_LINE,
    Antigravity,
    claude_code_binary,
    start_antigravity,
)
from tests.support.services import (
    SKIP_LINE,
    UNREACHABLE,
    RedisSpace,
    fresh_database,
    fresh_redis_space,
)
from tests.support.standin import SilentUpstream, StandIn

E2E_DIR = Path(__file__).parent / "e2e"
SERVICES_FILE = str(Path(__file__).parent / "support" / "services.py")
REAL_UPSTREAM_FILE = str(Path(__file__).parent / "support" / "real_upstream.py")


#: What `backend` takes in a module that sets `BOTH_BACKENDS = True`.
BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests once per database backend: a module's (BOTH_BACKENDS = True) or a test's
    (@pytest.mark.both_backends); the rest use SQLite."""
    wanted = getattr(metafunc.module, "BOTH_BACKENDS", False) or any(
        mark.name == "both_backends" for mark in metafunc.definition.iter_markers()
    )
    if "backend" in metafunc.fixturenames and wanted:
        metafunc.parametrize("backend", BACKENDS, indirect=True, scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Skips for a missing service all point at services.py, so `-ra` folds them into
    one line per service ("SKIPPED [N] tests/support/services.py:...: Redis ... unreachable")."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if UNREACHABLE in reason:
            report.longrepr = (SERVICES_FILE, SKIP_LINE, reason)
        elif NO_NPM in reason:
            report.longrepr = (REAL_UPSTREAM_FILE, NPM_SKIP_LINE, reason)
    return report


# Locally, property tests draw new examples each run and keep the failures they find;
# under CI they draw the same examples every run, so a result never depends on luck.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def silent_upstream() -> Iterator[SilentUpstream]:
    """An upstream that accepts connections and never answers."""
    with SilentUpstream() as server:
        yield server


@pytest.fixture
def upstream(standin: StandIn) -> StandIn:
    """The shared stand-in, with an empty record of received requests."""
    standin.reset()
    return standin


@pytest.fixture(scope="session")
def anthropic_only() -> Iterator[AnthropicStandIn]:
    """An antigravity-claude-proxy stand-in that wants the proxy's upstream key."""
    server = AnthropicStandIn(key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def claude_upstream(anthropic_only: AnthropicStandIn) -> Iterator[AnthropicStandIn]:
    """The Anthropic-only stand-in, with no record, no exhausted models, no cache reads."""
    anthropic_only.reset()
    yield anthropic_only
    anthropic_only.exhausted.clear()
    anthropic_only.empty_models.clear()
    anthropic_only.cache_read_tokens = 0


@pytest.fixture(scope="session")
def openai_only() -> Iterator[OpenAIStandIn]:
    """An OpenAI-only gateway stand-in that wants the proxy's upstream key."""
    server = OpenAIStandIn(key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def gpt_upstream(openai_only: OpenAIStandIn) -> OpenAIStandIn:
    openai_only.reset()
    openai_only.cached_tokens = 0
    return openai_only


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """Where keys and usage live: "sqlite" unless the module asks for both."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """DATABASE_URL whose tables go to a new, empty PostgreSQL schema of this test's own."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def redis_space() -> Iterator[RedisSpace]:
    """The test Redis and a key prefix of this test's own (cleared afterwards)."""
    with fresh_redis_space() as space:
        yield space


@pytest.fixture(scope="session")
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """Settings that put a proxy's keys and usage in `backend` (one database per session)."""
    if backend == "sqlite":
        yield {}
        return
    with fresh_database() as url:
        yield {"DATABASE_URL": url}


@pytest.fixture(scope="session")
def proxy(
    standin: StandIn, tmp_path_factory: pytest.TempPathFactory, backend_env: dict[str, str]
) -> Iterator[Proxy]:
    """The shared proxy in front of the stand-in, with default settings."""
    running = start_proxy(tmp_path_factory.mktemp("proxy"), standin.url, **backend_env)
    yield running
    running.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start extra proxies with their own settings; all are stopped after the test."""
    started: list[Proxy] = []

    def make(
        upstream_url: str,
        dotenv: str | None = None,
        command: list[str] | None = None,
        file_limit: int | None = None,
        **overrides: str | None,
    ) -> Proxy:
        workdir = tmp_path / f"proxy{len(started)}"
        running = start_proxy(
            workdir, upstream_url, dotenv, command, file_limit=file_limit, **overrides
        )
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def api_key(proxy: Proxy) -> str:
    return proxy.create_key()


# --- the real tier: antigravity-claude-proxy from npm, offline, before a fake Google -------


@pytest.fixture(scope="session")
def google_backend() -> Iterator[GoogleFake]:
    server = GoogleFake().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def antigravity_session(
    google_backend: GoogleFake, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Antigravity]:
    """One real antigravity-claude-proxy for the session (it starts in about a second,
    but npm installs it once into ~/.cache/apipod-antigravity). Skips without npm."""
    running = start_antigravity(tmp_path_factory.mktemp("antigravity"), google_backend)
    yield running
    running.stop()


@pytest.fixture
def antigravity(antigravity_session: Antigravity) -> Iterator[Antigravity]:
    """The real package, its fake Google backend reset: default answers, no record.
    Afterwards, the package must have called only routes the fake knows."""
    antigravity_session.fake.reset()
    yield antigravity_session
    unknown = antigravity_session.fake.unknown
    assert not unknown, f"the package called routes the fake Google backend lacks: {unknown}"


@pytest.fixture(scope="session")
def claude_code() -> Path:
    """`claude`, installed once into ~/.cache/apipod-claude-code (skips without npm)."""
    return claude_code_binary()
