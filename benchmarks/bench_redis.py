"""Benchmark of the Redis rate limiter against its floor and its alternatives.

Usage::

    .venv/bin/python benchmarks/bench_redis.py [--url redis://127.0.0.1:6379/0]

One run against one Redis, cases interleaved (each repetition runs every case in turn,
so drifts in machine load hit all of them alike), medians over the repetitions:

- floor: redis-py asyncio ``PING`` (one round trip doing nothing);
- ``check_rate_limit`` of this backend (sliding log, one EVALSHA);
- the same EVALSHA sent through redis-py's client and pool (for reference; redis-py
  parses with hiredis when ``hiredis`` is installed, which the header line says);
- the same script through valkey-glide's ``invoke_script`` (measured when
  ``valkey-glide`` is installed; TCP URLs only);
- the seed-style pipeline: ZREMRANGEBYSCORE + ZADD + ZCARD + EXPIRE in MULTI/EXEC;
- ``limits`` MovingWindow ``hit()`` + ``get_window_stats()`` (needs ``pip install limits``,
  the plugin's ``bench`` extra);
- throughput with 50 concurrent tasks for this backend, the pipeline, redis-py's EVALSHA
  and glide's (when installed).

Keys live under a dedicated prefix that is deleted at the end. Needs
``pip install -e plugins/voice-infra-redis[bench]``; ``pip install hiredis valkey-glide``
adds their rows (neither is a dependency of the plugin).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

import voice_infra as vi

PREFIX = f"vibench{uuid.uuid4().hex[:8]}"
POLICY = "1000000/minute"  # never denies: every case does the same work each call
IDENTITIES = 64

Op = Callable[[int], Awaitable[object]]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


async def _latency(op: Op, calls: int) -> float:
    """Median latency of ``calls`` sequential calls."""
    samples = []
    clock = time.perf_counter
    for i in range(calls):
        start = clock()
        await op(i)
        samples.append(clock() - start)
    return statistics.median(samples)


async def _throughput(op: Op, calls: int, tasks: int) -> float:
    """Decisions per second with ``tasks`` concurrent tasks sharing ``calls`` calls."""
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return calls / (time.perf_counter() - start)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per case")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--concurrent-calls", type=int, default=10_000)
    args = parser.parse_args()

    client = aioredis.Redis.from_url(args.url, max_connections=args.tasks + 10)
    limiter = vi.create_rate_limiter(
        vi.Settings(
            rate_limit={
                "backend": "redis", "url": args.url, "policies": [POLICY],
                "key_prefix": PREFIX, "pool_size": args.tasks + 10, "socket_timeout": 2.0,
            }
        )
    )  # fmt: skip
    window_ms = 60_000
    member = iter(range(10**12))

    async def ping(i: int) -> object:
        return await client.ping()

    async def check(i: int) -> object:
        return await limiter.check_rate_limit(f"user:{i % IDENTITIES}")

    async def pipeline(i: int) -> object:
        # The seed's approach: four commands in MULTI, decided in Python afterwards.
        key = f"{PREFIX}:pipe:{i % IDENTITIES}"
        now = time.time() * 1000
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, 0, now - window_ms)
            pipe.zadd(key, {f"{now}:{next(member)}": now})
            pipe.zcard(key)
            pipe.expire(key, 60)
            _, _, count, _ = await pipe.execute()
        return count <= 1_000_000

    log_script = resources.files("voice_infra_redis").joinpath("sliding_log.lua").read_text()
    sha = await client.script_load(log_script)

    async def redis_py_evalsha(i: int) -> object:
        # The same script through redis-py's pool: what the transport choice saves.
        key = f"{PREFIX}:{{evalsha{i % IDENTITIES}}}:60s"
        return await client.evalsha(sha, 1, key, 1, "0", f"m{next(member)}", 10**6, 60 * 10**6)

    cases: dict[str, Op] = {
        "PING (floor)": ping,
        "check_rate_limit": check,
        "redis-py EVALSHA": redis_py_evalsha,
        "pipeline": pipeline,
    }
    glide_client = await _glide_client(args.url)
    if glide_client is not None:
        from glide import Script

        glide_script = Script(log_script)  # type: ignore[no-untyped-call]

        async def glide_evalsha(i: int) -> object:
            # The same script through valkey-glide (Rust core, EVALSHA with a fallback
            # to EVAL on NOSCRIPT).
            key = f"{PREFIX}:{{glide{i % IDENTITIES}}}:60s"
            return await glide_client.invoke_script(
                glide_script,
                keys=[key],
                args=["1", "0", f"m{next(member)}", str(10**6), str(60 * 10**6)],
            )

        cases["glide invoke_script"] = glide_evalsha
    limits_storage = None
    try:
        import limits
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter
    except ImportError:
        print("limits is not installed (pip install limits): its case is skipped")
    else:
        limits_storage = RedisStorage(args.url, implementation="redispy")
        moving = MovingWindowRateLimiter(limits_storage)
        item = limits.parse(POLICY)

        async def limits_case(i: int) -> object:
            identity = f"{PREFIX}:limits:{i % IDENTITIES}"
            allowed = await moving.hit(item, identity)
            stats = await moving.get_window_stats(item, identity)
            return allowed, stats

        cases["limits MovingWindow"] = limits_case

    try:
        await limiter.__aenter__()
        for op in cases.values():  # warm-up: connections, script cache, imports
            for i in range(200):
                await op(i)
        latency: dict[str, list[float]] = {name: [] for name in cases}
        throughput: dict[str, list[float]] = {
            name: []
            for name in ("check_rate_limit", "pipeline", "redis-py EVALSHA", "glide invoke_script")
            if name in cases
        }
        for _ in range(args.repetitions):
            for name, op in cases.items():
                latency[name].append(await _latency(op, args.calls))
            for name in throughput:
                throughput[name].append(
                    await _throughput(cases[name], args.concurrent_calls, args.tasks)
                )
    finally:
        await limiter.aclose()
        keys = [key async for key in client.scan_iter(match=f"{PREFIX}*", count=1000)]
        limits_keys = [key async for key in client.scan_iter(match="LIMITS:*" + PREFIX + "*")]
        for chunk in range(0, len(keys + limits_keys), 500):
            await client.delete(*(keys + limits_keys)[chunk : chunk + 500])
        await client.aclose()
        if glide_client is not None:
            await glide_client.close()
        if limits_storage is not None:
            await _close_limits(limits_storage)

    medians = {name: statistics.median(values) for name, values in latency.items()}
    floor = medians["PING (floor)"]
    info = await _server_version(args.url)
    print(
        f"# bench_redis {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{_cpus()} CPUs, Python {platform.python_version()}, redis-py {_version('redis')} "
        f"({_parser()}), glide {_version('valkey-glide')}, Redis {info}"
    )
    print(f"# {args.repetitions} repetitions x {args.calls} sequential calls; medians")
    for name, value in medians.items():
        print(f"{name:24s} {_us(value)}  {value / floor:5.2f}x floor")
    check_latency = medians["check_rate_limit"]
    print(f"{'pipeline / check':24s} {medians['pipeline'] / check_latency:5.2f}x")
    if "limits MovingWindow" in medians:
        print(f"{'limits / check':24s} {medians['limits MovingWindow'] / check_latency:5.2f}x")
    rates = {name: statistics.median(values) for name, values in throughput.items()}
    for name, value in rates.items():
        print(f"{name + f' x{args.tasks} tasks':24s} {value:8.0f} decisions/s")
    print(f"{'check / pipeline (tput)':24s} {rates['check_rate_limit'] / rates['pipeline']:5.2f}x")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _parser() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis parser" if HIREDIS_AVAILABLE else "pure-Python parser"


async def _glide_client(url: str) -> Any:
    """A valkey-glide client for ``url`` when glide is installed and the URL is TCP."""
    try:
        from glide import GlideClient, GlideClientConfiguration, NodeAddress
    except ImportError:
        print("valkey-glide is not installed (pip install valkey-glide): its case is skipped")
        return None
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.password:
        print("glide case: only plain redis:// URLs without a password; skipped")
        return None
    config = GlideClientConfiguration(
        [NodeAddress(parts.hostname or "127.0.0.1", parts.port or 6379)],
        database_id=int(parts.path.strip("/") or 0),
        request_timeout=2000,
    )
    return await GlideClient.create(config)


async def _server_version(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        return str((await client.info("server"))["redis_version"])
    finally:
        await client.aclose()


async def _close_limits(storage: object) -> None:
    # limits' async storage keeps a redis-py client; close it to leave no warnings behind.
    bridge = getattr(storage, "bridge", None)
    for candidate in (getattr(bridge, "storage", None), getattr(storage, "storage", None)):
        close = getattr(candidate, "aclose", None)
        if close is not None:
            await close()
            return


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
