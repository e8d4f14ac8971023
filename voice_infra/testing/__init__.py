"""Test kit for plugin authors: conformance suites and pytest fixtures.

- :class:`StorageContract` / :class:`RateLimiterContract` / :class:`CacheContract`:
  subclass them and supply one fixture (``storage_backend`` / ``rate_limiter_factory`` /
  ``cache_factory``) to run the shared suite.
- The pytest plugin (registered through the ``pytest11`` entry point, so it is active
  wherever voice-infra is installed) adds the fixtures ``voice_settings``,
  ``voice_storage``, ``voice_rate_limiter``, ``voice_cache``, ``voice_backends`` and
  ``voice_plugin_registry``.
"""

from __future__ import annotations

from voice_infra.testing.contracts import (
    INVALID_OBJECT_KEYS,
    CacheContract,
    RateLimiterContract,
    StorageContract,
)

__all__ = ["INVALID_OBJECT_KEYS", "CacheContract", "RateLimiterContract", "StorageContract"]
