"""The ``shadow`` layer (rate limiters): policies are tried, not enforced.

Every request is allowed. Where the wrapped limiter denied, the answer is allowed with
``shadow_denied=True`` (the deciding policy, its limit and remaining as the denial had
them; ``retry_after`` 0 as for any allowed request), counted by a ``metrics`` layer
outside it as ``decision="shadow_denied"``. The wrapped limiter saw the same requests and,
as always, recorded none it denied: on a trace, shadow mode flags exactly the requests an
enforcing limiter would have denied. A degraded denial (fail closed) is allowed too, and
stays marked degraded, not shadow-denied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from voice_infra.layers import Layer, Operation
from voice_infra.models import RateLimitInfo, trusted_rate_limit_info

__all__ = ["ShadowLayer", "shadow_allowed"]

T = TypeVar("T")


def shadow_allowed(info: RateLimitInfo) -> RateLimitInfo:
    """``info`` (a denial) allowed, and marked ``shadow_denied`` unless degraded."""
    return trusted_rate_limit_info(
        True, info.limit, info.window, info.remaining, info.reset_at, 0.0, info.policy,
        info.degraded, not info.degraded,
    )  # fmt: skip


class ShadowLayer(Layer):
    """Allows every request; marks the ones the policies denied (see the module doc)."""

    kinds = ("rate_limiter",)

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        result = await call()
        if isinstance(result, RateLimitInfo) and not result.allowed:
            return shadow_allowed(result)  # type: ignore[return-value]
        return result
