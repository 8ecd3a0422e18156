"""What reaches the upstream: one table of the API endpoints the product serves.

The upstream (antigravity-claude-proxy) serves much more than its API: `/api/config`
holds its own key, `/` is a console that reconfigures it. So nothing is forwarded by
default. A request is forwarded only when its method and its path, exactly, are a row
of `FORWARDED` or of the routing file's `[forward]` table; every other request gets
the proxy's own JSON answer before any upstream connection is opened:

- a target that is not a plain path (absolute-form `GET http://host/x`, percent
  escapes, `//`, `.` or `..` segments, characters outside RFC 3986's path characters)
  is 400 `invalid_request_target`: no normalisation, so no two spellings of a path,
  and nothing the upstream could read differently from the proxy;
- a path in no table is 404 `not_found` (`/metrics/`, `/chat/completions`), and a
  known path with another method 405 `method_not_allowed`, all without a key check.

The proxy's own endpoints (the endpoint table, endpoints/__init__.py: `/health`,
`/metrics`, `/admin/*`, `/portal/`, `/account`, the billing endpoints, `GET /v1/models`)
are matched by that table, after the same target check. This module also decides the
forwarding headers the upstream sees.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Refusal
from .routing import RoutesError, table_of

if TYPE_CHECKING:
    from mitmproxy import http

__all__ = ["Refusal"]  # what `refusal` returns, with the status, message and code

#: A path in the one spelling the proxy accepts: segments of RFC 3986 `pchar`s without
#: percent escapes, no empty segment but an optional trailing slash.
_PLAIN_PATH = re.compile(r"/|(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+/?")
#: Methods a `[forward]` row may name.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True, slots=True)
class Route:
    """One forwarded endpoint: its methods and the API its clients speak."""

    path: str
    methods: tuple[str, ...]
    #: "openai", "responses" or "anthropic"; "" for the operator's rows (forwarded as
    #: they come).
    api: str


#: The API endpoints forwarded to the upstream. `POST /v1/responses` (OpenAI Responses)
#: always reaches it translated, as Chat Completions or Messages (translate/).
#: `/v1/embeddings` is not served (antigravity-claude-proxy has none); an upstream that
#: has it can be given it with `[forward]`.
FORWARDED: tuple[Route, ...] = (
    Route("/v1/chat/completions", ("POST",), "openai"),
    Route("/v1/completions", ("POST",), "openai"),
    Route("/v1/responses", ("POST",), "responses"),
    Route("/v1/messages", ("POST",), "anthropic"),
    Route("/v1/messages/count_tokens", ("POST",), "anthropic"),
)
BUILT_IN: dict[str, Route] = {route.path: route for route in FORWARDED}


def is_plain_path(path: str) -> bool:
    """Whether `path` is in the one spelling the proxy accepts (see module docstring)."""
    if not _PLAIN_PATH.fullmatch(path):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))


def is_absolute_form(request: http.Request) -> bool:
    """An HTTP/1 request line naming a scheme and host (`GET http://host/x HTTP/1.1`)."""
    return request.http_version.startswith("HTTP/1") and bool(request.authority)


def refusal(
    method: str, path: str, routes: Mapping[str, Route], own: bool
) -> Refusal | Route | None:
    """Why a request of `method` on `path` (the target without its query) is not
    forwarded, or its Route; None for one of the proxy's own endpoints (`own`)."""
    if not is_plain_path(path):
        message = "The request target must be a plain path (no escapes, '//', '.' or '..')"
        return Refusal(400, message, "invalid_request_target")
    if own:
        return None
    route = routes.get(path)
    if route is None:
        return Refusal(404, f"Unknown endpoint {method} {path}", "not_found")
    if method not in route.methods:
        allowed = ", ".join(route.methods)
        return Refusal(
            405, f"{path} only accepts {allowed}", "method_not_allowed", {"allow": allowed}
        )
    return route


