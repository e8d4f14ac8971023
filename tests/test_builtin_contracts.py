"""The built-in backends pass the same conformance suites as every plugin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import voice_infra as vi
from voice_infra.testing import CacheContract, RateLimiterContract, StorageContract


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self) -> vi.StorageBackend:
        return vi.create_storage(vi.Settings(storage={"backend": "memory"}))


class TestFileSystemStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self, tmp_path: Path) -> vi.StorageBackend:
        return vi.create_storage(vi.Settings(storage={"backend": "fs", "path": str(tmp_path)}))


class TestMemoryRateLimiterSlidingLog(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self):
        def build(policies):
            return vi.create_rate_limiter(
                vi.Settings(rate_limit={"backend": "memory", "policies": policies})
            )

        return build


class TestMemoryRateLimiterWindowCounter(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self):
        def build(policies):
            return vi.create_rate_limiter(
                vi.Settings(
                    rate_limit={
                        "backend": "memory",
                        "policies": policies,
                        "algorithm": "sliding_window_counter",
                    }
                )
            )

        return build


# The same suites through every built-in layer that applies: a layered backend is a
# backend of its kind (prometheus-client is in the dev extra).
STORAGE_LAYERS = ["metrics", "retry", "breaker", "timeout"]
LIMITER_LAYERS = ["metrics", "deny_cache", "retry", "breaker", "timeout"]


class TestLayeredMemoryStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self) -> vi.StorageBackend:
        return vi.create_storage(
            vi.Settings(storage={"backend": "memory", "layers": STORAGE_LAYERS})
        )


class TestLayeredFileSystemStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self, tmp_path: Path) -> vi.StorageBackend:
        return vi.create_storage(
            vi.Settings(storage={"backend": "fs", "path": str(tmp_path), "layers": STORAGE_LAYERS})
        )


# The cache layer is transparent: the same contract through it (memory cache).
CACHED_STORAGE_LAYERS = ["metrics", {"name": "cache", "ttl": "5m"}, *STORAGE_LAYERS[1:]]


class TestCachedMemoryStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self) -> vi.StorageBackend:
        return vi.create_storage(
            vi.Settings(storage={"backend": "memory", "layers": CACHED_STORAGE_LAYERS})
        )


class TestCachedFileSystemStorage(StorageContract):
    @pytest.fixture
    def storage_backend(self, tmp_path: Path) -> vi.StorageBackend:
        return vi.create_storage(
            vi.Settings(
                storage={"backend": "fs", "path": str(tmp_path), "layers": CACHED_STORAGE_LAYERS}
            )
        )


class TestLayeredMemoryRateLimiter(RateLimiterContract):
    @pytest.fixture
    def rate_limiter_factory(self):
        def build(policies):
            return vi.create_rate_limiter(
                vi.Settings(
                    rate_limit={"backend": "memory", "policies": policies, "layers": LIMITER_LAYERS}
                )
            )

        return build


class TestMemoryCache(CacheContract):
    @pytest.fixture
    def cache_factory(self) -> Callable[..., vi.CacheBackend]:
        def build(**options: object) -> vi.CacheBackend:
            return vi.create_cache(
                vi.Settings.from_keywords(cache={"backend": "memory", **options})
            )

        return build
