"""The rate-limiter kind's layered backend: a :class:`RateLimiter` that sends every public
method of the limiter it wraps through one :class:`~voice_infra.layers.Layer`.

A layer that cannot reach the backend (a timeout, an open breaker) raises
:class:`RateLimiterUnavailableError`; for a decision the layered limiter then answers as
the wrapped limiter's ``fail_mode`` says (``open`` allows and ``closed`` denies, both
marked degraded; ``raise``, and limiters without a fail mode such as ``memory``, raise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from voice_infra.errors import RateLimiterUnavailableError
from voice_infra.layers import Layer, LayeredBackend
from voice_infra.models import RateLimitInfo
from voice_infra.ratelimit import RateLimiter, degraded_decision
from voice_infra.resilience import log_throttled

__all__ = ["LayeredRateLimiter"]

logger = logging.getLogger(__name__)

_OPERATIONS = (
    # A check records what it allows: repeating one whose outcome is unknown could count
    # the request twice.
    ("check_rate_limit", False, False),
    ("get_rate_limit_info", True, False),
    ("clear_user_limit", True, False),
)


class LayeredRateLimiter(LayeredBackend, RateLimiter):
    """A rate limiter inside one layer; built by :func:`voice_infra.layers.wrap`.

    ``is_allowed``, ``enforce``, ``get_remaining_requests`` and ``get_reset_time`` are the
    base class's, built on :meth:`check_rate_limit` and :meth:`get_rate_limit_info`, so
    they go through the layer too.
    """

    unavailable_error = RateLimiterUnavailableError

    def __init__(self, inner: RateLimiter, layer: Layer) -> None:
        RateLimiter.__init__(self, inner.settings)
        self.backend_name = inner.backend_name
        self._bind_layer(inner, layer)
        ops = self._operations(_OPERATIONS)
        self._check_op = ops["check_rate_limit"]
        self._peek_op = ops["get_rate_limit_info"]
        self._clear_op = ops["clear_user_limit"]
        self._fail_mode: str = getattr(inner.settings, "fail_mode", "raise")

    def check_rate_limit(self, key: str, cost: int = 1) -> Coroutine[Any, Any, RateLimitInfo]:
        """Decide (and record when allowed) through the layer."""
        inner = self.inner
        decision = self.layer.call(
            self._check_op, (key, cost), lambda: inner.check_rate_limit(key, cost)
        )
        if not self.layer.raises_unavailable:
            return decision  # the hot path: nothing for the fail mode to catch
        return self._failing_over(decision)

    async def _failing_over(self, decision: Awaitable[RateLimitInfo]) -> RateLimitInfo:
        try:
            return await decision
        except RateLimiterUnavailableError as exc:
            return self._unavailable(exc)

    async def get_rate_limit_info(self, key: str) -> RateLimitInfo:
        """The decision a cost-1 request would get, through the layer."""
        inner = self.inner
        try:
            return await self.layer.call(
                self._peek_op, (key,), lambda: inner.get_rate_limit_info(key)
            )
        except RateLimiterUnavailableError as exc:
            return self._unavailable(exc)

    async def clear_user_limit(self, key: str) -> None:
        """Forget ``key``'s requests, through the layer (no fail mode: it raises)."""
        inner = self.inner
        await self.layer.call(self._clear_op, (key,), lambda: inner.clear_user_limit(key))

    def _unavailable(self, exc: RateLimiterUnavailableError) -> RateLimitInfo:
        """The fail-mode decision of the wrapped limiter, or ``exc`` raised again."""
        if self._fail_mode not in ("open", "closed"):
            raise exc
        log_throttled(
            logger, f"unavailable:{id(self)}",
            "%s; failing %s: decisions are marked degraded", exc, self._fail_mode,
        )  # fmt: skip
        return degraded_decision(self.policies, allowed=self._fail_mode == "open", now=time.time())

    # -- never called: the public methods above go to the wrapped limiter --------------

    async def _check(self, key: str, cost: int) -> RateLimitInfo:
        raise AssertionError("a layered limiter sends every check to the limiter it wraps")

    async def _peek(self, key: str) -> RateLimitInfo:
        raise AssertionError("a layered limiter sends every check to the limiter it wraps")

    async def _clear(self, key: str) -> None:
        raise AssertionError("a layered limiter sends every call to the limiter it wraps")
