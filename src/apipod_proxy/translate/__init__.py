"""Translation between the OpenAI Chat Completions, OpenAI Responses and Anthropic
Messages APIs.

Pure functions and small stateful stream translators, with no mitmproxy imports, so the
addon's hooks only pick the direction and hand bytes over:

    requests.py   request bodies, both directions; TranslationError for what cannot map
    responses.py  non-streamed answers, both directions
    streams.py    SSE streams, both directions, fed arbitrary byte pieces
    failures.py   error bodies, both directions, and the upstream quota answer
    responses_api.py    Responses requests as Chat Completions, whole answers back
    responses_stream.py Chat Completions streams as Responses events (and for Cursor)
    custom_tools.py     a custom tool's free-form input as one string parameter
    directions.py which direction a request needs, and one call per hook for each

The tables in docs/translation.md say what maps to what, and what is dropped or refused.

May import: jsonenc, metering, upstream.quota.

jsonenc for the package's one JSON encoder, metering for usage counts, upstream.quota to
recognise the upstream's quota answer in error bodies and streams (quota.py imports
nothing of the package). Never mitmproxy: loading translate/ loads none of it.
"""

from __future__ import annotations

from .directions import (
    Direction,
    TranslatedAnswer,
    TranslatedRequest,
    api_from_probe,
    direction_for,
    is_endpoint_missing,
)
from .failures import ErrorAnswer, cooling_for_client, error_for_client
from .requests import (
    DEFAULT_MAX_TOKENS,
    REASONING_BUDGETS,
    AnthropicRequest,
    OpenAIRequest,
    TranslationError,
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)
from .responses import anthropic_response_to_openai, openai_response_to_anthropic
from .streams import AnthropicPassthroughStream, AnthropicToOpenAIStream, OpenAIToAnthropicStream

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "REASONING_BUDGETS",
    "AnthropicPassthroughStream",
    "AnthropicRequest",
    "AnthropicToOpenAIStream",
    "Direction",
    "ErrorAnswer",
    "OpenAIRequest",
    "OpenAIToAnthropicStream",
    "TranslatedAnswer",
    "TranslatedRequest",
    "TranslationError",
    "anthropic_request_to_openai",
    "anthropic_response_to_openai",
    "api_from_probe",
    "cooling_for_client",
    "direction_for",
    "error_for_client",
    "is_endpoint_missing",
    "openai_request_to_anthropic",
    "openai_response_to_anthropic",
]
