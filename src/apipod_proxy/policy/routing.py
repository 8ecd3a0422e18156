"""Model routing: which upstream model serves a requested model name.

The routing table has aliases, which spread requests over targets by weight, and
renames, which map one name to another: exact names, matched first. For the names
clients send on their own (Claude Code's `claude-opus-4-8`, its small background
model), patterns map a `*` glob to a target, and an optional default route takes every
other name: both only for names the upstream's `/v1/models` does not list. The order:

    1. an alias or a rename, by its exact name;
    2. a name the upstream lists: as asked;
    3. the first pattern, in file order, that matches the whole name;
    4. the default route (`[default_route]`), when set;
    5. as asked.

Steps 3 and 4 need the upstream's list: while it was never had, they are skipped (a
name is never routed by a guess about what the upstream serves). A pattern's or the
default's target may name an alias (routed by its weights, sticky or not) or a rename;
it is not matched against the patterns again.

An alias may be sticky: all requests of one conversation then go to the same target.
The choice is a hash of the conversation mapped onto the weights, so nothing is stored
per conversation and, across many conversations, the split still follows the weights.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import time
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("apipod")

#: A client-sent conversation id; when present it identifies the conversation for
#: sticky routing instead of the hash of the conversation's opening.
SESSION_HEADER = "x-session-id"


class RoutesError(ValueError):
    """The routing table is invalid; the message says where."""


class AllTargetsCooling(Exception):
    """Every target of the requested alias is cooling down (see quota.py)."""

    def __init__(self, targets: tuple[str, ...]) -> None:
        super().__init__(f"all targets cooling down: {', '.join(targets)}")
        self.targets = targets


@dataclass(frozen=True, slots=True)
class Alias:
    """Targets with positive weights; `pick` maps a draw in [0, 1) onto them."""

    targets: tuple[str, ...]
    cumulative: tuple[float, ...]
    sticky: bool = False

    @classmethod
    def from_weights(cls, weights: Mapping[str, object], sticky: bool = False) -> Alias:
        if not weights:
            raise ValueError("an alias needs at least one target")
        for target, weight in weights.items():
            if not isinstance(target, str) or not target:
                raise ValueError(f"target names must be non-empty strings, got {target!r}")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
                raise ValueError(f"weight of {target!r} must be a positive number, got {weight!r}")
        values = [float(w) for w in weights.values()]  # type: ignore[arg-type]
        total = sum(values)
        if total == float("inf"):
            raise ValueError("weights must be finite")
        cumulative = tuple(c / total for c in itertools.accumulate(values))
        return cls(tuple(weights), cumulative, sticky)

    def pick(self, draw: float) -> str:
        index = bisect.bisect_right(self.cumulative, draw)
        return self.targets[min(index, len(self.targets) - 1)]

    def within(self, draw: float) -> float:
        """Where `draw` falls inside its target's share, as a new draw in [0, 1).

        Uniform when `draw` is, so re-drawing with it keeps the weights, and fixed by it,
        so a sticky conversation keeps its place.
        """
        index = min(bisect.bisect_right(self.cumulative, draw), len(self.targets) - 1)
        low = self.cumulative[index - 1] if index else 0.0
        high = self.cumulative[index]
        return min(max((draw - low) / (high - low), 0.0), 0.999_999_999) if high > low else 0.0

    def without(self, excluded: Collection[str]) -> Alias | None:
        """This alias over its other targets, by their weights; None when none remain."""
        if not any(target in excluded for target in self.targets):
            return self
        weights: dict[str, float] = {}
        previous = 0.0
        for target, bound in zip(self.targets, self.cumulative, strict=True):
            if target not in excluded and bound > previous:
                weights[target] = bound - previous
            previous = bound
        return Alias.from_weights(weights, self.sticky) if weights else None


@dataclass(frozen=True, slots=True)
class Match:
    """What the table does with a requested name: `target` is a model, or the alias
    `alias` is drawn from; `via` is the pattern that matched, DEFAULT_ROUTE, or None."""

    target: str
    alias: Alias | None = None
    via: str | None = None

    @property
    def sticky(self) -> bool:
        """Drawn from a sticky alias: a conversation keeps its target."""
        return self.alias is not None and self.alias.sticky


#: `Match.via` of a name the default route took.
DEFAULT_ROUTE = "default_route"


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches any run of characters (none too); every other character itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class RouteTable:
    aliases: dict[str, Alias] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)
    #: Glob -> target, in file order (the first match wins).
    patterns: dict[str, str] = field(default_factory=dict)
    default_route: str | None = None

    def names(self) -> list[str]:
        """Model names the proxy itself accepts, for `GET /v1/models` (patterns and the
        default route name no model: they are not listed)."""
        return [*self.aliases, *self.renames]

    def needs_listing(self, model: str) -> bool:
        """Whether routing `model` depends on the upstream's model list: it has no exact
        route, and a pattern or the default route would take it if unlisted. Other
        requests never wait for the list."""
        if self._exact(model) is not None:
            return False
        return self.default_route is not None or self.pattern_for(model) is not None

    def pattern_for(self, model: str) -> str | None:
        """The first pattern, in file order, matching all of `model`."""
        for pattern in self.patterns:
            if glob_regex(pattern).fullmatch(model):
                return pattern
        return None

    def match(self, model: str, listed: Collection[str] | None = None) -> Match:
        """Where `model` goes (see the module's order); `listed`: the upstream's model
        ids, None while unknown (patterns and the default route are then skipped)."""
        exact = self._exact(model)
        if exact is not None or listed is None or model in listed:
            return exact or Match(model)
        if (pattern := self.pattern_for(model)) is not None:
            target = self.patterns[pattern]
            via = pattern
        elif self.default_route is not None:
            target, via = self.default_route, DEFAULT_ROUTE
        else:
            return Match(model)
        found = self._exact(target) or Match(target)
        return Match(found.target, found.alias, via)

    def _exact(self, model: str) -> Match | None:
        if (renamed := self.renames.get(model)) is not None:
            return Match(renamed)
        if (alias := self.aliases.get(model)) is not None:
            return Match(model, alias)
        return None

    def targets(self) -> list[str]:
        """Every upstream model the table routes to, each once, in table order."""
        found = [t for alias in self.aliases.values() for t in alias.targets]
        found += self.renames.values()
        later = [*self.patterns.values()]
        if self.default_route is not None:
            later.append(self.default_route)
        for target in later:  # an alias or a rename named here is counted above
            if target not in self.aliases:
                found.append(self.renames.get(target, target))
        return list(dict.fromkeys(found))

    def unlisted_targets(self, served: Collection[str]) -> list[str]:
        """Targets the upstream's `/v1/models` does not list (renamed or retired models)."""
        return [target for target in self.targets() if target not in served]


#: Claude Code's own model names (`claude-opus-4-8`, its small `claude-haiku-...`
#: background model) onto models Antigravity serves. Only names the upstream does not
#: list are matched, so a served `claude-sonnet-4-5-thinking` is never rewritten.
CLAUDE_CODE_PATTERNS = {
    "claude-opus-*": "claude-opus-4-5-thinking",
    "claude-sonnet-*": "claude-sonnet-4-5",
    "claude-haiku-*": "gemini-3-flash",
}

#: The built-in table, used without ROUTES_FILE: Cursor's alias (20 % Claude, 80 %
#: Gemini) and Claude Code's default names; no default route.
DEFAULT_TABLE = RouteTable(
    aliases={
        "cursor-pro-sonnet": Alias.from_weights({"claude-sonnet-4-5": 20, "gemini-3-flash": 80})
    },
    patterns=dict(CLAUDE_CODE_PATTERNS),
)


def read_toml(text: str) -> dict[str, Any]:
    """The routing file's TOML document, read once for every section that uses it."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RoutesError(f"not valid TOML: {exc}") from None


def parse_routes(text: str) -> RouteTable:
    """Read a routing table in its TOML format (see `routes.example.toml`)."""
    return routes_from(read_toml(text))


def routes_from(document: dict[str, Any]) -> RouteTable:
    """The routing table of a routing file's document (`read_toml`)."""
    # [prices], [default_price] and [tiers] belong to pricing.py, [forward] to
    # forwarding.py; RoutesFile hands them the document too.
    only(
        document,
        (
            "aliases",
            "renames",
            "patterns",
            "default_route",
            "prices",
            "default_price",
            "tiers",
            "forward",
        ),
        "the top level",
    )
    aliases: dict[str, Alias] = {}
    for name, spec in table_of(document, "aliases").items():
        if not isinstance(spec, dict):
            raise RoutesError(f"[aliases.{name}] must be a table")
        only(spec, ("targets", "sticky"), f"[aliases.{name}]")
        sticky = spec.get("sticky", False)
        if not isinstance(sticky, bool):
            raise RoutesError(f"[aliases.{name}] sticky must be true or false")
        targets = spec.get("targets")
        if not isinstance(targets, dict):
            raise RoutesError(f'[aliases.{name}] needs targets = {{ "model" = weight, ... }}')
        try:
            aliases[name] = Alias.from_weights(targets, sticky)
        except ValueError as exc:
            raise RoutesError(f"[aliases.{name}] {exc}") from None
    renames: dict[str, str] = {}
    for name, target in table_of(document, "renames").items():
        if not isinstance(target, str) or not target:
            raise RoutesError(f"[renames] {name!r} must map to a model name")
        if name in aliases:
            raise RoutesError(f"{name!r} is both an alias and a rename")
        renames[name] = target
    patterns: dict[str, str] = {}
    for pattern, target in table_of(document, "patterns").items():
        if "*" not in pattern:
            raise RoutesError(
                f"[patterns] {pattern!r} has no '*'; put one exact name under [renames]"
            )
        if not _is_name(target):
            raise RoutesError(
                f"[patterns] {pattern!r} must map to a model or alias name (without '*')"
            )
        patterns[pattern] = target
    default_route = None
    if "default_route" in document:
        spec = table_of(document, "default_route")
        only(spec, ("target",), "[default_route]")
        target = spec.get("target")
        if not _is_name(target):
            raise RoutesError(
                "[default_route] needs target = \"model or alias\" (a name without '*')"
            )
        default_route = target
    return RouteTable(aliases, renames, patterns, default_route)


def _is_name(target: object) -> bool:
    """A pattern's or the default route's target: one model or alias name, no glob."""
    return isinstance(target, str) and bool(target) and "*" not in target


def table_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The document's `[name]` table ({} when absent); RoutesError when it is no table."""
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise RoutesError(f"[{name}] must be a table")
    return value


def only(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """RoutesError naming the keys of `table` outside `allowed`, and the allowed ones."""
    if unknown := sorted(set(table) - set(allowed)):
        raise RoutesError(
            f"unknown keys in {where}: {', '.join(unknown)} (allowed: {', '.join(allowed)})"
        )


class Router:
    def __init__(self, table: RouteTable = DEFAULT_TABLE, rng: random.Random | None = None) -> None:
        self.table = table  # replaced whole on reload, never mutated
        self._random = (rng or random.Random()).random

    def route(
        self,
        model: str,
        conversation: str | None = None,
        avoid: Collection[str] = (),
        listed: Collection[str] | None = None,
    ) -> str:
        """The target for `model`; `conversation` (a sticky alias's key) fixes the draw;
        `listed`: the upstream's model ids (None while unknown), for patterns and the
        default route.

        An alias never picks a target in `avoid` (models cooling down): a draw that lands
        on one is re-drawn over the remaining targets by their weights, so conversations
        pinned elsewhere stay put. AllTargetsCooling when none remain. Renames and plain
        model names are never avoided: the upstream decides about those.
        """
        return self.route_match(self.table.match(model, listed), conversation, avoid)

    def route_match(
        self, match: Match, conversation: str | None = None, avoid: Collection[str] = ()
    ) -> str:
        """`route` for a `RouteTable.match` already made."""
        alias = match.alias
        if alias is None:
            return match.target
        draw = stable_draw(conversation) if alias.sticky and conversation else self._random()
        target = alias.pick(draw)
        if avoid and target in avoid:
            remaining = alias.without(avoid)
            if remaining is None:
                raise AllTargetsCooling(alias.targets)
            target = remaining.pick(alias.within(draw))
        return target


def stable_draw(conversation: str) -> float:
    """A uniform number in [0, 1) fixed by the conversation key."""
    digest = hashlib.sha256(conversation.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def conversation_key(key_id: int, session: str | None, body: dict[str, Any]) -> str | None:
    """Who and which conversation: the client's session id, or a hash of the opening.

    The opening is the system prompt and the first user message, which an agent resends
    unchanged on every turn of a conversation while the rest of it grows (in `messages`,
    or in a Responses body's `instructions` and `input`).
    """
    if session:
        return f"{key_id}:session:{session}"
    messages = body.get("messages")
    if messages is None and "input" in body:  # the Responses API (and Cursor's Agent mode)
        messages = body["input"]
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
    messages = messages if isinstance(messages, list) else []
    # Anthropic keeps the system prompt outside the messages; Responses, in `instructions`.
    system = [body.get("system")]
    if body.get("instructions") is not None:
        system.append(body["instructions"])
    first_user = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("system", "developer"):
            system.append(message.get("content"))
        elif message.get("role") == "user":
            first_user = message.get("content")
            break
    try:
        opening = json.dumps([system, first_user], sort_keys=True, default=str)
    except (RecursionError, ValueError):
        return None  # an opening too deep to hash: this request is routed by weight alone
    return f"{key_id}:opening:{hashlib.sha256(opening.encode()).hexdigest()}"


class Section(Protocol):
    """Another reader of the routing file (pricing.Plans): parse all, then apply all."""

    def prepare(self, document: dict[str, Any]) -> Any: ...

    def apply(self, parsed: Any) -> None: ...


class RoutesFile:
    """ROUTES_FILE, re-read when it changes; a broken edit keeps the last good table."""

    def __init__(self, path: str, router: Router, sections: Sequence[Section] = ()) -> None:
        self.path = path
        self.router = router
        self.sections = sections
        self._seen: object = None  # the file version last loaded or reported
        self.loaded_at: str | None = None  # when the table in force was read (UTC)

    def _version(self) -> tuple[int, int, int] | str:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            return f"unreadable: {exc}"
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def load(self) -> None:
        """Read the file now; RoutesError (naming the file) when it is missing or invalid."""
        # Remember the version even when it is broken, so it is reported once, not per poll.
        self._seen = self._version()
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
            document = read_toml(text)
            table = routes_from(document)
            parsed = [section.prepare(document) for section in self.sections]
        except (OSError, UnicodeDecodeError, RoutesError) as exc:
            raise RoutesError(f"ROUTES_FILE {self.path}: {exc}") from None
        # Only a file valid throughout takes effect, all of it at once.
        self.router.table = table
        for section, value in zip(self.sections, parsed, strict=True):
            section.apply(value)
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def reload_if_changed(self) -> bool:
        """Pick up an edit; True when a new table took effect. Blocking (file I/O)."""
        if self._version() == self._seen:
            return False
        try:
            self.load()
        except RoutesError as exc:
            log.error("%s; keeping the last good routing table", exc)
            return False
        log.info("routing table reloaded from %s", self.path)
        return True
