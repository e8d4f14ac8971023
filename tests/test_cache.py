"""The cache kind: its settings, checks, the memory backend's LRU and TTL (against a
reference model, with an injected clock), configuration, the kit fixtures and doctor."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.backends.memory_cache import MemoryCache, MemoryCacheSettings
from voice_infra.cache import ttl_milliseconds, validate_cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock, **options: Any) -> MemoryCache:
    return MemoryCache(MemoryCacheSettings(**options), clock=clock)


def test_create_cache_builds_the_configured_backend() -> None:
    settings = vi.Settings.from_keywords(cache={"max_entries": 5})
    assert settings.cache.backend == "memory"  # the default, as a typed attribute
    assert isinstance(settings.cache, vi.CacheSection)
    cache = vi.create_cache(settings)
    assert isinstance(cache, MemoryCache) and isinstance(cache, vi.CacheBackend)
    assert cache.settings.max_entries == 5 and cache.backend_name == "memory"
    assert cache.capabilities == frozenset() and cache.capabilities_declared
    assert isinstance(vi.create_backend("cache", settings), MemoryCache)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"default_ttl": 100, "max_ttl": 10}, "default_ttl .100 s. is longer than max_ttl"),
        ({"default_ttl": 0}, "default_ttl"),
        ({"max_ttl": 400 * 86400}, "max_ttl"),
        ({"max_value_size": "1GiB"}, "512MiB"),
        ({"max_value_size": "2MiB", "max_bytes": "1MiB"}, "larger than max_bytes"),
        ({"max_entries": 0}, "max_entries"),
        ({"key_prefix": "a{b}"}, "no braces"),
        ({"key_prefix": ""}, "1-64 characters"),
        ({"max_entires": 3}, "did you mean 'max_entries'"),
    ],
)
def test_invalid_settings_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(vi.ConfigError, match=message) as caught:
        vi.create_cache(vi.Settings.from_keywords(cache=options))
    assert "[cache]" in str(caught.value)


def test_cache_section_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voice_infra.toml").write_text('[cache]\nbackend = "memory"\nmax_entries = 7\n')
    monkeypatch.setenv("VOICE_INFRA_CACHE__DEFAULT_TTL", "12.5")
    settings = vi.Settings()
    assert settings.cache.options() == {"max_entries": 7, "default_ttl": "12.5"}
    assert settings.origin("cache.default_ttl") == "environment"
    cache = vi.create_cache(settings)
    assert cache.settings.default_ttl == 12.5


@given(st.floats(min_value=1e-9, max_value=366 * 86400.0, allow_nan=False))
def test_ttl_milliseconds_is_never_shorter_and_at_most_a_millisecond_longer(ttl: float) -> None:
    ms = ttl_milliseconds(ttl)
    assert ms >= 1
    assert ms / 1000 >= ttl - 1e-9 * max(1.0, ttl)  # never (beyond float noise) shorter
    assert ms / 1000 < max(ttl, 0.001) + 0.001


def test_ttl_milliseconds_keeps_exact_milliseconds() -> None:
    assert [ttl_milliseconds(t) for t in (0.2, 0.001, 1.0, 0.0001, 2.0005)] == [
        200,
        1,
        1000,
        1,
        2001,
    ]


@given(st.text(min_size=1, max_size=300))
def test_key_check_accepts_exactly_the_safe_short_keys(key: str) -> None:
    from voice_infra.text import first_unsafe_character

    safe = first_unsafe_character(key) is None
    short = safe and len(key.encode("utf-8")) <= 1024
    if safe and short:
        assert validate_cache_key(key) == key
    else:
        with pytest.raises(vi.InvalidCacheKeyError):
            validate_cache_key(key)


# -- the memory backend against a reference model -------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 7),
            st.binary(max_size=40),
            st.sampled_from([0.5, 1.0, 3.0, 10.0]),
        ),
        st.tuples(st.just("get"), st.integers(0, 7)),
        st.tuples(st.just("delete"), st.integers(0, 7)),
        st.tuples(st.just("tick"), st.sampled_from([0.25, 0.5, 1.0, 2.5])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS, st.integers(1, 5), st.integers(40, 120))
def test_memory_cache_is_an_lru_with_ttl(
    operations: list[tuple[Any, ...]], max_entries: int, max_bytes: int
) -> None:
    """Every get answers as a plain LRU model with per-entry expiry does, and the bounds
    hold after every operation."""
    clock = Clock()
    cache = _cache(clock, max_entries=max_entries, max_bytes=max_bytes, max_value_size=40)
    model: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def run() -> None:
        for operation in operations:
            name = operation[0]
            if name == "tick":
                clock.now += operation[1]
                continue
            key = f"k{operation[1]}"
            entry = model.get(key)
            live = entry is not None and clock.now < entry[1]
            if name == "set":
                value, ttl = operation[2], operation[3]
                model.pop(key, None)
                model[key] = (value, clock.now + ttl)
                while (
                    len(model) > max_entries or sum(len(v) for v, _ in model.values()) > max_bytes
                ):
                    model.popitem(last=False)
                await cache.set(key, value, ttl)
            elif name == "get":
                got = await cache.get(key)
                if live:
                    assert entry is not None and got == entry[0]
                    model.move_to_end(key)
                else:
                    assert got is None
                    model.pop(key, None)
            else:
                assert await cache.delete(key) is live
                model.pop(key, None)
            assert cache.entries <= max_entries and cache.bytes_used <= max_bytes
            assert cache.bytes_used == sum(len(v) for v, _ in cache._entries.values())
            assert list(cache._entries) == list(model)

    asyncio.run(run())


@pytest.mark.asyncio
async def test_expiry_is_checked_on_read_with_the_injected_clock() -> None:
    clock = Clock()
    cache = _cache(clock)
    await cache.set("a", b"1", 10)
    clock.now += 9.999
    assert await cache.get("a") == b"1"
    clock.now += 0.001
    assert await cache.get("a") is None
    assert cache.entries == 0 and cache.bytes_used == 0  # dropped when found expired


@pytest.mark.asyncio
async def test_least_recently_used_is_evicted_first() -> None:
    clock = Clock()
    cache = _cache(clock, max_entries=3)
    for key in "abc":
        await cache.set(key, key.encode(), 60)
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("d", b"d", 60)
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]


@pytest.mark.asyncio
async def test_byte_bound_evicts_as_many_as_needed() -> None:
    cache = _cache(Clock(), max_bytes=100, max_value_size=100)
    for key in "abcde":
        await cache.set(key, b"x" * 20, 60)
    await cache.set("big", b"y" * 100, 60)
    assert cache.entries == 1 and cache.bytes_used == 100
    assert await cache.get("big") == b"y" * 100
    assert [await cache.get(k) for k in "abcde"] == [None] * 5


@pytest.mark.asyncio
async def test_every_operation_is_constant_time() -> None:
    """A full cache of 100,000 entries answers as fast as one of 100 (O(1), not a scan)."""
    import time

    async def per_operation(size: int) -> float:
        cache = _cache(Clock(), max_entries=size)
        for i in range(size):
            await cache.set(f"k{i}", b"v", 60)
        started = time.perf_counter()
        for i in range(5000):
            await cache.set(f"n{i}", b"v", 60)  # each evicts one
            await cache.get(f"k{i}")
            await cache.delete(f"n{i - 1}")
        return (time.perf_counter() - started) / 5000

    # The best of three runs each: a busy shared machine only ever slows a run down.
    small = min([await per_operation(100) for _ in range(3)])
    large = min([await per_operation(100_000) for _ in range(3)])
    assert large < small * 5, (small, large)


@pytest.mark.asyncio
async def test_the_kit_fixtures_build_the_cache(voice_backends: Any, voice_cache: Any) -> None:
    assert isinstance(voice_cache, MemoryCache) and voice_cache._opened
    other = await voice_backends("cache")
    await other.set("k", b"v")
    assert await other.get("k") == b"v" and await voice_cache.get("k") is None


def test_doctor_probes_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from voice_infra.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "cache: memory" in out
    for step in ("cache set", "cache get", "cache delete"):
        assert f"ok    {step}" in out


def test_doctor_reports_a_cache_that_loses_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from voice_infra.cli import main

    async def forget(self: MemoryCache, key: str, value: bytes, ttl: float) -> None:
        return None

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(MemoryCache, "_set", forget)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  cache get: the entry just set is missing" in out
    assert "FAIL  cache delete: delete found no entry" in out
