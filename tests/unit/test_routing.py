"""Unit tests for apipod_proxy.policy.routing: aliases, the router, the routing table file,
sticky conversations and strict JSON bodies."""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from mitmproxy import http

from apipod_proxy.bodies import parse_json
from apipod_proxy.policy.routing import (
    DEFAULT_TABLE,
    Alias,
    Router,
    RoutesError,
    RoutesFile,
    RouteTable,
    conversation_key,
    parse_routes,
    stable_draw,
)
from tests.support.gateway import LogRecords

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


# --- parse_routes ----------------------------------------------------------------------

VALID_ROUTES = """
[aliases.fast]
targets = { "tiny-model" = 1, "small-model" = 3 }

[aliases.agent]
sticky = true
targets = { "claude-x" = 50, "gemini-y" = 50 }

[renames]
"gpt-4o" = "gemini-3-flash"
"old-name" = "new-name"
"""


def test_parse_routes_reads_aliases_sticky_flags_and_renames() -> None:
    table = parse_routes(VALID_ROUTES)
    assert set(table.aliases) == {"fast", "agent"}
    assert table.aliases["fast"].targets == ("tiny-model", "small-model")
    assert table.aliases["fast"].cumulative == pytest.approx((0.25, 1.0))
    assert table.aliases["fast"].sticky is False
    assert table.aliases["agent"].sticky is True
    assert table.renames == {"gpt-4o": "gemini-3-flash", "old-name": "new-name"}


def test_parse_routes_of_an_empty_document_is_an_empty_table() -> None:
    table = parse_routes("")
    assert table.aliases == {}
    assert table.renames == {}


def test_parse_routes_accepts_the_example_file() -> None:
    text = (Path(__file__).resolve().parents[2] / "routes.example.toml").read_text()
    table = parse_routes(text)
    assert "cursor-pro-sonnet" in table.aliases
    assert table.aliases["cursor-pro-sonnet"].sticky is False
    assert any(alias.sticky for alias in table.aliases.values())


def test_parse_routes_accepts_quoted_alias_names_with_dots() -> None:
    table = parse_routes('[aliases."gpt-4.1"]\ntargets = { "m" = 1 }\n')
    assert set(table.aliases) == {"gpt-4.1"}


def test_parse_routes_rejects_invalid_toml() -> None:
    with pytest.raises(RoutesError, match="not valid TOML"):
        parse_routes("[aliases.fast\ntargets = {")


def test_parse_routes_rejects_unknown_top_level_keys() -> None:
    with pytest.raises(RoutesError, match="unknown keys in the top level: alias, extra"):
        parse_routes('extra = 1\n[alias.fast]\ntargets = { "m" = 1 }\n')


@pytest.mark.parametrize("section", ["aliases = 5", 'renames = "x"', "aliases = [1, 2]"])
def test_parse_routes_rejects_sections_that_are_not_tables(section: str) -> None:
    name = section.split(" ")[0]
    with pytest.raises(RoutesError, match=rf"\[{name}\] must be a table"):
        parse_routes(section)


def test_parse_routes_rejects_an_alias_that_is_not_a_table() -> None:
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] must be a table"):
        parse_routes('[aliases]\nfast = "tiny-model"\n')


def test_parse_routes_rejects_unknown_keys_in_an_alias_and_names_it() -> None:
    text = '[aliases.fast]\ntargets = { "m" = 1 }\nweight = 3\nstiky = true\n'
    with pytest.raises(RoutesError, match=r"unknown keys in \[aliases\.fast\]: stiky, weight"):
        parse_routes(text)


@pytest.mark.parametrize("value", ['"yes"', "1", "0", "[true]"])
def test_parse_routes_rejects_a_sticky_that_is_not_a_bool(value: str) -> None:
    text = f'[aliases.fast]\nsticky = {value}\ntargets = {{ "m" = 1 }}\n'
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] sticky must be true or false"):
        parse_routes(text)


@pytest.mark.parametrize(
    "targets_line",
    ["", 'targets = "tiny-model"', 'targets = ["a", "b"]', "targets = 3"],
    ids=["missing", "string", "list", "number"],
)
def test_parse_routes_needs_a_targets_table(targets_line: str) -> None:
    text = f"[aliases.fast]\nsticky = false\n{targets_line}\n"
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] needs targets"):
        parse_routes(text)


