"""Helpers for fixtures that open backends: every backend a test opened is closed after
it, whatever the test did (used by the contract suites and the plugins' own fixtures)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest_asyncio

from voice_infra.base import Backend
from voice_infra.config import Settings
from voice_infra.factory import create_rate_limiter
from voice_infra.ratelimit import RateLimiter

__all__ = ["opened_backends", "opened_rate_limiters", "rate_limiter_opener"]

B = TypeVar("B", bound=Backend)
R = TypeVar("R", bound=RateLimiter)


@contextlib.asynccontextmanager
async def opened_backends(
    build: Callable[..., B],
) -> AsyncIterator[Callable[..., Awaitable[B]]]:
    """``async with opened_backends(build) as open_backend``: ``await open_backend(...)``
    is ``build(...)`` opened; every backend opened so is closed on the way out."""
    opened: list[B] = []

    async def open_backend(*args: Any, **kwargs: Any) -> B:
        backend = build(*args, **kwargs)
        await backend.__aenter__()
        opened.append(backend)
        return backend

    try:
        yield open_backend
    finally:
        for backend in reversed(opened):
            await backend.aclose()


@contextlib.asynccontextmanager
async def opened_rate_limiters(
    backend: str, expected: type[R]
) -> AsyncIterator[Callable[..., Awaitable[R]]]:
    """:func:`opened_backends` for rate limiters built as an application builds them:
    ``await open_limiter(**options)`` is the ``backend`` limiter configured by the
    ``[rate_limit]`` options given, through the public factory, opened."""

    def build(**options: Any) -> R:
        limiter = create_rate_limiter(Settings(rate_limit={"backend": backend, **options}))
        if not isinstance(limiter, expected):
            raise TypeError(f"backend {backend!r} built a {type(limiter).__name__}, not {expected}")
        return limiter

    async with opened_backends(build) as open_limiter:
        yield open_limiter


def rate_limiter_opener(name: str, backend: str, expected: type[R]) -> Any:
    """A pytest fixture ``name`` giving :func:`opened_rate_limiters` of ``backend``; in a
    ``conftest.py``: ``open_redis_limiter = rate_limiter_opener("open_redis_limiter",
    "redis", RedisRateLimiter)``, then ``await open_redis_limiter(**options)`` in tests."""

    async def fixture() -> AsyncIterator[Callable[..., Awaitable[R]]]:
        async with opened_rate_limiters(backend, expected) as open_limiter:
            yield open_limiter

    fixture.__doc__ = (
        f"``await {name}(**rate_limit_options)``: a ``{backend}`` limiter built from "
        "``[rate_limit]`` options through the public factory, opened; closed after the test."
    )
    return pytest_asyncio.fixture(fixture, name=name)
