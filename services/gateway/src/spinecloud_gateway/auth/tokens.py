"""API token format and hashing: ``sc_<prefix>_<secret>``, stored as prefix + SHA-256.

The prefix (8 hex characters) finds the row; the SHA-256 of the whole token, compared in
constant time, proves it. Tokens carry 256 bits of randomness, so a fast hash is enough (no
password-style stretching is needed for random secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["TOKEN_PATTERN", "NewToken", "generate_token", "hash_token", "token_prefix", "verify"]

TOKEN_PATTERN = re.compile(r"^sc_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewToken:
    """A freshly generated token: the secret (shown once) and what is stored."""

    token: str
    prefix: str
    token_hash: str


def hash_token(token: str) -> str:
    """SHA-256 of the token, as 64 hex characters."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> NewToken:
    """A new random token with its lookup prefix and hash."""
    prefix = secrets.token_hex(4)
    token = f"sc_{prefix}_{secrets.token_urlsafe(32)}"
    return NewToken(token=token, prefix=prefix, token_hash=hash_token(token))


def token_prefix(token: str) -> str | None:
    """The lookup prefix of a well-formed API token, or None if ``token`` is not one."""
    match = TOKEN_PATTERN.match(token)
    return match.group(1) if match else None


def verify(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash`` (constant-time comparison)."""
    return hmac.compare_digest(hash_token(token), token_hash)
