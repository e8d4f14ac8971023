"""Benchmark of the in-memory rate limiter against the ``limits`` library's MemoryStorage.

Usage::

    .venv/bin/python benchmarks/bench_memory_limiter.py [--rounds 15] [--calls 20000]

Issue 8 item 11: the ``memory`` limiter's full decision (``check_rate_limit``: key and cost
validated, every policy decided, a ``RateLimitInfo`` with limit, remaining, reset time and
retry-after) must be no slower than ``limits``' bare moving-window ``hit()`` (a yes/no).
One policy (``1000000/minute``: never denies, so every call does the same work), 64
identities in turn, in one event loop:

- ``check_rate_limit`` of the ``memory`` limiter, sliding log (the default) and the
  sliding-window counter;
- ``limits.aio`` ``MemoryStorage`` + ``MovingWindowRateLimiter``: ``hit()`` alone (the
  baseline) and ``hit()`` + ``get_window_stats()`` (the information a ``RateLimitInfo``
  carries);
- for reference, the same two through ``limits``' synchronous API (no event loop).

Each round builds fresh limiters (so every case starts from the same state) and runs
every case for ``--calls`` calls in turn, the order rotating between rounds; a case's
figure is its mean per call in a round, and the result the median over rounds. Rounds
are short so that load from other processes hits neighbouring cases alike: the target
ratio, ours / ``limits``' async ``hit()``, is taken in each round and its median over
the rounds printed last (target <= 1.0). Times are CPU time of the benchmark's thread
(``time.thread_time``) unless ``--clock wall``: on a shared machine, time spent waiting
for a core is not the code's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version

import limits
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

import voice_infra as vi

POLICY = "1000000/minute"
IDENTITIES = 64
KEYS = [f"user:{i}" for i in range(IDENTITIES)]

AsyncCase = Callable[[], Callable[[str], Awaitable[object]]]
SyncCase = Callable[[], Callable[[str], object]]


def ours(algorithm: str) -> AsyncCase:
    def build() -> Callable[[str], Awaitable[object]]:
        limiter = vi.create_rate_limiter(
            vi.Settings(
                rate_limit={"backend": "memory", "policies": [POLICY], "algorithm": algorithm}
            )
        )
        return limiter.check_rate_limit

    return build


def limits_async(with_stats: bool) -> AsyncCase:
    item = limits.parse(POLICY)

    def build() -> Callable[[str], Awaitable[object]]:
        moving = AsyncMovingWindow(AsyncMemoryStorage())
        if not with_stats:
            return lambda key: moving.hit(item, key)

        async def hit_and_stats(key: str) -> object:
            return await moving.hit(item, key), await moving.get_window_stats(item, key)

        return hit_and_stats

    return build


def limits_sync(with_stats: bool) -> SyncCase:
    item = limits.parse(POLICY)

    def build() -> Callable[[str], object]:
        moving = MovingWindowRateLimiter(MemoryStorage())
        if not with_stats:
            return lambda key: moving.hit(item, key)
        return lambda key: (moving.hit(item, key), moving.get_window_stats(item, key))

    return build


async def run_async(build: AsyncCase, calls: int) -> float:
    op = build()
    keys = (KEYS * (calls // IDENTITIES + 1))[:calls]
    clock = CLOCK
    start = clock()
    for key in keys:
        await op(key)
    return (clock() - start) / calls


def run_sync(build: SyncCase, calls: int) -> float:
    op = build()
    keys = (KEYS * (calls // IDENTITIES + 1))[:calls]
    clock = CLOCK
    start = clock()
    for key in keys:
        op(key)
    return (clock() - start) / calls


CLOCK: Callable[[], float] = time.thread_time
BASELINE = "limits aio hit()"
TARGET = "check_rate_limit sliding_log"
ASYNC_CASES: dict[str, AsyncCase] = {
    TARGET: ours("sliding_log"),
    "check_rate_limit counter": ours("sliding_window_counter"),
    BASELINE: limits_async(with_stats=False),
    "limits aio hit()+stats": limits_async(with_stats=True),
}
SYNC_CASES: dict[str, SyncCase] = {
    "limits sync hit()": limits_sync(with_stats=False),
    "limits sync hit()+stats": limits_sync(with_stats=True),
}


async def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in [*ASYNC_CASES, *SYNC_CASES]}
    names = list(samples)
    for name in names:  # warm-up: imports, caches, the limits expiry task
        await _run(name, min(calls, 2000))
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await _run(name, calls))
    return samples


async def _run(name: str, calls: int) -> float:
    if name in ASYNC_CASES:
        return await run_async(ASYNC_CASES[name], calls)
    return run_sync(SYNC_CASES[name], calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter

    samples = asyncio.run(measure(args.rounds, args.calls))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians[BASELINE]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# bench_memory_limiter {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}, "
        f"limits {version('limits')}, voice-infra {version('voice-infra')}, load {load:.2f}"
    )
    print(
        f"# policy {POLICY}, {IDENTITIES} keys, {args.rounds} rounds x {args.calls} calls, "
        f"{args.clock} time"
    )
    for name, value in medians.items():
        print(f"{name:30s} {value * 1e6:7.2f} us  {value / baseline:5.2f}x {BASELINE}")
    ratios = [ours / hit for ours, hit in zip(samples[TARGET], samples[BASELINE], strict=True)]
    ratio = statistics.median(ratios)
    verdict = "met" if ratio <= 1.0 else "NOT met"
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"{'ours / limits hit()':30s} {ratio:5.2f}  per-round median (quartiles "
        f"{quartiles[0]:.2f}-{quartiles[2]:.2f}); target <= 1.00: {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
