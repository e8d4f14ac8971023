"""The built-in backends, registered through the core's own ``voice_infra`` entry point.

- storage ``memory``: a process-local object store (tests, demos, ephemeral services);
- storage ``fs``: a local directory, the embedded default;
- rate limiter ``memory``: exact sliding log (or sliding-window counter) in this process;
- cache ``memory``: a bounded LRU with a TTL per entry, in this process;
- the built-in layers (``timeout``...; see :mod:`voice_infra.layers` and docs/layers.md).
"""

from __future__ import annotations

from collections.abc import Callable

from voice_infra.hookspecs import hookimpl
from voice_infra.layers import LayerSpec
from voice_infra.plugins import BackendSpec


@hookimpl
def register_storage_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="memory",
            factory="voice_infra.backends.memory:MemoryStorage",
            settings_model="voice_infra.backends.memory:MemoryStorageSettings",
            capabilities={"presign"},
            description="In-process object store with HMAC-signed presigned URLs.",
        )
    )
    register(
        BackendSpec(
            name="fs",
            factory="voice_infra.backends.fs:FileSystemStorage",
            settings_model="voice_infra.backends.fs:FileSystemStorageSettings",
            capabilities={"presign", "range_read", "persistent"},
            aliases=("local",),
            description="Local directory, one file per object, published atomically.",
        )
    )


@hookimpl
def register_rate_limiter_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="memory",
            factory="voice_infra.backends.memory:MemoryRateLimiter",
            settings_model="voice_infra.backends.memory:MemoryRateLimiterSettings",
            capabilities={"exact"},
            description="In-process sliding log or sliding-window counter.",
        )
    )


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(
        LayerSpec(
            name="timeout",
            factory="voice_infra.layers.timeout:TimeoutLayer",
            settings_model="voice_infra.layers.timeout:TimeoutSettings",
            description="Deadline per operation (and per stream chunk).",
        )
    )
    register(
        LayerSpec(
            name="retry",
            factory="voice_infra.layers.retry:RetryLayer",
            settings_model="voice_infra.layers.retry:RetrySettings",
            description="Retries transient errors of operations safe to repeat (backoff, "
            "full jitter).",
        )
    )
    register(
        LayerSpec(
            name="breaker",
            factory="voice_infra.layers.breaker:BreakerLayer",
            settings_model="voice_infra.layers.breaker:BreakerSettings",
            description="Circuit breaker: fails fast while the backend is down.",
        )
    )
    register(
        LayerSpec(
            name="shadow",
            factory="voice_infra.layers.shadow:ShadowLayer",
            kinds=("rate_limiter",),
            description="Allows every request; marks those the policies deny (shadow_denied).",
        )
    )
    register(
        LayerSpec(
            name="deny_cache",
            factory="voice_infra.layers.deny_cache:DenyCacheLayer",
            settings_model="voice_infra.layers.deny_cache:DenyCacheSettings",
            kinds=("rate_limiter",),
            description="Answers denied keys locally until their retry_after (no round trip).",
        )
    )
    register(
        LayerSpec(
            name="cache",
            factory="voice_infra.layers.cache:CacheLayer",
            settings_model="voice_infra.layers.cache:CacheLayerSettings",
            kinds=("storage",),
            description="Caches object info, existence and presigned URLs ([cache]).",
        )
    )
    register(
        LayerSpec(
            name="metrics",
            factory="voice_infra.layers.metrics:MetricsLayer",
            settings_model="voice_infra.layers.metrics:MetricsSettings",
            install_hint="pip install 'voice-infra[prometheus]'",
            description="Prometheus metrics (durations, errors, bytes, decisions, breakers).",
        )
    )


@hookimpl
def register_cache_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="memory",
            factory="voice_infra.backends.memory_cache:MemoryCache",
            settings_model="voice_infra.backends.memory_cache:MemoryCacheSettings",
            capabilities=set(),
            description="In-process LRU bounded by entries and bytes, a TTL per entry.",
        )
    )
