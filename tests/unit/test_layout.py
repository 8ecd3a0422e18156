"""The layout, checked: folders by concern, and imports that point one way.

Every module under src/apipod_proxy, tests/support and bench is read with `ast`, not
imported: each import counts, those under `if TYPE_CHECKING:` and inside functions too,
relative ones resolved. Then:

- no import circle between the package's modules, TYPE_CHECKING imports included;
- each folder imports only what its row of `LAYOUT` allows;
- nothing in the package imports `addon` (addons/apipod.py, outside it, is its importer);
- addon.py stays short;
- each folder's `__init__.py` docstring has one line per module and a "May import:"
  line equal to its row, and the layout table of docs/reference.md agrees with the rows.

Changing a rule means changing its row here, the folder's docstring and docs/reference.md's
table; the tests say which of them disagree.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "apipod_proxy"

#: The top-level modules every folder may import ("base modules" in a row): each holds one
#: small thing and sits below the folders. Names not written yet are planned.
BASE = (
    "bodies",
    "clock",
    "config",
    "credentials",
    "errors",
    "jsonenc",
    "keys",
    "logs",
    "metering",
    "metrics",
    "mitm_compat",
)
#: The other top-level modules tie the folders together; a folder imports one only when
#: its row names it. Nothing imports `addon`.
TOP = (
    "addon",
    "cli",
    "clientapi",
    "connections",
    "flowstate",
    "gateway",
    "lifecycle",
    "serve",
)

#: What each folder may import, beyond its own modules. A row's words:
#: - `base modules`: each of BASE;
#: - `name/`: any module of that folder (`tests/support/` for the tests' helpers);
#: - `folder.module`: that one module of another folder; it must import nothing of the
#:   package but base modules, so it cannot close a circle;
#: - `name`: that top-level module; `apipod_proxy`: any module of the package;
#: - `mitmproxy`: any of mitmproxy; `mitmproxy.http (types only)`: that module, under
#:   `if TYPE_CHECKING:` only. A row without either imports no mitmproxy at all.
#: Rows run from the bottom of the package up; the last two are outside it.
LAYOUT: dict[str, tuple[str, ...]] = {
    # Pure. jsonenc for the one JSON encoder, metering for usage counts, upstream.quota to
    # recognise the upstream's quota answer in error bodies and streams.
    "translate/": ("jsonenc", "metering", "upstream.quota"),
    "storage/": ("base modules",),
    # storage only for the shared records (KeyRecord, usage and spend rows, periods).
    "policy/": ("base modules", "storage.records", "translate/", "mitmproxy"),
    "upstream/": ("base modules", "policy/", "storage/", "translate/"),
    # Endpoints take what they need (store, router, metrics), never the Gateway.
    "endpoints/": (
        "base modules",
        "clientapi",
        "flowstate",
        "policy/",
        "storage/",
        "translate/",
        "upstream/",
        "mitmproxy",
    ),
    # mitmproxy only through mitm_compat or the flow a stage is handed.
    "pipeline/": (
        "base modules",
        "clientapi",
        "flowstate",
        "gateway",
        "endpoints/",
        "policy/",
        "storage/",
        "translate/",
        "upstream/",
        "mitmproxy.http (types only)",
    ),
    "tests/support/": ("apipod_proxy", "mitmproxy"),
    "bench/": ("apipod_proxy", "tests/support/"),
}

#: What no module of the package imports.
NOTHING_IMPORTS = ("addon",)
#: addon.py holds the hooks only, each handing the flow on.
ADDON_MAX_LINES = 250
#: The layout table of docs/reference.md follows this line.
README_TABLE = "<!-- layout table: tests/unit/test_layout.py checks it against LAYOUT -->"
#: Outside the package, only these packages are checked (those the rows speak of).
CHECKED = ("apipod_proxy", "tests", "bench", "mitmproxy")


# --- reading the imports ----------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported module (or, outside our packages, `package.name`), where it is."""

    target: str
    line: int
    types_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    base = SRC if path.is_relative_to(PACKAGE) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    roots = (PACKAGE, ROOT / "tests", ROOT / "bench")
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


