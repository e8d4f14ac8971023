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
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
from collections.abc import Sequence
from importlib import resources

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)

from voice_infra.errors import RateLimiterUnavailableError
from voice_infra.masking import mask_url
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit import FailModeGuard, PolicyState, RateLimiter, decide
from voice_infra.resilience import CircuitBreaker
from voice_infra_redis._resp import RespClient, RespEndpoint, encode_command
from voice_infra_redis.settings import RedisRateLimiterSettings

__all__ = ["COUNTER_SCRIPT", "LOG_SCRIPT", "RedisRateLimiter", "identity_tag"]

logger = logging.getLogger("voice_infra_redis")

LOG_SCRIPT = resources.files(__package__).joinpath("sliding_log.lua").read_text("utf-8")
COUNTER_SCRIPT = (
    resources.files(__package__).joinpath("sliding_window_counter.lua").read_text("utf-8")
)

#: What "Redis could not answer" looks like: connection refused or reset, timeouts,
#: an exhausted pool, cluster trouble, LOADING/BUSY/READONLY replies...
_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


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
    """Rate limiter on Redis or Redis Cluster; see ``docs/redis.md``.

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
        self._client: RedisCluster | None = None  # cluster mode
        self._resp: RespClient | None = None  # single-node mode
        # Cluster mode: at most pool_size checks in flight. redis-py's cluster pools raise
        # MaxConnectionsError instead of waiting, which would turn a burst of checks into
        # fail-mode answers on a healthy cluster; beyond pool_size, checks queue here.
        self._gate: asyncio.Semaphore | None = None
        self.guard = FailModeGuard(
            settings, self.policies, server=f"Redis rate limiter at {mask_url(settings.url)}",
            logger=logger,
        )  # fmt: skip
        exact = settings.algorithm == "sliding_log"
        self._script = LOG_SCRIPT if exact else COUNTER_SCRIPT
        self._sha = _sha1(self._script)
        self._suffixes = tuple(
            f":{policy.window}s" if exact else f":{policy.window}s:swc" for policy in self.policies
        )
        # Every key of both algorithms, for clear_user_limit.
        self._all_suffixes = tuple(
            suffix for p in self.policies for suffix in (f":{p.window}s", f":{p.window}s:swc")
        )
        # Precomputed tail of ARGV: limit and window (microseconds) of each policy.
        self._policy_args: tuple[int, ...] = tuple(
            value for p in self.policies for value in (p.limit, p.window * 1_000_000)
        )
        self._numkeys = len(self.policies)
        # The single-node path sends hand-encoded RESP: encode the constant parts once.
        n = self._numkeys
        self._key_open = f"{settings.key_prefix}:{{"
        self._suffix_bytes = tuple(suffix.encode() for suffix in self._suffixes)
        self._evalsha_head = encode_command("EVALSHA", self._sha, n).replace(
            b"*3\r\n", b"*%d\r\n" % (3 + n + 3 + 2 * n), 1
        )
        self._policy_tail = encode_command(*self._policy_args).split(b"\r\n", 1)[1]
        self._peek_args = {"0": b"$1\r\n0\r\n", "1": b"$1\r\n1\r\n"}
        # Unique members without a round trip: a random per-instance prefix (so other
        # processes never collide) plus a counter (so this instance never repeats).
        self._token_prefix = secrets.token_hex(6)
        self._sequence = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------

    def adjust_capabilities(self, declared: frozenset[str]) -> frozenset[str]:
        if self.settings.algorithm != "sliding_log":
            return declared - {"exact"}
        return declared

    async def open(self) -> None:
        """Create the client; no I/O (Redis may be down at start-up: the first checks
        then get the fail-mode answer and the breaker takes over)."""
        settings = self.settings
        url = settings.url.get_secret_value()
        # A fresh member prefix per opening: an instance built before a fork and opened
        # in each worker must not produce the same members in two processes.
        self._token_prefix = secrets.token_hex(6)
        if settings.cluster:
            # A short, fixed retry policy: redis-py's default retries 10 times with
            # backoff, which would multiply the time a dead node costs each check.
            self._client = RedisCluster.from_url(
                url,
                max_connections=settings.pool_size,
                socket_timeout=settings.socket_timeout,
                socket_connect_timeout=settings.socket_connect_timeout,
                retry=Retry(NoBackoff(), settings.retries),
                decode_responses=False,
            )
            self._gate = asyncio.Semaphore(settings.pool_size)
        else:
            # One multiplexed connection (see _resp.py for why not redis-py's pool).
            self._resp = RespClient(
                RespEndpoint.from_url(url),
                connect_timeout=settings.socket_connect_timeout,
                timeout=settings.socket_timeout,
            )
        await super().open()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        resp, self._resp = self._resp, None
        self._gate = None
        if client is not None:
            await client.aclose()
        if resp is not None:
            await resp.aclose()
        await super().aclose()

    @property
    def client(self) -> RedisCluster:
        """The redis-py RedisCluster client (cluster mode only; open first)."""
        if self._client is None:
            raise RuntimeError("the Redis rate limiter is not open; use 'async with' first")
        return self._client

    # -- keys --------------------------------------------------------------------------

    def key_head(self, key: str) -> str:
        """``<prefix>:{<tag>}``: the part shared by every key of ``key``, with the tag of
        :func:`identity_tag` (an identity holding ``}`` would otherwise end the hash tag
        early, or even empty it, scattering the identity's keys over slots)."""
        return f"{self._key_open}{identity_tag(key)}}}"

    def redis_keys(self, key: str) -> list[str]:
        """The Redis keys the configured algorithm uses for ``key``, one per policy."""
        head = self.key_head(key)
        return [head + suffix for suffix in self._suffixes]

    # -- decisions ---------------------------------------------------------------------

    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        return await self._decide(key, cost, "0")

    async def _peek(self, key: str) -> RateLimitInfo:
        return await self._decide(key, 1, "1")

    async def _decide(self, key: str, cost: int, peek: str) -> RateLimitInfo:
        guard = self.guard
        gate = self._gate
        if gate is not None and not await self._enter(gate):
            return guard.unavailable(self._overloaded())
        try:
            # After the gate: a check that queued while the breaker opened answers without
            # Redis, and a half-open probe is spent only on a real call.
            if not guard.allow():
                return guard.unavailable(None)
            token = f"{self._token_prefix}{next(self._sequence):x}"
            try:
                if self._resp is not None:
                    reply = await self._eval_single(self._resp, key, cost, peek, token)
                else:
                    reply = await self._eval_cluster(key, cost, peek, token)
            except MaxConnectionsError as exc:  # the client's pool, not Redis
                return guard.unavailable(exc)
            except _UNAVAILABLE as exc:
                return guard.failed(exc)
        finally:
            if gate is not None:
                gate.release()
        guard.succeeded()
        return self._to_info(reply)

    async def _enter(self, gate: asyncio.Semaphore) -> bool:
        """Take a slot of ``gate``, waiting at most ``pool_timeout``; False when none
        came free in time."""
        if not gate.locked():
            await gate.acquire()  # free: returns without suspending
            return True
        try:
            async with asyncio.timeout(self.settings.pool_timeout):
                await gate.acquire()
        except TimeoutError:
            return False
        return True

    def _overloaded(self) -> TimeoutError:
        """Why a check that found no free connection in time got the fail-mode answer."""
        return TimeoutError(
            f"no free connection within pool_timeout = {self.settings.pool_timeout} s: "
            f"pool_size = {self.settings.pool_size} checks were in flight (local overload, "
            "not counted as a Redis failure; raise pool_size, or add processes)"
        )

    async def _eval_single(
        self, resp: RespClient, key: str, cost: int, peek: str, token: str
    ) -> list[int]:
        """EVALSHA on the multiplexed connection, encoded by hand: the constant parts
        (SHA, key count, policy arguments) were encoded once in __init__."""
        head = self.key_head(key).encode()
        parts = [self._evalsha_head]
        for suffix in self._suffix_bytes:
            parts.append(b"$%d\r\n%s%s\r\n" % (len(head) + len(suffix), head, suffix))
        cost_bytes = b"%d" % cost
        token_bytes = token.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(cost_bytes), cost_bytes))
        parts.append(self._peek_args[peek])
        parts.append(b"$%d\r\n%s\r\n" % (len(token_bytes), token_bytes))
        parts.append(self._policy_tail)
        packed = b"".join(parts)
        try:
            reply: list[int] = await resp.execute_packed(packed)
        except NoScriptError:
            # The script cache is empty (restart, failover, SCRIPT FLUSH): load it and
            # retry once, transparently. The same token makes a repeat harmless.
            await resp.execute("SCRIPT", "LOAD", self._script)
            reply = await resp.execute_packed(packed)
        return reply

    async def _eval_cluster(self, key: str, cost: int, peek: str, token: str) -> list[int]:
        """EVALSHA through redis-py's RedisCluster, which routes by the keys' slot."""
        client = self.client
        keys = self.redis_keys(key)
        args: tuple[int | str, ...] = (cost, peek, token, *self._policy_args)
        try:
            reply: list[int] = await client.evalsha(self._sha, self._numkeys, *keys, *args)
        except NoScriptError:
            # SCRIPT LOAD goes to every primary (a new or failed-over node has none).
            await client.script_load(self._script)
            reply = await client.evalsha(self._sha, self._numkeys, *keys, *args)
        return reply

    def _to_info(self, reply: Sequence[int]) -> RateLimitInfo:
        """Build the decision from the script's reply (microsecond integers)."""
        states = [
            PolicyState(policy, reply[i], reply[i + 1] == 1, reply[i + 2] / 1e6, reply[i + 3] / 1e6)
            for policy, i in zip(self.policies, range(2, 2 + 4 * self._numkeys, 4), strict=True)
        ]
        return decide(states, now=reply[1] / 1e6)

    async def _clear(self, key: str) -> None:
        """Delete every key of ``key``: all configured policies, both algorithms."""
        action = f"clear {key!r}"
        guard = self.guard
        guard.require(action)
        keys = [self.key_head(key) + suffix for suffix in self._all_suffixes]
        gate = self._gate
        if gate is not None and not await self._enter(gate):
            raise _not_done(guard.server, action, self._overloaded())
        try:
            # One DEL: the keys share a hash tag, so it is one command even on a Cluster.
            if self._resp is not None:
                await self._resp.execute("DEL", *keys)
            else:
                await self.client.delete(*keys)
        except MaxConnectionsError as exc:
            raise _not_done(guard.server, action, exc) from exc
        except _UNAVAILABLE as exc:
            raise guard.action_failed(exc, action) from exc
        finally:
            if gate is not None:
                gate.release()
        guard.succeeded()

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker in front of Redis (its ``state`` is useful in health checks)."""
        return self.guard.breaker


def _not_done(server: str, action: str, cause: BaseException) -> RateLimiterUnavailableError:
    """The error of a clear that local overload stopped (the breaker is not told)."""
    error = RateLimiterUnavailableError(
        f"{server} could not {action}: {type(cause).__name__}: {cause}"
    )
    error.__cause__ = cause
    return error
