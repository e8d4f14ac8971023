"""Shared result models returned by every backend (JSON-serialisable pydantic models)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = ["RateLimitInfo", "VoiceFileInfo"]


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class VoiceFileInfo(BaseModel):
    """What a storage backend knows about one stored object."""

    model_config = ConfigDict(frozen=True)

    object_key: str
    bucket_name: str
    file_size: int = Field(ge=0)
    content_type: str
    upload_time: AwareDatetime = Field(description="When the object was written, in UTC.")
    metadata: dict[str, str] = Field(default_factory=dict)
    checksum: str | None = Field(
        default=None, description="Hex SHA-256 of the content, when the backend knows it."
    )

    _utc = field_validator("upload_time")(_as_utc)


class RateLimitInfo(BaseModel):
    """One rate-limit decision.

    ``limit``/``remaining``/``reset_at`` describe ``policy``: the policy that denied the
    request, or when allowed the one with the least room left. ``reset_at`` is when that
    policy's full quota is available again; ``retry_after`` is how many seconds until the
    same request (same cost) would be allowed, ``0`` when it was allowed.
    """

    model_config = ConfigDict(frozen=True)

    allowed: bool
    limit: int = Field(ge=0)
    window: int = Field(gt=0, description="The deciding policy's window in seconds.")
    remaining: int = Field(ge=0)
    reset_at: AwareDatetime
    retry_after: float = Field(ge=0)
    policy: str
    degraded: bool = Field(
        default=False,
        description="True when the decision was made without the backend (fail-open/closed).",
    )
    shadow_denied: bool = Field(
        default=False,
        description="True when the policies denied the request but a 'shadow' layer allowed "
        "it (the policy is being tried, not enforced).",
    )

    _utc = field_validator("reset_at")(_as_utc)

    def headers(self) -> dict[str, str]:
        """HTTP response headers per draft-ietf-httpapi-ratelimit-headers-11."""
        name = self.policy.replace('"', "")
        reset = max(0, round((self.reset_at - datetime.now(UTC)).total_seconds()))
        headers = {
            "RateLimit-Policy": f'"{name}";q={self.limit};w={self.window}',
            "RateLimit": f'"{name}";r={self.remaining};t={reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


_RATE_LIMIT_INFO_FIELDS = frozenset(RateLimitInfo.model_fields)
# What RateLimitInfo(...) without shadow_denied (every decision but a shadow layer's) sets.
_DECISION_FIELDS = _RATE_LIMIT_INFO_FIELDS - {"shadow_denied"}
_new_object = object.__new__
_set_attribute = object.__setattr__


def trusted_rate_limit_info(
    allowed: bool,
    limit: int,
    window: int,
    remaining: int,
    reset_at: datetime,
    retry_after: float,
    policy: str,
    degraded: bool,
    shadow_denied: bool = False,
) -> RateLimitInfo:
    """A :class:`RateLimitInfo` built without pydantic's validation, for the rate limiters'
    hot path (validation was half the cost of an in-memory decision).

    The caller guarantees what validation would check: exact types (``bool``, ``int``,
    ``float``, ``str``), ``limit``/``remaining``/``retry_after`` >= 0, ``window`` > 0 and
    ``reset_at`` in UTC. The instance is the one ``model_construct`` builds (the fields
    given set, ``shadow_denied`` only when true; no extra, no private attributes), equal
    to the validated one; a test compares the two for arbitrary values, so a pydantic
    upgrade that changes this fails there.
    """
    info = _new_object(RateLimitInfo)
    _set_attribute(info, "__dict__", {
        "allowed": allowed, "limit": limit, "window": window, "remaining": remaining,
        "reset_at": reset_at, "retry_after": retry_after, "policy": policy,
        "degraded": degraded, "shadow_denied": shadow_denied,
    })  # fmt: skip
    fields_set = _RATE_LIMIT_INFO_FIELDS if shadow_denied else _DECISION_FIELDS
    _set_attribute(info, "__pydantic_fields_set__", set(fields_set))
    _set_attribute(info, "__pydantic_extra__", None)
    _set_attribute(info, "__pydantic_private__", None)
    return info
