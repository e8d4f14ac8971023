"""pytest fixtures of voice-infra, active wherever voice-infra is installed.

- ``voice_settings``: :class:`voice_infra.Settings` for the other fixtures; in-memory
  storage and rate limiter by default. Override it in your ``conftest.py`` to run the
  same tests on other backends.
- ``voice_storage`` / ``voice_rate_limiter`` / ``voice_cache``: opened backends built
  from it;
  ``voice_backends``: ``await voice_backends(kind)`` builds and opens the backend of any
  declared kind (see :mod:`voice_infra.kinds`), closed at teardown.
- ``voice_plugin_registry``: an isolated :class:`voice_infra.PluginRegistry` holding the
  built-in backends only; register test plugins on it without touching the
  application's registry, and pass it as ``registry=`` to ``create_storage``.

At the end of a run it lists the conformance tests skipped for a missing capability
(with the reason, without ``-rs``), and warns once per backend that declares no
capabilities at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, cast

import pytest

from voice_infra.cache import CacheBackend
from voice_infra.config import Settings
from voice_infra.factory import create_backend
from voice_infra.kinds import KindSpec
from voice_infra.plugins import PluginRegistry
from voice_infra.ratelimit import RateLimiter
from voice_infra.storage import StorageBackend

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without it the async fixtures are unavailable
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The contract tests skipped for want of a capability, and why."""
    from voice_infra.testing.contracts import NO_CAPABILITIES_DECLARED, SKIP_PREFIX

    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reason = str(longrepr[2]).removeprefix("Skipped: ")
            if reason.startswith(SKIP_PREFIX):
                reasons[reason.removeprefix(SKIP_PREFIX).strip()] += 1
    if not reasons:
        return
    terminalreporter.write_sep("=", "voice-infra test kit", yellow=True)
    warned = set()
    for reason in reasons:
        if NO_CAPABILITIES_DECLARED in reason:
            backend = reason.split(NO_CAPABILITIES_DECLARED, 1)[0].strip()
            if backend not in warned:
                warned.add(backend)
                terminalreporter.write_line(
                    f"WARNING: {backend} {NO_CAPABILITIES_DECLARED}: its optional "
                    "(capability-gated) contract tests did not run",
                    yellow=True,
                    bold=True,
                )
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"{count} skipped: {reason}")


@pytest.fixture
def voice_settings() -> Settings:
    """In-memory backends, independent of any voice_infra.toml or environment."""
    return Settings.from_keywords(
        storage={"backend": "memory"},
        rate_limit={"backend": "memory", "policies": ["10/second", "100/minute"]},
        cache={"backend": "memory"},
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
    async def voice_backends(
        voice_settings: Settings,
    ) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """``await voice_backends(kind, registry=None)``: the backend of any declared kind
        (``"storage"``, ``"rate_limiter"``, a plugin's own kind) that ``voice_settings``
        selects, opened; every backend it built is closed at teardown."""
        async with AsyncExitStack() as stack:

            async def build(kind: str | KindSpec, *, registry: PluginRegistry | None = None) -> Any:
                backend = create_backend(kind, voice_settings, registry=registry)
                return await stack.enter_async_context(backend)

            yield build

    @pytest_asyncio.fixture
    async def voice_storage(
        voice_backends: Callable[..., Awaitable[Any]],
    ) -> StorageBackend:
        """The storage backend ``voice_settings`` selects, opened."""
        return cast(StorageBackend, await voice_backends("storage"))

    @pytest_asyncio.fixture
    async def voice_rate_limiter(
        voice_backends: Callable[..., Awaitable[Any]],
    ) -> RateLimiter:
        """The rate limiter ``voice_settings`` selects, opened."""
        return cast(RateLimiter, await voice_backends("rate_limiter"))

    @pytest_asyncio.fixture
    async def voice_cache(
        voice_backends: Callable[..., Awaitable[Any]],
    ) -> CacheBackend:
        """The cache ``voice_settings`` selects, opened."""
        return cast(CacheBackend, await voice_backends("cache"))
