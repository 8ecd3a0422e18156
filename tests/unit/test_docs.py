"""The error table of docs/reference.md is `errors.CODES`, and the source answers with
exactly its codes.

Codes are read from the source (`ast`), wherever the proxy writes one:
- the code argument of `error_response(...)`, `error_payload(...)`, `ClientApi.error(...)`, a
  `Refusal(...)` and a `BodyRefusal(...)`: a literal, a conditional of literals, a
  local name assigned literals, or a module constant (`QUOTA_CODE`);
- a `code=` keyword (an in-stream error, `_fail(..., code=...)`);
- the value of a `"code"` key in a dict literal (an error payload built by hand);
- the code half of what `mitm_compat.describe_proxy_failure` returns, and the codes
  given to mitmproxy's own failures (`errors.PROXY_MESSAGES`).
A code the proxy copies from an upstream's answer is a name, not a literal: not listed.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import apipod_proxy
from apipod_proxy import errors, mitm_compat
from apipod_proxy.config import DOCS_PAGE

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(apipod_proxy.__file__).parent
#: Calls whose argument at this position is a code, and at this one its status (None: none).
CODE_ARGUMENTS: dict[str, tuple[int, int | None]] = {
    "error_response": (2, 0),
    "error_payload": (2, 0),
    "Refusal": (2, 0),
    "error": (2, 0),  # ClientApi.error
    "BodyRefusal": (1, None),  # always 400 (bodies.BodyRefusal)
}
FIXED_STATUS = {"BodyRefusal": 400}
#: Functions that return (message, code): the code's place in the returned tuple.
RETURNED_CODES = {"describe_proxy_failure": 1}
#: What the README check has always counted as a code (at least two words).
CODE = re.compile(r"[a-z]+(_[a-z]+)+")
#: A code in the table: lower-case words joined by underscores (`overloaded` included).
TABLE_CODE = re.compile(r"[a-z]+(_[a-z]+)*")


def literals(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def code_argument(call: ast.Call) -> ast.expr | None:
    if len(call.args) >= 3:
        return call.args[2]
    return next((k.value for k in call.keywords if k.arg == "code"), None)


def called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return getattr(node.func, "id", None)


def constants() -> dict[str, set[str]]:
    """Module-level `NAME = "literal"` of the whole package, by name (QUOTA_CODE)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(
                node.value, ast.Constant
            ):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        found.setdefault(target.id, set()).add(node.value.value)
    return found


CONSTANTS = constants()


def values(node: ast.expr, assigned: dict[str, set[str]]) -> set[str]:
    """The strings `node` may be: literals, a local name's, or a module constant's."""
    if isinstance(node, ast.Name):
        if node.id in assigned:
            return assigned[node.id]
        return CONSTANTS.get(node.id, set()) if node.id.isupper() else set()
    if isinstance(node, ast.Attribute | ast.Call | ast.BoolOp):
        return set()  # a field of a Refusal row, or whatever the upstream said
    return literals(node)


def places(tree: ast.Module) -> Iterator[tuple[str, int | None, int]]:
    """(code, the status it is given with when a literal says, line) for each code written."""
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
            if isinstance(node, ast.Call):
                yield from call_codes(node, assigned)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        yield from ((c, None, node.lineno) for c in values(value, assigned))
            elif (
                isinstance(node, ast.Return)
                and function.name in RETURNED_CODES
                and isinstance(node.value, ast.Tuple)
            ):
                item = node.value.elts[RETURNED_CODES[function.name]]
                yield from ((c, None, node.lineno) for c in values(item, assigned))


def call_codes(
    node: ast.Call, assigned: dict[str, set[str]]
) -> Iterator[tuple[str, int | None, int]]:
    name = called(node)
    arguments: list[tuple[ast.expr, int | None]] = []
    if name in CODE_ARGUMENTS:
        at, status_at = CODE_ARGUMENTS[name]
        code = node.args[at] if len(node.args) > at else None
        status: int | None = FIXED_STATUS.get(name)
        if status_at is not None and len(node.args) > status_at:
            given = node.args[status_at]
            if isinstance(given, ast.Constant) and isinstance(given.value, int):
                status = given.value
        if code is not None:
            arguments.append((code, status))
    arguments += [(k.value, None) for k in node.keywords if k.arg == "code"]
    for argument, status in arguments:
        for code in values(argument, assigned):
            yield code, status, node.lineno


def source_places() -> list[tuple[str, int | None, str]]:
    """(code, status or None, where) for every code the source writes."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue  # the table itself
        where = path.relative_to(PACKAGE).as_posix()
        for code, status, line in places(ast.parse(path.read_text())):
            found.append((code, status, f"{where}:{line}"))
    found += [(code, None, "errors.PROXY_MESSAGES") for code in errors.PROXY_MESSAGES]
    found += [(code, status, "mitm_compat.FAILURES") for status, _, code in mitm_compat.FAILURES]
    return found


def written_codes() -> set[str]:
    return {code for code, _, _ in source_places()}


def source_codes() -> set[str]:
    codes = written_codes()
    for module in pkgutil.iter_modules([str(PACKAGE)]):
        loaded = importlib.import_module(f"apipod_proxy.{module.name}")
        codes |= set(getattr(loaded, "PROXY_MESSAGES", {}))
    return {code for code in codes if CODE.fullmatch(code)}


def readme_codes() -> set[str]:
    text = (ROOT / DOCS_PAGE).read_text()
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


def test_the_scan_finds_a_code_in_every_place_it_reads() -> None:
    """A Refusal row, a BodyRefusal, a `code=` keyword, a dict's "code", a module constant,
    describe_proxy_failure's fallback, and error_payload."""
    assert {
        "method_not_allowed",
        "invalid_stream",
        "upstream_stream_incomplete",
        "unsupported_by_upstream",
        "upstream_quota_exhausted",
        "proxy_error",
        "insufficient_quota",
    } <= source_codes()
    code = "def f(x):\n    c = 'a_b' if x else 'c_d'\n    return error_response(404, 'm', c)\n"
    assert [(c, s) for c, s, _ in places(ast.parse(code))] in (
        [("a_b", 404), ("c_d", 404)],
        [("c_d", 404), ("a_b", 404)],
    )


