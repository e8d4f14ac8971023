"""pytest fixtures of voice-infra, active wherever voice-infra is installed.

- ``voice_settings``: :class:`voice_infra.Settings` for the other fixtures; in-memory
  storage and rate limiter by default. Override it in your ``conftest.py`` to run the
  same tests on other backends.
- ``voice_storage`` / ``voice_rate_limiter``: opened backends built from it.
- ``voice_plugin_registry``: an isolated :class:`voice_infra.PluginRegistry` holding the
  built-in backends only; register test plugins on it without touching the
  application's registry, and pass it as ``registry=`` to ``create_storage``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from voice_infra.config import Settings
from voice_infra.factory import create_rate_limiter, create_storage
from voice_infra.plugins import PluginRegistry
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import StorageBackend

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without it the async fixtures are unavailable
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def voice_settings() -> Settings:
    """In-memory backends, independent of any voice_infra.toml or environment."""
    return Settings.from_keywords(
        storage={"backend": "memory"},
        rate_limit={"backend": "memory", "policies": ["10/second", "100/minute"]},
    )


@pytest.fixture
def voice_plugin_registry() -> PluginRegistry:
    """A fresh registry with only the built-in backends registered (strict mode)."""
    from voice_infra import backends

    registry = PluginRegistry(strict=True)
    registry.register(backends, name="voice-infra:builtins", distribution="voice-infra")
    return registry


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def voice_storage(voice_settings: Settings) -> AsyncIterator[StorageBackend]:
        """The storage backend ``voice_settings`` selects, opened."""
        async with create_storage(voice_settings) as storage:
            yield storage

    @pytest_asyncio.fixture
    async def voice_rate_limiter(voice_settings: Settings) -> AsyncIterator[RateLimiter]:
        """The rate limiter ``voice_settings`` selects, opened."""
        async with create_rate_limiter(voice_settings) as limiter:
            yield limiter
