"""Model routing: which upstream model serves a requested model name.

An alias spreads requests over several targets by weight; every other model passes
through unchanged. The decision is a pure function of the model name and a random
draw, so it is cheap on the hot path and easy to test statistically.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Alias:
    """Targets with positive weights; `pick` maps a draw in [0, 1) onto them."""

    targets: tuple[str, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def from_weights(cls, weights: Mapping[str, float]) -> Alias:
        if not weights:
            raise ValueError("an alias needs at least one target")
        for target, weight in weights.items():
            if not isinstance(target, str) or not target:
                raise ValueError(f"target names must be non-empty strings, got {target!r}")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
                raise ValueError(f"weight of {target!r} must be a positive number, got {weight!r}")
        total = float(sum(weights.values()))
        cumulative = tuple(c / total for c in itertools.accumulate(weights.values()))
        return cls(tuple(weights), cumulative)

    def pick(self, draw: float) -> str:
        index = bisect.bisect_right(self.cumulative, draw)
        return self.targets[min(index, len(self.targets) - 1)]


#: The seed rule: Cursor's alias, 20 % Claude and 80 % Gemini.
DEFAULT_ALIASES: dict[str, Alias] = {
    "cursor-pro-sonnet": Alias.from_weights({"claude-sonnet-4-5": 20, "gemini-3-flash": 80}),
}


class Router:
    def __init__(
        self, aliases: Mapping[str, Alias] | None = None, rng: random.Random | None = None
    ) -> None:
        self.aliases = dict(DEFAULT_ALIASES if aliases is None else aliases)
        self._random = (rng or random.Random()).random

    def route(self, model: str) -> str:
        alias = self.aliases.get(model)
        return model if alias is None else alias.pick(self._random())


class BodyError(ValueError):
    """The request body is not the JSON it claims to be."""


def parse_json_body(raw: bytes) -> Any:
    """Decode a JSON request body strictly (UTF-8, an optional BOM, no NaN)."""
    try:
        text = raw.decode("utf-8-sig")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BodyError("Request body is not valid JSON") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
