"""Options of the ``limits`` rate limiter (the ``[rate_limit]`` section with
``backend = "limits"``).

Imports only pydantic and voice-infra at module level: plugin discovery must not pay for
importing ``limits``. Validating ``storage_uri`` imports ``limits`` (to read the storage
schemes it registers), which happens only when a configuration selects this backend.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import Field, field_validator

from voice_infra.masking import SecretURL, hide_secrets
from voice_infra.ratelimit import KeyPrefix, ServerRateLimiterSettings

__all__ = ["REDIS_FAMILY", "LimitsRateLimiterSettings", "Strategy", "limits_scheme"]

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]

#: Schemes (after ``async+``) served by redis-py's asyncio client (implementation="redispy").
REDIS_FAMILY = frozenset(
    {
        "async+redis", "async+rediss", "async+redis+unix", "async+redis+cluster",
        "async+redis+sentinel",
    }
)  # fmt: skip

_URI_HELP = (
    "use a storage URI of the 'limits' library, for example memory://, "
    "redis://[:password@]host:port/db, rediss://..., redis+sentinel://host:26379/service, "
    "redis+cluster://host:7000,host:7001, valkey://host:6379, memcached://host:11211 or "
    "mongodb://host:27017 (the async+ prefix is optional)"
)


def limits_scheme(uri: str) -> str:
    """The async scheme ``limits`` registers for ``uri`` (``redis://`` -> ``async+redis``)."""
    scheme = uri.partition("://")[0].strip().lower() if "://" in uri else ""
    return scheme if scheme.startswith("async+") else f"async+{scheme}"


def _registered_schemes() -> frozenset[str]:
    # Imported here, not at module level: discovery must not import limits.
    from voice_infra_limits._limits_compat import async_storage_classes

    return frozenset(async_storage_classes())


class LimitsRateLimiterSettings(ServerRateLimiterSettings):
    """Options of the ``limits`` rate limiter.

    ``storage_uri`` is a :class:`~voice_infra.masking.SecretURL` because it may carry a
    password: reprs, dumps, configuration listings and log lines show it through the
    core's :func:`~voice_infra.masking.mask_url` (password and secret query parameters
    masked) and validation errors never echo it. ``storage_options`` holds the entries the
    masking rule masks as secret types (see :func:`~voice_infra.masking.hide_secrets`);
    the backend reveals them for ``limits``.
    """

    storage_uri: SecretURL = Field(
        default=SecretURL("memory://"),
        description=f"Where counts live: {_URI_HELP}. May hold a password (kept secret).",
    )
    strategy: Strategy = Field(
        default="moving-window",
        description="The limits strategy: 'moving-window' (a log of hits), 'fixed-window' "
        "(one counter per window) or 'sliding-window-counter' (two weighted counters).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the limits storage (and through it the driver), "
        "for example {socket_timeout = 0.2} or {implementation = 'coredis'}.",
    )
    pool_size: int = Field(
        default=100, ge=1, le=10_000,
        description="Storage calls in flight at once: more concurrent checks wait (within "
        "'timeout') for a free slot instead of failing. For Redis URIs also redis-py's "
        "max_connections (per node on a cluster) unless storage_options sets it.",
    )  # fmt: skip
    key_prefix: KeyPrefix = Field(
        default="vi",
        description="Namespace of every key: "
        "'<prefix>:<mw|fw|swc>/<identity>/<limit>/<window>/second'.",
    )
    timeout: float = Field(
        default=1.0, gt=0, le=60,
        description="Seconds one decision or clear may take before the storage counts as "
        "unavailable (fail_mode applies); also the Redis socket timeouts unless "
        "storage_options sets them.",
    )  # fmt: skip

    @field_validator("storage_uri")
    @classmethod
    def _check_uri(cls, value: SecretURL) -> SecretURL:
        # Messages describe the URI's scheme but never echo the URI: it may hold a password.
        uri = value.get_secret_value().strip()
        if "://" not in uri:
            raise ValueError(f"the storage URI has no scheme; {_URI_HELP}")
        scheme = limits_scheme(uri)
        if scheme not in _registered_schemes():
            shown = uri.partition("://")[0].strip()
            raise ValueError(
                f"the limits library has no async storage for the scheme {shown!r}; {_URI_HELP}"
            )
        return SecretURL(uri)

    @field_validator("storage_options")
    @classmethod
    def _hide_secret_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Dumps and reprs of these settings must not carry a password given here.
        return cast(dict[str, Any], hide_secrets("storage_options", value))

    def logs_every_unit(self) -> str | None:
        # limits' moving window stores one entry per unit of a hit's cost.
        return self.strategy if self.strategy == "moving-window" else None

    def capabilities_turned_off(self) -> frozenset[str]:
        # memory:// keeps the counts in this process only.
        if self.scheme == "async+memory":
            return frozenset({"distributed", "persistent"})
        return frozenset()

    @property
    def scheme(self) -> str:
        """The async scheme of :attr:`storage_uri` as ``limits`` registers it."""
        return limits_scheme(self.storage_uri.get_secret_value())

    @property
    def async_uri(self) -> str:
        """:attr:`storage_uri` with the ``async+`` prefix ``limits`` needs (a secret)."""
        uri = self.storage_uri.get_secret_value()
        return uri if uri.lower().startswith("async+") else f"async+{uri}"
