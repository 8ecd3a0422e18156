"""The README's error table names every error code the proxy answers with.

Codes are read from the source: the third argument of every `error_response(...)`
call (a literal, a conditional of literals, or a local name assigned literals), and
the codes given to mitmproxy's own failures (`errors.PROXY_MESSAGES`).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import apipod_proxy

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(apipod_proxy.__file__).parent


def literals(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def code_argument(call: ast.Call) -> ast.expr | None:
    if len(call.args) >= 3:
        return call.args[2]
    return next((k.value for k in call.keywords if k.arg == "code"), None)


def codes_in(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assigned: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, set()).update(literals(node.value))
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            name = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else getattr(node.func, "id", None)
            )
            if name != "error_response" or (arg := code_argument(node)) is None:
                continue
            if isinstance(arg, ast.Name):
                found |= assigned.get(arg.id, set())
            else:
                found |= literals(arg)
    return found


def source_codes() -> set[str]:
    codes: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        codes |= codes_in(ast.parse(path.read_text()))
    for module in pkgutil.iter_modules([str(PACKAGE)]):
        loaded = importlib.import_module(f"apipod_proxy.{module.name}")
        codes |= set(getattr(loaded, "PROXY_MESSAGES", {}))
    return {code for code in codes if re.fullmatch(r"[a-z]+(_[a-z]+)+", code)}


def readme_codes() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| Status | `code` | When |") :].split("\n\n")[0]
    codes: set[str] = set()
    for row in table.splitlines()[2:]:
        codes |= set(re.findall(r"`([a-z_]+)`", row.split("|")[2]))
    return codes


def test_the_source_codes_are_found() -> None:
    """The scan itself works: codes from a literal, a local name and mitmproxy's table."""
    assert {"invalid_api_key", "unknown_field", "invalid_json", "upstream_unreachable"} <= (
        source_codes()
    )


def test_every_error_code_is_in_the_readme_table() -> None:
    missing = source_codes() - readme_codes()
    assert not missing, f"README's error table lacks {sorted(missing)}"


def test_the_readme_lists_the_forwarding_table() -> None:
    """The "What is forwarded" table is `forwarding.FORWARDED`, row for row."""
    from apipod_proxy.policy.forwarding import readme_table

    text = (ROOT / "README.md").read_text()
    start = "<!-- forwarding table: generated from apipod_proxy.policy.forwarding.FORWARDED -->\n"
    shown = text[text.index(start) + len(start) : text.index("\n<!-- end of forwarding table -->")]
    assert shown == readme_table()


def test_the_readme_lists_the_endpoint_table() -> None:
    """ "The proxy's own endpoints" is `endpoints.ENDPOINTS`, row for row."""
    from apipod_proxy.endpoints import readme_table

    text = (ROOT / "README.md").read_text()
    start = "<!-- endpoint table: generated from apipod_proxy.endpoints.ENDPOINTS -->\n"
    shown = text[text.index(start) + len(start) : text.index("\n<!-- end of endpoint table -->")]
    assert shown == readme_table()
