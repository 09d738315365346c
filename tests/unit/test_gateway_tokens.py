"""API token format and hashing."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from spinecloud_gateway.auth.tokens import generate_token, hash_token, token_prefix, verify


def test_generated_tokens_have_the_documented_shape() -> None:
    new = generate_token()
    assert new.token.startswith(f"sc_{new.prefix}_")
    assert len(new.prefix) == 8 and int(new.prefix, 16) >= 0
    assert token_prefix(new.token) == new.prefix
    assert new.token_hash == hashlib.sha256(new.token.encode()).hexdigest()
    assert new.token not in new.token_hash


def test_tokens_are_unique_and_only_their_own_hash_verifies() -> None:
    tokens = [generate_token() for _ in range(50)]
    assert len({t.token for t in tokens}) == len({t.prefix for t in tokens}) == 50
    first, second = tokens[:2]
    assert verify(first.token, first.token_hash)
    assert not verify(second.token, first.token_hash)
    assert not verify(first.token + "x", first.token_hash)


def test_hash_is_sha256_hex() -> None:
    assert hash_token("sc_0123abcd_x") == hashlib.sha256(b"sc_0123abcd_x").hexdigest()


@given(st.text(max_size=80))
def test_anything_else_is_not_a_token(text: str) -> None:
    prefix = token_prefix(text)
    if prefix is not None:
        assert text.startswith(f"sc_{prefix}_") and len(text) == 3 + 8 + 1 + 43


def test_malformed_tokens_have_no_prefix() -> None:
    for bad in (
        "",
        "sc_",
        "sc_0123abcd_short",
        "sc_XYZ12345_" + "a" * 43,
        "Bearer sc_0123abcd_" + "a" * 43,
    ):
        assert token_prefix(bad) is None
