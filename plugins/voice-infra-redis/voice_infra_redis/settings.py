"""Options of the ``redis`` rate limiter (the ``[rate_limit]`` section with ``backend = "redis"``).

Imports only pydantic and voice-infra: plugin discovery and settings validation must not
pay for importing ``redis``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from voice_infra.masking import SecretURL, mask_url
from voice_infra.ratelimit import Algorithm, FailMode, ServerRateLimiterSettings

__all__ = ["FailMode", "RedisRateLimiterSettings", "mask_url"]

_SCHEMES = ("redis", "rediss", "unix")
_URL_HELP = (
    "use redis://[[user]:password@]host[:port][/db], rediss://... for TLS, or "
    "unix:///path/to/redis.sock[?db=N]"
)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class RedisRateLimiterSettings(ServerRateLimiterSettings):
    """Options of the ``redis`` rate limiter.

    ``url`` is a :class:`~voice_infra.masking.SecretURL` because it may carry a password:
    reprs, dumps and configuration listings show it through the core's
    :func:`~voice_infra.masking.mask_url` (password masked), validation errors never
    echo it, and ``url.get_secret_value()`` is the real URL.
    """

    url: SecretURL = Field(
        default=SecretURL("redis://127.0.0.1:6379/0"),
        description=f"Where Redis listens: {_URL_HELP}. May hold a password (kept secret).",
    )
    cluster: bool = Field(
        default=False,
        description="Use Redis Cluster (redis.asyncio.RedisCluster); url names one startup node.",
    )
    algorithm: Algorithm = Field(
        default="sliding_log",
        description="'sliding_log' (exact) or 'sliding_window_counter' (O(1) memory per key).",
    )
    key_prefix: str = Field(
        default="vi",
        description="First part of every key: '<prefix>:{<identity>}:<window>s'.",
    )
    pool_size: int = Field(
        default=64, ge=1, le=10_000,
        description="Cluster mode: connections per Redis node, and checks in flight at "
        "once (more wait for a free connection, up to pool_timeout); size it to the "
        "expected concurrency.",
    )  # fmt: skip
    pool_timeout: float = Field(
        default=1.0, gt=0, le=60,
        description="Cluster mode: seconds a check waits for a free connection when "
        "pool_size checks are in flight; past it the check gets the fail_mode answer "
        "(local overload, not counted toward the circuit breaker).",
    )  # fmt: skip
    socket_connect_timeout: float = Field(
        default=0.5, gt=0, le=60, description="Seconds to wait for a TCP/TLS connection."
    )
    socket_timeout: float = Field(
        default=0.25, gt=0, le=60, description="Seconds to wait for Redis to answer a command."
    )
    retries: int = Field(
        default=1, ge=0, le=10,
        description="Immediate retries after a connection error (covers one stale pooled "
        "connection after a restart); each retry may wait up to the timeouts again.",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretURL) -> SecretURL:
        # Error messages describe the URL's shape but never echo it: it may hold a password.
        url = value.get_secret_value().strip()
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

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Braces would break the hash tag that keeps one identity's keys in one slot.
        if not _PREFIX_RE.match(value):
            raise ValueError(
                "key_prefix must be 1-64 characters among letters, digits, '_', '.', ':' and "
                "'-' (no braces or spaces: they would break the Cluster hash tag)"
            )
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> RedisRateLimiterSettings:
        if self.cluster:
            parts = urlsplit(self.url.get_secret_value())
            if parts.scheme == "unix":
                raise ValueError("cluster = true needs a redis:// or rediss:// URL, not unix://")
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("Redis Cluster has only database 0: remove the /db from url")
        return self
