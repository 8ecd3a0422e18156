"""Unit tests for apipod_proxy.keys: key shape, hashing and validation."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from apipod_proxy.keys import (
    DEFAULT_TIER,
    display_prefix,
    generate_key,
    hash_key,
    looks_like_key,
    validate_new_key,
)

BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")

# --- generate_key ------------------------------------------------------------------


def test_generated_key_is_prefix_plus_43_base64url_characters() -> None:
    key = generate_key()
    assert key.startswith("apk_")
    body = key[len("apk_") :]
    assert len(body) == 43
    assert BASE64URL.match(body)
    assert len(key) == 47


def test_generated_key_decodes_to_32_random_bytes() -> None:
    body = generate_key()[len("apk_") :]
    raw = base64.urlsafe_b64decode(body + "=")
    assert len(raw) == 32


def test_generated_keys_are_unique() -> None:
    generated = {generate_key() for _ in range(1000)}
    assert len(generated) == 1000


def test_generated_key_has_no_padding() -> None:
    assert "=" not in generate_key()


def test_generated_key_looks_like_a_key() -> None:
    assert looks_like_key(generate_key())


# --- hash_key ------------------------------------------------------------------------


def test_hash_key_is_sha256_hex_of_utf8() -> None:
    key = "apk_" + "A" * 43
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_hash_key_is_64_lowercase_hex_characters() -> None:
    digest = hash_key(generate_key())
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_hash_key_differs_for_different_keys() -> None:
    assert hash_key("apk_a") != hash_key("apk_b")


def test_hash_key_is_deterministic() -> None:
    key = generate_key()
    assert hash_key(key) == hash_key(key)


def test_hash_key_handles_non_ascii() -> None:
    key = "ключ-🔑-鍵"
    assert hash_key(key) == hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_hash_key_handles_surrogate_escapes() -> None:
    # What a header value carrying the raw byte 0xff decodes to.
    key = b"apk_\xff".decode("utf-8", "surrogateescape")
    assert hash_key(key) == hashlib.sha256(b"apk_\xff").hexdigest()


def test_hash_key_handles_a_huge_string() -> None:
    key = "x" * 5_000_000
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_hash_key_handles_empty_and_nul() -> None:
    assert hash_key("") == hashlib.sha256(b"").hexdigest()
    assert hash_key("\x00") == hashlib.sha256(b"\x00").hexdigest()


# --- looks_like_key / display_prefix ---------------------------------------------------


def test_looks_like_key_rejects_wrong_prefix_of_right_length() -> None:
    assert not looks_like_key("sk-_" + "A" * 43)
    assert not looks_like_key("APK_" + "A" * 43)


@pytest.mark.parametrize("length", [0, 42, 44, 100])
def test_looks_like_key_rejects_wrong_length(length: int) -> None:
    assert not looks_like_key("apk_" + "A" * length)


def test_looks_like_key_rejects_empty_string() -> None:
    assert not looks_like_key("")


def test_display_prefix_is_apk_plus_six_characters() -> None:
    key = generate_key()
    assert display_prefix(key) == key[:10]
    assert len(display_prefix(key)) == 10


# --- validate_new_key ------------------------------------------------------------------


def test_validate_new_key_defaults() -> None:
    assert validate_new_key("alice") == ("alice", DEFAULT_TIER, None)
    assert DEFAULT_TIER == "elite"


def test_validate_new_key_strips_name_and_tier() -> None:
    assert validate_new_key("  alice  ", "  pro  ", "1h") == ("alice", "pro", 3600)


@pytest.mark.parametrize("name", [None, "", "   ", 123, ["alice"], {"n": 1}])
def test_validate_new_key_rejects_bad_names(name: object) -> None:
    with pytest.raises(ValueError, match="name"):
        validate_new_key(name)


def test_validate_new_key_accepts_a_200_character_name() -> None:
    assert validate_new_key("n" * 200)[0] == "n" * 200


def test_validate_new_key_rejects_a_201_character_name() -> None:
    with pytest.raises(ValueError, match="name"):
        validate_new_key("n" * 201)


@pytest.mark.parametrize("tier", ["", "   ", 5, True, ["pro"], "t" * 65])
def test_validate_new_key_rejects_bad_tiers(tier: object) -> None:
    with pytest.raises(ValueError, match="tier"):
        validate_new_key("alice", tier)


def test_validate_new_key_accepts_a_64_character_tier() -> None:
    assert validate_new_key("alice", "t" * 64)[1] == "t" * 64


def test_validate_new_key_rejects_bad_expires_in() -> None:
    with pytest.raises(ValueError, match="expires_in"):
        validate_new_key("alice", None, "soon")
