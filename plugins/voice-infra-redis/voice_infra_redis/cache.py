"""The ``redis`` cache: each entry is one Redis string with a millisecond expiry.

``get`` is ``GET``, ``set`` is ``SET key value PX <ttl ms>`` (the TTL rounded up to whole
milliseconds, never shorter than asked), ``delete`` is ``DEL``: one round trip each,
atomic on the server, shared by every process that uses the same Redis and
``key_prefix``. Redis expires keys itself (an expired key is never returned), and evicts
by its own ``maxmemory-policy`` (``allkeys-lru`` suits a cache server).

Key layout: ``<key_prefix>:{<tag>}``, ``<tag>`` being the rate limiter's
:func:`~voice_infra_redis.backend.identity_tag` of the cache key (injective, never
holding ``}``): the whole key is the Redis Cluster hash tag, so entries spread over the
slots by their full key even when cache keys hold braces of their own, and a prefix
(which holds no braces) can never meet another prefix's key.

The connection is the rate limiter's: :func:`~voice_infra_redis.transport.open_transport`
(the hand-written RESP client on one node, redis-py for Cluster and Sentinel). When Redis
cannot answer within ``socket_connect_timeout`` / ``socket_timeout``, the operation raises
:class:`~voice_infra.CacheUnavailableError`; a caching layer treats that as a miss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from voice_infra.cache import CacheBackend, ttl_milliseconds
from voice_infra.errors import CacheUnavailableError, translate_errors
from voice_infra.masking import mask_url
from voice_infra.ratelimit import CallSlots
from voice_infra_redis.backend import identity_tag
from voice_infra_redis.settings import RedisCacheSettings
from voice_infra_redis.transport import UNAVAILABLE_ERRORS, Transport, open_transport

__all__ = ["RedisCache"]


class RedisCache(CacheBackend):
    """Cache on Redis, Redis Cluster or Redis Sentinel; see ``docs/redis.md``."""

    capabilities = frozenset({"distributed", "persistent"})

    settings: RedisCacheSettings

    def __init__(self, settings: RedisCacheSettings) -> None:
        super().__init__(settings)
        self._transport: Transport | None = None
        # Pooled (redis-py) transports: at most pool_size requests in flight, the others
        # wait up to pool_timeout (redis-py's pool would raise at once instead). The rate
        # limiter's mechanism, CallSlots.
        self._slots = CallSlots(None)
        self.server = f"Redis cache at {mask_url(settings.url)}"
        self._key_open = f"{settings.key_prefix}:{{"

    async def open(self) -> None:
        """Create the transport; no I/O (connections open on first use)."""
        self._transport = open_transport(self.settings)
        self._slots = CallSlots(self.settings.pool_size if self._transport.pooled else None)
        await super().open()

    async def aclose(self) -> None:
        """Close the connections."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
        await super().aclose()

    def redis_key(self, key: str) -> str:
        """The Redis key of cache key ``key``: ``<key_prefix>:{<tag>}``."""
        return f"{self._key_open}{identity_tag(key)}}}"

    @asynccontextmanager
    async def _call(self, action: str, key: str) -> AsyncIterator[Transport]:
        """The transport, with a slot of the pool gate held and Redis' errors turned into
        :class:`CacheUnavailableError` naming the action."""
        transport = self._transport
        if transport is None:  # closed while the call waited
            raise CacheUnavailableError(f"{self.server} is closed; could not {action} {key!r}")
        slot = self._slots.slot()
        if not await slot.acquire(self.settings.pool_timeout):
            raise CacheUnavailableError(
                f"{self.server} could not {action} {key!r}: no free connection within "
                f"pool_timeout = {self.settings.pool_timeout} s (pool_size = "
                f"{self.settings.pool_size} requests in flight; raise pool_size)"
            )
        try:
            with translate_errors(
                {UNAVAILABLE_ERRORS: CacheUnavailableError},
                f"{self.server} could not {action} {key!r}",
            ):
                yield transport
        finally:
            slot.release()

    async def _get(self, key: str) -> bytes | None:
        async with self._call("get", key) as transport:
            return await transport.get(self.redis_key(key))

    async def _set(self, key: str, value: bytes, ttl: float) -> None:
        async with self._call("set", key) as transport:
            await transport.set(self.redis_key(key), value, ttl_milliseconds(ttl))

    async def _delete(self, key: str) -> bool:
        async with self._call("delete", key) as transport:
            return await transport.delete([self.redis_key(key)]) > 0
