"""Token usage, merged: the one place that turns what an upstream reports into counts.

Every path reads usage here: passthrough and translated, both client APIs, streamed
and not, and the usage a translated answer shows its client comes from the same merge.

- **Merged per field, never summed per event.** Anthropic's `message_start.message.usage`
  and each `message_delta.usage` carry cumulative values of only some fields (the real
  upstream's `message_delta` has `output_tokens` and the cache fields, no
  `input_tokens`). Each field keeps its largest value seen, so a field an event leaves
  out keeps its last value. The prompt is `input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens` of the merged values. OpenAI's usage (the usage chunk, or
  usage riding on another chunk) is merged the same way.
- **What passed through is counted too**, cheaply: the characters of text, tool
  arguments and thinking delivered. An estimate is `ceil(characters / 4)` tokens
  (`estimate`), never a tokeniser.
- **Reasoning.** An upstream that reports reasoning tokens (OpenAI's
  `completion_tokens_details.reasoning_tokens`, part of `completion_tokens`) is believed.
  Otherwise the thinking text delivered is the estimate; it is *not* part of the
  reported completion (the real upstream's `output_tokens` leaves Google's thinking
  out), and is billed only with BILL_REASONING_ESTIMATE=on.
- **A stream cut before its usage** (the client hung up, or the upstream's stream ended
  without it) is billed for what was delivered: the prompt from `message_start` (or an
  estimate from the request body's size) and the output estimated from what passed
  through. `Usage.estimated` says so.

Pure: no mitmproxy, no I/O; `translate/` uses it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: The estimator: one token per this many characters, rounded up.
CHARS_PER_TOKEN = 4

_ANTHROPIC_PROMPT = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
#: Fields only OpenAI's usage objects have.
_OPENAI_ONLY = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
)


#: The names of a usage object's fields: Chat Completions', and the Responses API's
#: (whose `input_tokens` includes the cached part, as `prompt_tokens` does).
_CHAT_NAMES = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_RESPONSES_NAMES = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)


def _is_openai(found: dict[str, Any]) -> bool:
    return any(name in found for name in _OPENAI_ONLY)


def _is_responses(found: dict[str, Any]) -> bool:
    """A Responses API usage object (`input_tokens` with OpenAI's `total_tokens` or
    details), not Anthropic's `input_tokens`."""
    return "prompt_tokens" not in found and "input_tokens" in found