FILES: dict[str, Path] = {module_name(p): p for p in source_files()}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk(node: ast.AST, types_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, and whether it sits in an `if TYPE_CHECKING:` body."""
    for child in ast.iter_child_nodes(node):
        yield child, types_only
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for statement in child.body:
                yield statement, True
                yield from walk(statement, True)
            for statement in child.orelse:
                yield statement, types_only
                yield from walk(statement, types_only)
        else:
            yield from walk(child, types_only)


def imports_of(name: str) -> list[Import]:
    path = FILES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> list[Import]:
    """The imports of a module's source; `package` is the one relative imports start in."""
    found: list[Import] = []
    for node, types_only in walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                start = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{start}.{node.module}" if node.module else start
            else:
                source = node.module or ""
            ours = source.split(".")[0] in {"apipod_proxy", "tests", "bench"}
            targets = [
                f"{source}.{alias.name}"
                if not ours or f"{source}.{alias.name}" in FILES
                else source
                for alias in node.names
            ]
        else:
            continue
        found += [Import(t, node.lineno, types_only) for t in dict.fromkeys(targets)]
    return found


IMPORTS: dict[str, list[Import]] = {name: imports_of(name) for name in FILES}


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def package_modules() -> list[str]:
    return sorted(name for name in FILES if within(name, "apipod_proxy"))


def top_level_modules() -> list[str]:
    return sorted(
        p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py" and p.stem != "__main__"
    )


def package_folders() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py")))


# --- the rows ------------------------------------------------------------------------------


def folder_path(row: str) -> Path:
    return PACKAGE / row if (PACKAGE / row).is_dir() else ROOT / row


def folder_module(row: str) -> str:
    return module_name(folder_path(row) / "__init__.py")


def allows(word: str, imported: Import) -> bool:
    """Whether one word of a row allows one import."""
    target = imported.target
    if word == "base modules":
        return any(within(target, f"apipod_proxy.{name}") for name in BASE)
    if word == "mitmproxy.http (types only)":
        return imported.types_only and within(target, "mitmproxy.http")
    if word == "mitmproxy" or word == "apipod_proxy":
        return within(target, word)
    if word.endswith("/"):
        return within(target, folder_module(word))
    return within(target, f"apipod_proxy.{word}")


def checked(target: str) -> bool:
    return any(within(target, name) for name in CHECKED)


def violations(row: str) -> list[str]:
    own = folder_module(row)
    found = []
    for name in sorted(n for n in FILES if within(n, own)):
        for imported in IMPORTS[name]:
            if not checked(imported.target) or within(imported.target, own):
                continue
            if not any(allows(word, imported) for word in LAYOUT[row]):
                where = f"{FILES[name].relative_to(ROOT)}:{imported.line}"
                types = " (under TYPE_CHECKING)" if imported.types_only else ""
                found.append(f"{where} imports {imported.target}{types}")
    return found


def single_modules() -> list[str]:
    """The `folder.module` words of the rows, as module names."""
    return sorted(
        {
            f"apipod_proxy.{word}"
            for words in LAYOUT.values()
            for word in words
            if "." in word and " " not in word and word.split(".")[0] in package_folders()
        }
    )


# --- circles -------------------------------------------------------------------------------


def graph() -> dict[str, set[str]]:
    """Module -> what of the package its imports run: each imported module, and the
    packages above it (Python runs a package's `__init__` first) but the importer's own."""
    return {name: set(edges) for name, edges in typed_graph().items()}


def typed_graph() -> dict[str, dict[str, bool]]:
    """graph(), each edge marked True when every import making it is under TYPE_CHECKING."""
    modules = set(package_modules())
    edges: dict[str, dict[str, bool]] = {name: {} for name in modules}
    for name in modules:
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for imported in IMPORTS[name]:
            parts = imported.target.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target != name and target not in own_parents:
                    edges[name][target] = edges[name].get(target, True) and imported.types_only
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


Typed = dict[str, dict[str, bool]] | None


def short(name: str) -> str:
    return name.removeprefix("apipod_proxy.")


def describe(component: list[str], edges: dict[str, set[str]], types: Typed = None) -> str:
    """A circle's modules, and each one's imports on the circle (TYPE_CHECKING marked)."""
    inside = set(component)

    def step(name: str, target: str) -> str:
        marked = types is not None and types[name][target]
        return short(target) + (" (TYPE_CHECKING)" if marked else "")

    steps = "; ".join(
        f"{short(n)} -> {', '.join(step(n, t) for t in sorted(edges[n] & inside))}"
        for n in component
    )
    return f"circle of {', '.join(short(n) for n in component)}: {steps}"


SAMPLE = """
from typing import TYPE_CHECKING

from mitmproxy import http

from .. import config
from ..storage.sqlite import KeyRecord

if TYPE_CHECKING:
    import mitmproxy.flow

    from ..translate import Direction


def later():
    from ..bodies import json_bytes
"""


def test_the_scan_finds_every_kind_of_import() -> None:
    """Relative ones resolved (a module or the package it names from), those in a
    function, and those under TYPE_CHECKING, marked."""
    found = {i.target: i.types_only for i in imports_in(SAMPLE, "apipod_proxy.pipeline")}
    assert found == {
        "typing.TYPE_CHECKING": False,
        "mitmproxy.http": False,
        "apipod_proxy.config": False,
        "apipod_proxy.storage.sqlite": False,
        "mitmproxy.flow": True,
        "apipod_proxy.translate": True,
        "apipod_proxy.bodies": False,
    }


def test_circles_are_found() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert describe(["a", "b", "c"], edges) == "circle of a, b, c: a -> b; b -> c; c -> a"


def test_no_import_circle() -> None:
    """Not even under TYPE_CHECKING: a sub-addon or endpoint takes what it needs."""
    types = typed_graph()
    edges = graph()
    found = [describe(component, edges, types) for component in circles(edges)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("row", list(LAYOUT))
def test_each_folder_imports_only_what_its_row_allows(row: str) -> None:
    found = violations(row)
    assert not found, f"{row} may import {', '.join(LAYOUT[row])}; but:\n" + "\n".join(found)


def test_modules_singled_out_by_a_row_are_leaves() -> None:
    """upstream.quota (and storage.records) may be imported alone because they import
    nothing of the package but base modules: no circle can pass through them."""
    found = []
    for name in single_modules():
        if name not in FILES:
            continue  # planned
        for imported in IMPORTS[name]:
            ours = within(imported.target, "apipod_proxy")
            if ours and not allows("base modules", imported):
                found.append(f"{short(name)} imports {short(imported.target)}")
    assert not found, "\n".join(found)


def test_nothing_imports_the_addon() -> None:
    """`addon` is the top: only addons/apipod.py (outside the package) imports it."""
    found = [
        f"{FILES[name].relative_to(ROOT)}:{i.line} imports {i.target}"
        + (" (under TYPE_CHECKING)" if i.types_only else "")
        for name in package_modules()
        for i in IMPORTS[name]
        if any(within(i.target, f"apipod_proxy.{n}") for n in NOTHING_IMPORTS)
    ]
    assert not found, "\n".join(found)


def test_the_addon_is_short() -> None:
    lines = len((PACKAGE / "addon.py").read_text().splitlines())
    assert lines <= ADDON_MAX_LINES, f"addon.py has {lines} lines, at most {ADDON_MAX_LINES}"


def test_every_module_has_a_place() -> None:
    """A new folder gets a row, a new top-level module goes in BASE or TOP."""
    assert {f"{folder}/" for folder in package_folders()} <= set(LAYOUT)
    assert set(top_level_modules()) <= set(BASE) | set(TOP)
    assert not set(BASE) & set(TOP)


def is_sys(node: object) -> bool:
    return isinstance(node, ast.Name) and node.id == "sys"


def test_no_sys_path_edits_in_tests_or_bench() -> None:
    """tests/support is imported as a package, by the tests and the bench alike."""
    found = []
    for name, path in FILES.items():
        if within(name, "apipod_proxy"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            value = getattr(node, "value", None)
            if isinstance(node, ast.Attribute) and node.attr == "path" and is_sys(value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "sys.path used in " + ", ".join(found)


# --- the docstrings and the README -----------------------------------------------------------

#: A docstring's line for one module or subfolder: `    name.py  what it holds`.
MODULE_LINE = re.compile(r"^ {2,}([A-Za-z_]\w*(?:\.py|/)) +\S", re.M)


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def may_import(text: str) -> tuple[str, ...] | None:
    """The words of a docstring's "May import:" paragraph, in order."""
    match = re.search(r"^May import: (.*?)(?:\n\n|\Z)", text, re.M | re.S)
    if match is None:
        return None
    return tuple(w.strip() for w in " ".join(match[1].split()).rstrip(".").split(","))


def listed(folder: Path) -> tuple[set[str], set[str]]:
    """The docstring's module lines of a folder, and what the folder holds."""
    named = set(MODULE_LINE.findall(docstring(folder / "__init__.py")))
    modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    folders = {
        f"{p.name}/"
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and f"{p.name}/" in named
    }
    return named, modules | folders


@pytest.mark.parametrize("row", list(LAYOUT))
def test_each_folder_says_what_it_holds_and_may_import(row: str) -> None:
    init = folder_path(row) / "__init__.py"
    assert init.exists(), f"{row} has no __init__.py"
    named, held = listed(folder_path(row))
    assert named == held, f"{init.relative_to(ROOT)} lists {sorted(named)}; holds {sorted(held)}"
    assert may_import(docstring(init)) == LAYOUT[row], f"{init.relative_to(ROOT)}'s May import:"


def test_the_package_says_what_its_top_level_holds() -> None:
    """src/apipod_proxy/__init__.py: a line per folder and top-level module, and the
    base modules by name."""
    named, _ = listed(PACKAGE)
    held = {f"{name}.py" for name in top_level_modules()} | {f"{f}/" for f in package_folders()}
    assert named == held
    match = re.search(r"^Base modules: (.*?)\.$", docstring(PACKAGE / "__init__.py"), re.M | re.S)
    assert match is not None
    base = [name for name in BASE if name in top_level_modules()]
    assert [w.strip() for w in match[1].split(",")] == base


def readme_table() -> dict[str, tuple[str, str]]:
    """The layout table of docs/reference.md: folder -> (what it holds, what it may import)."""
    text = (ROOT / "docs" / "reference.md").read_text()
    table = text[text.index(README_TABLE) + len(README_TABLE) :].strip().split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        folder, holds, imports = (cell.strip() for cell in line.strip("|").split("|"))
        rows[folder.strip("`")] = (holds, imports)
    return rows


def words(cell: str) -> tuple[str, ...]:
    return tuple(w.strip().replace("`", "") for w in cell.split(","))


def test_the_readme_table_shows_the_layout() -> None:
    """A row per folder, in LAYOUT's order, whose "May import" is the folder's row; and
    a "top level" row that names every top-level module."""
    rows = readme_table()
    inside = [row for row in LAYOUT if (PACKAGE / row).is_dir()]
    outside = [row for row in LAYOUT if row not in inside]
    assert list(rows) == [*inside, "top level", *outside]
    for row, allowed in LAYOUT.items():
        assert words(rows[row][1]) == allowed, f"docs/reference.md's row for {row}"
    holds, imports = rows["top level"]
    assert set(re.findall(r"`(\w+)`", holds)) >= set(top_level_modules())
    assert all(f"`{name}`" in imports for name in NOTHING_IMPORTS)