class Forwarding:
    """The table in force: `FORWARDED` plus the routing file's `[forward]` rows.

    A routing.Section: the rows are read with the rest of ROUTES_FILE, and a file with
    a bad row keeps the last good table, aliases and prices included.
    """

    def __init__(self, own: Container[str] = frozenset()) -> None:
        self.routes: dict[str, Route] = dict(BUILT_IN)
        #: The proxy's own paths, which a `[forward]` row may not take: the endpoint
        #: table (endpoints.ENDPOINTS), prefixes such as `/admin/` included.
        self.own = own

    def prepare(self, document: dict[str, Any]) -> dict[str, Route]:
        return {**BUILT_IN, **extra_routes(table_of(document, "forward"), self.own)}

    def apply(self, routes: dict[str, Route]) -> None:
        self.routes = routes


def extra_routes(rows: dict[str, Any], own: Container[str] = frozenset()) -> dict[str, Route]:
    """The `[forward]` table (`"/v1/path" = ["POST", ...]`), validated."""
    found: dict[str, Route] = {}
    for path, methods in rows.items():
        where = f"[forward] {path!r}"
        if not is_plain_path(path) or path == "/":
            raise RoutesError(f"{where}: not a plain path like /v1/embeddings")
        if path in BUILT_IN or path in own:
            raise RoutesError(f"{where}: already served (built in or the proxy's own)")
        if not isinstance(methods, list) or not methods:
            raise RoutesError(f'{where} must be a list of methods, like ["POST"]')
        names = [m.upper() if isinstance(m, str) else m for m in methods]
        if bad := [m for m in names if m not in METHODS]:
            raise RoutesError(f"{where}: unknown methods {bad} (allowed: {', '.join(METHODS)})")
        found[path] = Route(path, tuple(dict.fromkeys(names)), "")
    return found


def readme_table(routes: Iterable[Route] = FORWARDED) -> str:
    """The forwarding table as the README shows it."""
    names = {
        "openai": "OpenAI",
        "responses": "OpenAI Responses",
        "anthropic": "Anthropic",
        "": "as sent",
    }
    rows = ["| Path | Methods | Client API |", "| --- | --- | --- |"]
    rows += [f"| `{r.path}` | {', '.join(r.methods)} | {names[r.api]} |" for r in routes]
    return "\n".join(rows)


# --- headers ---------------------------------------------------------------------------

#: Headers no client may send on, besides the credentials auth.swap_credentials drops:
#: claims about who the client is (ours replace them) and hop-by-hop headers.
#: `Connection` itself and the framing headers are mitmproxy's to manage.
DROPPED = ("forwarded", "x-real-ip", "keep-alive", "te", "trailer", "upgrade")
DROPPED_PREFIXES = ("x-forwarded-",)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: the connection's, unless it is a trusted front proxy's.

    Then X-Forwarded-For is read from the right, past the trusted proxies, to the first
    address that is not one (a client can write anything to the left of it, never to the
    right). An entry that is not an address stops the walk at the hop before it.
    """
    address = _address(peer)
    if address is None:
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    while _is_trusted(str(address), trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        address = previous
    return str(address)


def resolve_client(
    peer: str, tls: bool, headers: http.Headers, trusted: tuple[Network, ...]
) -> tuple[str, str]:
    """The client's address and scheme (`http`/`https`) as the proxy reports and uses
    them: a trusted front proxy's X-Forwarded-For and X-Forwarded-Proto, else the
    connection's."""
    address = client_address(peer, headers.get_all("x-forwarded-for"), trusted)
    proto = "https" if tls else "http"
    given = headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    if given in ("http", "https") and _is_trusted(peer, trusted):
        proto = given
    return address, proto


def _is_trusted(peer: str, trusted: tuple[Network, ...]) -> bool:
    address = _address(peer)
    return address is not None and any(address in network for network in trusted)


def set_forwarding_headers(headers: http.Headers, client: str, proto: str) -> None:
    """Drop `DROPPED` and the `DROPPED_PREFIXES` families, then say who the client is:
    `X-Forwarded-For` (one address) and `X-Forwarded-Proto`."""
    for name in {name.lower() for name in headers}:
        if name in DROPPED or name.startswith(DROPPED_PREFIXES):
            del headers[name]
    headers["x-forwarded-for"] = client
    headers["x-forwarded-proto"] = proto