def test_parse_routes_rejects_empty_targets() -> None:
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] .*at least one target"):
        parse_routes("[aliases.fast]\ntargets = {}\n")


@pytest.mark.parametrize("weight", ["0", "0.0", "-1", "-2.5", "true", "false", '"5"', "nan"])
def test_parse_routes_rejects_non_positive_or_non_numeric_weights(weight: str) -> None:
    text = f'[aliases.fast]\ntargets = {{ "good" = 1, "bad" = {weight} }}\n'
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] weight of 'bad'"):
        parse_routes(text)


def test_parse_routes_rejects_infinite_weights_naming_the_alias() -> None:
    with pytest.raises(RoutesError, match=r"\[aliases\.fast\] weights must be finite"):
        parse_routes('[aliases.fast]\ntargets = { "a" = inf, "b" = 1 }\n')


def test_parse_routes_error_names_the_broken_alias_not_a_good_one() -> None:
    text = '[aliases.good]\ntargets = { "m" = 1 }\n[aliases.broken]\ntargets = { "m" = -1 }\n'
    with pytest.raises(RoutesError) as info:
        parse_routes(text)
    assert "[aliases.broken]" in str(info.value)
    assert "[aliases.good]" not in str(info.value)


def test_parse_routes_rejects_a_name_that_is_both_alias_and_rename() -> None:
    text = '[aliases.fast]\ntargets = { "m" = 1 }\n[renames]\nfast = "other"\n'
    with pytest.raises(RoutesError, match="'fast' is both an alias and a rename"):
        parse_routes(text)


@pytest.mark.parametrize("target", ["1", "true", '""', '["a"]', '{ x = "y" }'])
def test_parse_routes_rejects_renames_to_non_strings(target: str) -> None:
    with pytest.raises(RoutesError, match=r"\[renames\] 'gpt-4o' must map to a model name"):
        parse_routes(f'[renames]\n"gpt-4o" = {target}\n')


def test_routes_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_routes("= broken")


# --- RouteTable.names --------------------------------------------------------------------


def test_names_lists_aliases_then_renames_in_file_order() -> None:
    table = parse_routes(
        '[renames]\nz-rename = "x"\na-rename = "y"\n'
        '[aliases.m-alias]\ntargets = { "t" = 1 }\n'
        '[aliases.b-alias]\ntargets = { "t" = 1 }\n'
    )
    assert table.names() == ["m-alias", "b-alias", "z-rename", "a-rename"]


def test_names_of_an_empty_table_is_empty() -> None:
    assert RouteTable().names() == []


# --- Router: renames and sticky aliases ---------------------------------------------------

STICKY = "agent"


def sticky_router(rng: random.Random | None = None) -> Router:
    table = RouteTable(
        aliases={
            STICKY: Alias.from_weights({CLAUDE: 20, GEMINI: 80}, sticky=True),
            "loose": Alias.from_weights({CLAUDE: 1, GEMINI: 1}),
        },
        renames={"gpt-4o": GEMINI},
    )
    return Router(table, rng=rng or FixedDraw())


def test_router_applies_renames_without_a_draw() -> None:
    router = sticky_router(FixedDraw())  # any draw would raise IndexError
    assert router.route("gpt-4o") == GEMINI
    assert router.route("gpt-4o", "conversation") == GEMINI


def test_router_rename_wins_over_an_alias_of_the_same_name() -> None:
    table = RouteTable(
        aliases={"both": Alias.from_weights({"from-alias": 1})},
        renames={"both": "from-rename"},
    )
    assert Router(table, rng=FixedDraw()).route("both") == "from-rename"


def test_router_does_not_chain_a_rename_into_an_alias() -> None:
    table = RouteTable(
        aliases={"fast": Alias.from_weights({"tiny-model": 1})}, renames={"quick": "fast"}
    )
    assert Router(table, rng=FixedDraw()).route("quick") == "fast"


@pytest.mark.parametrize(
    ("model", "sticky"),
    [(STICKY, True), ("loose", False), ("gpt-4o", False), ("unknown", False), ("", False)],
)
def test_is_sticky(model: str, sticky: bool) -> None:
    assert sticky_router().table.match(model).sticky is sticky


