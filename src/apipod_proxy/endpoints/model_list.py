"""`GET /v1/models`: the models a customer's key may use, in OpenAI's list shape.

Cursor validates a custom key with this call and only offers the models it lists. The
list is the upstream's (fetched and cached by upstream/models.py) followed by the
routing table's names, cut to the key's allow-list (policy/budgets.py). The handler
runs on the event loop: the fetch is async and bounded, never on the database threads,
so a hanging upstream stalls neither `/health` nor the key lookups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mitmproxy import http

from ..errors import json_response
from ..policy import budgets
from .context import key_record

if TYPE_CHECKING:
    from .context import Caller, Context


async def answer(context: Context, request: http.Request, caller: Caller) -> http.Response:
    """The listing for the calling key."""
    record = key_record(caller)
    if context.models is None:
        raise LookupError("GET /v1/models needs the upstream's model list (a bare context)")
    names = context.router.table.names() if context.router is not None else []
    listing = await context.models.listing(names)
    allowed = budgets.models_of(record, context.plans)
    return json_response(200, budgets.allowed_listing(listing, allowed))
