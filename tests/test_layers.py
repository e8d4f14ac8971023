"""Layers: configuration, the registry's layer table, the layered backends' pass-through,
and the ``timeout`` layer, on backends that fail on demand (tests/layer_fakes.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import layer_fakes
import pytest
from layer_fakes import FlakyStorage, build

import voice_infra as vi
from voice_infra.errors import ConfigError, RateLimiterUnavailableError, StorageUnavailableError
from voice_infra.factory import create_backend
from voice_infra.layers import iter_layers, unwrap
from voice_infra.plugins import PluginRegistry


@pytest.fixture
def registry(layer_registry: PluginRegistry) -> PluginRegistry:
    layer_fakes.JOURNAL.clear()
    return layer_registry


# -- configuration -----------------------------------------------------------------------


def test_no_layers_key_builds_the_bare_backend(registry: PluginRegistry) -> None:
    storage = build(registry, backend="memory")
    assert type(storage) is vi.backends.memory.MemoryStorage  # type: ignore[attr-defined]
    assert vi.Settings.from_keywords(storage={"backend": "memory"}).storage.layers is None


def test_layers_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: PluginRegistry
) -> None:
    config = tmp_path / "voice.toml"
    config.write_text(
        '[storage]\nbackend = "memory"\n'
        'layers = ["journal", { name = "timeout", seconds = "250ms" }]\n'
    )
    monkeypatch.setenv("VOICE_INFRA_CONFIG", str(config))
    settings = vi.Settings()
    assert [entry.name for entry in settings.storage.layers or ()] == ["journal", "timeout"]
    assert settings.storage.options() == {}  # layers are not the backend's options
    storage = create_backend("storage", settings, registry=registry)
    assert [layer.name for layer in iter_layers(storage)] == ["journal", "timeout"]
    assert list(iter_layers(storage))[1].settings.seconds == 0.25

    stack = [{"name": "timeout", "seconds": 3, "chunk_seconds": 1}]
    monkeypatch.setenv("VOICE_INFRA_STORAGE__LAYERS", json.dumps(stack))
    settings = vi.Settings()
    assert settings.origin("storage.layers") == "environment"
    (layer,) = iter_layers(create_backend("storage", settings, registry=registry))
    assert (layer.settings.seconds, layer.settings.chunk_seconds) == (3, 1)
    # The layers belong to the section: switching backend keeps them.
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", "fs")
    assert vi.Settings().storage.layers is not None


@pytest.mark.parametrize(
    "layers, message",
    [
        ("[not json", "must be a JSON list"),
        ([{"seconds": 3}], "layers[0] must be a layer name or a table with a 'name'"),
        ([3], "layers[0] must be a layer name"),
        (["Not A Name!"], "is not a layer name"),
    ],
)
def test_malformed_layer_lists_are_config_errors_at_load(layers: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[storage\]|storage\.layers") as caught:
        vi.Settings.from_keywords(storage={"backend": "memory", "layers": layers})
    assert message in str(caught.value)


def test_layer_option_errors_name_layer_section_and_fix(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as caught:
        build(registry, backend="memory", layers=[{"name": "timeout", "secnds": 3}])
    text = str(caught.value)
    assert "[storage] layers (layer 'timeout')" in text
    assert "did you mean 'seconds'?" in text
    with pytest.raises(ConfigError, match=r"(?s)layer .timeout.*seconds.*greater than 0"):
        build(
            registry, "rate_limiter", backend="memory", layers=[{"name": "timeout", "seconds": 0}]
        )
    with pytest.raises(
        ConfigError, match=r"no layer 'timout' is installed; did you mean 'timeout'"
    ):
        build(registry, backend="memory", layers=["timout"])


def test_a_layer_for_another_kind_is_refused_before_building(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError, match=r"\[rate_limit\] layers: layer 'journal' does not "
                       r"apply to rate-limiter backends \(it applies to: storage\)"):  # fmt: skip
        build(registry, "rate_limiter", backend="memory", layers=["journal"])


def test_third_party_layers_run_outermost_first(registry: PluginRegistry) -> None:
    storage = build(
        registry, backend="memory",
        layers=[{"name": "journal", "tag": "outer"}, {"name": "journal", "tag": "inner"}],
    )  # fmt: skip

    async def run() -> None:
        async with storage:
            await storage.upload_file(b"abc", object_key="k/1")
            assert await storage.download_file("k/1") == b"abc"

    asyncio.run(run())
    assert layer_fakes.JOURNAL == [
        ("outer", "upload_file", ("k/1",)), ("inner", "upload_file", ("k/1",)),
        ("outer", "download_file", ("k/1",)), ("inner", "download_file", ("k/1",)),
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_layered_backend_passes_everything_through(registry: PluginRegistry) -> None:
    storage = build(registry, backend="flaky", layers=["journal", "timeout"])
    inner = unwrap(storage)
    assert isinstance(storage, vi.StorageBackend) and isinstance(inner, FlakyStorage)
    assert storage.capabilities == inner.capabilities == {"presign", "versioned_read"}
    assert (storage.backend_name, storage.bucket_name) == ("flaky", "memory")
    async with storage:
        assert inner._opened  # opened once, through the layers
        url = await storage.generate_presigned_url("a/b", 60)
        assert storage.verify_presigned_url(url) == "a/b"  # the wrapped backend's own method
        key = (await storage.upload_file(b"x", user_id="u1")).object_key
        assert key.startswith("voice/u1/")
        assert [i.object_key async for i in storage.list_files("voice/")] == [key]
        assert b"".join([c async for c in storage.stream_range(key, 0, 0)]) == b"x"
    assert not inner._opened  # closed with the layered one


# -- timeout ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_turns_a_hung_call_into_unavailable(registry: PluginRegistry) -> None:
    storage = build(registry, backend="flaky", layers=[{"name": "timeout", "seconds": 0.05}])
    async with storage:
        await storage.upload_file(b"abc", object_key="a")
        unwrap(storage).script("info", 5.0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(StorageUnavailableError, match=r"no answer within 0\.05 s"):
            await storage.get_file_info("a")
        assert asyncio.get_running_loop().time() - started < 1.0
        assert (await storage.get_file_info("a")).file_size == 3  # next call is fine


async def _slow(chunks: int, pause: float) -> AsyncIterator[bytes]:
    for _ in range(chunks):
        await asyncio.sleep(pause)
        yield b"x" * 100


@pytest.mark.asyncio
async def test_timeout_leaves_no_half_written_object(registry: PluginRegistry) -> None:
    storage = build(registry, backend="flaky", layers=[{"name": "timeout", "seconds": 0.1}])
    async with storage:
        with pytest.raises(StorageUnavailableError):
            await storage.upload_file(_slow(50, 0.01), object_key="slow/a")
        assert not await storage.file_exists("slow/a")
        assert [i async for i in storage.list_files("slow")] == []


@pytest.mark.asyncio
async def test_timeout_bounds_each_chunk_of_a_stream(registry: PluginRegistry) -> None:
    storage = build(
        registry, backend="flaky",
        layers=[{"name": "timeout", "seconds": 1, "chunk_seconds": 0.05}],
    )  # fmt: skip
    async with storage:
        await storage.upload_file(b"y" * 5000, object_key="big")
        flaky = unwrap(storage)
        # Slow chunks under the per-chunk deadline: the whole stream may take longer.
        flaky.script("chunk", *[0.03] * 5)
        data = b"".join([c async for c in storage.stream_file("big", chunk_size=1024)])
        assert data == b"y" * 5000
        flaky.script("chunk", None, 0.5)
        received = []
        with pytest.raises(StorageUnavailableError, match=r"no item within 0\.05 s"):
            async for chunk in storage.stream_file("big", chunk_size=1024):
                received.append(chunk)
        assert len(received) == 1


@pytest.mark.asyncio
async def test_timeout_on_a_limiter_follows_its_fail_mode(registry: PluginRegistry) -> None:
    for mode, allowed in (("open", True), ("closed", False)):
        limiter = build(
            registry, "rate_limiter", backend="flaky", fail_mode=mode, policies="5/minute",
            layers=[{"name": "timeout", "seconds": 0.05}],
        )  # fmt: skip
        async with limiter:
            unwrap(limiter).script("check", 1.0)
            info = await limiter.check_rate_limit("u")
            assert (info.allowed, info.degraded) == (allowed, True)
            assert not (await limiter.check_rate_limit("u")).degraded
    limiter = build(registry, "rate_limiter", backend="flaky", fail_mode="raise",
                    layers=[{"name": "timeout", "seconds": 0.05}])  # fmt: skip
    async with limiter:
        unwrap(limiter).script("check", 1.0)
        with pytest.raises(RateLimiterUnavailableError, match="timeout layer"):
            await limiter.check_rate_limit("u")
    limiter = build(registry, "rate_limiter", backend="memory",
                    layers=[{"name": "timeout", "seconds": 1}])  # fmt: skip
    assert isinstance(unwrap(limiter), vi.RateLimiter)


# -- CLI ----------------------------------------------------------------------------------


def test_plugins_lists_layers_and_config_shows_each_stack(tmp_path: Path) -> None:
    from test_cli import run

    table = run("plugins", cwd=tmp_path).stdout
    assert "layers (a section's `layers` list, outermost first):" in table
    listed = json.loads(run("plugins", "--json", cwd=tmp_path).stdout)["layers"]
    timeout = next(layer for layer in listed if layer["name"] == "timeout")
    assert timeout["kinds"] == ["any"] and timeout["distribution"] == "voice-infra"

    (tmp_path / "voice_infra.toml").write_text(
        '[storage]\nbackend = "memory"\nlayers = [{ name = "timeout", seconds = "2s" }]\n'
        '[rate_limit]\nlayers = ["timeout"]\n'
    )
    out = run("config", cwd=tmp_path).stdout
    assert 'layers = [{ "name" = "timeout", "seconds" = 2.0, "chunk_seconds" = 2.0 }]' in out
    assert 'layers = [{ "name" = "timeout", "seconds" = 10.0, "chunk_seconds" = 10.0 }]' in out
    rows = json.loads(run("config", "--json", cwd=tmp_path).stdout)
    assert {"key": "storage.layers", "value": [{"name": "timeout", "seconds": "2s"}],
            "origin": "file voice_infra.toml"} in rows  # fmt: skip

    (tmp_path / "voice_infra.toml").write_text(
        '[storage]\nlayers = [{ name = "timeout", s = 1 }]\n'
    )
    result = run("config", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "[storage] layers (layer 'timeout')" in result.stderr and "s: unknown key" in result.stderr
    )
