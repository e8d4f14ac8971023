"""In-memory backends: products for single-process services, tests and demos.

State lives in the backend instance; nothing is shared between processes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from pydantic import Field

from voice_infra.models import RateLimitInfo, VoiceFileInfo
from voice_infra.ratelimit import (
    AlgorithmSettings,
    RateLimiter,
    SlidingLog,
    StateTuple,
    WindowCounter,
    decide_tuples,
    sliding_window_counter_state,
)
from voice_infra.storage import OpenedRange, SignedURLSettings, SignedURLStorage, UploadBody

__all__ = [
    "MemoryRateLimiter",
    "MemoryRateLimiterSettings",
    "MemoryStorage",
    "MemoryStorageSettings",
]


class MemoryStorageSettings(SignedURLSettings):
    """Options of the ``memory`` storage backend."""

    bucket: str = Field(default="memory", description="Name reported as bucket_name.")


class MemoryStorage(SignedURLStorage):
    """Objects in a dict of this process; writes are atomic (published when complete)."""

    capabilities = frozenset({"presign", "versioned_read"})

    settings: MemoryStorageSettings

    def __init__(self, settings: MemoryStorageSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        self._objects: dict[str, tuple[bytes, VoiceFileInfo]] = {}
        key = settings.signing_key
        self._make_signer(key.get_secret_value().encode() if key else secrets.token_bytes(32))

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        data = await body.read_all()  # published only once complete: no partial object
        now = datetime.now(UTC)
        self._objects[key] = (
            data,
            VoiceFileInfo(
                object_key=key, bucket_name=self.bucket_name, file_size=len(data),
                content_type=content_type, upload_time=now, metadata=metadata,
                checksum=body.sha256,
            ),
        )  # fmt: skip
        return now

    def _get(self, key: str) -> tuple[bytes, VoiceFileInfo]:
        try:
            return self._objects[key]
        except KeyError:
            raise self._not_found(key) from None

    async def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        data, _ = self._get(key)  # on the first step, as every backend's generator
        async for piece in _pieces(data, chunk_size):
            yield piece

    async def _open_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> OpenedRange:
        # One lookup: the bytes and the info of the same upload (``versioned_read``).
        data, info = self._get(key)
        stop = len(data) if end is None else min(end + 1, len(data))
        return OpenedRange(info, _pieces(data[start:stop], chunk_size))

    async def _info(self, key: str) -> VoiceFileInfo:
        return self._get(key)[1]

    async def _delete(self, key: str) -> bool:
        return self._objects.pop(key, None) is not None

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        for key in sorted(k for k in self._objects if k.startswith(prefix)):
            entry = self._objects.get(key)
            if entry is not None:  # deleted while the caller iterated
                yield entry[1]


async def _pieces(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


class MemoryRateLimiterSettings(AlgorithmSettings):
    """Options of the ``memory`` rate limiter."""


class MemoryRateLimiter(RateLimiter):
    """Exact sliding log (default) or sliding-window counter, in this process.

    Same semantics as the Redis backend: all policies are checked together and a
    denied request records nothing. ``clock`` (seconds since the epoch) can be
    replaced, for example by tests that drive time by hand.
    """

    capabilities = frozenset({"exact"})

    settings: MemoryRateLimiterSettings

    def __init__(
        self, settings: MemoryRateLimiterSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(settings)
        self.clock = clock
        self._logs: dict[str, list[SlidingLog]] = {}
        self._counters: dict[str, list[WindowCounter]] = {}
        self._checks_since_sweep = 0
        self._sliding_log = settings.algorithm == "sliding_log"

    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        return self._decide(key, cost, False)

    async def _peek(self, key: str) -> RateLimitInfo:
        return self._decide(key, 1, True)

    async def _clear(self, key: str) -> None:
        self._logs.pop(key, None)
        self._counters.pop(key, None)

    def _decide(self, key: str, cost: int, peek: bool) -> RateLimitInfo:
        # No await inside: the decision and the record are atomic within the event loop.
        # Plain loops and tuples rather than all()/PolicyState: this is the whole cost of
        # a decision (see benchmarks/bench_memory_limiter.py).
        now = self.clock()
        states: list[StateTuple] = []
        fits = True
        if self._sliding_log:
            logs = self._logs.get(key) or [SlidingLog(policy) for policy in self.policies]
            for log in logs:
                state = log.state(now, cost, peek)
                fits = fits and state[2]
                states.append(state)
            if fits and not peek:
                for log in logs:
                    log.record(now, cost)
                self._logs[key] = logs
        else:
            counters = self._counters.get(key) or [WindowCounter() for _ in self.policies]
            for counter, policy in zip(counters, self.policies, strict=True):
                counter.roll(policy, now)
                fitting, retry, reset, used = sliding_window_counter_state(
                    policy, previous=counter.previous, current=counter.current, now=now,
                    cost=cost, peek=peek,
                )  # fmt: skip
                fits = fits and fitting
                states.append((policy, used, fitting, retry, reset))
            if fits and not peek:
                for counter in counters:
                    counter.current += cost
                self._counters[key] = counters
        if not peek:
            self._checks_since_sweep += 1
            if self._checks_since_sweep >= 10_000:
                self._sweep(now)
        return decide_tuples(states, now=now)

    def _sweep(self, now: float) -> None:
        """Drop idle keys now and then, so memory follows the active keys only."""
        self._checks_since_sweep = 0
        horizon = max(p.window for p in self.policies)
        for key in [k for k, logs in self._logs.items() if all(
            not log.entries or log.entries[-1][0] <= now - horizon for log in logs
        )]:  # fmt: skip
            del self._logs[key]
        for key in [k for k, cs in self._counters.items() if all(
            c.window_start + 2 * horizon <= now for c in cs
        )]:  # fmt: skip
            del self._counters[key]
