"""Unit tests for apipod_proxy.upstream.quota and routing around cooling models."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apipod_proxy.policy.routing import Alias, AllTargetsCooling, Router, RouteTable
from apipod_proxy.upstream.quota import (
    Cooldowns,
    QuotaExhausted,
    detect,
    parse_duration,
    quota_answer,
    quota_in_stream,
    retry_after,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m0s", 60.0),
        ("45s", 45.0),
        ("1h2m3s", 3723.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("1m30.5s", 90.5),
        ("10us", 1e-5),
        ("3µs", 3e-6),
        ("7ns", 7e-9),
        ("1m0s.", 60.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "m5", "5", "1m 0s", "s", "1m0sx"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_quota_message_of_the_upstream() -> None:
    message = "You have exhausted your capacity on claude-sonnet-4-5. Quota will reset after 1m0s."
    assert detect(message) == QuotaExhausted(60.0)


def test_quota_message_with_prefix_and_cut_model() -> None:
    message = (
        "RESOURCE_EXHAUSTED: You have exhausted your capacity on gemini-2. "
        "Quota will reset after 1h2m3s."
    )
    assert detect(message) == QuotaExhausted(3723.0)


def test_quota_without_a_reset_time() -> None:
    assert detect("You have exhausted your capacity on gemini-3-flash.") == QuotaExhausted(None)


def test_a_model_with_dots_and_a_fractional_reset() -> None:
    message = "You have exhausted your capacity on gemini-2.5-flash. Quota will reset after 1.5s."
    assert detect(message) == QuotaExhausted(1.5)


@pytest.mark.parametrize(
    "message",
    [
        "Max retries exceeded",
        "No accounts available",
        "messages: Field required",
        "",
        "quota",
        # The words alone, without the upstream's sentence, are no longer a signal.
        "RESOURCE_EXHAUSTED: try later",
        # The sentence quoted after other text: an upstream echoing a client's field.
        'Invalid value "You have exhausted your capacity on x. Quota will reset after 8760h0m0s."',
        "messages.0.content: You have exhausted your capacity on x. Quota will reset after 1m0s.",
        "you have exhausted your capacity on x. Quota will reset after 1m0s.",
    ],
)
def test_other_errors_are_not_quota(message: str) -> None:
    assert detect(message) is None


QUOTA_SENTENCE = "You have exhausted your capacity on x. Quota will reset after 8760h0m0s."


@given(st.text(min_size=1).filter(lambda text: text.strip()), st.text())
def test_the_sentence_after_other_text_is_never_a_signal(before: str, after: str) -> None:
    """Whatever comes before it (a client's field echoed in a message), the sentence
    counts only at the very start of the message."""
    message = before + QUOTA_SENTENCE + after
    if not message.lstrip().startswith(("You have", "RESOURCE_EXHAUSTED")):
        assert detect(message) is None


@given(st.text())
def test_detect_never_raises(message: str) -> None:
    detect(message)


@pytest.mark.parametrize(
    ("status", "kind", "counts"),
    [
        (400, "invalid_request_error", True),  # antigravity-claude-proxy, on purpose
        (429, "rate_limit_error", True),  # OpenAI-shaped gateways
        (429, "insufficient_quota", True),
        (400, "api_error", False),
        (400, None, False),
        (403, "invalid_request_error", False),
        (500, "invalid_request_error", False),
        (503, "api_error", False),
    ],
)
def test_a_quota_answer_needs_its_status_and_type(
    status: int, kind: str | None, counts: bool
) -> None:
    message = "RESOURCE_EXHAUSTED: " + QUOTA_SENTENCE
    assert (quota_answer(status, kind, message) is not None) is counts


def test_in_a_stream_the_type_decides() -> None:
    assert quota_in_stream("invalid_request_error", QUOTA_SENTENCE) == QuotaExhausted(31536000.0)
    assert quota_in_stream("api_error", QUOTA_SENTENCE) is None
    assert quota_in_stream(None, QUOTA_SENTENCE) is None
    assert quota_in_stream("invalid_request_error", "Invalid: " + QUOTA_SENTENCE) is None


def test_the_cooldown_is_capped() -> None:
    year = QuotaExhausted(31536000.0)
    assert year.cooldown(60.0, cap=21600.0) == 21600.0 and year.exceeds(21600.0)
    assert QuotaExhausted(30.0).cooldown(60.0, cap=21600.0) == 30.0
    assert QuotaExhausted(None).cooldown(60.0, cap=21600.0) == 60.0
    assert not QuotaExhausted(None).exceeds(1.0) and not QuotaExhausted(5.0).exceeds(5.0)


@pytest.mark.parametrize(("seconds", "header"), [(60, "60"), (0.2, "1"), (0, "1"), (59.01, "60")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cooldowns_expire_on_the_injected_clock() -> None:
    clock = Clock()
    cooldowns = Cooldowns(clock)
    cooldowns.mark("claude", 1060.0)
    assert cooldowns.active() == {"claude": 1060.0}
    clock.now = 1060.0
    assert cooldowns.active() == {}


def test_cooldowns_keep_the_later_reset() -> None:
    cooldowns = Cooldowns(Clock())
    cooldowns.mark("claude", 1100.0)
    cooldowns.mark("claude", 1050.0)
    assert cooldowns.active() == {"claude": 1100.0}


def test_mark_for_uses_the_default_without_a_reset_time() -> None:
    cooldowns = Cooldowns(Clock())
    assert cooldowns.mark_for("a", None, default=60.0) == 1060.0
    assert cooldowns.mark_for("b", 5.0, default=60.0) == 1005.0
    assert cooldowns.earliest_reset() == 1005.0
    assert cooldowns.earliest_reset({"a"}) == 1060.0
    assert cooldowns.earliest_reset({"c"}) is None


def test_mark_for_caps_the_cooldown() -> None:
    cooldowns = Cooldowns(Clock())
    assert cooldowns.mark_for("a", 31536000.0, default=60.0, cap=21600.0) == 1000.0 + 21600.0
    assert cooldowns.mark_for("b", None, default=60.0, cap=30.0) == 1030.0


def test_listing_is_soonest_first_with_seconds_left() -> None:
    clock = Clock()
    cooldowns = Cooldowns(clock)
    cooldowns.mark("later", 1_800_000_120.0)
    cooldowns.mark("sooner", 1_800_000_059.5)
    clock.now = 1_800_000_000.0
    assert cooldowns.listing() == [
        {"model": "sooner", "until": "2027-01-15T08:00:59Z", "seconds_left": 60},
        {"model": "later", "until": "2027-01-15T08:02:00Z", "seconds_left": 120},
    ]
    clock.now = 1_800_000_060.0
    assert [c["model"] for c in cooldowns.listing()] == ["later"]


def test_alias_without_keeps_relative_weights() -> None:
    alias = Alias.from_weights({"a": 20, "b": 30, "c": 50})
    remaining = alias.without({"c"})
    assert remaining is not None
    assert remaining.targets == ("a", "b")
    assert remaining.cumulative == pytest.approx((0.4, 1.0))
    assert alias.without(set()) is alias
    assert alias.without({"a", "b", "c"}) is None


TABLE = RouteTable(
    aliases={
        "cursor-pro-sonnet": Alias.from_weights({"claude": 20, "gemini": 80}),
        "three": Alias.from_weights({"a": 1, "b": 1, "c": 2}),
        "sticky": Alias.from_weights({"claude": 50, "gemini": 50}, sticky=True),
    },
    renames={"old": "claude"},
)


def test_a_cooling_target_gets_no_traffic() -> None:
    router = Router(TABLE, random.Random(1))
    picks = Counter(router.route("cursor-pro-sonnet", avoid={"claude"}) for _ in range(200))
    assert picks == {"gemini": 200}


def test_remaining_targets_share_by_weight() -> None:
    router = Router(TABLE, random.Random(7))
    picks = Counter(router.route("three", avoid={"c"}) for _ in range(4000))
    assert set(picks) == {"a", "b"}
    assert 0.45 < picks["a"] / 4000 < 0.55


def test_all_targets_cooling_raises_with_the_targets() -> None:
    router = Router(TABLE)
    with pytest.raises(AllTargetsCooling) as caught:
        router.route("cursor-pro-sonnet", avoid={"claude", "gemini"})
    assert caught.value.targets == ("claude", "gemini")


def test_direct_models_and_renames_are_never_avoided() -> None:
    router = Router(TABLE)
    assert router.route("claude", avoid={"claude"}) == "claude"
    assert router.route("old", avoid={"claude"}) == "claude"


def test_sticky_conversations_move_only_off_the_cooled_model() -> None:
    router = Router(TABLE)
    conversations = [f"1:session:{i}" for i in range(200)]
    before = {c: router.route("sticky", c) for c in conversations}
    after = {c: router.route("sticky", c, avoid={"claude"}) for c in conversations}
    assert set(after.values()) == {"gemini"}
    assert {c for c in conversations if before[c] == "gemini"} <= set(after)
    assert any(before[c] == "claude" for c in conversations)
    # and without cooldowns, nothing changed
    assert {c: router.route("sticky", c) for c in conversations} == before


def test_targets_the_upstream_does_not_list() -> None:
    assert TABLE.targets() == ["claude", "gemini", "a", "b", "c"]
    served = {"claude-sonnet-4-6", "gemini", "a", "b", "c"}
    assert TABLE.unlisted_targets(served) == ["claude"]
    assert TABLE.unlisted_targets(set(TABLE.targets())) == []
