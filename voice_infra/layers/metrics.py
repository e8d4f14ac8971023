"""The ``metrics`` layer: Prometheus metrics of any backend, through prometheus-client
(the optional extra ``voice-infra[prometheus]``).

Metrics (labels never hold a user id, a rate-limit key or an object key):

- ``voice_infra_operation_duration_seconds`` histogram: ``kind``, ``backend``,
  ``operation`` (the public method: ``upload_file``, ``check_rate_limit``...; a stream is
  timed from its opening until it ends or its consumer stops);
- ``voice_infra_operation_errors_total``: the same labels plus ``error``, the error's
  class name;
- ``voice_infra_bytes_total``: ``backend``, ``direction`` (``in``: uploaded, ``out``:
  downloaded or streamed);
- ``voice_infra_ratelimit_decisions_total``: ``backend``, ``policy`` (the deciding
  policy, ``10/second``), ``decision`` (``allowed``, ``denied``, ``degraded``,
  ``shadow_denied``), for each ``check_rate_limit``;
- ``voice_infra_breaker_state`` gauge: ``kind``, ``backend``; 0 closed, 1 half-open,
  2 open, for each ``breaker`` layer of the same stack, read at scrape time.

They go to ``prometheus_client.REGISTRY`` unless a :class:`MetricsLayer` is built with
another ``registry`` (tests use a fresh ``CollectorRegistry``).
"""

from __future__ import annotations

import bisect
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from voice_infra.layers import Layer, LayerSettings, Operation, closing_stream
from voice_infra.models import RateLimitInfo, VoiceFileInfo

__all__ = ["INSTALL_HINT", "MetricsLayer", "MetricsSettings", "metrics_for"]

T = TypeVar("T")
INSTALL_HINT = "pip install 'voice-infra[prometheus]'"
# From a 50 µs in-process decision to a 30 s upload.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
_STREAM_BYTES = frozenset({"stream_file", "stream_range"})


class MetricsSettings(LayerSettings):
    """The ``metrics`` layer has no options."""


class _BreakerCollector(Collector):
    """``voice_infra_breaker_state``, read from the live breaker layers at scrape time."""

    def __init__(self) -> None:
        self.breakers: weakref.WeakSet[Layer] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        from voice_infra.layers.breaker import BREAKER_STATE_VALUES

        gauge = GaugeMetricFamily(
            "voice_infra_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["kind", "backend"],
        )
        states: dict[tuple[str, str], int] = {}
        for layer in list(self.breakers):
            wrapper: Any = layer.wrapper
            labels = (str(wrapper.kind), str(wrapper.backend_name))
            value = BREAKER_STATE_VALUES[getattr(layer, "breaker").state]  # noqa: B009
            states[labels] = max(value, states.get(labels, 0))  # the worst of a label set
        for labels, value in sorted(states.items()):
            gauge.add_metric(list(labels), value)
        yield gauge

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("voice_infra_breaker_state", "", labels=["kind", "backend"])


class _HistogramChild:
    """One label set of a histogram: per-bucket counts and the sum, in plain numbers."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, as Prometheus' `le` counts.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _CounterChild:
    """One label set of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Family:
    """A metric family whose children are plain numbers, exported at scrape time.

    prometheus-client's own Histogram and Counter take a lock per update (three per timed
    decision), which cost about 1.2 us of the 5 us budget a Redis decision allows
    (docs/benchmarks.md). Updates here are plain arithmetic in the event loop's thread;
    a scrape from another thread reads numbers that only grow (it may see an observation's
    bucket before its sum: off by one observation, never corrupt).
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float] | None = None) -> None:  # fmt: skip
        self.name, self.documentation, self.label_names = name, documentation, tuple(labels)
        self.bounds = None if buckets is None else sorted(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        """The child of ``values`` (made on first use)."""
        child = self.children.get(values)
        if child is None:
            bounds = self.bounds
            child = _CounterChild() if bounds is None else _HistogramChild(bounds)
            self.children[values] = child
        return child

    def export(self) -> Metric:
        labels = list(self.label_names)
        if self.bounds is None:
            counter = CounterMetricFamily(self.name, self.documentation, labels=labels)
            for values, child in list(self.children.items()):
                counter.add_metric(list(values), child.value)
            return counter
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        # floatToGoString: the `le` spelling prometheus-client itself writes (untyped).
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, child in list(self.children.items()):
            cumulative = list(itertools.accumulate(child.counts))
            histogram.add_metric(list(values), list(zip(les, cumulative, strict=True)), child.sum)
        return histogram


class _FamiliesCollector(Collector):
    """Exports the families of one registry."""

    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.export()

    def describe(self) -> Iterator[Metric]:
        for family in self.families:
            if family.bounds is None:
                yield CounterMetricFamily(family.name, family.documentation,
                                          labels=list(family.label_names))  # fmt: skip
            else:
                yield HistogramMetricFamily(family.name, family.documentation,
                                            labels=list(family.label_names))  # fmt: skip


class _Metrics:
    """The metrics of one registry (prometheus-client refuses to register a name twice)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        operation = ["kind", "backend", "operation"]
        self.duration = _Family(
            "voice_infra_operation_duration_seconds", "Duration of backend operations.",
            operation, buckets=BUCKETS,
        )  # fmt: skip
        self.errors = _Family(
            "voice_infra_operation_errors_total", "Backend operations that raised, by error.",
            [*operation, "error"],
        )  # fmt: skip
        self.bytes = _Family(
            "voice_infra_bytes_total", "Bytes uploaded (in) and downloaded (out).",
            ["backend", "direction"],
        )  # fmt: skip
        self.decisions = _Family(
            "voice_infra_ratelimit_decisions_total", "Rate-limit decisions.",
            ["backend", "policy", "decision"],
        )  # fmt: skip
        registry.register(
            _FamiliesCollector([self.duration, self.errors, self.bytes, self.decisions])
        )
        self.breakers = _BreakerCollector()
        registry.register(self.breakers)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry) -> Any:
    """The voice-infra metrics registered in ``registry`` (registered on first use)."""
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = _Metrics(registry)
    return metrics


