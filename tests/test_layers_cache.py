"""The storage ``cache`` layer: info, existence and presigned URLs served from the
``[cache]`` backend, invalidated by this process's writes (hypothesis traces against the
storage itself, and races with a slow storage and a slow cache), URL reuse while half the
lifetime remains, failing caches (a scripted one, a stopped redis-server) that never fail
a storage operation, and the layer hooks it relies on (configure, open, aclose)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import layer_fakes
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_fakes import build

import voice_infra as vi
from voice_infra.backends.memory_cache import MemoryCache, MemoryCacheSettings
from voice_infra.errors import ConfigError, ObjectNotFoundError
from voice_infra.layers import iter_layers, unwrap, wrap
from voice_infra.layers.cache import CacheLayer, CacheLayerSettings
from voice_infra.plugins import PluginRegistry


@pytest.fixture
def registry(layer_registry: PluginRegistry) -> PluginRegistry:
    layer_fakes.JOURNAL.clear()
    layer_fakes.LIFECYCLE.clear()
    return layer_registry


def cached(registry: PluginRegistry, cache: str = "memory", **layer: Any) -> Any:
    """``flaky`` storage inside the cache layer, the cache from ``[cache] backend``."""
    settings = vi.Settings.from_keywords(
        storage={"backend": "flaky", "layers": [{"name": "cache", **layer}]},
        cache={"backend": cache},
    )
    return vi.create_storage(settings, registry=registry)


def layer_of(storage: Any) -> CacheLayer:
    (layer,) = (layer for layer in iter_layers(storage) if isinstance(layer, CacheLayer))
    return layer


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- what is served from the cache ------------------------------------------------------


@pytest.mark.asyncio
async def test_info_and_existence_are_served_from_the_cache(registry: PluginRegistry) -> None:
    async with cached(registry, ttl="5m") as storage:
        inner = unwrap(storage)
        stored = await storage.upload_file(b"abc", object_key="a/b", content_type="audio/wav")
        first = await storage.get_file_info("a/b")
        assert inner.calls["info"] == 1
        assert await storage.get_file_info("a/b") == first == await inner.get_file_info("a/b")
        assert first.checksum == stored.checksum
        assert await storage.file_exists("a/b") is True
        assert inner.calls["info"] == 2  # the one above was the direct inner call

        # A missing object: cached as absent, for both operations.
        assert await storage.file_exists("gone") is False
        assert await storage.file_exists("gone") is False
        with pytest.raises(ObjectNotFoundError, match="'gone' not found in bucket 'memory'"):
            await storage.get_file_info("gone")
        assert inner.calls["info"] == 3

        # file_exists gives no info: get_file_info asks the storage once, then caches it.
        await inner.upload_file(b"x", object_key="c")
        assert await storage.file_exists("c") is True
        assert (await storage.get_file_info("c")).file_size == 1
        assert (await storage.get_file_info("c")).file_size == 1
        assert await storage.file_exists("c") is True
        assert inner.calls["info"] == 5
        assert layer_of(storage).state().startswith("6 hits, 4 misses, 0 cache errors")


@pytest.mark.asyncio
async def test_invalid_keys_always_reach_the_backend(registry: PluginRegistry) -> None:
    async with cached(registry) as storage:
        for _ in range(2):
            with pytest.raises(vi.InvalidObjectKeyError):
                await storage.get_file_info("/bad")
            with pytest.raises(vi.InvalidObjectKeyError):
                await storage.generate_presigned_url("a", object_key="a")  # key twice
            with pytest.raises(vi.InvalidPresignedURLError):
                await storage.generate_presigned_url("a", 0)
        assert layer_of(storage).hits == 0


# Random traces over four keys: every answer through the cache equals what the storage
# holds at that moment (so no write of this process is ever hidden by the cache).
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("upload"), st.integers(0, 3), st.binary(max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 3)),
        st.tuples(st.just("info"), st.integers(0, 3)),
        st.tuples(st.just("exists"), st.integers(0, 3)),
        st.tuples(st.just("presign"), st.integers(0, 3), st.sampled_from([None, 60, 600])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(STEPS, st.sampled_from(["memory", "fs"]))
def test_the_cache_never_serves_what_this_process_replaced_or_deleted(
    steps: list[tuple[Any, ...]], backend: str
) -> None:
    import tempfile

    async def run(directory: str) -> None:
        storage = vi.create_storage(
            vi.Settings.from_keywords(
                storage={"backend": backend, "path": directory, "layers": ["cache"]}
                if backend == "fs"
                else {"backend": backend, "layers": ["cache"]}
            )
        )
        async with storage:
            truth = unwrap(storage)
            urls: dict[tuple[str, Any], str] = {}
            for step in steps:
                name, key = step[0], f"k/{step[1]}"
                if name == "upload":
                    await storage.upload_file(step[2], object_key=key)
                    urls = {k: u for k, u in urls.items() if k[0] != key}
                elif name == "delete":
                    existed = await truth.file_exists(key)
                    assert await storage.delete_file(key) is existed
                    urls = {k: u for k, u in urls.items() if k[0] != key}
                elif name == "exists":
                    assert await storage.file_exists(key) is await truth.file_exists(key)
                elif name == "info":
                    try:
                        expected = await truth.get_file_info(key)
                    except ObjectNotFoundError:
                        with pytest.raises(ObjectNotFoundError):
                            await storage.get_file_info(key)
                    else:
                        assert await storage.get_file_info(key) == expected
                else:
                    url = await storage.generate_presigned_url(key, step[2])
                    assert truth.verify_presigned_url(url) == key
                    previous = urls.setdefault((key, step[2] or 3600), url)
                    assert url == previous  # reused until this process wrote the key

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(directory))


@pytest.mark.asyncio
async def test_a_lookup_racing_an_upload_is_not_cached(registry: PluginRegistry) -> None:
    """The storage answers a lookup with the old object, then the upload of a new one
    completes before the lookup's answer is stored: that answer must not be cached."""
    async with cached(registry) as storage:
        inner = unwrap(storage)
        await storage.upload_file(b"old", object_key="k")
        inner.script("info_read", 0.2)  # the lookup has read "old", answers late
        lookup = asyncio.create_task(storage.get_file_info("k"))
        await asyncio.sleep(0.05)
        new = await storage.upload_file(b"new!", object_key="k")
        assert (await lookup).file_size == 3  # it started before the upload ended
        assert (await storage.get_file_info("k")).checksum == new.checksum

        # The same for a delete, and for file_exists.
        inner.script("info_read", 0.2)
        lookup_exists = asyncio.create_task(storage.file_exists("k"))
        await asyncio.sleep(0.05)
        assert await storage.delete_file("k") is True
        assert await lookup_exists is True
        assert await storage.file_exists("k") is False