def estimate(characters: int) -> int:
    """Estimated tokens of `characters` characters of text: ceil(characters / 4)."""
    return -(-characters // CHARS_PER_TOKEN) if characters > 0 else 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class Usage:
    """What accounting records for one request."""

    prompt_tokens: int = 0  # cached input included
    completion_tokens: int = 0
    cached_tokens: int = 0  # the part of prompt_tokens read from the upstream's cache
    #: Reasoning tokens: reported by the upstream (inside completion_tokens, as OpenAI
    #: counts them), or estimated from the thinking delivered (not inside it).
    reasoning_tokens: int = 0
    reasoning_estimated: bool = False
    #: The prompt or completion is an estimate: the usage never arrived.
    estimated: bool = False

    def billable_reasoning(self, bill_estimate: bool) -> int:
        """Reasoning tokens to bill on top of completion_tokens (BILL_REASONING_ESTIMATE)."""
        if not (bill_estimate and self.reasoning_estimated):
            return 0
        # A completion estimated from what was delivered already counts the thinking.
        return 0 if self.estimated else self.reasoning_tokens


class Meter:
    """The merged usage of one answer, and what of it passed through.

    Feed it usage objects (`add_anthropic`, `add_openai`) and delivered text (`delivered`,
    `thought`); read `usage()` for accounting, or `openai()` / `anthropic()` for the
    usage a translated answer shows its client.
    """

    __slots__ = (
        "_fields",
        "_openai",
        "delivered_chars",
        "output_final",
        "request_chars",
        "thinking_chars",
    )

    def __init__(self) -> None:
        self._fields: dict[str, int] = {}
        self._openai = False  # the usage objects are OpenAI's
        #: The output count is the upstream's last word (message_delta, the OpenAI usage
        #: chunk, a whole answer); message_start's `output_tokens` is only a start.
        self.output_final = False
        self.delivered_chars = 0  # text and tool arguments
        self.thinking_chars = 0
        #: The request body's size, for a prompt estimate when the stream reported none.
        self.request_chars = 0

    # --- feeding -------------------------------------------------------------------

    def _merge(self, name: str, value: Any) -> None:
        count = _count(value)
        if count >= self._fields.get(name, 0):
            self._fields[name] = count

    def add_anthropic(self, found: Any, final: bool = True) -> None:
        """Merge an Anthropic usage object. `final=False` for `message_start`'s."""
        if not isinstance(found, dict):
            return
        for name in (*_ANTHROPIC_PROMPT, "output_tokens"):
            if name in found:
                self._merge(name, found[name])
        if final and "output_tokens" in found:
            self.output_final = True

    def add_openai(self, found: Any) -> None:
        """Merge an OpenAI usage object (Chat Completions, or Responses' names)."""
        if not isinstance(found, dict):
            return
        self._openai = True
        prompt, completion, prompt_details, completion_details = (
            _RESPONSES_NAMES if _is_responses(found) else _CHAT_NAMES
        )
        for given, name in ((prompt, "prompt_tokens"), (completion, "completion_tokens")):
            if given in found:
                self._merge(name, found[given])
        for outer, inner, name in (
            (prompt_details, "cached_tokens", "cached_tokens"),
            (completion_details, "reasoning_tokens", "reasoning_tokens"),
        ):
            details = found.get(outer)
            if isinstance(details, dict) and inner in details:
                self._merge(name, details[inner])
        if completion in found:
            self.output_final = True

    def delivered(self, text: Any) -> None:
        """Text or tool arguments that passed through to the client."""
        if isinstance(text, str):
            self.delivered_chars += len(text)

    def thought(self, text: Any) -> None:
        """Thinking that passed through to the client."""
        if isinstance(text, str):
            self.thinking_chars += len(text)

    # --- reading -------------------------------------------------------------------

    @property
    def _openai_shaped(self) -> bool:
        return self._openai

    @property
    def has_prompt(self) -> bool:
        if self._openai:
            return "prompt_tokens" in self._fields
        return any(name in self._fields for name in _ANTHROPIC_PROMPT)

    @property
    def prompt(self) -> int:
        if self._openai_shaped:
            return self._fields.get("prompt_tokens", 0)
        return sum(self._fields.get(name, 0) for name in _ANTHROPIC_PROMPT)

    @property
    def cached(self) -> int:
        if self._openai_shaped:
            return self._fields.get("cached_tokens", 0)
        return self._fields.get("cache_read_input_tokens", 0)

    @property
    def completion(self) -> int:
        if self._openai_shaped:
            return self._fields.get("completion_tokens", 0)
        return self._fields.get("output_tokens", 0)

    def usage(self) -> Usage:
        """The counts to record: reported where reported, estimated where not."""
        usage = Usage(self.prompt, self.completion, self.cached)
        if "reasoning_tokens" in self._fields:
            usage.reasoning_tokens = self._fields["reasoning_tokens"]
        elif self.thinking_chars:
            usage.reasoning_tokens = estimate(self.thinking_chars)
            usage.reasoning_estimated = True
        passed = self.delivered_chars + self.thinking_chars
        if not self.output_final and passed:
            # Cut before the usage: what passed through, unless the upstream said more.
            usage.completion_tokens = max(usage.completion_tokens, estimate(passed))
            usage.estimated = True
        if not self.has_prompt and self.request_chars:
            usage.prompt_tokens = estimate(self.request_chars)
            usage.estimated = True
        return usage

    def openai(self) -> dict[str, Any]:
        """The merged usage in OpenAI's shape (a translated answer's `usage`)."""
        prompt, completion = self.prompt, self.completion
        shown: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }
        if "reasoning_tokens" in self._fields:
            shown["completion_tokens_details"] = {
                "reasoning_tokens": self._fields["reasoning_tokens"]
            }
        return shown

    def anthropic(self) -> dict[str, Any]:
        """The merged usage in Anthropic's shape (a translated answer's `usage`)."""
        cached = self.cached
        if self._openai_shaped:
            uncached, creation = max(0, self.prompt - cached), 0
        else:
            uncached = self._fields.get("input_tokens", 0)
            creation = self._fields.get("cache_creation_input_tokens", 0)
        shown = {"input_tokens": uncached, "cache_read_input_tokens": cached}
        if creation:
            shown["cache_creation_input_tokens"] = creation
        shown["output_tokens"] = self.completion
        return shown


