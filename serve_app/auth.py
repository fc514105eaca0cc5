"""Bearer-token authentication."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_bearer(authorization: str | None, keys: list[str]) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <one of keys>``.

    Every key is compared, in constant time, so timing tells nothing about
    which key or how much of it matched.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required: send 'Authorization: Bearer <WHISPER_API_KEY>'",
            headers=CHALLENGE,
        )
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid API key: check the token sent in 'Authorization: Bearer <key>'",
            headers=CHALLENGE,
        )


def require_api_key(request: Request) -> None:
    """FastAPI dependency: the request carries a valid key, unless auth is off."""
    settings = request.app.state.settings
    if settings.require_auth:
        check_bearer(request.headers.get("authorization"), settings.api_keys)
