"""Bearer-token authentication; a job belongs to the fingerprint of the key that made it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Declares the scheme in the OpenAPI schema (the docs' Authorize button); the check
# itself is ours (check_bearer), with its own messages.
BEARER = HTTPBearer(
    auto_error=False, description="a key of WHISPER_API_KEY, as 'Authorization: Bearer <key>'"
)
ANONYMOUS = "anonymous"


def fingerprint(key: str) -> str:
    """What the job store keeps instead of a key."""
    return hashlib.sha256(b"whisper-serve-owner:" + key.encode()).hexdigest()[:32]


def check_bearer(authorization: str | None, keys: list[str]) -> str:
    """Return the key ``authorization`` carries (``Bearer <key>``), or raise 401.

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
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if matched is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid API key: check the token sent in 'Authorization: Bearer <key>'",
            headers=CHALLENGE,
        )
    return matched


async def require_api_key(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> str:
    """FastAPI dependency: the caller's owner fingerprint (anonymous when auth is off).

    async, as every dependency here: a plain ``def`` one runs in a worker thread."""
    settings = request.app.state.settings
    if not settings.require_auth:
        return ANONYMOUS
    return fingerprint(check_bearer(request.headers.get("authorization"), settings.api_keys))


OwnerDep = Annotated[str, Depends(require_api_key)]
