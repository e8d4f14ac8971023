"""The ``redis`` rate limiter: every decision is one EVALSHA of a Lua script.

The script reads Redis' clock (``TIME``), prunes, decides every policy, records only
when all allow, and returns what :class:`~voice_infra.RateLimitInfo` needs, so a check
is one round trip and concurrent checks from any number of processes are exact (Redis
runs scripts one at a time).

Key layout: ``<prefix>:{<tag>}:<window>s`` (sliding log, a sorted set) and
``<prefix>:{<tag>}:<window>s:swc`` (sliding-window counter, a hash), where ``<tag>`` is
:func:`identity_tag` of the rate-limit key. The braces are a Redis Cluster hash tag: every
key of one identity lives in one slot, which a multi-key script requires. Keys carry a
PEXPIRE, so idle identities leave nothing.

The keys are built here (:meth:`RedisRateLimiter.redis_keys`) and handed to a
:class:`~voice_infra_redis.transport.Transport`: the hand-written RESP client on a single
node, redis-py for Redis Cluster and Redis Sentinel.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import MaxConnectionsError, NoScriptError

from voice_infra.masking import mask_url
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit import (
    CallSlots,
    FailModeGuard,
    RateLimiter,
    StateTuple,
    decide_tuples,
)
from voice_infra.resilience import CircuitBreaker
from voice_infra_redis.settings import RedisRateLimiterSettings
from voice_infra_redis.transport import (
    UNAVAILABLE_ERRORS,
    LuaScript,
    RedisPyTransport,
    Transport,
    open_transport,
)

__all__ = ["COUNTER_SCRIPT", "LOG_SCRIPT", "RedisRateLimiter", "identity_tag"]

logger = logging.getLogger("voice_infra_redis")

LOG_SCRIPT = resources.files(__package__).joinpath("sliding_log.lua").read_text("utf-8")
COUNTER_SCRIPT = (
    resources.files(__package__).joinpath("sliding_window_counter.lua").read_text("utf-8")
)

_UNAVAILABLE = UNAVAILABLE_ERRORS


def identity_tag(key: str) -> str:
    """The hash-tag text of rate-limit key ``key``: never holds ``}``, and distinct keys
    always get distinct tags (the map is injective for every string).

    A key without ``}`` that does not start with ``#`` is its own tag, as in every earlier
    release (its Redis keys, and so its counts, are unchanged). Any other key becomes
    ``#`` followed by the key with ``%`` and ``}`` percent-escaped (``%25``, ``%7D``):
    ``a}b`` -> ``#a%7Db``, ``#x`` -> ``##x``. Escaped tags start with ``#`` and plain tags
    never do; escaping ``%`` itself makes the escape reversible, so two keys cannot meet.
    (Before 2026-11-30 a key holding ``}`` was tagged ``#<SHA-1 of the key>``, which the
    literal key ``#<that hex>`` also produced: two identities shared one count.)
    """
    if "}" not in key and not key.startswith("#"):
        return key
    return "#" + key.replace("%", "%25").replace("}", "%7D")


class RedisRateLimiter(RateLimiter):
    """Rate limiter on Redis, Redis Cluster or Redis Sentinel; see ``docs/redis.md``.

    Semantics are those of the ``memory`` backend (same arithmetic, Redis' clock).
    When Redis cannot answer, ``fail_mode`` decides: ``open`` allows and ``closed``
    denies (``RateLimitInfo.degraded`` is true), ``raise`` raises
    :class:`RateLimiterUnavailableError`. After ``breaker_failure_threshold``
    consecutive failures a circuit breaker answers without calling Redis for
    ``breaker_cooldown`` seconds, then lets one probe through.
    """

    settings: RedisRateLimiterSettings

    def __init__(self, settings: RedisRateLimiterSettings) -> None:
        super().__init__(settings)
        self._transport: Transport | None = None
        # Pooled (redis-py) transports: at most pool_size checks in flight, the others
        # wait their turn (up to pool_timeout) instead of failing in redis-py's pool.
        self._slots = CallSlots(None)
        self.guard = FailModeGuard(
            settings, self.policies, server=f"Redis rate limiter at {mask_url(settings.url)}",
            logger=logger,
        )  # fmt: skip
        exact = settings.algorithm == "sliding_log"
        self._suffixes = tuple(
            f":{policy.window}s" if exact else f":{policy.window}s:swc" for policy in self.policies
        )
        # Every key of both algorithms, for clear_user_limit.
        self._all_suffixes = tuple(
            suffix for p in self.policies for suffix in (f":{p.window}s", f":{p.window}s:swc")
        )
        self._numkeys = len(self.policies)
        # Where each policy's four integers start in the script's reply (after the
        # decision flag and the server's time).
        self._reply_offsets = tuple(range(2, 2 + 4 * self._numkeys, 4))
        # KEYS: one per policy; ARGV: cost, peek, member token, then the fixed tail of
        # limit and window (microseconds) of each policy.
        self._script = LuaScript(
            LOG_SCRIPT if exact else COUNTER_SCRIPT,
            self._numkeys,
            tuple(value for p in self.policies for value in (p.limit, p.window * 1_000_000)),
        )
        self._key_open = f"{settings.key_prefix}:{{"
        # Unique members without a round trip: a random per-instance prefix (so other
        # processes never collide) plus a counter (so this instance never repeats).
        self._token_prefix = secrets.token_hex(6)
        self._sequence = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Create the transport; no I/O (Redis may be down at start-up: the first checks
        then get the fail-mode answer and the breaker takes over)."""
        # A fresh member prefix per opening: an instance built before a fork and opened
        # in each worker must not produce the same members in two processes.
        self._token_prefix = secrets.token_hex(6)
        self._transport = open_transport(self.settings)
        self._slots = CallSlots(self.settings.pool_size if self._transport.pooled else None)
        await super().open()

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        self._slots = CallSlots(None)
        if transport is not None:
            await transport.aclose()
        await super().aclose()

    @property
    def transport(self) -> Transport:
        """How this limiter talks to Redis (open first)."""
        if self._transport is None:
            raise RuntimeError("the Redis rate limiter is not open; use 'async with' first")
        return self._transport

    @property
    def client(self) -> Any:
        """The redis-py client (``RedisCluster``, or the Sentinel-managed master) in
        cluster and Sentinel modes; open first."""
        transport = self.transport
        if not isinstance(transport, RedisPyTransport):
            raise RuntimeError("the single-node mode uses no redis-py client")
        return transport.client

    # -- keys --------------------------------------------------------------------------

    def key_head(self, key: str) -> str:
        """``<prefix>:{<tag>}``: the part shared by every key of ``key``, with the tag of
        :func:`identity_tag` (an identity holding ``}`` would otherwise end the hash tag
        early, or even empty it, scattering the identity's keys over slots)."""
        return f"{self._key_open}{identity_tag(key)}}}"

    def redis_keys(self, key: str, *, every_algorithm: bool = False) -> list[str]:
        """The Redis keys the configured algorithm uses for ``key``, one per policy (in
        the order of ``policies``); with ``every_algorithm``, those of both algorithms.
        The one place keys are built: transports receive them ready."""
        head = self.key_head(key)
        suffixes = self._all_suffixes if every_algorithm else self._suffixes
        return [head + suffix for suffix in suffixes]

    # -- decisions ---------------------------------------------------------------------

    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        return await self._decide(key, cost, "0")

    async def _peek(self, key: str) -> RateLimitInfo:
        return await self._decide(key, 1, "1")

    async def _decide(self, key: str, cost: int, peek: str) -> RateLimitInfo:
        guard = self.guard
        slot = self._slots.slot()
        if not await slot.acquire(self.settings.pool_timeout):
            return guard.unavailable(self._overloaded())
        try:
            # After the gate: a check that queued while the breaker opened answers without
            # Redis, and a half-open probe is spent only on a real call.
            if not guard.allow():
                return guard.unavailable(None)
            token = f"{self._token_prefix}{next(self._sequence):x}"
            try:
                reply = await self._run(key, cost, peek, token)
            except MaxConnectionsError as exc:  # the client's pool, not Redis
                return guard.unavailable(exc)
            except _UNAVAILABLE as exc:
                return guard.failed(exc)
        finally:
            slot.release()
        guard.succeeded()
        return self._to_info(reply)

    def _overloaded(self) -> TimeoutError:
        """Why a call that found no free connection in time got the fail-mode answer."""
        return self._slots.overloaded("pool_timeout", self.settings.pool_timeout)

    async def _run(self, key: str, cost: int, peek: str, token: str) -> list[int]:
        """One script call for ``key``: the script's reply (microsecond integers)."""
        transport = self.transport
        keys = self.redis_keys(key)
        args = (cost, peek, token)
        try:
            reply: list[int] = await transport.evalsha(self._script, keys, args)
        except NoScriptError:
            # The script cache is empty (restart, failover, SCRIPT FLUSH, a new Cluster
            # node): load it and retry once, transparently. The same token makes a repeat
            # harmless.
            await transport.script_load(self._script)
            reply = await transport.evalsha(self._script, keys, args)
        return reply

    def _to_info(self, reply: Sequence[int]) -> RateLimitInfo:
        """Build the decision from the script's reply (microsecond integers)."""
        # Plain tuples (decide_tuples), not PolicyState: this runs on every decision.
        states: list[StateTuple] = [
            (policy, reply[i], reply[i + 1] == 1, reply[i + 2] / 1e6, reply[i + 3] / 1e6)
            for policy, i in zip(self.policies, self._reply_offsets, strict=True)
        ]
        return decide_tuples(states, now=reply[1] / 1e6)

    async def _clear(self, key: str) -> None:
        """Delete every key of ``key``: all configured policies, both algorithms."""
        action = f"clear {key!r}"
        guard = self.guard
        guard.require(action)
        keys = self.redis_keys(key, every_algorithm=True)
        slot = self._slots.slot()
        if not await slot.acquire(self.settings.pool_timeout):
            raise guard.not_done(self._overloaded(), action)
        try:
            # One DEL: the keys share a hash tag, so it is one command even on a Cluster.
            await self.transport.delete(keys)
        except MaxConnectionsError as exc:
            raise guard.not_done(exc, action) from exc
        except _UNAVAILABLE as exc:
            raise guard.action_failed(exc, action) from exc
        finally:
            slot.release()
        guard.succeeded()

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker in front of Redis (its ``state`` is useful in health checks)."""
        return self.guard.breaker
