"""The pytest fixtures that voice-infra's pytest11 plugin gives every test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import voice_infra as vi
from voice_infra.backends.memory import MemoryRateLimiter, MemoryStorage

pytest_plugins = ["pytester"]


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
    assert names == {
        ("storage", "fs"), ("storage", "memory"), ("rate_limiter", "memory"), ("cache", "memory"),
    }  # fmt: skip

    class Copy:
        @vi.hookimpl
        def register_storage_backends(self, register):
            register(vi.BackendSpec(name="memory", factory=lambda s: None, settings_model=dict))

    with pytest.raises(vi.DuplicateBackendError, match=r"'memory'.*voice-infra and copy"):
        voice_plugin_registry.register(Copy(), name="copy", distribution="copy")


# -- the contract suite catches wrong backends (issue 9) ---------------------------------

WRONG_BACKENDS = Path(__file__).parent


def _contract_file(pytester: pytest.Pytester, backend: str) -> None:
    """A plugin author's test file running the storage contract on ``backend`` (a class
    of tests/wrong_backends.py, built directly), with the configuration docs/testing.md
    asks for."""
    pytester.syspathinsert(WRONG_BACKENDS)
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    pytester.makepyfile(
        test_contract=f"""
        import pytest
        import wrong_backends
        from voice_infra.testing import StorageContract

        class TestWrong(StorageContract):
            @pytest.fixture
            def storage_backend(self):
                return wrong_backends.build(wrong_backends.{backend})
        """
    )


def _failed(pytester: pytest.Pytester, backend: str) -> set[str]:
    _contract_file(pytester, backend)
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    passed, _skipped, failed = recorder.listoutcomes()
    assert passed, "the wrong backend should pass most of the suite"
    return {report.nodeid.split("::")[-1] for report in failed}


def test_contract_passes_a_correct_backend_built_directly(pytester: pytest.Pytester) -> None:
    """The control: the memory backend built directly, capabilities declared on its
    class, passes everything, presigned URLs included."""
    _contract_file(pytester, "DeclaredMemoryStorage")
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes["passed"] > 50, outcomes
    assert "declares no capabilities" not in result.stdout.str()
    # Only the multipart tests skip, and the report says why.
    assert outcomes["skipped"] == 3, outcomes
    result.stdout.fnmatch_lines(
        ["*3 skipped: backend DeclaredMemoryStorage lacks the 'multipart'*"]
    )


@pytest.mark.parametrize("backend", ["LikePrefixStorage", "Utf16OrderStorage"])
def test_contract_catches_inexact_prefix_listing(pytester: pytest.Pytester, backend: str) -> None:
    assert _failed(pytester, backend) == {"test_list_prefix_is_literal_and_byte_ordered"}


def test_contract_catches_a_backend_without_checksums(pytester: pytest.Pytester) -> None:
    assert _failed(pytester, "NoChecksumStorage") == {
        "test_checksum_is_sha256_of_stored_bytes[bytes]",
        "test_checksum_is_sha256_of_stored_bytes[path]",
        "test_checksum_is_sha256_of_stored_bytes[file-object]",
        "test_checksum_is_sha256_of_stored_bytes[async-iterable]",
        "test_checksum_follows_overwrite",
        # Its _info drops the checksum that the one-opening read (_open_range) keeps: the
        # two describe different versions, and a version-checked read refuses.
        "test_stream_range_of_an_expected_version",
        "test_versioned_read_never_mixes_versions",
    }


def test_undeclared_capabilities_skip_with_reason_and_one_warning(
    pytester: pytest.Pytester,
) -> None:
    """Built directly from a class that declares nothing: the presign tests skip, the
    report says why without -rs, and one warning names the backend."""
    _contract_file(pytester, "UndeclaredMemoryStorage")
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, outcomes
    output = result.stdout.str()
    warning = "WARNING: backend UndeclaredMemoryStorage declares no capabilities at all"
    assert output.count(warning) == 1
    result.stdout.fnmatch_lines([
        "*= voice-infra test kit =*",
        "*skipped: backend UndeclaredMemoryStorage declares no capabilities at all*'presign'*"
        "capabilities = frozenset({'presign', ...})*BackendSpec(capabilities=...)*",
    ])  # fmt: skip
    # multipart; presign: ttl, method, url, redeem; versioned_read
    assert outcomes["skipped"] == 3 + 5 + 1 + 1 + 2 + 1


def test_capabilities_declared_on_the_class_join_the_registrys(
    voice_plugin_registry: vi.PluginRegistry,
) -> None:
    from voice_infra.backends.memory import MemoryStorageSettings

    class Persistent(MemoryStorage):
        capabilities = frozenset({"persistent"})

    class Plugin:
        @vi.hookimpl
        def register_storage_backends(self, register):
            register(vi.BackendSpec(name="pm", factory=Persistent,
                                    settings_model=MemoryStorageSettings,
                                    capabilities={"presign"}))  # fmt: skip

    voice_plugin_registry.register(Plugin(), name="pm")
    settings = vi.Settings.from_keywords(storage={"backend": "pm"})
    built = vi.create_storage(settings, registry=voice_plugin_registry)
    assert built.capabilities == {"presign", "persistent"}
    direct = Persistent(MemoryStorageSettings())
    assert (direct.capabilities, direct.capabilities_declared) == ({"persistent"}, True)
    # The built-in classes declare theirs, so they keep them when built directly.
    plain = MemoryStorage(MemoryStorageSettings())
    assert (plain.capabilities, plain.capabilities_declared) == (
        {"presign", "versioned_read"},
        True,
    )


def test_example_plugin_passes_as_its_author_runs_it_in_a_hostile_shell(
    example_sites: dict[str, Path], tmp_path: Path
) -> None:
    """The issue's run: pytest in the plugin's own directory (its pyproject.toml as the
    configuration) from a shell with ``VOICE_INFRA_*`` variables set. The documented
    fixture ignores them, and pytest-asyncio has no deprecation to print."""
    project = tmp_path / "voice-infra-example"
    shutil.copytree(
        WRONG_BACKENDS / "example_plugins" / "voice-infra-example",
        project,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    env.update(
        PYTHONPATH=str(example_sites["voice-infra-example"]),
        VOICE_INFRA_STORAGE__MAX_FILE_SIZE="1B",
        VOICE_INFRA_STORAGE__KEY_PREFIX="from-the-shell",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "configfile: pyproject.toml" in output
    assert "PytestDeprecationWarning" not in output
    assert "failed" not in output.splitlines()[-1]


# -- opened_backends / opened_rate_limiters: fixtures' backends are always closed ----------


@pytest.mark.asyncio
async def test_opened_backends_are_closed_after_the_block_even_when_it_fails() -> None:
    from voice_infra.backends.memory import MemoryRateLimiterSettings
    from voice_infra.testing import opened_backends

    opened: list[MemoryRateLimiter] = []
    with pytest.raises(RuntimeError, match="test failed"):
        async with opened_backends(
            lambda policy: MemoryRateLimiter(MemoryRateLimiterSettings(policies=policy))
        ) as open_limiter:
            opened += [await open_limiter("2/second"), await open_limiter("5/minute")]
            assert all(limiter._opened for limiter in opened)
            raise RuntimeError("test failed")
    assert [limiter._opened for limiter in opened] == [False, False]


@pytest.mark.asyncio
async def test_opened_rate_limiters_build_through_the_public_factory() -> None:
    from voice_infra.testing import opened_rate_limiters

    async with opened_rate_limiters("memory", MemoryRateLimiter) as open_limiter:
        limiter = await open_limiter(policies="1/minute", algorithm="sliding_window_counter")
        assert limiter.settings.algorithm == "sliding_window_counter"
        assert (await limiter.check_rate_limit("k")).allowed
    assert not limiter._opened
    with pytest.raises(TypeError, match="built a MemoryRateLimiter"):
        async with opened_rate_limiters("memory", vi.StorageBackend) as open_limiter:  # type: ignore[type-var]
            await open_limiter()
