"""The demo flow (``voice-infra demo``) on backends that lack a capability or fail."""

from __future__ import annotations

import pytest

import voice_infra as vi
from voice_infra import BackendSpec, hookimpl
from voice_infra.backends.memory import MemoryStorage, MemoryStorageSettings
from voice_infra.demo import run_demo
from voice_infra.plugins import PluginRegistry

# One storage shared by the factory and the test, so the test can look inside after the run.
STORES: list[MemoryStorage] = []


class FailingDownloadStorage(MemoryStorage):
    """Memory storage whose fourth download fails as a dead server would."""

    downloads = 0

    async def download_file(self, object_key: str) -> bytes:
        type(self).downloads += 1
        if type(self).downloads == 4:
            raise vi.StorageUnavailableError("storage went away")
        return await super().download_file(object_key)


def _register(registry: PluginRegistry, name: str, factory: type[MemoryStorage], caps: set[str]):
    def build(settings: MemoryStorageSettings) -> MemoryStorage:
        STORES.append(factory(settings))
        return STORES[-1]

    class Plugin:
        @hookimpl
        def register_storage_backends(self, register):
            register(BackendSpec(name=name, factory=build, settings_model=MemoryStorageSettings,
                                 capabilities=caps))  # fmt: skip

    registry.register(Plugin(), name=name)


async def _keys(storage: MemoryStorage) -> list[str]:
    return [info.object_key async for info in storage.list_files()]


@pytest.mark.asyncio
async def test_demo_skips_presigning_on_a_backend_without_the_capability(
    voice_plugin_registry: PluginRegistry,
) -> None:
    class NoPresignStorage(MemoryStorage):
        capabilities = frozenset()  # declares no optional feature at all

    _register(voice_plugin_registry, "no-presign", NoPresignStorage, set())
    settings = vi.Settings.from_keywords(storage={"backend": "no-presign"})
    report = await run_demo(settings, users=2, messages=3, registry=voice_plugin_registry)
    assert report.ok, report.failures
    assert "presign" not in report.latencies
    assert sum(t.verified for t in report.users.values()) == 6
    assert await _keys(STORES[-1]) == []


@pytest.mark.asyncio
async def test_a_failed_demo_run_deletes_what_it_uploaded(
    voice_plugin_registry: PluginRegistry,
) -> None:
    FailingDownloadStorage.downloads = 0
    _register(voice_plugin_registry, "failing", FailingDownloadStorage, {"presign"})
    settings = vi.Settings.from_keywords(storage={"backend": "failing"})
    with pytest.raises(vi.StorageUnavailableError, match="storage went away"):
        await run_demo(settings, users=2, messages=3, registry=voice_plugin_registry)
    # user1's three messages went the normal way; user2's first, uploaded before its
    # download failed, is deleted on the way out.
    assert await _keys(STORES[-1]) == []


def test_recordings_stay_bounded_so_a_run_grows_linearly() -> None:
    from voice_infra.demo import RECORDING_VARIANTS, recording_for

    longest = max(len(recording_for(0, m)) for m in range(RECORDING_VARIANTS))
    # Message 2,000 is no longer than the longest of the first cycle (it once grew with n).
    assert all(len(recording_for(1, m)) <= longest + 64 for m in (100, 999, 1999))
    assert longest < 12_000  # 0.6 s of 8 kHz 16-bit mono


@pytest.mark.asyncio
@pytest.mark.parametrize("argument", [{"users": 0}, {"messages": 0}, {"users": -2}])
async def test_demo_refuses_zero_or_negative_counts(argument: dict[str, int]) -> None:
    with pytest.raises(vi.ConfigError, match=f"demo {next(iter(argument))} must be"):
        await run_demo(vi.Settings.from_keywords(storage={"backend": "memory"}), **argument)


@pytest.mark.asyncio
async def test_long_runs_report_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    import voice_infra.demo

    monkeypatch.setattr(voice_infra.demo, "PROGRESS_INTERVAL", 0.0)
    lines: list[str] = []
    settings = vi.Settings.from_keywords(
        storage={"backend": "memory"}, rate_limit={"policies": ["1000/second"]}
    )
    report = await run_demo(settings, users=2, messages=5, on_progress=lines.append)
    assert report.ok
    assert lines[-1] == "demo: 10/10 messages (9 sent, 0 denied)"  # the 10th is still going
    assert len(lines) == 10