def test_is_sticky_follows_a_replaced_table() -> None:
    router = sticky_router()
    assert router.table.match(STICKY).sticky
    router.table = RouteTable()
    assert not router.table.match(STICKY).sticky


def test_sticky_alias_with_a_conversation_uses_no_random_draw() -> None:
    router = sticky_router(FixedDraw())  # any draw would raise IndexError
    first = router.route(STICKY, "1:session:abc")
    assert [router.route(STICKY, "1:session:abc") for _ in range(20)] == [first] * 20


def test_sticky_routing_is_the_same_across_routers_and_random_sources() -> None:
    conversations = [f"7:opening:{i}" for i in range(200)]
    first = sticky_router(random.Random(1))
    second = sticky_router(random.Random(2))
    assert [first.route(STICKY, c) for c in conversations] == [
        second.route(STICKY, c) for c in conversations
    ]


def test_sticky_routing_follows_the_stable_draw() -> None:
    router = sticky_router(FixedDraw())
    for i in range(100):
        conversation = f"conversation-{i}"
        expected = CLAUDE if stable_draw(conversation) < 0.2 else GEMINI
        assert router.route(STICKY, conversation) == expected


def test_sticky_alias_without_a_conversation_draws_at_random() -> None:
    router = sticky_router(FixedDraw(0.1, 0.9))
    assert router.route(STICKY) == CLAUDE
    assert router.route(STICKY, None) == GEMINI


def test_non_sticky_alias_ignores_the_conversation() -> None:
    router = sticky_router(FixedDraw(0.1, 0.9))
    assert router.route("loose", "same") == CLAUDE
    assert router.route("loose", "same") == GEMINI


def test_sticky_split_over_many_conversations_follows_the_weights() -> None:
    conversations = 20_000
    router = sticky_router(FixedDraw())
    counts = Counter(router.route(STICKY, f"{i % 7}:opening:{i}") for i in range(conversations))
    assert set(counts) == {CLAUDE, GEMINI}
    share = counts[CLAUDE] / conversations
    assert abs(share - 0.2) <= 6 * math.sqrt(0.2 * 0.8 / conversations)


