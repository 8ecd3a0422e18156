"""Unit tests for apipod_proxy.routing: aliases, the router and strict JSON bodies."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from apipod_proxy.routing import (
    DEFAULT_TABLE,
    Alias,
    BodyError,
    Router,
    RouteTable,
    parse_json_body,
)

CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-3-flash"


class FixedDraw(random.Random):
    """A random source whose draws are given in advance."""

    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0)


# --- Alias.from_weights ---------------------------------------------------------------


def test_from_weights_normalises_cumulative_weights() -> None:
    alias = Alias.from_weights({"a": 1, "b": 1, "c": 2})
    assert alias.targets == ("a", "b", "c")
    assert alias.cumulative == pytest.approx((0.25, 0.5, 1.0))


def test_from_weights_accepts_floats() -> None:
    alias = Alias.from_weights({"a": 0.5, "b": 1.5})
    assert alias.cumulative == pytest.approx((0.25, 1.0))


def test_from_weights_rejects_empty() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Alias.from_weights({})


@pytest.mark.parametrize("weight", [0, 0.0, -1, -0.5, True, False, "5", None, [1], float("nan")])
def test_from_weights_rejects_bad_weights(weight: object) -> None:
    with pytest.raises(ValueError, match="weight"):
        Alias.from_weights({"a": 1, "b": weight})  # type: ignore[dict-item]


@pytest.mark.parametrize("target", ["", 1, None])
def test_from_weights_rejects_bad_target_names(target: object) -> None:
    with pytest.raises(ValueError, match="target"):
        Alias.from_weights({target: 1})  # type: ignore[dict-item]


def test_from_weights_rejects_infinite_weight() -> None:
    with pytest.raises(ValueError, match="finite"):
        Alias.from_weights({"a": float("inf"), "b": 1})


# --- Alias.pick ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draw", "target"),
    [
        (0.0, "a"),
        (0.2499999, "a"),
        (0.25, "b"),
        (0.4999999, "b"),
        (0.5, "c"),
        (0.9999999, "c"),
    ],
)
def test_pick_boundaries(draw: float, target: str) -> None:
    alias = Alias.from_weights({"a": 1, "b": 1, "c": 2})
    assert alias.pick(draw) == target


def test_pick_clamps_a_draw_of_one_to_the_last_target() -> None:
    alias = Alias.from_weights({"a": 1, "b": 1})
    assert alias.pick(1.0) == "b"


def test_single_target_alias_always_picks_it() -> None:
    alias = Alias.from_weights({"only": 3})
    assert {alias.pick(d) for d in (0.0, 0.3, 0.999, 1.0)} == {"only"}


def test_cursor_alias_boundaries() -> None:
    alias = DEFAULT_TABLE.aliases["cursor-pro-sonnet"]
    assert alias.pick(0.0) == CLAUDE
    assert alias.pick(0.1999999) == CLAUDE
    assert alias.pick(0.2) == GEMINI
    assert alias.pick(0.9999999) == GEMINI


# --- Router ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o", CLAUDE, GEMINI, "", "Cursor-Pro-Sonnet", "cursor-pro-sonnet "]
)
def test_router_passes_unknown_models_unchanged(model: str) -> None:
    router = Router(rng=FixedDraw())  # any draw would raise IndexError
    assert router.route(model) == model


def test_router_uses_the_draw_for_aliases() -> None:
    router = Router(rng=FixedDraw(0.1, 0.9))
    assert router.route("cursor-pro-sonnet") == CLAUDE
    assert router.route("cursor-pro-sonnet") == GEMINI


def test_router_default_aliases_contain_cursor_pro_sonnet() -> None:
    assert set(Router().table.aliases) == {"cursor-pro-sonnet"}


def test_router_custom_aliases_replace_the_defaults() -> None:
    table = RouteTable({"fast": Alias.from_weights({"tiny-model": 1})})
    router = Router(table, rng=FixedDraw(0.5))
    assert router.route("fast") == "tiny-model"
    assert router.route("cursor-pro-sonnet") == "cursor-pro-sonnet"


def test_router_with_no_aliases_routes_nothing() -> None:
    assert Router(RouteTable()).route("cursor-pro-sonnet") == "cursor-pro-sonnet"


def test_router_without_rng_still_routes_to_a_target() -> None:
    picks = {Router().route("cursor-pro-sonnet") for _ in range(200)}
    assert picks <= {CLAUDE, GEMINI}
    assert picks == {CLAUDE, GEMINI}  # P(one missing in 200) < 1e-19


@pytest.mark.parametrize("seed", [0, 1, 42, 2024, 987654321])
def test_cursor_pro_sonnet_splits_20_80(seed: int) -> None:
    draws = 10_000
    router = Router(rng=random.Random(seed))
    counts = Counter(router.route("cursor-pro-sonnet") for _ in range(draws))
    assert set(counts) == {CLAUDE, GEMINI}
    share = counts[CLAUDE] / draws
    six_sigma = 6 * math.sqrt(0.2 * 0.8 / draws)
    assert abs(share - 0.20) <= six_sigma


def test_same_seed_gives_same_routes() -> None:
    first = Router(rng=random.Random(7))
    second = Router(rng=random.Random(7))
    assert [first.route("cursor-pro-sonnet") for _ in range(100)] == [
        second.route("cursor-pro-sonnet") for _ in range(100)
    ]


# --- parse_json_body -------------------------------------------------------------------


def test_parse_json_body_decodes_an_object() -> None:
    assert parse_json_body(b'{"model": "x", "n": [1, 2.5, null, true]}') == {
        "model": "x",
        "n": [1, 2.5, None, True],
    }


def test_parse_json_body_accepts_a_utf8_bom() -> None:
    assert parse_json_body(b'\xef\xbb\xbf{"model": "x"}') == {"model": "x"}


def test_parse_json_body_keeps_non_ascii() -> None:
    assert parse_json_body('{"content": "привет 👋"}'.encode()) == {"content": "привет 👋"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"content": "\xff"}',
        b'{"content": "\xc3"}',
        '{"a": 1}'.encode("utf-16"),
        b"\xff\xfe",
    ],
)
def test_parse_json_body_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json_body(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"t": NaN}', b'{"t": Infinity}', b'{"t": -Infinity}', b"NaN", b"[Infinity]"],
)
def test_parse_json_body_rejects_nan_and_infinity(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json_body(raw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b'{"a": 1} trailing', b"{'a': 1}", b'{"a": 1,}', b"model=x"],
)
def test_parse_json_body_rejects_malformed_json(raw: bytes) -> None:
    with pytest.raises(BodyError):
        parse_json_body(raw)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_parse_json_body_deep_nesting_is_a_body_error(opener: bytes) -> None:
    depth = 200_000
    closer = b"]" if opener == b"[" else b"}"
    raw = opener * depth + b"1" + closer * depth
    with pytest.raises(BodyError) as info:
        parse_json_body(raw)
    assert isinstance(info.value.__cause__, RecursionError)


def test_parse_json_body_returns_non_objects_as_is() -> None:
    assert parse_json_body(b"[1, 2]") == [1, 2]
    assert parse_json_body(b'"text"') == "text"


def test_body_error_is_a_value_error_with_a_client_message() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json_body(b"nope")
