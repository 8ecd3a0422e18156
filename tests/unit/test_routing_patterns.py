"""Unit tests for the routing table's patterns and default route (policy/routing.py):
the order they are matched in, their validation, the built-in Claude Code patterns, the
allow-list against them, and a reload that changes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apipod_proxy.policy import budgets
from apipod_proxy.policy.pricing import Plans, PriceTable, Tier
from apipod_proxy.policy.routing import (
    DEFAULT_ROUTE,
    DEFAULT_TABLE,
    Router,
    RoutesError,
    RoutesFile,
    parse_routes,
)
from apipod_proxy.storage.records import KeyRecord

#: What the upstream lists in these tests.
LISTED = frozenset({"claude-opus-4-5-thinking", "claude-sonnet-4-5", "gemini-3-flash", "served-x"})

TABLE = """
[aliases.mix]
targets = { "claude-sonnet-4-5" = 1, "gemini-3-flash" = 1 }

[aliases.pinned]
sticky = true
targets = { "claude-sonnet-4-5" = 1, "gemini-3-flash" = 1 }

[renames]
"claude-opus-4-8" = "gemini-3-flash"
"old" = "claude-sonnet-4-5"

[patterns]
"claude-opus-4-*" = "claude-opus-4-5-thinking"
"claude-opus-*" = "gemini-3-flash"
"claude-haiku-*" = "mix"
"*-latest" = "old"
"served-*" = "gemini-3-flash"
"*[1m]" = "claude-sonnet-4-5"