def test_stable_draw_is_in_the_unit_interval_and_uniform() -> None:
    draws = [stable_draw(f"key-{i}") for i in range(20_000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    below = sum(d < 0.2 for d in draws) / len(draws)
    assert abs(below - 0.2) <= 6 * math.sqrt(0.2 * 0.8 / len(draws))
    assert abs(sum(draws) / len(draws) - 0.5) <= 6 * math.sqrt(1 / 12 / len(draws))


def test_stable_draw_is_deterministic_and_key_dependent() -> None:
    assert stable_draw("abc") == stable_draw("abc")
    assert len({stable_draw(f"k{i}") for i in range(1000)}) == 1000


def test_sticky_routing_accepts_a_session_header_that_is_not_utf8() -> None:
    session = http.Headers([(b"x-session-id", b"\xff\xfe-session")]).get("x-session-id")
    conversation = conversation_key(1, session, {})
    assert 0.0 <= stable_draw(conversation) < 1.0
    assert sticky_router().route(STICKY, conversation) in {CLAUDE, GEMINI}


def test_conversation_key_accepts_lone_surrogates_in_the_body() -> None:
    body = parse_json(b'{"messages": [{"role": "user", "content": "\\ud83d cut"}]}')
    conversation = conversation_key(1, None, body)
    assert conversation != conversation_key(1, None, chat(("user", " cut")))
    assert sticky_router().route(STICKY, conversation) in {CLAUDE, GEMINI}


# --- conversation_key ----------------------------------------------------------------------


def chat(*messages: tuple[str, object], **extra: object) -> dict[str, object]:
    return {
        "model": STICKY,
        "messages": [{"role": role, "content": content} for role, content in messages],
        **extra,
    }


OPENING = (("system", "You are a coder."), ("user", "Fix the bug in main.py"))


def test_conversation_key_prefers_the_session_header() -> None:
    first = conversation_key(1, "sess-1", chat(("user", "one")))
    second = conversation_key(1, "sess-1", chat(("user", "something else entirely")))
    assert first == second
    assert first != conversation_key(1, "sess-2", chat(("user", "one")))
    assert first != conversation_key(1, None, chat(("user", "one")))


def test_conversation_key_empty_session_falls_back_to_the_opening() -> None:
    body = chat(*OPENING)
    assert conversation_key(1, "", body) == conversation_key(1, None, body)


def test_conversation_key_is_stable_while_the_conversation_grows() -> None:
    turn_one = chat(*OPENING)
    turn_three = chat(
        *OPENING,
        ("assistant", "Done, see the diff."),
        ("user", "Now add a test"),
        ("system", "a late reminder"),
    )
    assert conversation_key(1, None, turn_one) == conversation_key(1, None, turn_three)


def test_conversation_key_differs_for_a_different_first_user_message() -> None:
    first = chat(("system", "You are a coder."), ("user", "Fix the bug"))
    second = chat(("system", "You are a coder."), ("user", "Write docs"))
    assert conversation_key(1, None, first) != conversation_key(1, None, second)


def test_conversation_key_differs_between_api_keys() -> None:
    body = chat(*OPENING)
    assert conversation_key(1, None, body) != conversation_key(2, None, body)
    assert conversation_key(1, "s", body) != conversation_key(2, "s", body)


@pytest.mark.parametrize("role", ["system", "developer"])
def test_conversation_key_counts_openai_system_and_developer_messages(role: str) -> None:
    first = chat((role, "Be terse."), ("user", "hello"))
    second = chat((role, "Be verbose."), ("user", "hello"))
    assert conversation_key(1, None, first) != conversation_key(1, None, second)


def test_conversation_key_counts_the_anthropic_top_level_system() -> None:
    first = chat(("user", "hello"), system="Be terse.")
    second = chat(("user", "hello"), system="Be verbose.")
    without = chat(("user", "hello"))
    keys = {conversation_key(1, None, body) for body in (first, second, without)}
    assert len(keys) == 3


def test_conversation_key_ignores_the_model_and_other_fields() -> None:
    first = chat(*OPENING, temperature=0.1, stream=True)
    second = {**chat(*OPENING), "model": "other-model", "max_tokens": 10}
    assert conversation_key(1, None, first) == conversation_key(1, None, second)


@pytest.mark.parametrize(
    "messages", [None, "hello", 42, {"role": "user", "content": "hi"}, [], [1, "x", None]]
)
def test_conversation_key_survives_odd_messages(messages: object) -> None:
    key = conversation_key(3, None, {"messages": messages})
    assert key.startswith("3:")
    assert key == conversation_key(3, None, {})


def test_conversation_key_skips_messages_that_are_not_objects() -> None:
    clean = chat(*OPENING)
    noisy = {"messages": [1, None, *clean["messages"][:1], "junk", *clean["messages"][1:]]}  # type: ignore[misc]
    assert conversation_key(1, None, noisy) == conversation_key(1, None, clean)


def test_conversation_key_accepts_structured_content() -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    first = chat(("user", parts))
    second = chat(("user", [parts[0]]))
    assert conversation_key(1, None, first) != conversation_key(1, None, second)


# --- RoutesFile ----------------------------------------------------------------------------

GOOD_FILE = '[aliases.fast]\ntargets = { "tiny-model" = 1 }\n'
OTHER_FILE = '[aliases.slow]\ntargets = { "huge-model" = 1 }\n[renames]\n"a" = "b"\n'
BROKEN_FILE = '[aliases.fast]\ntargets = { "tiny-model" = 0 }\n'


_mtime_step = itertools.count(1)


def write(path: Path, text: str) -> None:
    """Write `text` and give the file an mtime it has never had, as a real edit would."""
    path.write_text(text)
    stat = path.stat()
    bump = next(_mtime_step) * 1_000_000_000
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump))


