"""The pytest fixtures that voice-infra's pytest11 plugin gives every test suite."""

from __future__ import annotations

import pytest

import voice_infra as vi
from voice_infra.backends.memory import MemoryRateLimiter, MemoryStorage


@pytest.mark.asyncio
async def test_default_fixtures_are_in_memory(voice_storage, voice_rate_limiter) -> None:
    assert isinstance(voice_storage, MemoryStorage)
    assert isinstance(voice_rate_limiter, MemoryRateLimiter)
    info = await voice_storage.upload_file(b"RIFF", user_id="1", content_type="audio/wav")
    assert await voice_storage.download_file(info.object_key) == b"RIFF"
    assert [str(p) for p in voice_rate_limiter.policies] == ["10/second", "100/minute"]
    assert await voice_rate_limiter.is_allowed("user:1")


class TestFixturesIgnoreTheDevelopersEnvironment:
    @pytest.fixture(autouse=True)
    def _hostile_environment(self, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
        (tmp_path / "voice_infra.toml").write_text('[storage]\nmax_file_size = "1B"\n')
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("VOICE_INFRA_RATE_LIMIT__POLICIES", '["1/hour"]')
        monkeypatch.setenv("VOICE_INFRA_STORAGE__KEY_PREFIX", "from-env")

    @pytest.mark.asyncio
    async def test_default_settings(self, voice_storage, voice_rate_limiter) -> None:
        info = await voice_storage.upload_file(b"RIFF", user_id="1")  # 4 bytes > "1B"
        assert info.object_key.startswith("voice/")
        assert [str(p) for p in voice_rate_limiter.policies] == ["10/second", "100/minute"]
        assert vi.Settings().rate_limit.policies is not None  # the environment is really set


class TestOverriddenSettings:
    @pytest.fixture
    def voice_settings(self, tmp_path) -> vi.Settings:
        return vi.Settings(
            storage={"backend": "fs", "path": str(tmp_path)},
            rate_limit={"backend": "memory", "policies": ["1/minute"]},
        )

    @pytest.mark.asyncio
    async def test_fixtures_follow_the_settings(self, voice_storage, voice_rate_limiter) -> None:
        assert voice_storage.backend_name == "fs"
        assert [await voice_rate_limiter.is_allowed("k") for _ in range(2)] == [True, False]


def test_plugin_registry_fixture_is_strict_and_has_builtins(voice_plugin_registry) -> None:
    assert voice_plugin_registry.strict
    names = {(kind, spec.name) for kind, spec in voice_plugin_registry.iter_backends()}
    assert names == {("storage", "fs"), ("storage", "memory"), ("rate_limiter", "memory")}

    class Copy:
        @vi.hookimpl
        def register_storage_backends(self, register):
            register(vi.BackendSpec(name="memory", factory=lambda s: None, settings_model=dict))

    with pytest.raises(vi.DuplicateBackendError, match=r"'memory'.*voice-infra and copy"):
        voice_plugin_registry.register(Copy(), name="copy", distribution="copy")
