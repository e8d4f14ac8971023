"""The Redis commands the rate limiter and the cache send, behind one small interface.

:class:`Transport` is script load, EVALSHA and DEL (the rate limiter), GET, SET PX and
DEL (the cache), with two implementations:

- :class:`RespTransport`, single node (``redis://``, ``rediss://``, ``unix://``): the
  hand-written multiplexed RESP client of ``_resp.py``, the fastest path measured (see
  ``docs/redis.md``);
- :class:`RedisPyTransport`, on a redis-py asyncio client: ``RedisCluster`` for Redis
  Cluster (slot routing, MOVED/ASK) and a Sentinel-managed master client for
  ``redis+sentinel://`` URLs (master discovery, reconnection after a failover).

Transports receive keys already built (by the backend's ``redis_keys``): they encode and
route, nothing else. Handling ``NOSCRIPT`` (load, then repeat once) and the fail mode
are the backend's, once for both.
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from voice_infra_redis._resp import RespClient, RespEndpoint, encode_command
from voice_infra_redis.settings import RedisConnectionSettings, SentinelURL

__all__ = [
    "UNAVAILABLE_ERRORS",
    "LuaScript",
    "RedisPyTransport",
    "RespTransport",
    "Transport",
    "open_transport",
]

Arg = str | int

#: What "Redis could not answer" looks like: connection refused or reset, timeouts,
#: an exhausted pool, cluster trouble, LOADING/BUSY/READONLY replies...
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True, eq=False)
class LuaScript:
    """A Lua script as EVALSHA calls it: ``numkeys`` keys, then the per-call arguments,
    then ``fixed_args`` (the same on every call, so encoded once)."""

    source: str
    numkeys: int
    fixed_args: tuple[Arg, ...] = ()
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode("utf-8"), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


class Transport(ABC):
    """How the rate limiter and the cache talk to Redis: a few commands and a close."""

    #: True when requests borrow connections from a bounded pool (redis-py): the
    #: backend then admits at most ``pool_size`` requests at once (``pool_timeout``).
    pooled: bool = False

    @abstractmethod
    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """``EVALSHA sha numkeys *keys *args *script.fixed_args``; raises redis-py's
        ``NoScriptError`` when the server does not have the script."""

    @abstractmethod
    async def script_load(self, script: LuaScript) -> None:
        """``SCRIPT LOAD`` on every server that may run ``script`` (every primary)."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> int:
        """``DEL *keys`` (the keys share one hash slot): how many existed."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """``GET key``: the value, or ``None`` when there is none."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        """``SET key value PX ttl_ms``: replace the value and its expiry."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the connections; the transport is not used afterwards."""


def _bulk(arg: Arg) -> bytes:
    data = arg.encode() if isinstance(arg, str) else b"%d" % arg
    return b"$%d\r\n%s\r\n" % (len(data), data)


class RespTransport(Transport):
    """Single node through :class:`~voice_infra_redis._resp.RespClient`: one multiplexed
    connection, no pool, EVALSHA encoded from parts cached per script."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        # Per script: the encoded "EVALSHA <sha> <numkeys>" and fixed arguments.
        self._encoded: dict[LuaScript, tuple[bytes, bytes]] = {}

    def _parts(self, script: LuaScript) -> tuple[bytes, bytes]:
        parts = self._encoded.get(script)
        if parts is None:
            head = b"$7\r\nEVALSHA\r\n" + _bulk(script.sha) + _bulk(script.numkeys)
            parts = head, b"".join(_bulk(arg) for arg in script.fixed_args)
            self._encoded[script] = parts
        return parts

    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        head, tail = self._parts(script)
        count = 3 + len(keys) + len(args) + len(script.fixed_args)
        packed = b"".join([b"*%d\r\n" % count, head, *map(_bulk, keys), *map(_bulk, args), tail])
        return await self.client.execute_packed(packed)

    async def script_load(self, script: LuaScript) -> None:
        await self.client.execute("SCRIPT", "LOAD", script.source)

    async def delete(self, keys: Sequence[str]) -> int:
        return int(await self.client.execute_packed(encode_command("DEL", *keys)))

    async def get(self, key: str) -> bytes | None:
        reply: bytes | None = await self.client.execute_packed(encode_command("GET", key))
        return reply

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        await self.client.execute_packed(encode_command("SET", key, value, "PX", ttl_ms))

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisPyTransport(Transport):
    """A redis-py asyncio client: ``RedisCluster`` or a Sentinel-managed master
    (``sentinel`` is then closed with it)."""

    pooled = True

    def __init__(self, client: Redis | RedisCluster, sentinel: Sentinel | None = None) -> None:
        self.client = client
        self.sentinel = sentinel
        # A RedisCluster learns the topology on its first command. Commands that start
        # together on a cold client each begin that discovery, and redis-py 8.1 then
        # hands some of them connections another task is resetting (AttributeError
        # "'NoneType' object has no attribute 'writelines'", or "Connection closed by
        # server"): the first command runs the discovery alone, the others wait for it.
        self._discovered = not isinstance(client, RedisCluster)
        self._discovery = asyncio.Lock()

    async def _ready(self) -> Redis | RedisCluster:
        if not self._discovered:
            async with self._discovery:
                if not self._discovered:
                    await cast(RedisCluster, self.client).initialize()
                    self._discovered = True
        return self.client

    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        client = await self._ready()
        return await client.evalsha(script.sha, script.numkeys, *keys, *args, *script.fixed_args)

    async def script_load(self, script: LuaScript) -> None:
        # RedisCluster sends SCRIPT LOAD to every primary (a new or failed-over node has
        # no script); a Sentinel master client sends it to the current master.
        await (await self._ready()).script_load(script.source)

    async def delete(self, keys: Sequence[str]) -> int:
        return int(await (await self._ready()).delete(*keys))

    async def get(self, key: str) -> bytes | None:
        # decode_responses=False: redis-py hands back the bytes Redis stored.
        return cast(bytes | None, await (await self._ready()).get(key))

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        await (await self._ready()).set(key, value, px=ttl_ms)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()


def open_transport(settings: RedisConnectionSettings) -> Transport:
    """The transport ``settings`` describe (no I/O: connections open on first use)."""
    url = settings.url.get_secret_value()
    connect_timeout, timeout = settings.socket_connect_timeout, settings.socket_timeout
    # A short, fixed retry policy: redis-py's default retries with backoff (10 times in
    # cluster mode), which would multiply the time a dead node costs each check.
    retry = Retry(NoBackoff(), settings.retries)
    sentinel_url = SentinelURL.parse(url)
    if sentinel_url is not None:
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed in redis>=8.2
            list(sentinel_url.sentinels),
            sentinel_kwargs={
                "socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
                "retry": retry, "username": sentinel_url.sentinel_username,
                "password": sentinel_url.sentinel_password,
            },
        )  # fmt: skip
        master = sentinel.master_for(
            sentinel_url.service_name,
            db=sentinel_url.db,
            username=sentinel_url.username,
            password=sentinel_url.password,
            max_connections=settings.pool_size,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry,
            decode_responses=False,
        )
        return RedisPyTransport(master, sentinel)
    if settings.cluster:
        cluster = RedisCluster.from_url(
            url, max_connections=settings.pool_size, retry=retry, decode_responses=False,
            socket_timeout=timeout, socket_connect_timeout=connect_timeout,
        )  # fmt: skip
        return RedisPyTransport(cluster)
    # One multiplexed connection (see _resp.py for why not redis-py's pool).
    client = RespClient(
        RespEndpoint.from_url(url), connect_timeout=connect_timeout, timeout=timeout
    )
    return RespTransport(client)