@pytest.fixture
def routes_path(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    write(path, GOOD_FILE)
    return path


def test_routes_file_load_sets_the_router_table(routes_path: Path) -> None:
    router = Router()
    RoutesFile(str(routes_path), router).load()
    assert set(router.table.aliases) == {"fast"}
    assert router.route("cursor-pro-sonnet") == "cursor-pro-sonnet"


def test_routes_file_load_of_a_missing_file_names_it_and_keeps_the_table(
    tmp_path: Path,
) -> None:
    router = Router()
    before = router.table
    missing = tmp_path / "nope" / "routes.toml"
    with pytest.raises(RoutesError, match=re.escape(str(missing))):
        RoutesFile(str(missing), router).load()
    assert router.table is before


def test_routes_file_load_of_a_broken_file_names_it_and_keeps_the_table(
    routes_path: Path,
) -> None:
    router = Router()
    before = router.table
    write(routes_path, BROKEN_FILE)
    with pytest.raises(RoutesError) as info:
        RoutesFile(str(routes_path), router).load()
    assert str(routes_path) in str(info.value)
    assert "[aliases.fast]" in str(info.value)
    assert router.table is before


def test_routes_file_load_of_non_utf8_is_a_routes_error(routes_path: Path) -> None:
    routes_path.write_bytes(b'[renames]\n"a" = "\xff"\n')
    router = Router()
    before = router.table
    with pytest.raises(RoutesError, match=re.escape(str(routes_path))):
        RoutesFile(str(routes_path), router).load()
    assert router.table is before


def test_reload_if_changed_is_false_while_the_file_is_unchanged(
    routes_path: Path, apipod_log: LogRecords
) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    table = router.table
    assert routes.reload_if_changed() is False
    assert routes.reload_if_changed() is False
    assert router.table is table
    assert apipod_log.records == []


def test_reload_if_changed_picks_up_an_edit(routes_path: Path, apipod_log: LogRecords) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    write(routes_path, OTHER_FILE)
    assert routes.reload_if_changed() is True
    assert set(router.table.aliases) == {"slow"}
    assert router.route("a") == "b"
    assert routes.reload_if_changed() is False
    assert apipod_log.at(logging.ERROR) == []
    assert any(str(routes_path) in line for line in apipod_log.at(logging.INFO))


def test_reload_if_changed_sees_an_edit_of_the_same_size(routes_path: Path) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    same_size = GOOD_FILE.replace("tiny-model", "mini-model")
    assert len(same_size) == len(GOOD_FILE)
    write(routes_path, same_size)
    assert routes.reload_if_changed() is True
    assert router.table.aliases["fast"].targets == ("mini-model",)


def test_reload_if_changed_before_any_load_loads(routes_path: Path) -> None:
    router = Router()
    assert RoutesFile(str(routes_path), router).reload_if_changed() is True
    assert set(router.table.aliases) == {"fast"}


def test_broken_edit_logs_one_error_keeps_the_table_and_a_fix_is_picked_up(
    routes_path: Path, apipod_log: LogRecords
) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    good = router.table

    write(routes_path, BROKEN_FILE)
    assert routes.reload_if_changed() is False
    assert router.table is good
    errors = apipod_log.at(logging.ERROR)
    assert len(errors) == 1
    assert str(routes_path) in errors[0]
    assert "keeping the last good routing table" in errors[0]

    for _ in range(3):
        assert routes.reload_if_changed() is False
    assert len(apipod_log.at(logging.ERROR)) == 1
    assert router.table is good

    write(routes_path, OTHER_FILE)
    assert routes.reload_if_changed() is True
    assert set(router.table.aliases) == {"slow"}
    assert len(apipod_log.at(logging.ERROR)) == 1


def test_a_second_different_broken_edit_is_reported_again(
    routes_path: Path, apipod_log: LogRecords
) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    write(routes_path, BROKEN_FILE)
    routes.reload_if_changed()
    write(routes_path, "not = [valid")
    assert routes.reload_if_changed() is False
    assert len(apipod_log.at(logging.ERROR)) == 2
    assert set(router.table.aliases) == {"fast"}


def test_a_vanished_file_keeps_the_table(routes_path: Path, apipod_log: LogRecords) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    good = router.table
    routes_path.unlink()
    assert routes.reload_if_changed() is False
    assert router.table is good
    assert len(apipod_log.at(logging.ERROR)) == 1
    write(routes_path, OTHER_FILE)
    assert routes.reload_if_changed() is True
    assert set(router.table.aliases) == {"slow"}


def test_a_vanished_file_is_reported_once(routes_path: Path, apipod_log: LogRecords) -> None:
    router = Router()
    routes = RoutesFile(str(routes_path), router)
    routes.load()
    routes_path.unlink()
    for _ in range(3):
        routes.reload_if_changed()
    assert len(apipod_log.at(logging.ERROR)) == 1
