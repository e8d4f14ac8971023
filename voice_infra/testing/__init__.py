"""Test kit for plugin authors: conformance suites and pytest fixtures.

- :class:`StorageContract` / :class:`RateLimiterContract` / :class:`CacheContract`:
  subclass them and supply one fixture (``storage_backend`` / ``rate_limiter_factory`` /
  ``cache_factory``) to run the shared suite.
- The pytest plugin (registered through the ``pytest11`` entry point, so it is active
  wherever voice-infra is installed) adds the fixtures ``voice_settings``,
  ``voice_storage``, ``voice_rate_limiter``, ``voice_cache``, ``voice_backends`` and
  ``voice_plugin_registry``.
- :func:`opened_backends` / :func:`opened_rate_limiters` / :func:`rate_limiter_opener`:
  for fixtures of your own that open backends; each is closed after the test.
"""

from __future__ import annotations

from voice_infra.testing.contracts import (
    INVALID_OBJECT_KEYS,
    CacheContract,
    RateLimiterContract,
    StorageContract,
)
from voice_infra.testing.helpers import opened_backends, opened_rate_limiters, rate_limiter_opener

__all__ = [
    "INVALID_OBJECT_KEYS",
    "CacheContract",
    "RateLimiterContract",
    "StorageContract",
    "opened_backends",
    "opened_rate_limiters",
    "rate_limiter_opener",
]
