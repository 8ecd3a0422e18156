"""Unit tests for apipod_proxy.jsonenc: the one JSON encoder, and that it is the only one.

Each option combination a caller uses is pinned to the `json.dumps` call that caller
made before, so moving to the shared encoder changed no byte on the wire or in the log.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import apipod_proxy
from apipod_proxy.jsonenc import json_bytes, json_bytes_in_parts, json_text

PACKAGE = Path(apipod_proxy.__file__).parent
#: Modules that may call `json.dumps` themselves: none writes for a client, the upstream
#: or the log.
OWN_ENCODING = {
    "jsonenc.py": "the encoder",
    "cli.py": "prints to the operator's terminal (indented for reading)",
    "storage/sqlite.py": "a key's model allow-list as a database column",
    "policy/routing.py": "the input of the conversation digest, never written out",
}

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
#: Text of every kind: non-ASCII, control characters and lone surrogates included.
_any_text = st.text(st.characters() | st.sampled_from("\ud800\ud83d\udfff"), max_size=8)
_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3),
    max_leaves=8,
)


# --- byte for byte what each caller wrote before --------------------------------------------


@given(_anything)
def test_json_text_is_the_json_dumps_each_caller_made(value: object) -> None:
    # translate/responses.py and streams.py (tool-call arguments), logs.py (the JSON line)
    assert json_text(value, spaced=True) == json.dumps(value, ensure_ascii=False)
    # translate/requests.py (tool-call arguments sent to an OpenAI upstream)
    assert json_text(value, ascii_only=True) == json.dumps(value, separators=(",", ":"))
    # translate/failures.py (an upstream error object without a message)
    assert json_text(value, spaced=True, ascii_only=True) == json.dumps(value)


@given(_anything)
def test_json_bytes_is_utf8_and_falls_back_to_escapes(value: object) -> None:
    for spaced, separators in ((False, (",", ":")), (True, (", ", ": "))):
        text = json.dumps(value, ensure_ascii=False, separators=separators)
        try:
            expected = text.encode()
        except UnicodeEncodeError:
            expected = json.dumps(value, separators=separators).encode()
        assert json_bytes(value, spaced=spaced) == expected


def test_json_bytes_is_compact_utf8() -> None:
    assert json_bytes({"a": [1, 2], "b": "ключ"}) == '{"a":[1,2],"b":"ключ"}'.encode()


def test_a_lone_surrogate_is_written_with_escapes_throughout() -> None:
    value = {"a": "é \ud83d"}
    assert json_bytes(value) == b'{"a":"\\u00e9 \\ud83d"}'
    assert json_bytes(value, spaced=True) == b'{"a": "\\u00e9 \\ud83d"}'
    assert json.loads(json_bytes(value)) == value
    assert json_text(value) == '{"a":"é \ud83d"}'  # text keeps it, for the bytes written later


def test_strict_refuses_nan_and_infinity_and_lenient_writes_them() -> None:
    for number in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            json_bytes([number], strict=True)
        with pytest.raises(ValueError):
            json_text([number], strict=True)
    assert json_bytes([float("nan"), float("inf")]) == b"[NaN,Infinity]"


@given(st.dictionaries(st.text(max_size=4), _values, max_size=4))
def test_json_in_parts_is_json_bytes(value: dict[str, object]) -> None:
    assert json_bytes_in_parts(value) == json_bytes(value, strict=True)


def test_json_in_parts_refuses_infinity_and_escapes_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        json_bytes_in_parts({"n": [float("inf")]})
    assert json_bytes_in_parts({"x": ["\ud800"]}) == json_bytes({"x": ["\ud800"]}, strict=True)


# --- the only encoder ---------------------------------------------------------------------


def own_encoders(tree: ast.Module) -> list[int]:
    """Lines that encode JSON without jsonenc: json.dump(s), json.JSONEncoder, or those
    names imported from json."""
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "json"
            and node.attr in ("dumps", "dump", "JSONEncoder")
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "json"
            and any(alias.name in ("dumps", "dump", "JSONEncoder") for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_jsonenc_is_the_only_json_encoder_for_the_wire_and_the_log() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in OWN_ENCODING and (lines := own_encoders(ast.parse(path.read_text()))):
            found[name] = lines
    assert not found, f"encode with apipod_proxy.jsonenc instead: {found}"


def test_the_scan_finds_an_encoder() -> None:
    assert own_encoders(ast.parse("import json\njson.dumps(1)\n")) == [2]
    assert own_encoders(ast.parse("from json import JSONEncoder\n")) == [1]
    assert own_encoders(ast.parse("import json\njson.loads('1')\n")) == []


def test_jsonenc_is_a_leaf() -> None:
    """translate/ imports it: it may import nothing of the package (nor mitmproxy)."""
    tree = ast.parse((PACKAGE / "jsonenc.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    imported = {alias.name for node in imports for alias in node.names}
    imported |= {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"json", "typing", "__future__"}, imported