@pytest.mark.asyncio
async def test_an_upload_starting_while_a_lookup_is_stored_removes_it(
    registry: PluginRegistry,
) -> None:
    """A slow cache: the lookup's set lands after the upload's invalidation; the layer
    sees the write began meanwhile and deletes what it stored."""
    async with cached(registry, cache="scripted") as storage:
        cache = layer_of(storage).cache
        await storage.upload_file(b"old", object_key="k")
        cache.set_delay = 0.2  # type: ignore[union-attr]
        lookup = asyncio.create_task(storage.get_file_info("k"))
        await asyncio.sleep(0.05)  # the lookup is storing "old" now
        cache.set_delay = 0.0  # type: ignore[union-attr]
        new = await storage.upload_file(b"new!", object_key="k")
        await lookup
        assert (await storage.get_file_info("k")).checksum == new.checksum


# -- presigned URLs ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_presigned_url_is_reused_while_half_its_lifetime_remains(
    registry: PluginRegistry,
) -> None:
    async with cached(registry) as storage:
        inner, layer = unwrap(storage), layer_of(storage)
        clock = layer.clock = Clock(1_000.0)
        url = await storage.generate_presigned_url("a", 100)
        clock.now = 1_050.0  # exactly half remains
        assert await storage.generate_presigned_url("a", 100) == url
        assert await storage.generate_presigned_url(object_key="a", expires_in=100) == url
        assert inner.calls["presign"] == 1
        clock.now = 1_050.5  # less than half remains: signed again
        await storage.generate_presigned_url("a", 100)
        assert inner.calls["presign"] == 2

        # Each (method, expires_in) is its own URL; None is the presign_ttl setting.
        for args in (("a", 100, "PUT"), ("a", 200), ("a", None), ("a", 3600), ("b", 100)):
            await storage.generate_presigned_url(*args)
            await storage.generate_presigned_url(*args)
        assert inner.calls["presign"] == 6

        # This process's upload and delete of the key drop its URLs.
        await storage.upload_file(b"x", object_key="a")
        await storage.generate_presigned_url("a", 3600)
        await storage.delete_file("a")
        await storage.generate_presigned_url("a", 3600)
        await storage.generate_presigned_url("b", 100)
        assert inner.calls["presign"] == 8


