"""Benchmark of the layers (issue 11): what a stack costs, and what deny_cache saves.

Usage::

    .venv/bin/python benchmarks/bench_layers.py [--rounds 11]

In one run, against servers of its own (moto's S3 server in a child process, a
``redis-server`` on a free loopback port), calls interleaved bare/layered (ABAB..., the
side going first swapping every round) so drifts in load hit both alike; medians:

- S3 put+get 10 KiB (``upload_file`` + ``download_file``): the bare ``s3`` backend
  against the same inside ``["metrics", "retry", "breaker", "timeout"]``; target <= 1.05;
- Redis decision (``check_rate_limit``, policy ``1000000/minute`` so nothing is denied,
  64 keys in turn): bare against ``["metrics"]``; target <= 1.05;
- a denied user's decision: through ``["deny_cache"]`` (answered locally) against the
  bare limiter's Redis round trip; target: at least 10x faster;
- a presigned GET URL through ``["cache"]`` (``memory`` cache; the URL is reused while
  half its lifetime remains) against signing it, on ``fs`` (HMAC) and on ``s3``
  (SigV4, botocore); target on S3: at least 10x faster (fs signs with one HMAC, about
  as cheap as a cache hit: a reference row).

The metrics go to a registry of the benchmark's own. Needs the dev extra and the S3 and
Redis plugins with their test extras (moto, redis-server).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_s3 import BUCKET, moto_server
from prometheus_client import CollectorRegistry
from voice_infra_redis.testing import RedisServer

import voice_infra as vi
from voice_infra.layers import wrap
from voice_infra.layers.breaker import BreakerLayer
from voice_infra.layers.metrics import MetricsLayer
from voice_infra.layers.retry import RetryLayer
from voice_infra.layers.timeout import TimeoutLayer

Op = Callable[[int], Awaitable[object]]
PAYLOAD = bytes(range(256)) * 40  # 10 KiB


async def _interleaved(a: Op, b: Op, rounds: int, calls: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` (seconds per call), alternating call by call."""
    samples: tuple[list[float], list[float]] = ([], [])
    clock = time.perf_counter
    for warm in range(min(calls, 20)):
        await a(warm)
        await b(warm)
    for round_ in range(rounds):
        order = ((0, a), (1, b)) if round_ % 2 == 0 else ((1, b), (0, a))
        for call in range(calls):
            for side, op in order:
                started = clock()
                await op(call)
                samples[side].append(clock() - started)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _row(case: str, first: str, a: float, second: str, b: float, ratio: str, target: str) -> str:
    return f"| {case} | {first} {a * 1e6:.1f} us | {second} {b * 1e6:.1f} us | {ratio} | {target} |"


async def bench_s3(endpoint: str, rounds: int) -> str:
    options = {"backend": "s3", "endpoint_url": endpoint, "bucket": BUCKET,
               "access_key": "bench-access-key", "secret_key": "bench-secret-key",
               "region": "us-east-1"}  # fmt: skip
    bare = vi.create_storage(vi.Settings(storage=options))
    inner = vi.create_storage(vi.Settings(storage=options))
    layered = wrap(inner, [MetricsLayer(registry=CollectorRegistry()), RetryLayer(),
                           BreakerLayer(), TimeoutLayer()])  # fmt: skip
    async with bare, layered:

        def put_get(storage: Any, side: str) -> Op:
            async def op(call: int) -> object:
                key = f"bench/{side}/{call % 8}.bin"
                await storage.upload_file(PAYLOAD, object_key=key)
                return await storage.download_file(key)

            return op

        a, b = await _interleaved(put_get(bare, "bare"), put_get(layered, "layered"), rounds, 40)
    ratio = b / a
    met = "met" if ratio <= 1.05 else "NOT met"
    return _row("S3 put+get 10 KiB, `[metrics, retry, breaker, timeout]`", "bare", a,
                "layered", b, f"{ratio:.3f}", f"<= 1.05, {met}")  # fmt: skip


