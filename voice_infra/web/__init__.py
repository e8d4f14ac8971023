"""voice-infra over HTTP (the ``web`` extra: ``pip install 'voice-infra[web]'``): the ASGI
rate-limit middleware and per-route dependency (:mod:`voice_infra.web.middleware`) and the
voice-message service of ``voice-infra serve`` (:func:`voice_infra.web.app.create_app`)."""

from __future__ import annotations

from voice_infra.web.middleware import (
    RateLimit,
    RateLimitedError,
    RateLimitMiddleware,
    authenticated_user,
    client_address,
    first_of,
    header_value,
    rate_limited_handler,
)

__all__ = [
    "RateLimit",
    "RateLimitMiddleware",
    "RateLimitedError",
    "authenticated_user",
    "client_address",
    "first_of",
    "header_value",
    "rate_limited_handler",
]