def test_every_error_code_is_in_the_readme_table() -> None:
    missing = source_codes() - readme_codes()
    assert not missing, f"README's error table lacks {sorted(missing)}"


def test_every_code_the_source_writes_is_in_the_table() -> None:
    table = {row.code for row in errors.CODES}
    unlisted = sorted({(code, where) for code, _, where in source_places() if code not in table})
    assert not unlisted, f"add these to errors.CODES: {unlisted}"


def test_every_code_in_the_table_is_written_somewhere() -> None:
    unused = {row.code for row in errors.CODES} - written_codes()
    assert not unused, f"errors.CODES lists codes nothing answers with: {sorted(unused)}"


def test_a_code_comes_with_the_status_the_table_gives_it() -> None:
    status = {row.code: row.status for row in errors.CODES}
    wrong = [
        (code, given, where)
        for code, given, where in source_places()
        if given is not None and code in status and status[code] != given
    ]
    assert not wrong, wrong


def test_the_table_has_one_row_a_code_each_one_line() -> None:
    codes = [row.code for row in errors.CODES]
    assert len(codes) == len(set(codes))
    for row in errors.CODES:
        assert TABLE_CODE.fullmatch(row.code), row.code
        assert row.meaning and "\n" not in row.meaning and "|" not in row.meaning, row.code


def test_the_readme_error_table_is_generated_from_the_codes() -> None:
    """`python -m apipod_proxy.errors --write` wrote it (and does nothing more now)."""
    text = (ROOT / DOCS_PAGE).read_text()
    start = errors.README_START + "\n"
    shown = text[text.index(start) + len(start) : text.index("\n\n" + errors.README_END)]
    assert shown == errors.readme_table(), "python -m apipod_proxy.errors --write"
    assert errors.with_readme_table(text) == text


def test_the_readme_lists_the_forwarding_table() -> None:
    """The "What is forwarded" table is `forwarding.FORWARDED`, row for row."""
    from apipod_proxy.policy.forwarding import readme_table

    text = (ROOT / DOCS_PAGE).read_text()
    start = "<!-- forwarding table: generated from apipod_proxy.policy.forwarding.FORWARDED -->\n"
    shown = text[text.index(start) + len(start) : text.index("\n<!-- end of forwarding table -->")]
    assert shown == readme_table()


def test_the_readme_lists_the_endpoint_table() -> None:
    """ "The proxy's own endpoints" is `endpoints.ENDPOINTS`, row for row."""
    from apipod_proxy.endpoints import readme_table

    text = (ROOT / DOCS_PAGE).read_text()
    start = "<!-- endpoint table: generated from apipod_proxy.endpoints.ENDPOINTS -->\n"
    shown = text[text.index(start) + len(start) : text.index("\n<!-- end of endpoint table -->")]
    assert shown == readme_table()


# --- links between README.md and docs/*.md -----------------------------------------------

#: Every page the README and its docs consist of.
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*\bsrc=\"([^\"]+)\"")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (outside code blocks)."""
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", FENCE.sub("", text), re.M)}


def broken_links(page: Path, text: str) -> list[str]:
    """The relative links of `text` (the page at `page`) whose file or anchor is missing."""
    broken = []
    for match in LINK.finditer(FENCE.sub("", text)):
        target = match[1] or match[2]
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    return broken


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor() -> None:
    page = ROOT / "docs" / "routing.md"
    text = "[a](nowhere.md) [b](operations.md#no-such-heading) [c](#upstreams) [d](../README.md)"
    assert [b.split()[0] for b in broken_links(page, text)] == [
        "nowhere.md",
        "operations.md#no-such-heading",
    ]
    assert slug("The proxy's own endpoints") == "the-proxys-own-endpoints"


def test_every_relative_link_of_the_readme_and_docs_points_somewhere() -> None:
    broken = {p.name: b for p in DOC_PAGES if (b := broken_links(p, p.read_text()))}
    assert not broken, broken


def test_the_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in DOC_PAGES[1:] if f"](docs/{p.name})" not in readme]
    assert not unlinked, f"README.md links no {unlinked}"


def test_the_first_screen_is_short_and_keeps_setup_details_out() -> None:
    """Up to "Read on": what it is, the two commands, the upstream, the first key and
    request, how to stop; no apt-get, CI=true or .ci/run."""
    readme = (ROOT / "README.md").read_text()
    first = readme[: readme.index("\n## Read on\n")]
    assert len(first.splitlines()) <= 70
    for word in ("make run", "make test", "ANTIGRAVITY_URL", "ANTIGRAVITY_KEY", "Ctrl-C"):
        assert word in first, word
    for word in ("apt-get", "Debian", "CI=true", ".ci/run"):
        assert word not in first, word
