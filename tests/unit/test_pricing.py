"""Unit tests for apipod_proxy.policy.pricing: prices and tiers from the routing TOML, and cost."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from apipod_proxy.policy.pricing import Plans, Price, PriceTable, Tier, parse_plans
from apipod_proxy.policy.routing import Router, RoutesError, RoutesFile, read_toml, routes_from

EXAMPLE = """
[aliases.cursor-pro-sonnet]
targets = { "claude-sonnet-4-5" = 20, "gemini-3-flash" = 80 }

[prices."claude-sonnet-4-5"]
input = 3.00
output = 15.00
cached_input = 0.30

[prices."gemini-3-flash"]
input = 0.5
output = 3

[tiers.elite]
rpm = 600
budget = 50.0
budget_period = "month"
models = ["cursor-pro-sonnet", "gemini-3-flash"]

[tiers.free]
"""


def test_parses_prices_and_tiers() -> None:
    table = parse_plans(EXAMPLE)
    assert table.prices == {
        "claude-sonnet-4-5": Price(3.0, 15.0, 0.3),
        "gemini-3-flash": Price(0.5, 3.0, 0.5),  # cached input defaults to input
    }
    assert table.tiers == {
        "elite": Tier(600, 50.0, "month", ("cursor-pro-sonnet", "gemini-3-flash")),
        "free": Tier(),
    }


def test_no_prices_and_no_tiers_is_an_empty_table() -> None:
    assert parse_plans("[renames]\n") == PriceTable()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prices = 3", "[prices] must be a table"),
        ('[prices."m"]\ninput = 1\n', '[prices."m"] needs output'),
        ('[prices."m"]\noutput = 1\n', '[prices."m"] needs input'),
        ('[prices."m"]\ninput = -1\noutput = 1\n', "input must be zero or more"),
        ('[prices."m"]\ninput = "1"\noutput = 1\n', "input must be a number"),
        ('[prices."m"]\ninput = nan\noutput = 1\n', "input must be zero or more"),
        ('[prices."m"]\ninput = 1\noutput = inf\n', "output must be zero or more"),
        ('[prices."m"]\ninput = 1\noutput = 1\ncached = 1\n', 'unknown keys in [prices."m"]'),
        ("[prices]\nm = 3\n", "must be a table with input and output"),
        ("[tiers.t]\nrpm = -1\n", '[tiers."t"] rpm must be a whole number'),
        ("[tiers.t]\nrpm = 1.5\n", "rpm must be a whole number"),
        ("[tiers.t]\nbudget = -5\n", "budget must be zero or more"),
        ('[tiers.t]\nbudget_period = "week"\n', "budget_period must be one of day, month, total"),
        ('[tiers.t]\nmodels = "a,b"\n', "models must be a list of model names"),
        ("[tiers.t]\nmodels = [1]\n", "models must be a list of model names"),
        ("[tiers.t]\nbudgets = 1\n", 'unknown keys in [tiers."t"]: budgets'),
        ("[tiers]\nt = 1\n", '[tiers."t"] must be a table'),
        ("[tiers.t\n", "not valid TOML"),
        ("default_price = 3", "[default_price] must be a table"),
        ("[default_price]\ninput = 1\n", "[default_price] needs output"),
        ("[default_price]\ninput = 1\noutput = -2\n", "[default_price] output must be zero"),
        ("[default_price]\ninput = 1\noutput = 1\nx = 1\n", "unknown keys in [default_price]"),
    ],
)
def test_invalid_plans_say_where(text: str, message: str) -> None:
    with pytest.raises(RoutesError) as info:
        parse_plans(text)
    assert message in str(info.value)


def test_cost_charges_cached_input_at_its_own_price() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3)
    # 1000 fresh input, 9000 cached, 500 output, per million tokens.
    assert price.cost(10_000, 9_000, 500) == pytest.approx((1000 * 3 + 9000 * 0.3 + 500 * 15) / 1e6)
    # More cached than prompt tokens (a confused upstream) never makes a negative charge.
    assert price.cost(10, 50, 0) == pytest.approx(10 * 0.3 / 1e6)


def test_unpriced_model_costs_0_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    plans = Plans(parse_plans(EXAMPLE))
    with caplog.at_level(logging.WARNING, "apipod"):
        assert plans.cost("mystery", 1000, 0, 1000) == 0
        assert plans.cost("mystery", 1000, 0, 1000) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "model 'mystery' has no price in ROUTES_FILE: its requests cost 0"
    ]
    assert plans.cost("gemini-3-flash", 2_000_000, 0, 1_000_000) == pytest.approx(4.0)


def test_routes_file_loads_plans_and_keeps_the_last_good_on_a_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(EXAMPLE)
    router, plans = Router(), Plans()
    routes = RoutesFile(str(path), router, [plans])
    routes.load()
    assert plans.table.prices["gemini-3-flash"].output == 3.0
    assert "cursor-pro-sonnet" in router.table.aliases
    # A broken price keeps both the last good routes and the last good prices.
    path.write_text(EXAMPLE.replace("output = 3\n", "output = -3\n") + "[renames]\na = 'b'\n")
    os.utime(path, ns=(1, 1))
    with caplog.at_level(logging.ERROR, "apipod"):
        assert routes.reload_if_changed() is False
    assert "output must be zero or more" in caplog.text
    assert plans.table.prices["gemini-3-flash"].output == 3.0
    assert router.table.renames == {}
    # A good edit changes both at once.
    path.write_text(EXAMPLE.replace("output = 3\n", "output = 4\n") + "[renames]\na = 'b'\n")
    assert routes.reload_if_changed() is True
    assert plans.table.prices["gemini-3-flash"].output == 4.0
    assert router.table.renames == {"a": "b"}


def test_a_broken_plan_at_startup_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[tiers.t]\nbudget_period = "year"\n')
    with pytest.raises(RoutesError) as info:
        RoutesFile(str(path), Router(), [Plans()]).load()
    assert str(info.value).startswith(f"ROUTES_FILE {path}: ")


def test_the_example_routes_file_has_valid_plans() -> None:
    text = (Path(__file__).resolve().parents[2] / "routes.example.toml").read_text()
    table = parse_plans(text)
    assert table.prices["claude-sonnet-4-5"] == Price(3.0, 15.0, 0.3)
    assert table.tiers["trial"] == Tier(20, 1.0, "total", ("gemini-3-flash",))


def test_default_price_prices_every_unlisted_name_and_names_match_exactly() -> None:
    plans = Plans(
        parse_plans(
            '[prices."claude-x"]\ninput = 1\noutput = 2\n'
            "[default_price]\ninput = 10\noutput = 20\ncached_input = 5\n"
        )
    )
    assert plans.price_of("claude-x") == Price(1.0, 2.0, 1.0)
    for variant in ("CLAUDE-X", "claude-x ", "claude-x-20250101"):
        assert plans.price_of(variant) == Price(10.0, 20.0, 5.0)
    assert plans.cost("claude-x-20250101", 1_000_000, 0, 0) == 10.0
    assert (
        Plans(parse_plans('[prices."claude-x"]\ninput = 1\noutput = 2\n')).price_of("CLAUDE-X")
        is None
    )


def test_the_routing_table_accepts_default_price_at_the_top_level() -> None:
    routes_from(read_toml("[default_price]\ninput = 1\noutput = 1\n"))


def test_without_prices_an_unpriced_model_is_free_and_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No [prices] (no ROUTES_FILE, or one with only routes): everything is free, as the
    docs say, so a warning about a missing price would only mislead."""
    plans = Plans(parse_plans("[tiers.trial]\nrpm = 5\n"))
    with caplog.at_level(logging.WARNING, "apipod"):
        assert plans.cost("gemini-3-flash", 1000, 0, 1000) == 0
        assert Plans().cost("gemini-3-flash", 1000, 0, 1000) == 0
    assert caplog.records == []
