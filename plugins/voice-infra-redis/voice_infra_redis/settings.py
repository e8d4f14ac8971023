"""Options of the ``redis`` rate limiter (``[rate_limit]`` with ``backend = "redis"``) and
of the ``redis`` cache (``[cache]`` with ``backend = "redis"``), which share the
connection options of :class:`RedisConnectionSettings`.

Imports only pydantic and voice-infra: plugin discovery and settings validation must not
pay for importing ``redis``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voice_infra.cache import CacheSettings
from voice_infra.masking import SecretURL, mask_url
from voice_infra.ratelimit import (
    AlgorithmSettings,
    FailMode,
    KeyPrefix,
    ServerRateLimiterSettings,
)

__all__ = [
    "FailMode",
    "RedisCacheSettings",
    "RedisConnectionSettings",
    "RedisRateLimiterSettings",
    "SentinelURL",
    "mask_url",
]

SENTINEL_SCHEME = "redis+sentinel"
_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
_SENTINEL_FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]"
_URL_HELP = (
    "use redis://[[user]:password@]host[:port][/db], rediss://... for TLS, "
    f"unix:///path/to/redis.sock[?db=N], or {_SENTINEL_FORM} for Redis Sentinel"
)
#: The port of a sentinel named without one (Redis Sentinel's default).
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, the form the ``limits`` library reads (plus an
    optional ``/db``)::

        redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]
            [?db=N&sentinel_username=...&sentinel_password=...]

    The hosts are sentinels (port 26379 unless given); ``service_name`` is the master's
    name in their configuration. The user and password authenticate to the master (and
    to the replicas a failover promotes); sentinels that require a password of their own
    get ``sentinel_username`` / ``sentinel_password``. (``limits`` sends the URL's
    password to the sentinels as well; sentinels without a password refuse that.)
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelURL | None:
        """``url`` parsed; None when it is not a ``redis+sentinel://`` URL. Raises
        ValueError (whose message never echoes the URL) when it is one but malformed."""
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() != SENTINEL_SCHEME:
            return None
        parts = urlsplit(url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = []
        for location in hosts.split(","):
            try:
                node = urlsplit(f"//{location.strip()}")
                host, port = node.hostname, node.port
            except ValueError:
                raise ValueError(
                    f"a sentinel of the Redis URL has a bad port; use {_SENTINEL_FORM}"
                ) from None
            if not host:
                raise ValueError(f"the Redis URL names no sentinel host; use {_SENTINEL_FORM}")
            if port == 0:
                raise ValueError("a sentinel port of the Redis URL must be between 1 and 65535")
            sentinels.append((host, port or SENTINEL_PORT))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [unquote(segment) for segment in parts.path.split("/") if segment]
        if not segments or len(segments) > 2:
            raise ValueError(
                "a redis+sentinel:// URL's path is the master's service name, optionally "
                f"followed by a database number; use {_SENTINEL_FORM}"
            )
        db_text = segments[1] if len(segments) == 2 else query.get("db", "0")
        if not db_text.isdigit():
            raise ValueError(
                f"the Redis URL's database must be a number (like /mymaster/0), got {db_text!r}"
            )
        return cls(
            tuple(sentinels), segments[0], int(db_text), username, password,
            query.get("sentinel_username"), query.get("sentinel_password"),
        )  # fmt: skip


class RedisConnectionSettings(BaseModel):
    """How to reach Redis: the options the ``redis`` rate limiter and the ``redis`` cache
    share (both open their connections through ``transport.open_transport``).

    ``url`` is a :class:`~voice_infra.masking.SecretURL` because it may carry a password:
    reprs, dumps and configuration listings show it through the core's
    :func:`~voice_infra.masking.mask_url` (password masked), validation errors never
    echo it, and ``url.get_secret_value()`` is the real URL.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretURL = Field(
        default=SecretURL("redis://127.0.0.1:6379/0"),
        description=f"Where Redis listens: {_URL_HELP}. May hold a password (kept secret).",
    )
    cluster: bool = Field(
        default=False,
        description="Use Redis Cluster (redis.asyncio.RedisCluster); url names one startup node.",
    )
    pool_size: int = Field(
        default=64, ge=1, le=10_000,
        description="Cluster and Sentinel modes (redis-py): connections per Redis node, and "
        "requests in flight at once (more wait for a free connection, up to pool_timeout); "
        "size it to the expected concurrency. The single-node mode multiplexes one "
        "connection and has no pool.",
    )  # fmt: skip
    pool_timeout: float = Field(
        default=1.0, gt=0, le=60,
        description="Cluster and Sentinel modes: seconds a request waits for a free connection "
        "when pool_size requests are in flight; past it a rate-limit check gets the "
        "fail_mode answer (local overload, not counted toward the circuit breaker) and a "
        "cache operation raises CacheUnavailableError.",
    )  # fmt: skip
    socket_connect_timeout: float = Field(
        default=0.5, gt=0, le=60, description="Seconds to wait for a TCP/TLS connection."
    )
    socket_timeout: float = Field(
        default=0.25, gt=0, le=60, description="Seconds to wait for Redis to answer a command."
    )
    retries: int = Field(
        default=1, ge=0, le=10,
        description="Cluster and Sentinel modes: redis-py's immediate retries after a "
        "connection error (covers one stale pooled connection after a restart); each retry "
        "may wait up to the timeouts again. The single-node mode does not retry: its one "
        "connection learns of a close at once and reconnects on the next request.",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretURL) -> SecretURL:
        # Error messages describe the URL's shape but never echo it: it may hold a password.
        url = value.get_secret_value().strip()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme == SENTINEL_SCHEME:
            SentinelURL.parse(url)  # raises ValueError when malformed
            return SecretURL(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"the Redis URL is not a valid URL (bad port?): {_URL_HELP}") from None
        if parts.scheme not in _SCHEMES:
            shown = repr(parts.scheme) if parts.scheme else "none"
            raise ValueError(f"unsupported Redis URL scheme {shown}; {_URL_HELP}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"a unix:// Redis URL needs a socket path; {_URL_HELP}")
        else:
            if not parts.hostname:
                raise ValueError(f"the Redis URL names no host; {_URL_HELP}")
            if port == 0:
                raise ValueError("the Redis URL's port must be between 1 and 65535")
            db = parts.path.lstrip("/")
            if db and not db.isdigit():
                raise ValueError(
                    f"the Redis URL's path must be a database number (like /0), got {db!r}"
                )
        return SecretURL(url)

    @model_validator(mode="after")
    def _check_cluster(self) -> Self:
        if self.cluster:
            url = self.url.get_secret_value()
            if SentinelURL.parse(url) is not None:
                raise ValueError(
                    "cluster = true and a redis+sentinel:// URL exclude each other: Redis "
                    "Cluster needs no Sentinel; give one cluster node as redis://host:port"
                )
            parts = urlsplit(url)
            if parts.scheme == "unix":
                raise ValueError("cluster = true needs a redis:// or rediss:// URL, not unix://")
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("Redis Cluster has only database 0: remove the /db from url")
        return self


class RedisRateLimiterSettings(
    ServerRateLimiterSettings, AlgorithmSettings, RedisConnectionSettings
):
    """Options of the ``redis`` rate limiter: the connection options of
    :class:`RedisConnectionSettings`, the fail mode of
    :class:`~voice_infra.ServerRateLimiterSettings`, the algorithm and the key prefix."""

    key_prefix: KeyPrefix = Field(
        default="vi",
        description="First part of every key: '<prefix>:{<identity>}:<window>s'.",
    )


class RedisCacheSettings(CacheSettings, RedisConnectionSettings):
    """Options of the ``redis`` cache: the connection options of
    :class:`RedisConnectionSettings` and the options every cache accepts
    (:class:`~voice_infra.CacheSettings`; entries are ``<key_prefix>:{<key tag>}``)."""
