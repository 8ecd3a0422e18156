"""The upstream pool (upstream/pool.py): choice, ejection, half-open probes, cooldowns per
(upstream, model), max_concurrency, stickiness and the `[upstreams]` tables, on a fake clock."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apipod_proxy.policy.routing import RoutesError, read_toml
from apipod_proxy.translate.directions import UPSTREAM_APIS
from apipod_proxy.upstream.pool import (
    APIS,
    DEFAULT_NAME,
    Lease,
    Outcome,
    Pool,
    PoolConfig,
    Unavailable,
    default_config,
    upstreams_from,
)

ENV = {"KEY_A": "ka", "KEY_B": "kb", "KEY_C": "kc"}

THREE = """
[upstreams]
allowed_fails = 3
eject_seconds = 5
eject_max_seconds = 40

[upstreams.a]
url = "http://10.0.0.1:8080"
key_env = "KEY_A"
weight = 1

[upstreams.b]
url = "http://10.0.0.2:8080"
key_env = "KEY_B"
weight = 3

[upstreams.c]
url = "https://c.example"
key_env = "KEY_C"
weight = 6
models = ["claude-sonnet-4-5", "gemini-3-flash"]
max_concurrency = 2
"""


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(text: str = THREE, env: dict[str, str] | None = None) -> PoolConfig:
    found = upstreams_from(read_toml(text), ENV if env is None else env)
    assert found is not None
    return found


def make_pool(text: str = THREE, seed: int = 7, **kw: object) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool(
        default_config("http://127.0.0.1:8080", "k"), clock=clock, rng=random.Random(seed), **kw
    )  # type: ignore[arg-type]
    pool.apply(config(text))
    return pool, clock


def only(*names: str, caps: dict[str, int] | None = None) -> str:
    """A routing document with upstreams `names`, weight 1 each."""
    caps = caps or {}
    parts = ["[upstreams]\nallowed_fails = 3\neject_seconds = 5\neject_max_seconds = 40\n"]
    for i, name in enumerate(names):
        parts.append(f'[upstreams.{name}]\nurl = "http://10.0.1.{i + 1}:80"\nkey = "k{i}"\n')
        if name in caps:
            parts.append(f"max_concurrency = {caps[name]}\n")
    return "".join(parts)


def fail(pool: Pool, model: str, name: str, times: int, outcome: Outcome = Outcome.TIMEOUT) -> None:
    """`times` failed requests that landed on `name` (others are released with no outcome)."""
    done = 0
    while done < times:
        lease = pool.acquire(model)
        if lease.upstream.name == name:
            lease.failed(outcome)
            done += 1
        else:
            lease.release()


# --- [upstreams] --------------------------------------------------------------------------


def test_three_upstreams_are_read_in_table_order_with_their_settings() -> None:
    found = config()
    assert [u.name for u in found.upstreams] == ["a", "b", "c"]
    a, _, c = found.upstreams
    assert (a.scheme, a.host, a.port, a.url, a.key) == (
        "http",
        "10.0.0.1",
        8080,
        "http://10.0.0.1:8080",
        "ka",
    )
    assert (c.scheme, c.port, c.url, c.weight) == ("https", 443, "https://c.example:443", 6.0)
    assert c.models == frozenset({"claude-sonnet-4-5", "gemini-3-flash"})
    assert c.max_concurrency == 2 and a.max_concurrency is None and a.models is None
    assert (found.allowed_fails, found.eject_seconds, found.eject_max_seconds) == (3, 5.0, 40.0)


def test_keys_never_show_in_a_repr_or_a_snapshot() -> None:
    pool, _ = make_pool()
    assert "ka" not in repr(config().upstreams[0])
    assert "'ka'" not in repr(pool.snapshot()) and "kb" not in repr(pool.snapshot())


def test_without_upstreams_the_pool_is_one_from_antigravity_url() -> None:
    assert upstreams_from(read_toml("[aliases]\n"), ENV) is None
    pool = Pool(default_config("http://127.0.0.1:8080/", "secret", "anthropic"), clock=Clock())
    (upstream,) = pool.upstreams
    assert (upstream.name, upstream.url, upstream.key, upstream.api) == (
        DEFAULT_NAME,
        "http://127.0.0.1:8080",
        "secret",
        "anthropic",
    )
    # Exactly as before: any model, never ejected, never capped.
    for _ in range(20):
        pool.acquire("anything").failed(Outcome.CONNECT_ERROR)
    assert pool.state_of(DEFAULT_NAME) == "healthy"
    leases = [pool.acquire("m") for _ in range(100)]
    assert pool.in_flight(DEFAULT_NAME) == 100
    for lease in leases:
        lease.release()


def test_a_reload_without_upstreams_goes_back_to_the_pool_of_one() -> None:
    pool, _ = make_pool()
    pool.apply(pool.prepare(read_toml("[aliases]\n")))
    assert [u.name for u in pool.upstreams] == [DEFAULT_NAME]


def test_apis_are_those_of_upstream_api() -> None:
    assert APIS == UPSTREAM_APIS


def test_a_literal_key_is_allowed_but_not_both() -> None:
    text = '[upstreams.a]\nurl = "http://h:1"\nkey = "literal"\n'
    assert config(text).upstreams[0].key == "literal"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[upstreams]\nx = 1\n", "unknown keys in [upstreams]: x"),
        ("upstreams = 3\n", "[upstreams] must be a table"),
        ("[upstreams]\nallowed_fails = 2\n", "needs at least one [upstreams.NAME] table"),
        ('[upstreams.a]\nkey = "k"\n', '[upstreams.a] needs url = "http://host:port"'),
        (
            '[upstreams.a]\nurl = "ftp://h"\nkey = "k"\n',
            "[upstreams.a] url must be an http:// or https:// URL",
        ),
        (
            '[upstreams.a]\nurl = "http://h:99999"\nkey = "k"\n',
            "[upstreams.a] url is not a valid URL",
        ),
        (
            '[upstreams.a]\nurl = "http://h/v1"\nkey = "k"\n',
            "[upstreams.a] url must be scheme://host[:port] only",
        ),
        (
            '[upstreams.a]\nurl = "http://u:p@h"\nkey = "k"\n',
            "[upstreams.a] url must not hold a user or password",
        ),
        ('[upstreams.a]\nurl = "http://h"\n', '[upstreams.a] needs key_env = "NAME_OF_VARIABLE"'),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nkey_env = "KEY_A"\n',
            "[upstreams.a] takes key or key_env, not both",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey_env = "NOPE"\n',
            "[upstreams.a] key_env: environment variable NOPE is not set",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = ""\n',
            "[upstreams.a] key must be a non-empty string",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nweight = 0\n',
            "[upstreams.a] weight must be a positive number, got 0",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nweight = true\n',
            "[upstreams.a] weight must be a positive number",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\napi = "grpc"\n',
            "[upstreams.a] api must be one of auto, anthropic, openai, both",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nmodels = []\n',
            "[upstreams.a] models must be a list of model names",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nmodels = [1]\n',
            "[upstreams.a] models must be a list of model names",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nmax_concurrency = 1.5\n',
            "[upstreams.a] max_concurrency must be a whole number above 0",
        ),
        (
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\nport = 1\n',
            "unknown keys in [upstreams.a]: port",
        ),
        ('[upstreams."a b"]\nurl = "http://h"\nkey = "k"\n', "[upstreams.a b]: names are letters"),
        (
            '[upstreams]\nallowed_fails = 0\n[upstreams.a]\nurl = "http://h"\nkey = "k"\n',
            "[upstreams] allowed_fails must be a whole number above 0",
        ),
        (
            "[upstreams]\neject_seconds = 10\neject_max_seconds = 5\n"
            '[upstreams.a]\nurl = "http://h"\nkey = "k"\n',
            "eject_max_seconds must be at least eject_seconds",
        ),
    ],
)
def test_invalid_tables_are_refused_in_one_clear_line(body: str, message: str) -> None:
    with pytest.raises(RoutesError) as error:
        upstreams_from(read_toml(body), ENV)
    text = str(error.value)
    assert message in text
    assert "\n" not in text
    assert "ka" not in text  # never a key


# --- choice -------------------------------------------------------------------------------


def test_choice_follows_the_weights_within_tolerance_over_1000_picks() -> None:
    pool, _ = make_pool(seed=20)
    picks = Counter()
    for _ in range(1000):
        with pool.acquire("gemini-3-flash") as lease:
            picks[lease.upstream.name] += 1
    # Weights 1:3:6. Tolerance: 4 points absolute per share (about 3 standard deviations
    # at the largest share), fixed seed so the test is deterministic.
    for name, share in {"a": 0.1, "b": 0.3, "c": 0.6}.items():
        assert abs(picks[name] / 1000 - share) <= 0.04, picks


def test_only_upstreams_that_serve_the_model_are_chosen() -> None:
    pool, _ = make_pool()
    names = {pool.acquire("gpt-other").upstream.name for _ in range(200)}
    assert names == {"a", "b"}  # c lists its models, and not this one
    pool.apply(config('[upstreams.c]\nurl = "http://h"\nkey = "k"\nmodels = ["x"]\n'))
    with pytest.raises(Unavailable) as error:
        pool.acquire("gpt-other")
    assert error.value.reason == "unserved" and error.value.retry_after is None


# --- health -------------------------------------------------------------------------------


def test_n_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    pool, _ = make_pool(only("a", "b"))
    fail(pool, "m", "a", 2)
    assert pool.state_of("a") == "healthy"
    while (lease := pool.acquire("m")).upstream.name != "a":
        lease.release()
    lease.ok()
    fail(pool, "m", "a", 2)
    assert pool.state_of("a") == "healthy"
    fail(pool, "m", "a", 1, Outcome.SERVER_ERROR)
    assert pool.state_of("a") == "ejected"
    assert {pool.acquire("m").upstream.name for _ in range(100)} == {"b"}
    row = pool.snapshot()[0]
    assert row["state"] == "ejected" and row["ejected_until"] is not None
    assert row["failures"] == 5 and row["requests"] == 6


def test_a_client_cancel_says_nothing_about_the_upstream() -> None:
    pool, _ = make_pool(only("a"))
    for _ in range(10):
        pool.acquire("m").release()
    assert pool.state_of("a") == "healthy"
    assert pool.snapshot()[0]["requests"] == 0


def test_half_open_lets_exactly_one_probe_through_and_success_closes() -> None:
    pool, clock = make_pool(only("a"))
    fail(pool, "m", "a", 3, Outcome.CONNECT_ERROR)
    with pytest.raises(Unavailable) as error:
        pool.acquire("m")
    assert error.value.reason == "ejected" and error.value.retry_after == pytest.approx(5)
    clock.now += 5
    assert pool.state_of("a") == "half-open"
    probe = pool.acquire("m")
    assert probe.probe
    with pytest.raises(Unavailable):  # one probe at a time
        pool.acquire("m")
    probe.ok()
    assert pool.state_of("a") == "healthy"
    leases = [pool.acquire("m") for _ in range(5)]
    assert not any(lease.probe for lease in leases)


def test_a_cancelled_probe_lets_another_probe_go() -> None:
    pool, clock = make_pool(only("a"))
    fail(pool, "m", "a", 3)
    clock.now += 5
    pool.acquire("m").release()
    assert pool.state_of("a") == "half-open"
    assert pool.acquire("m").probe


def test_backoff_doubles_at_each_failed_probe_up_to_the_cap_and_resets_on_success() -> None:
    pool, clock = make_pool(only("a"))
    fail(pool, "m", "a", 3)
    seen = []
    for _ in range(6):
        with pytest.raises(Unavailable) as error:
            pool.acquire("m")
        seen.append(error.value.retry_after)
        clock.now += error.value.retry_after
        pool.acquire("m").failed(Outcome.TIMEOUT)  # the probe fails: ejected again
    assert seen == [5, 10, 20, 40, 40, 40]
    clock.now += 40
    pool.acquire("m").ok()
    fail(pool, "m", "a", 3)
    with pytest.raises(Unavailable) as error:
        pool.acquire("m")
    assert error.value.retry_after == 5


def test_stragglers_sent_before_the_ejection_neither_extend_nor_close_it() -> None:
    pool, clock = make_pool(only("a"))
    early = [pool.acquire("m") for _ in range(5)]
    for lease in early[:3]:
        lease.failed(Outcome.TIMEOUT)
    assert pool.state_of("a") == "ejected"
    early[3].failed(Outcome.TIMEOUT)
    early[4].ok()
    assert pool.state_of("a") == "ejected"
    clock.now += 5
    assert pool.state_of("a") == "half-open"


# --- quota --------------------------------------------------------------------------------


def test_a_quota_answer_cools_the_upstream_and_model_not_the_model_everywhere() -> None:
    pool, clock = make_pool(only("a", "b"))
    while (lease := pool.acquire("claude-sonnet-4-5")).upstream.name != "a":
        lease.release()
    assert lease.quota(30) == pytest.approx(clock.now + 30)
    assert pool.cooling_on("a", "claude-sonnet-4-5") and not pool.cooling_on(
        "b", "claude-sonnet-4-5"
    )
    assert {pool.acquire("claude-sonnet-4-5").upstream.name for _ in range(100)} == {"b"}
    assert "a" in {pool.acquire("gemini-3-flash").upstream.name for _ in range(100)}
    assert pool.state_of("a") == "healthy"  # the upstream answered: not a health failure
    assert not pool.cooling_everywhere("claude-sonnet-4-5")
    assert pool.snapshot()[0]["cooling"][0]["model"] == "claude-sonnet-4-5"
    clock.now += 30
    assert "a" in {pool.acquire("claude-sonnet-4-5").upstream.name for _ in range(100)}


def test_a_quota_answer_without_a_reset_uses_the_default_capped() -> None:
    pool, clock = make_pool(only("a"), quota_default=60, quota_cap=120)
    assert pool.acquire("m").quota(None) == pytest.approx(clock.now + 60)
    assert pool.acquire("n").quota(9999) == pytest.approx(clock.now + 120)
    lease = pool.acquire("o")
    lease.release()
    assert lease.quota(5) is None  # released already: nothing marked
    assert not pool.cooling_on("a", "o")


def test_cooling_everywhere_counts_only_the_upstreams_that_serve_the_model() -> None:
    pool, clock = make_pool()
    model = "claude-sonnet-4-5"  # served by a, b and c
    for name in ("a", "b"):
        while (lease := pool.acquire(model)).upstream.name != name:
            lease.release()
        lease.quota(60)
    assert not pool.cooling_everywhere(model)
    assert pool.cooling_among([model, "gemini-3-flash"]) == frozenset()
    while (lease := pool.acquire(model)).upstream.name != "c":
        lease.release()
    lease.quota(10)
    assert pool.cooling_everywhere(model)
    assert pool.cooling_among([model, "gemini-3-flash"]) == {model}
    assert pool.earliest_reset(model) == pytest.approx(clock.now + 10)
    with pytest.raises(Unavailable) as error:
        pool.acquire(model)
    assert error.value.reason == "cooling" and error.value.retry_after == pytest.approx(10)
    # A model c does not serve cools everywhere when a and b cool for it.
    for name in ("a", "b"):
        while (lease := pool.acquire("other")).upstream.name != name:
            lease.release()
        lease.quota(60)
    assert pool.cooling_everywhere("other")
    clock.now += 10
    assert not pool.cooling_everywhere(model)


def test_a_model_served_nowhere_is_not_cooling() -> None:
    pool, _ = make_pool('[upstreams.c]\nurl = "http://h"\nkey = "k"\nmodels = ["x"]\n')
    assert not pool.cooling_everywhere("y")


# --- concurrency --------------------------------------------------------------------------


def test_a_full_upstream_is_skipped_and_all_full_is_overloaded() -> None:
    pool, _ = make_pool(only("a", "b", caps={"a": 2, "b": 1}))
    leases = [pool.acquire("m") for _ in range(3)]
    assert Counter(lease.upstream.name for lease in leases) == {"a": 2, "b": 1}
    with pytest.raises(Unavailable) as error:
        pool.acquire("m")
    assert error.value.reason == "overloaded" and error.value.retry_after > 0
    leases[0].release()
    assert pool.acquire("m").upstream.name == leases[0].upstream.name


def test_release_is_idempotent_and_with_releases() -> None:
    pool, _ = make_pool(only("a", caps={"a": 1}))
    lease = pool.acquire("m")
    lease.ok()
    lease.ok()
    lease.release()
    assert pool.in_flight("a") == 0
    with pytest.raises(RuntimeError), pool.acquire("m"):
        raise RuntimeError
    assert pool.in_flight("a") == 0
    assert pool.snapshot()[0]["requests"] == 1


def test_a_lease_outlives_a_reload_that_removes_its_upstream() -> None:
    pool, _ = make_pool(only("a", "b"))
    leases = [pool.acquire("m") for _ in range(10)]
    pool.apply(config(only("b")))
    for lease in leases:
        lease.failed(Outcome.TIMEOUT)
    assert [row["name"] for row in pool.snapshot()] == ["b"]
    assert pool.in_flight("a") == 0 and pool.in_flight("b") == 0


def test_a_reload_keeps_the_state_of_an_upstream_that_stays() -> None:
    pool, _ = make_pool(only("a", "b"))
    fail(pool, "m", "a", 3)
    pool.apply(config(only("a", "b", caps={"b": 5})))
    assert pool.state_of("a") == "ejected"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "ok", "fail", "quota", "tick", "reload"]),
            st.integers(0, 9),
        ),
        max_size=80,
    )
)
def test_in_flight_never_goes_negative_nor_leaks(steps: list[tuple[str, int]]) -> None:
    pool, clock = make_pool(only("a", "b", "c", caps={"a": 2, "b": 3}))
    leases: list[Lease] = []
    for action, n in steps:
        if action == "acquire":
            with contextlib.suppress(Unavailable):
                lease = pool.acquire(f"m{n % 3}", f"conv{n}")
                leases.append(lease)
                cap = lease.upstream.max_concurrency  # never chosen when full
                assert cap is None or pool.in_flight(lease.upstream.name) <= cap
        elif action == "tick":
            clock.now += n
        elif action == "reload":
            pool.apply(config(only(*["a", "b", "c"][: 1 + n % 3], caps={"a": 1 + n % 2})))
        elif leases:
            lease = leases[n % len(leases)]
            if action == "release":
                lease.release()
            elif action == "ok":
                lease.ok()
            elif action == "fail":
                lease.failed(Outcome.SERVER_ERROR)
            else:
                lease.quota(n)
        for row in pool.snapshot():
            # Exactly the unreleased leases on it (a reload may lower a cap below them).
            holding = [x for x in leases if not x.released and x.upstream.name == row["name"]]
            current = [x for x in holding if x._health is pool._health[row["name"]]]
            assert row["in_flight"] == len(current) >= 0
    for lease in leases:
        lease.release()
    for name in ("a", "b", "c"):
        assert pool.in_flight(name) == 0


# --- stickiness ---------------------------------------------------------------------------


def test_a_sticky_conversation_keeps_its_upstream_and_moves_when_it_is_ejected() -> None:
    pool, clock = make_pool(only("a", "b", "c"))
    first = pool.acquire("m", "conv")
    home = first.upstream.name
    first.ok()
    assert {pool.acquire("m", "conv").upstream.name for _ in range(50)} == {home}
    fail(pool, "m", home, 3)
    moved = pool.acquire("m", "conv").upstream.name
    assert moved != home
    assert pool.sticky_upstream("conv") == moved
    clock.now += 5
    pool.acquire("m").release()  # let the home's probe slot be
    # Healthy again or not, the conversation stays where it moved.
    assert {pool.acquire("m", "conv").upstream.name for _ in range(20)} == {moved}


def test_a_sticky_conversation_moves_off_an_upstream_cooling_for_its_model() -> None:
    pool, _ = make_pool(only("a", "b"))
    lease = pool.acquire("m", "conv")
    home = lease.upstream.name
    lease.quota(60)
    assert pool.acquire("m", "conv").upstream.name != home


def test_a_full_home_serves_elsewhere_once_and_keeps_the_conversation() -> None:
    pool, _ = make_pool(only("a", "b", caps={"a": 1, "b": 1}))
    while (lease := pool.acquire("m", "conv")).upstream.name != "a":
        lease.release()
        pool._sticky.clear()
    other = pool.acquire("m", "conv")
    assert other.upstream.name == "b"
    assert pool.sticky_upstream("conv") == "a"
    lease.release()
    other.release()
    assert pool.acquire("m", "conv").upstream.name == "a"


def test_the_sticky_map_is_bounded() -> None:
    pool, _ = make_pool(only("a", "b"), sticky_max=50)
    for i in range(500):
        pool.acquire("m", f"conv{i}").release()
    assert pool.sticky_count() == 50
    assert pool.sticky_upstream("conv0") is None and pool.sticky_upstream("conv499") is not None