@pytest.mark.asyncio
async def test_presign_and_info_can_be_turned_off(registry: PluginRegistry) -> None:
    async with cached(registry, presign=False) as storage:
        await storage.generate_presigned_url("a", 100)
        await storage.generate_presigned_url("a", 100)
        assert unwrap(storage).calls["presign"] == 2
    async with cached(registry, info=False) as storage:
        await storage.file_exists("a")
        await storage.file_exists("a")
        assert unwrap(storage).calls["info"] == 2


# -- failing caches -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failing_cache_never_fails_a_storage_operation(
    registry: PluginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async with cached(registry, cache="scripted") as storage:
        layer = layer_of(storage)
        layer.cache.failing = {"get", "set", "delete"}  # type: ignore[union-attr]
        stored = await storage.upload_file(b"abc", object_key="k")
        assert (await storage.get_file_info("k")).checksum == stored.checksum
        assert await storage.file_exists("k") is True
        assert await storage.file_exists("nope") is False
        assert unwrap(storage).verify_presigned_url(await storage.generate_presigned_url("k"))
        assert await storage.delete_file("k") is True
        assert await storage.file_exists("k") is False
        assert layer.errors >= 5 and layer.hits == 0
    assert "could not read the cache (CacheUnavailableError" in caplog.text


@pytest.mark.asyncio
async def test_a_failed_invalidation_bypasses_the_cache_for_that_key(
    registry: PluginRegistry,
) -> None:
    """The cache still holds the old info after a failed delete: this process must not
    serve it, and uses the cache again once an invalidation succeeds."""
    async with cached(registry, cache="scripted") as storage:
        layer, inner = layer_of(storage), unwrap(storage)
        cache = layer.cache
        await storage.upload_file(b"old", object_key="k")
        await storage.get_file_info("k")  # cached
        cache.failing = {"delete"}  # type: ignore[union-attr]
        new = await storage.upload_file(b"new!", object_key="k")
        for _ in range(2):
            assert (await storage.get_file_info("k")).checksum == new.checksum
        assert await cache.get(layer._entry("info", "k")) is not None  # type: ignore[union-attr]
        cache.failing = set()  # type: ignore[union-attr]
        calls = inner.calls["info"]
        assert (await storage.get_file_info("k")).checksum == new.checksum
        assert (await storage.get_file_info("k")).checksum == new.checksum
        assert inner.calls["info"] == calls + 1  # cached again


@pytest.mark.asyncio
async def test_a_failed_invalidation_is_forgotten_once_the_entries_expired(
    registry: PluginRegistry,
) -> None:
    async with cached(registry, cache="scripted", ttl=10) as storage:
        layer = layer_of(storage)
        clock = layer.monotonic = Clock(0.0)
        layer.cache.failing = {"delete"}  # type: ignore[union-attr]
        await storage.delete_file("k")
        assert not await layer._usable("k")
        clock.now = 10.0
        assert await layer._usable("k")


redis_testing = pytest.importorskip("voice_infra_redis.testing")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    if not redis_testing.redis_server_available():  # pragma: no cover - machine-dependent
        pytest.skip("redis-server is not installed")
    server = redis_testing.RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def truth_key(storage: Any, url: str) -> str:
    return str(unwrap(storage).verify_presigned_url(url))