async def bench_redis(url: str, rounds: int) -> list[str]:
    def limiter(prefix: str, policy: str) -> Any:
        return vi.create_rate_limiter(vi.Settings(rate_limit={
            "backend": "redis", "url": url, "policies": policy, "key_prefix": prefix}))  # fmt: skip

    bare = limiter("bare", "1000000/minute")
    layered = wrap(
        limiter("metrics", "1000000/minute"), [MetricsLayer(registry=CollectorRegistry())]
    )
    denied_bare = limiter("denied", "1/hour")
    denied_cached = vi.create_rate_limiter(vi.Settings(rate_limit={
        "backend": "redis", "url": url, "policies": "1/hour", "key_prefix": "cached",
        "layers": ["deny_cache"]}))  # fmt: skip
    rows = []
    async with bare, layered, denied_bare, denied_cached:
        a, b = await _interleaved(
            lambda i: bare.check_rate_limit(f"user:{i % 64}"),
            lambda i: layered.check_rate_limit(f"user:{i % 64}"),
            rounds, 1000,
        )  # fmt: skip
        ratio = b / a
        met = "met" if ratio <= 1.05 else "NOT met"
        rows.append(_row("Redis decision, `[metrics]`", "bare", a, "layered", b,
                         f"{ratio:.3f}", f"<= 1.05, {met}"))  # fmt: skip
        for limiter_ in (denied_bare, denied_cached):
            await limiter_.check_rate_limit("user:denied")  # the one allowed request
        assert not (await denied_cached.check_rate_limit("user:denied")).allowed
        a, b = await _interleaved(
            lambda i: denied_bare.check_rate_limit("user:denied"),
            lambda i: denied_cached.check_rate_limit("user:denied"),
            rounds, 1000,
        )  # fmt: skip
        speedup = a / b
        rows.append(_row("denied user's decision, `[deny_cache]` vs the round trip", "Redis", a,
                         "deny_cache", b, f"{speedup:.1f}x faster",
                         f">= 10x, {'met' if speedup >= 10 else 'NOT met'}"))  # fmt: skip
    return rows


def _presign(storage: Any) -> Op:
    keys = [f"bench/audio-{i}.wav" for i in range(64)]

    def op(call: int) -> Awaitable[object]:
        return storage.generate_presigned_url(keys[call % 64], 3600)  # type: ignore[no-any-return]

    return op


async def bench_presign(endpoint: str, rounds: int) -> list[str]:
    """Presigning through the cache layer against signing, for fs and S3."""
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        stores = {
            "fs": {"backend": "fs", "path": directory},
            "s3": {"backend": "s3", "endpoint_url": endpoint, "bucket": BUCKET,
                   "access_key": "bench-access-key", "secret_key": "bench-secret-key",
                   "region": "us-east-1"},
        }  # fmt: skip
        for name, options in stores.items():
            bare = vi.create_storage(vi.Settings(storage=options))
            layered = vi.create_storage(
                vi.Settings(storage={**options, "layers": [{"name": "cache", "ttl": "5m"}]})
            )
            async with bare, layered:
                a, b = await _interleaved(_presign(bare), _presign(layered), rounds, 500)
            speedup = a / b
            # fs signs with one HMAC (microseconds, like a cache hit): a reference row.
            target = (f">= 10x, {'met' if speedup >= 10 else 'NOT met'}" if name == "s3"
                      else "reference")  # fmt: skip
            rows.append(_row(f"presigned GET URL on `{name}`, `[cache]` vs signing", "signing",
                             a, "cache", b, f"{speedup:.1f}x faster", target))  # fmt: skip
    return rows


async def run(rounds: int) -> int:
    print(f"# bench_layers {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python "
          f"{platform.python_version()}, {platform.machine()}, rounds {rounds}")  # fmt: skip
    print("\n| case | A | B | ratio | target |\n| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory)).start()
        try:
            for row in await bench_redis(server.url, rounds):
                print(row, flush=True)
        finally:
            server.stop()
    with moto_server() as endpoint:
        print(await bench_s3(endpoint, rounds), flush=True)
        for row in await bench_presign(endpoint, rounds):
            print(row, flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    return asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    sys.exit(main())
