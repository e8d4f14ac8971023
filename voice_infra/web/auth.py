"""Bearer tokens of the service: HS256 JWTs (PyJWT) whose ``sub`` is the user id."""

from __future__ import annotations

import time

import jwt
from pydantic import SecretStr
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.requests import HTTPConnection

from voice_infra.errors import VoiceServiceError
from voice_infra.text import first_unsafe_character

__all__ = ["BearerTokenBackend", "TokenError", "TokenUser", "mint_token", "verify_token"]

ALGORITHM = "HS256"
MAX_USER_ID_LENGTH = 256


class TokenError(VoiceServiceError, ValueError):
    """A token that cannot be issued or accepted (expired, forged, malformed...)."""


def _check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise TokenError(
            f"the user id must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters"
        )
    if unsafe := first_unsafe_character(user_id):
        raise TokenError(f"the user id contains the control or format character {unsafe}")
    return user_id


def mint_token(secret: SecretStr, user_id: str, ttl: int, *, now: float | None = None) -> str:
    """A token for ``user_id`` valid ``ttl`` seconds."""
    _check_user_id(user_id)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise TokenError(f"ttl must be a positive number of seconds, got {ttl!r}")
    issued = int(time.time() if now is None else now)
    claims = {"sub": user_id, "iat": issued, "exp": issued + ttl}
    return jwt.encode(claims, secret.get_secret_value(), algorithm=ALGORITHM)


def verify_token(secret: SecretStr, token: str) -> str:
    """The user id of a valid ``token``; :class:`TokenError` otherwise. Only HS256 is
    accepted (never ``none`` or a key confusion), and ``exp`` and ``sub`` are required."""
    try:
        claims = jwt.decode(
            token,
            secret.get_secret_value(),
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
        )
    except jwt.PyJWTError as exc:
        error = TokenError(f"invalid token: {exc}")
    else:
        return _check_user_id(claims.get("sub"))
    raise error  # without PyJWT's chain


class TokenUser(BaseUser):
    """The user a valid bearer token names."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    @property
    def is_authenticated(self) -> bool:
        """Always: only a valid token makes one."""
        return True

    @property
    def display_name(self) -> str:
        """The user id."""
        return self.user_id

    @property
    def identity(self) -> str:
        """The user id (the token's ``sub``)."""
        return self.user_id


class BearerTokenBackend(AuthenticationBackend):
    """For Starlette's ``AuthenticationMiddleware``: ``Authorization: Bearer <token>``.

    A missing or invalid token leaves the request unauthenticated (the routes that need a
    user answer 401); public routes (presigned URLs, the page) stay reachable.
    """

    def __init__(self, secret: SecretStr) -> None:
        self.secret = secret

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        """The token's user, or ``None`` (unauthenticated) without a valid token."""
        header = conn.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            user_id = verify_token(self.secret, token.strip())
        except TokenError:
            return None
        return AuthCredentials(["authenticated"]), TokenUser(user_id)
