"""OIDC bearer JWT validation against the identity provider's JWKS.

Signature (RS256 or ES256, key chosen by ``kid``), issuer, audience, expiry and not-before are
all checked; the key set is fetched from the JWKS URL and cached, and fetched again when a
token names a ``kid`` the cache does not hold (key rotation).
"""

from __future__ import annotations

from typing import Any

import jwt

from spinecloud_gateway.core.errors import AuthenticationError
from spinecloud_shared.errors import UpstreamError

__all__ = ["OidcVerifier"]


class OidcVerifier:
    """Validates user JWTs for one issuer and audience."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        algorithms: list[str],
        cache_s: int = 300,
        leeway_s: int = 30,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        self.jwks = jwt.PyJWKClient(
            jwks_url, cache_jwk_set=True, lifespan=max(cache_s, 1), cache_keys=True, timeout=10
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; AuthenticationError if it is not a valid token for us."""
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise UpstreamError("The identity provider's signing keys are unreachable.") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise AuthenticationError("The bearer token is not valid.") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("The bearer token has expired.") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("The bearer token is not valid.") from exc
        return claims