def redis_cached(url: str, path: Path, **layer: Any) -> Any:
    cache = {"backend": "redis", "url": url, "socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    storage = {"backend": "fs", "path": str(path), "layers": [{"name": "cache", **layer}]}
    return vi.create_storage(vi.Settings.from_keywords(storage=storage, cache=cache))


@pytest.mark.asyncio
async def test_a_stopped_redis_cache_never_fails_storage(redis: Any, tmp_path: Path) -> None:
    async with redis_cached(redis.url, tmp_path / "store") as storage:
        await storage.upload_file(b"abc", object_key="k")
        assert await storage.file_exists("k") is True
        await storage.generate_presigned_url("k", 600)
        redis.stop()
        started = time.perf_counter()
        new = await storage.upload_file(b"new!", object_key="k")
        assert (await storage.get_file_info("k")).checksum == new.checksum
        assert truth_key(storage, await storage.generate_presigned_url("k", 600)) == "k"
        assert await storage.delete_file("k") is True
        assert await storage.file_exists("k") is False
        assert time.perf_counter() - started < 10 * 0.3  # every wait bounded
        assert layer_of(storage).errors > 0


@pytest.mark.asyncio
async def test_processes_share_entries_and_invalidations(redis: Any, tmp_path: Path) -> None:
    """Two stacks configured alike (two processes) share a Redis cache: what one looked
    up, the other is served; one's delete removes the shared entries at once; a write
    that bypasses the layer (another tool) is seen only after ttl."""
    store = tmp_path / "store"
    async with (
        redis_cached(redis.url, store, ttl=0.5) as first,
        redis_cached(redis.url, store, ttl=0.5) as second,
    ):
        await first.upload_file(b"abc", object_key="k")
        info = await first.get_file_info("k")
        assert await second.get_file_info("k") == info
        assert layer_of(second).hits == 1
        url = await first.generate_presigned_url("k", 600)
        assert await second.generate_presigned_url("k", 600) == url
        await first.delete_file("k")
        assert await second.file_exists("k") is False
        assert layer_of(second).hits == 2  # the URL; the info entry was gone

        await unwrap(first).upload_file(b"x", object_key="k")  # not through a layer
        assert await second.file_exists("k") is False  # stale, until ttl
        await asyncio.sleep(0.6)
        assert await second.file_exists("k") is True
    # Another store (another path, so other settings) never meets these entries.
    async with redis_cached(redis.url, tmp_path / "other") as other:
        await other.file_exists("k")
        assert layer_of(other).hits == 0


# -- configuration and hooks ------------------------------------------------------------


def test_the_layer_is_refused_outside_storage(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError, match=r"\[rate_limit\].*'cache'.*storage"):
        build(registry, "rate_limiter", backend="memory", policies="1/minute", layers=["cache"])


@pytest.mark.parametrize(
    ("layer", "cache", "message"),
    [
        ({"ttl": "2d"}, {}, "ttl"),
        ({"ttl": 0}, {}, "ttl"),
        ({"info": False, "presign": False}, {}, "cache nothing"),
        (
            {"ttl": "5m"},
            {"max_ttl": 60, "default_ttl": 60},
            r"longer than the \[cache\] section's max_ttl",
        ),
        ({"tll": 3}, {}, "did you mean 'ttl'"),
        ({}, {"max_entries": 0}, r"\[cache\]"),
    ],
)
def test_invalid_options_are_config_errors(
    registry: PluginRegistry, layer: dict[str, Any], cache: dict[str, Any], message: str
) -> None:
    settings = vi.Settings.from_keywords(
        storage={"backend": "memory", "layers": [{"name": "cache", **layer}]},
        cache={"backend": "memory", **cache},
    )
    with pytest.raises(ConfigError, match=message):
        vi.create_storage(settings, registry=registry)


@pytest.mark.asyncio
async def test_the_cache_comes_from_the_cache_section_and_closes_with_storage(
    registry: PluginRegistry,
) -> None:
    storage = cached(registry, cache="scripted", ttl=7)
    layer = layer_of(storage)
    assert isinstance(layer.cache, layer_fakes.ScriptedCache)
    assert layer.settings == CacheLayerSettings(ttl=7)
    async with storage:
        assert layer.cache._opened
    assert not layer.cache._opened


@pytest.mark.asyncio
async def test_stacks_over_different_stores_never_share_entries() -> None:
    cache = MemoryCache(MemoryCacheSettings())

    def storage(bucket: str) -> Any:
        inner = vi.create_storage(vi.Settings(storage={"backend": "memory", "bucket": bucket}))
        return wrap(inner, [CacheLayer(cache=cache)])

    one, two = storage("one"), storage("two")
    await one.upload_file(b"abc", object_key="k")
    assert await one.file_exists("k") is True
    assert await two.file_exists("k") is False
    assert cache.entries == 2


@pytest.mark.asyncio
async def test_layer_hooks_configure_open_and_aclose(registry: PluginRegistry) -> None:
    settings = vi.Settings.from_keywords(
        storage={"backend": "memory", "layers": [{"name": "journal", "tag": "t"}]}
    )
    storage = vi.create_storage(settings, registry=registry)
    assert [("t", "configure", "storage", settings)] == layer_fakes.LIFECYCLE
    async with storage:
        assert layer_fakes.LIFECYCLE[-1] == ("t", "open")
    assert layer_fakes.LIFECYCLE[-1] == ("t", "aclose")
