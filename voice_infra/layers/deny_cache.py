"""The ``deny_cache`` layer (rate limiters): a denied key is answered locally, without a
round trip, until its ``retry_after`` has passed (Envoy's local cache of over-limit keys).

Exact: while a key is denied its limiter records nothing for it (a denied request
consumes nothing), so until ``retry_after`` the limiter's answer to a cost-1 request
can only be the same denial with ``retry_after`` shrinking with time (same policy, limit,
``remaining`` 0, ``reset_at``), which is what the cache answers. Only cost-1 checks and
``get_rate_limit_info`` (the cost-1 decision) are answered locally; a check of another
cost goes to the limiter, and any answer the limiter gives for a key replaces what was
cached (an allowed request drops it), as does ``clear_user_limit``. Degraded answers are
never cached. What another process does to the key (a ``clear_user_limit`` there) is seen
only when the entry expires: the price of skipping the round trip.

Memory is bounded: at most ``max_keys`` entries, the least recently denied evicted first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import Field

from voice_infra.layers import Layer, LayerSettings, Operation
from voice_infra.models import RateLimitInfo, trusted_rate_limit_info

__all__ = ["DenyCacheLayer", "DenyCacheSettings"]

T = TypeVar("T")


class DenyCacheSettings(LayerSettings):
    """Options of the ``deny_cache`` layer."""

    max_keys: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Denied keys remembered at most."
    )


class DenyCacheLayer(Layer):
    """Answers denied keys locally until their ``retry_after`` (see the module doc)."""

    kinds = ("rate_limiter",)
    settings: DenyCacheSettings

    def __init__(self, settings: DenyCacheSettings | None = None) -> None:
        super().__init__(settings if settings is not None else DenyCacheSettings())
        #: key -> (when the denial ends on ``clock``, the denial)
        self._denied: OrderedDict[str, tuple[float, RateLimitInfo]] = OrderedDict()
        #: Seconds, monotonic; tests may replace it.
        self.clock: Callable[[], float] = time.monotonic
        #: Decisions answered locally (for tests and benchmarks).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._denied)

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        name = op.name
        if name == "clear_user_limit":
            self._denied.pop(args[0], None)
            return await call()
        checking = name == "check_rate_limit"
        if not checking and name != "get_rate_limit_info":
            return await call()
        key = args[0]
        cost = args[1] if checking else 1
        if cost == 1 and type(key) is str:
            entry = self._denied.get(key)
            if entry is not None:
                until, info = entry
                left = until - self.clock()
                if left > 0:
                    self.hits += 1
                    return trusted_rate_limit_info(  # type: ignore[return-value]
                        False, info.limit, info.window, info.remaining, info.reset_at, left,
                        info.policy, False,
                    )  # fmt: skip
                del self._denied[key]
        result = await call()
        if isinstance(result, RateLimitInfo) and type(key) is str:
            self._remember(key, cost, result)
        return result

    def _remember(self, key: str, cost: int, info: RateLimitInfo) -> None:
        if info.allowed or info.degraded or info.shadow_denied:
            # The key may have consumed: what was cached for it is stale.
            self._denied.pop(key, None)
        elif cost != 1:
            self._denied.pop(key, None)  # a cost-1 request may fit sooner: not cached
        elif info.retry_after > 0:
            denied = self._denied
            denied[key] = (self.clock() + info.retry_after, info)
            denied.move_to_end(key)
            if len(denied) > self.settings.max_keys:
                denied.popitem(last=False)
