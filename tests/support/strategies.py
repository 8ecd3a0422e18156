"""Hypothesis helpers shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def mutate(
    draw: st.DrawFn, value: Any, values: st.SearchStrategy[Any], max_depth: int, depth: int = 0
) -> Any:
    """`value` with one field somewhere inside replaced by a value drawn from `values`."""
    if depth > max_depth or not isinstance(value, dict | list) or not value or draw(st.booleans()):
        return draw(values)
    if isinstance(value, list):
        i = draw(st.integers(0, len(value) - 1))
        inner = mutate(draw, value[i], values, max_depth, depth + 1)
        return [*value[:i], inner, *value[i + 1 :]]
    key = draw(st.sampled_from(sorted(value)))
    return {**value, key: mutate(draw, value[key], values, max_depth, depth + 1)}
