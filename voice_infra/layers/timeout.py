"""The ``timeout`` layer: a deadline per operation, and one per item of a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import Field, model_validator

from voice_infra.layers import Duration, Layer, LayerSettings, Operation, closing_stream

__all__ = ["TimeoutLayer", "TimeoutSettings"]

T = TypeVar("T")


class TimeoutSettings(LayerSettings):
    """Options of the ``timeout`` layer."""

    seconds: Duration = Field(
        default=10.0, gt=0, le=86_400,
        description="Deadline of each operation, and of a stream's first item.",
    )  # fmt: skip
    chunk_seconds: Duration | None = Field(
        default=None, gt=0, le=86_400,
        description="Deadline of each later item of a stream (a chunk, a listed object); "
        "default: seconds.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _default_chunk(self) -> TimeoutSettings:
        if self.chunk_seconds is None:
            object.__setattr__(self, "chunk_seconds", self.seconds)
        return self


class TimeoutLayer(Layer):
    """An operation not done within ``seconds`` is cancelled and raises the kind's
    backend-unavailable error (a rate limiter's decision: its fail mode). Cancelling an
    upload leaves no object: every backend's write is all-or-nothing on cancellation.
    A stream gets ``seconds`` for its first item and ``chunk_seconds`` for each next one,
    so a long download is bounded per chunk, not as a whole."""

    settings: TimeoutSettings

    def __init__(self, settings: TimeoutSettings | None = None) -> None:
        super().__init__(settings if settings is not None else TimeoutSettings())

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        seconds = self.settings.seconds
        try:
            async with asyncio.timeout(seconds):
                return await call()
        except TimeoutError as exc:
            raise self.unavailable(op, f"no answer within {seconds:g} s (timeout layer)") from exc

    async def stream(
        self, op: Operation, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        deadline = self.settings.seconds
        async with closing_stream(open_stream()) as items:
            iterator = aiter(items)
            while True:
                try:
                    async with asyncio.timeout(deadline):
                        item = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise self.unavailable(
                        op, f"no item within {deadline:g} s (timeout layer)"
                    ) from exc
                yield item
                deadline = self.settings.chunk_seconds or self.settings.seconds
