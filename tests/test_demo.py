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
    _register(voice_plugin_registry, "no-presign", MemoryStorage, set())
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
