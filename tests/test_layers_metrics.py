"""The ``metrics`` layer: after a scripted sequence a scrape shows exactly the expected
counts (a fresh CollectorRegistry per test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from layer_fakes import build
from prometheus_client import CollectorRegistry, generate_latest

import voice_infra as vi
from voice_infra.errors import BackendDependencyError, StorageUnavailableError
from voice_infra.layers import unwrap, wrap
from voice_infra.layers.breaker import BreakerLayer, BreakerSettings
from voice_infra.layers.metrics import MetricsLayer
from voice_infra.layers.shadow import ShadowLayer
from voice_infra.layers.timeout import TimeoutLayer, TimeoutSettings
from voice_infra.plugins import PluginRegistry

DURATION = "voice_infra_operation_duration_seconds_count"
ERRORS = "voice_infra_operation_errors_total"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.asyncio
async def test_storage_scrape_shows_exactly_the_scripted_sequence(
    layer_registry: PluginRegistry,
) -> None:
    registry = CollectorRegistry()
    breaker = BreakerLayer(BreakerSettings(failure_threshold=2))
    storage = wrap(
        build(layer_registry, backend="flaky"), [MetricsLayer(registry=registry), breaker]
    )
    labels = {"kind": "storage", "backend": "flaky"}
    down = StorageUnavailableError("down")
    async with storage:
        assert sample(registry, "voice_infra_breaker_state", **labels) == 0
        await storage.upload_file(b"x" * 1000, object_key="voice/u1/a.wav")
        await storage.upload_file(b"y" * 500, object_key="voice/u2/b.wav")
        assert len(await storage.download_file("voice/u1/a.wav")) == 1000
        assert (
            len(b"".join([c async for c in storage.stream_range("voice/u2/b.wav", 0, 99)])) == 100
        )
        with pytest.raises(vi.ObjectNotFoundError):
            await storage.get_file_info("voice/u3/missing.wav")
        unwrap(storage).script("info", down, down)
        for _ in range(3):  # two failures open the breaker; the third fails fast
            with pytest.raises(StorageUnavailableError):
                await storage.get_file_info("voice/u1/a.wav")
    assert sample(registry, DURATION, **labels, operation="upload_file") == 2
    assert sample(registry, DURATION, **labels, operation="download_file") == 1
    assert sample(registry, DURATION, **labels, operation="stream_range") == 1
    assert sample(registry, DURATION, **labels, operation="get_file_info") == 4
    assert sample(registry, ERRORS, **labels, operation="get_file_info",
                  error="ObjectNotFoundError") == 1  # fmt: skip
    assert sample(registry, ERRORS, **labels, operation="get_file_info",
                  error="StorageUnavailableError") == 3  # fmt: skip
    assert sample(registry, "voice_infra_bytes_total", backend="flaky", direction="in") == 1500
    assert sample(registry, "voice_infra_bytes_total", backend="flaky", direction="out") == 1100
    assert sample(registry, "voice_infra_breaker_state", **labels) == 2  # open
    scrape = generate_latest(registry).decode()
    assert "u1" not in scrape and "a.wav" not in scrape  # never a user id or key as a label


@pytest.mark.asyncio
async def test_rate_limit_decisions_are_counted_by_kind(layer_registry: PluginRegistry) -> None:
    registry = CollectorRegistry()
    policies = {"policies": "2/minute", "fail_mode": "open"}
    shadowed = wrap(build(layer_registry, "rate_limiter", backend="flaky", **policies),
                    [MetricsLayer(registry=registry), ShadowLayer()])  # fmt: skip
    timed = wrap(build(layer_registry, "rate_limiter", backend="memory", policies="2/minute"),
                 [MetricsLayer(registry=registry)])  # fmt: skip
    degrading = wrap(build(layer_registry, "rate_limiter", backend="flaky", **policies),
                     [MetricsLayer(registry=registry),
                      TimeoutLayer(TimeoutSettings(seconds=0.02))])  # fmt: skip
    async with shadowed, timed, degrading:
        for _ in range(3):
            await shadowed.check_rate_limit("user:1")
            await timed.check_rate_limit("user:1")
        await timed.get_rate_limit_info("user:1")  # a lookup is no decision
        unwrap(degrading).script("check", 1.0)
        assert (await degrading.check_rate_limit("user:1")).degraded

    def decisions(backend: str, decision: str) -> float:
        return sample(registry, "voice_infra_ratelimit_decisions_total", backend=backend,
                      policy="2/minute", decision=decision)  # fmt: skip

    assert (decisions("flaky", "allowed"), decisions("flaky", "shadow_denied")) == (2, 1)
    assert (decisions("memory", "allowed"), decisions("memory", "denied")) == (2, 1)
    assert decisions("flaky", "degraded") == 1
    assert sample(registry, DURATION, kind="rate_limiter", backend="memory",
                  operation="check_rate_limit") == 3  # fmt: skip
    assert sample(registry, DURATION, kind="rate_limiter", backend="memory",
                  operation="get_rate_limit_info") == 1  # fmt: skip
    assert "user:1" not in generate_latest(registry).decode()


def test_missing_prometheus_client_names_the_extra(
    layer_registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "voice_infra.layers.metrics", raising=False)
    with pytest.raises(BackendDependencyError, match=r"pip install 'voice-infra\[prometheus\]'"):
        build(layer_registry, backend="memory", layers=["metrics"])


def test_demo_prints_the_scrape(tmp_path: Path) -> None:
    from test_cli import run

    result = run("demo", "--users", "1", "--messages", "3", "--metrics", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'voice_infra_ratelimit_decisions_total{backend="memory",decision="allowed",' \
           'policy="10/second"} 3.0' in out  # fmt: skip
    assert 'voice_infra_operation_duration_seconds_count{backend="fs",kind="storage",' \
           'operation="upload_file"} 3.0' in out  # fmt: skip


def test_exported_histogram_buckets_are_cumulative_with_le_bounds() -> None:
    """The layer's own histogram exports what prometheus-client's Histogram would:
    an observation equal to a bound counts in that bound's bucket, buckets accumulate."""
    from prometheus_client import Histogram

    from voice_infra.layers.metrics import BUCKETS, metrics_for

    ours, reference_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("reference_seconds", "", ["op"], buckets=BUCKETS,
                          registry=reference_registry)  # fmt: skip
    child = metrics_for(ours).duration.labels("storage", "fs", "upload_file")
    for amount in (0.0, 0.0001, 0.00011, 0.5, 0.75, 30.0, 31.0, 1e9):
        child.observe(amount)
        reference.labels("upload_file").observe(amount)
    for le in [*(str(b) for b in BUCKETS), "+Inf"]:
        expected = reference_registry.get_sample_value(
            "reference_seconds_bucket", {"op": "upload_file", "le": le}
        )
        got = ours.get_sample_value(
            "voice_infra_operation_duration_seconds_bucket",
            {"kind": "storage", "backend": "fs", "operation": "upload_file", "le": le},
        )
        assert got == expected, le
    labels = {"kind": "storage", "backend": "fs", "operation": "upload_file"}
    assert ours.get_sample_value("voice_infra_operation_duration_seconds_count", labels) == 8
    assert ours.get_sample_value("voice_infra_operation_duration_seconds_sum", labels) == (
        reference_registry.get_sample_value("reference_seconds_sum", {"op": "upload_file"})
    )