[default_route]
target = "pinned"
"""


@pytest.fixture
def router() -> Router:
    return Router(parse_routes(TABLE))


def route(router: Router, model: str, listed: frozenset[str] | None = LISTED) -> str:
    return router.route(model, listed=listed, conversation="one conversation")


# --- the order ------------------------------------------------------------------------


def test_an_exact_rename_wins_over_every_pattern(router: Router) -> None:
    assert route(router, "claude-opus-4-8") == "gemini-3-flash"


def test_the_first_matching_pattern_in_file_order_wins(router: Router) -> None:
    assert route(router, "claude-opus-4-9") == "claude-opus-4-5-thinking"
    assert route(router, "claude-opus-5") == "gemini-3-flash"
    match = router.table.match("claude-opus-5", LISTED)
    assert match.via == "claude-opus-*"


def test_a_pattern_matches_the_whole_name_only(router: Router) -> None:
    # "claude-haiku-*" does not match a name that only contains it.
    assert router.table.match("x-claude-haiku-4", LISTED).via == DEFAULT_ROUTE


def test_a_name_the_upstream_lists_is_never_rewritten_by_a_pattern(router: Router) -> None:
    assert route(router, "served-x") == "served-x"
    assert route(router, "served-y") == "gemini-3-flash"


def test_a_pattern_may_name_an_alias_or_a_rename(router: Router) -> None:
    match = router.table.match("claude-haiku-4-5", LISTED)
    assert match.alias is router.table.aliases["mix"] and match.via == "claude-haiku-*"
    assert route(router, "claude-haiku-4-5") in {"claude-sonnet-4-5", "gemini-3-flash"}
    assert route(router, "model-latest") == "claude-sonnet-4-5"  # through the rename "old"


def test_only_star_is_special(router: Router) -> None:
    # "[1m]" is literal, not a character class (Claude Code's 1M-context suffix).
    assert route(router, "gemini-3-pro[1m]") == "claude-sonnet-4-5"
    assert router.table.match("gemini-3-pro1", LISTED).via == DEFAULT_ROUTE
    table = parse_routes('[patterns]\n"a?c*" = "t"\n')
    assert table.pattern_for("a?cd") == "a?c*" and table.pattern_for("abcd") is None


def test_the_default_route_takes_any_other_unlisted_name(router: Router) -> None:
    match = router.table.match("gpt-5", LISTED)
    assert match.via == DEFAULT_ROUTE and match.alias is router.table.aliases["pinned"]
    # A sticky alias as the default: the conversation fixes the draw.
    assert len({route(router, "gpt-5") for _ in range(20)}) == 1
    assert router.table.match("gpt-5", LISTED).sticky and not router.table.match("gpt-5").sticky


def test_without_the_upstreams_list_patterns_and_the_default_are_skipped(
    router: Router,
) -> None:
    assert route(router, "claude-opus-4-9", listed=None) == "claude-opus-4-9"
    assert route(router, "gpt-5", listed=None) == "gpt-5"
    assert route(router, "claude-opus-4-8", listed=None) == "gemini-3-flash"  # exact


def test_without_a_default_route_an_unmatched_name_passes_as_asked() -> None:
    router = Router(parse_routes('[patterns]\n"claude-*" = "gemini-3-flash"\n'))
    assert route(router, "gpt-5") == "gpt-5"
    assert router.table.match("gpt-5", LISTED).via is None


def test_patterns_and_default_are_not_listed_names_but_their_targets_are_checked(
    router: Router,
) -> None:
    assert router.table.names() == ["mix", "pinned", "claude-opus-4-8", "old"]
    table = parse_routes('[patterns]\n"a-*" = "t1"\n[default_route]\ntarget = "t2"\n')
    assert table.targets() == ["t1", "t2"]


# --- the built-in table ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "routed"),
    [
        ("claude-opus-4-8", "claude-opus-4-5-thinking"),  # Claude Code 2.1's main model
        ("claude-sonnet-4-6", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "gemini-3-flash"),  # its small background model
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),  # listed: as asked
        ("claude-opus-4-5-thinking", "claude-opus-4-5-thinking"),
        ("gpt-5", "gpt-5"),  # no default route built in
    ],
)
def test_the_built_in_table_maps_claude_codes_names(asked: str, routed: str) -> None:
    assert Router(DEFAULT_TABLE).route(asked, listed=LISTED) == routed


def test_the_built_in_patterns_leave_a_listed_variant_alone() -> None:
    listed = LISTED | {"claude-sonnet-4-5-thinking"}
    assert Router().route("claude-sonnet-4-5-thinking", listed=listed) == (
        "claude-sonnet-4-5-thinking"
    )


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[patterns]\n"claude-opus" = "x"\n', "[patterns] 'claude-opus' has no '*'"),
        ('[patterns]\n"a-*" = ""\n', "[patterns] 'a-*' must map to a model or alias name"),
        ('[patterns]\n"a-*" = 3\n', "[patterns] 'a-*' must map to a model or alias name"),
        ('[patterns]\n"a-*" = "b-*"\n', "[patterns] 'a-*' must map to a model or alias name"),
        ("patterns = 3\n", "[patterns] must be a table"),
        ('default_route = "x"\n', "[default_route] must be a table"),
        ("[default_route]\n", "[default_route] needs target ="),
        ('[default_route]\ntarget = ""\n', "[default_route] needs target ="),
        ('[default_route]\ntarget = "*"\n', "[default_route] needs target ="),
        (
            '[default_route]\ntarget = "x"\nmodel = "y"\n',
            "unknown keys in [default_route]: model (allowed: target)",
        ),
    ],
)
def test_invalid_patterns_and_default_routes_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(RoutesError) as raised:
        parse_routes(text)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_the_example_file_has_claude_code_patterns() -> None:
    text = (Path(__file__).resolve().parents[2] / "routes.example.toml").read_text()
    table = parse_routes(text)
    router = Router(table)
    for name in ("claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-sonnet-4-6"):
        assert table.pattern_for(name) is not None
        assert router.route(name, listed=LISTED) in LISTED


# --- the allow-list -------------------------------------------------------------------

KEY = KeyRecord(1, "k", "trial", True, "2024-01-01T00:00:00Z", None, "apk_abcd")


def plans_allowing(*models: str) -> Plans:
    plans = Plans()
    plans.apply(PriceTable(tiers={"trial": Tier(models=models)}))
    return plans


def test_the_allow_list_is_checked_against_the_asked_name() -> None:
    plans = plans_allowing("claude-opus-4-8")
    assert budgets.model_refusal(KEY, "claude-opus-4-8", plans, via=None) is None
    # The routed model is not what counts: gemini-3-flash asked directly is refused.
    assert budgets.model_refusal(KEY, "gemini-3-flash", plans) is not None


def test_a_pattern_on_the_allow_list_allows_what_it_matched() -> None:
    plans = plans_allowing("claude-opus-*")
    assert budgets.model_refusal(KEY, "claude-opus-4-9", plans, via="claude-opus-*") is None
    assert budgets.model_refusal(KEY, "claude-opus-4-9", plans, via=None) is not None


def test_the_default_route_allows_nothing_by_itself() -> None:
    plans = plans_allowing(DEFAULT_ROUTE)
    refusal = budgets.model_refusal(KEY, "gpt-5", plans, via=DEFAULT_ROUTE)
    assert refusal is not None and refusal.code == "model_not_allowed"


# --- reload ---------------------------------------------------------------------------


def test_a_reload_replaces_the_patterns_and_the_default(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[patterns]\n"claude-*" = "gemini-3-flash"\n')
    router = Router()
    routes = RoutesFile(str(path), router)
    routes.load()
    assert router.route("claude-opus-9", listed=LISTED) == "gemini-3-flash"
    assert router.route("gpt-5", listed=LISTED) == "gpt-5"
    path.write_text('[patterns]\n"gpt-*" = "claude-sonnet-4-5"\n[default_route]\ntarget = "x"\n')
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert routes.reload_if_changed()
    assert router.route("gpt-5", listed=LISTED) == "claude-sonnet-4-5"
    assert router.route("claude-opus-9", listed=LISTED) == "x"
    # A broken edit keeps them.
    path.write_text('[patterns]\n"gpt" = "claude-sonnet-4-5"\n')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    assert not routes.reload_if_changed()
    assert router.route("gpt-5", listed=LISTED) == "claude-sonnet-4-5"


def test_the_routing_pages_toml_examples_parse_and_route_claude_codes_names() -> None:
    """docs/routing.md's "Routing table" examples are valid tables, and its patterns
    example routes what Claude Code sends as the page says."""
    from tests.support.harness import doc_section, fenced_blocks

    blocks = fenced_blocks(doc_section("docs/routing.md", "Routing table"), "toml")
    tables = [parse_routes(block) for block in blocks]
    [example] = [table for table in tables if table.patterns]
    listed = {"claude-sonnet-4-5", "claude-sonnet-4-5-thinking", "gemini-3-flash"}
    assert example.match("claude-opus-4-8", listed).target == "claude-opus-4-5-thinking"
    assert example.match("claude-haiku-4-5-20251001", listed).target == "gemini-3-flash"
    assert example.match("claude-sonnet-4-5-thinking", listed).target == (
        "claude-sonnet-4-5-thinking"
    )
    assert example.match("mystery-model", listed).target == "gemini-3-flash"  # default route
    assert example.match("claude-opus-4-8", None).target == "claude-opus-4-8"  # no list yet


def test_only_a_name_a_pattern_or_the_default_would_take_waits_for_the_list() -> None:
    """A request for an alias, a rename or a name no pattern matches is routed without
    the upstream's model list, so it never waits for that list to be fetched."""
    table = parse_routes(
        '[aliases.a]\ntargets = { "m" = 1 }\n[renames]\n"r" = "m"\n[patterns]\n"claude-*" = "m"\n'
    )
    assert [table.needs_listing(n) for n in ("a", "r", "gemini-3-flash", "claude-opus-4-8")] == [
        False,
        False,
        False,
        True,
    ]
    with_default = parse_routes('[default_route]\ntarget = "m"\n')
    assert with_default.needs_listing("anything") and not DEFAULT_TABLE.needs_listing("gpt-4o")
