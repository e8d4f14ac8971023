"""Rate-limit keys to Redis keys: injective for every string, one slot per identity, and
unchanged for the keys earlier releases already stored unambiguously."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot
from voice_infra_redis.backend import RedisRateLimiter, identity_tag
from voice_infra_redis.testing import RedisCluster3, RedisServer

import voice_infra as vi

POLICIES = ["3/second", "2/minute", "10/hour"]


def _limiter(algorithm: str, prefix: str = "vi") -> RedisRateLimiter:
    """A limiter that is never opened: building keys needs no server."""
    limiter = vi.create_rate_limiter(
        vi.Settings(rate_limit={
            "backend": "redis", "policies": POLICIES, "algorithm": algorithm, "key_prefix": prefix,
        })
    )  # fmt: skip
    assert isinstance(limiter, RedisRateLimiter)
    return limiter


LOG, COUNTER = _limiter("sliding_log"), _limiter("sliding_window_counter")


def _all_keys(key: str) -> set[str]:
    """Every Redis key of ``key``: all policies, both algorithms (what clear deletes)."""
    return set(LOG.redis_keys(key)) | set(COUNTER.redis_keys(key))


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


# Pieces that matter to the encoding (braces, '#', '%', the escapes, separators) mixed
# with any Unicode scalar value.
_PIECES = [*"{}#%:27D5a/ ", "%7D", "%25", "}}", "#%", "ü", "€", "\u00e9", "😀"]
keys = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.characters(exclude_categories=["Cs"])),
    min_size=1,
    max_size=16,
).map("".join)


@st.composite
def key_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two different keys, the second often built to look like an encoding of the first
    (by this release's rule or the SHA-1 rule of earlier ones)."""
    first = draw(keys)
    lookalikes = [
        "#" + _sha1(first),
        identity_tag(first),
        "#" + first,
        first.replace("}", "%7D"),
        first.replace("%", "%25").replace("}", "%7D"),
        first.removeprefix("#"),
        "#" + first.replace("%", "%25"),
    ]
    second = draw(st.one_of(keys, st.sampled_from(lookalikes)))
    assume(first != second)
    return first, second


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(key_pairs())
def test_distinct_keys_never_share_a_redis_key(pair: tuple[str, str]) -> None:
    first, second = pair
    assert identity_tag(first) != identity_tag(second)
    assert not _all_keys(first) & _all_keys(second)


@settings(max_examples=400)
@given(keys)
def test_every_key_of_an_identity_is_in_one_slot(key: str) -> None:
    tag = identity_tag(key)
    assert tag and "}" not in tag  # the hash tag is exactly the whole tag
    for limiter in (LOG, COUNTER):
        assert limiter.key_head(key) == "vi:{" + tag + "}"
        assert len({key_slot(k.encode()) for k in _all_keys(key)}) == 1


@settings(max_examples=400)
@given(keys)
def test_unambiguous_keys_keep_the_redis_keys_of_earlier_releases(key: str) -> None:
    """Keys without '}' that do not start with '#' keep their stored counts on upgrade."""
    assume("}" not in key and not key.startswith("#"))
    assert LOG.redis_keys(key) == [f"vi:{{{key}}}:1s", f"vi:{{{key}}}:60s", f"vi:{{{key}}}:3600s"]


def test_examples_of_the_encoding() -> None:
    assert identity_tag("user:42") == "user:42"
    assert identity_tag("a}b") == "#a%7Db"
    assert identity_tag("#a%7Db") == "##a%257Db"
    assert identity_tag("%}") == "#%25%7D"
    assert identity_tag("}") == "#%7D"


# -- the same, against a real server ------------------------------------------------------

# The pair of the issue (a key holding '}' and the literal '#<its SHA-1>'), and pairs that
# look like each other under this release's escaping.
COLLIDING = [
    ("a}", "#" + _sha1("a}")),
    ("a}b", "#a%7Db"),
    ("#x", "x"),
    ("%}", "#%25%7D"),
]

OpenLimiter = Callable[..., Awaitable[RedisRateLimiter]]


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
@pytest.mark.parametrize(("first", "second"), COLLIDING)
async def test_lookalike_keys_have_separate_counts(
    open_redis_limiter: OpenLimiter,
    redis_server: RedisServer,
    key_prefix: str,
    algorithm: str,
    first: str,
    second: str,
) -> None:
    limiter = await open_redis_limiter(
        url=redis_server.url, policies=["2/minute"], key_prefix=key_prefix, algorithm=algorithm
    )
    await use_both(limiter, first, second)
    # What the single-node path wrote is exactly what redis_keys names.
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        stored = {k.decode() async for k in raw.scan_iter(match=f"{key_prefix}:*")}
    finally:
        await raw.aclose()
    assert stored == {*limiter.redis_keys(first), *limiter.redis_keys(second)}
    await clear_one_then_the_other(limiter, first, second)


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
@pytest.mark.parametrize(("first", "second"), COLLIDING)
async def test_lookalike_keys_have_separate_counts_on_a_cluster(
    open_redis_limiter: OpenLimiter,
    cluster: RedisCluster3,
    key_prefix: str,
    algorithm: str,
    first: str,
    second: str,
) -> None:
    limiter = await open_redis_limiter(
        url=cluster.url, cluster=True, policies=["2/minute"], key_prefix=key_prefix,
        algorithm=algorithm,
    )  # fmt: skip
    await use_both(limiter, first, second)
    stored = set()
    for server in cluster.servers:
        stored |= set(server.cli("--scan", "--pattern", f"{key_prefix}:*").split())
    assert stored == {*limiter.redis_keys(first), *limiter.redis_keys(second)}
    await clear_one_then_the_other(limiter, first, second)


async def use_both(limiter: RedisRateLimiter, first: str, second: str) -> None:
    """``first`` uses its limit (2) up; ``second`` still has its own count."""
    assert [await limiter.is_allowed(first) for _ in range(3)] == [True, True, False]
    info = await limiter.check_rate_limit(second)
    assert info.allowed and not info.degraded and info.remaining == 1


async def clear_one_then_the_other(limiter: RedisRateLimiter, first: str, second: str) -> None:
    """Clearing ``second`` leaves ``first`` limited, and the other way round."""
    await limiter.clear_user_limit(second)
    assert not await limiter.is_allowed(first)
    assert await limiter.get_remaining_requests(second) == 2
    assert await limiter.is_allowed(second)
    await limiter.clear_user_limit(first)
    assert await limiter.get_remaining_requests(first) == 2
    assert await limiter.get_remaining_requests(second) == 1
