"""Authentication and authorisation: OIDC JWTs for people, hashed API tokens for machines."""