def _decision(info: RateLimitInfo) -> str:
    """The ``decision`` label of a rate-limit decision."""
    if info.shadow_denied:
        return "shadow_denied"
    if info.degraded:
        return "degraded"
    return "allowed" if info.allowed else "denied"


class MetricsLayer(Layer):
    """Counts and times every operation of the wrapped backend (see the module doc)."""

    raises_unavailable = False  # it only observes

    def __init__(
        self, settings: MetricsSettings | None = None, *, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__(settings if settings is not None else MetricsSettings())
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = metrics_for(self.registry)
        # Labelled children, looked up once: labels() takes a lock and builds a tuple.
        self._timers: dict[str, Any] = {}
        self._decisions: dict[tuple[str, str], Any] = {}
        self._bytes: dict[str, Any] = {}

    def on_stack(self, stack: Sequence[Layer]) -> None:
        from voice_infra.layers.breaker import BreakerLayer

        for layer in stack:
            if isinstance(layer, BreakerLayer):
                self.metrics.breakers.breakers.add(layer)

    def _timer(self, op: Operation) -> Any:
        timer = self._timers.get(op.name)
        if timer is None:
            timer = self._timers[op.name] = self.metrics.duration.labels(
                op.kind, op.backend, op.name
            )
        return timer

    def _failed(self, op: Operation, exc: BaseException) -> None:
        if isinstance(exc, Exception):  # not a cancellation
            self.metrics.errors.labels(op.kind, op.backend, op.name, type(exc).__name__).inc()

    def _count_bytes(self, op: Operation, direction: str, count: int) -> None:
        counter = self._bytes.get(direction)
        if counter is None:
            counter = self._bytes[direction] = self.metrics.bytes.labels(op.backend, direction)
        counter.inc(count)

    def _decided(self, op: Operation, info: RateLimitInfo) -> None:
        key = (info.policy, _decision(info))
        counter = self._decisions.get(key)
        if counter is None:
            counter = self._decisions[key] = self.metrics.decisions.labels(
                op.backend, info.policy, key[1]
            )
        counter.inc()

    async def call(
        self, op: Operation, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> T:
        # The hot path of a decision is a few microseconds of a Redis round trip's budget
        # (docs/benchmarks.md): one lookup of the timer, no helper calls.
        timer = self._timers.get(op.name) or self._timer(op)
        started = time.perf_counter()
        try:
            result = await call()
        except BaseException as exc:
            timer.observe(time.perf_counter() - started)
            self._failed(op, exc)
            raise
        timer.observe(time.perf_counter() - started)
        name = op.name
        if name == "check_rate_limit":
            if isinstance(result, RateLimitInfo):
                counter = self._decisions.get((result.policy, _decision(result)))
                if counter is None:
                    self._decided(op, result)
                else:
                    counter.inc()
        elif name == "upload_file":
            if isinstance(result, VoiceFileInfo):
                self._count_bytes(op, "in", result.file_size)
        elif name == "download_file" and isinstance(result, bytes):
            self._count_bytes(op, "out", len(result))
        return result

    async def stream(
        self, op: Operation, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        started = time.perf_counter()
        counts_bytes = op.name in _STREAM_BYTES
        try:
            async with closing_stream(open_stream()) as items:
                async for item in items:
                    if counts_bytes and isinstance(item, bytes):
                        self._count_bytes(op, "out", len(item))
                    yield item
        except BaseException as exc:
            self._failed(op, exc)
            raise
        finally:
            self._timer(op).observe(time.perf_counter() - started)