def meter_of_body(payload: Any) -> Meter:
    """The meter of a whole JSON answer (Anthropic or OpenAI)."""
    meter = Meter()
    found = payload.get("usage") if isinstance(payload, dict) else None
    if isinstance(found, dict):
        if _is_openai(found):
            meter.add_openai(found)
        else:
            meter.add_anthropic(found)
    return meter


def merge_event(meter: Meter, payload: Any) -> None:
    """Merge the usage of one stream event (Anthropic or OpenAI) into `meter`."""
    if not isinstance(payload, dict):
        return
    if payload.get("type") == "message_start":
        message = payload.get("message")
        if isinstance(message, dict):
            meter.add_anthropic(message.get("usage"), final=False)
        return
    found = payload.get("usage")
    if not isinstance(found, dict):
        return
    if _is_openai(found):
        meter.add_openai(found)
    else:
        meter.add_anthropic(found)


def meter_anthropic_delta(meter: Meter, delta: dict[str, Any]) -> None:
    """Count what an Anthropic `content_block_delta` delivers."""
    kind = delta.get("type")
    if kind == "text_delta":
        meter.delivered(delta.get("text"))
    elif kind == "input_json_delta":
        meter.delivered(delta.get("partial_json"))
    elif kind == "thinking_delta":
        meter.thought(delta.get("thinking"))


def meter_event(meter: Meter, payload: Any) -> None:
    """Merge one stream event's usage and count what it delivers (either API)."""
    if not isinstance(payload, dict):
        return
    merge_event(meter, payload)
    if payload.get("type") == "content_block_delta":
        delta = payload.get("delta")
        if isinstance(delta, dict):
            meter_anthropic_delta(meter, delta)
        return
    choices = payload.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        meter.delivered(delta.get("content"))
        meter.thought(delta.get("reasoning_content"))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                meter.delivered(function.get("arguments"))


#: A string field holding delivered content, in either API's stream events: OpenAI's
#: `content`, `reasoning_content` and tool `arguments`; Anthropic's `text`, `thinking`
#: and `partial_json`. Matched in the raw event, so an event without usage need not be
#: parsed to be counted.
_DELIVERED = re.compile(
    rb'"(content|reasoning_content|arguments|text|thinking|partial_json)"\s*:\s*"((?:[^"\\]|\\.)*)"'
)
_THOUGHT = (b"reasoning_content", b"thinking")


def count_raw(meter: Meter, event: bytes) -> None:
    """Count what one raw SSE event delivers, without parsing it as JSON (an escaped
    string is decoded, so `\\u4e2d` counts as the one character it is)."""
    for match in _DELIVERED.finditer(event):
        value = match.group(2)
        if b"\\" in value:
            try:
                chars = len(json.loads(b'"' + value + b'"'))
            except ValueError:
                chars = len(value)
        else:
            chars = len(value.decode("utf-8", "replace"))
        if match.group(1) in _THOUGHT:
            meter.thinking_chars += chars
        else:
            meter.delivered_chars += chars
