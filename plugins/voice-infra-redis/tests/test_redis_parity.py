"""Differential test: the Lua scripts decide exactly like the memory backend.

Each step runs the script directly (to learn Redis' ``now`` from its reply), then the
memory backend with its clock set to that instant, and compares the two decisions.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from voice_infra_redis.backend import RedisRateLimiter
from voice_infra_redis.testing import RedisServer

import voice_infra as vi
from voice_infra.backends.memory import MemoryRateLimiter, MemoryRateLimiterSettings

POLICIES = ["3/second", "5 per 2 seconds"]


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window_counter"])
async def test_same_decisions_as_memory(
    redis_server: RedisServer, key_prefix: str, algorithm: str
) -> None:
    redis_limiter = vi.create_rate_limiter(
        vi.Settings(
            rate_limit={"backend": "redis", "url": redis_server.url, "policies": POLICIES,
                        "algorithm": algorithm, "key_prefix": key_prefix}
        )
    )  # fmt: skip
    assert isinstance(redis_limiter, RedisRateLimiter)
    now = 0.0
    memory = MemoryRateLimiter(
        MemoryRateLimiterSettings(policies=POLICIES, algorithm=algorithm),  # type: ignore[arg-type]
        clock=lambda: now,
    )
    rng = random.Random(20261128)
    compared: list[tuple[Any, ...]] = []
    async with redis_limiter, memory:
        for step in range(40):
            peek = rng.random() < 0.25
            cost = 1 if peek else rng.choice([1, 1, 1, 2, 3])
            reply = await redis_limiter._run("p", cost, "1" if peek else "0", f"parity{step}")
            now = reply[1] / 1e6
            from_redis = redis_limiter._to_info(reply)
            if peek:
                from_memory = await memory.get_rate_limit_info("p")
            else:
                from_memory = await memory.check_rate_limit("p", cost)
            context = (step, cost, peek, from_redis, from_memory)
            assert from_redis.allowed == from_memory.allowed, context
            assert from_redis.policy == from_memory.policy, context
            assert from_redis.remaining == from_memory.remaining, context
            assert from_redis.retry_after == pytest.approx(from_memory.retry_after, abs=2e-6)
            assert from_redis.reset_at.timestamp() == pytest.approx(
                from_memory.reset_at.timestamp(), abs=2e-6
            ), context
            compared.append(context)
            await asyncio.sleep(rng.choice([0.0, 0.01, 0.05, 0.1, 0.3]))
    # The walk saw both answers, so the comparison covered denials too.
    assert {c[3].allowed for c in compared} == {True, False}
