"""Plugin discovery with real installed distributions (pip-installed example plugins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import voice_infra as vi
from voice_infra.plugins import PluginRegistry, get_registry

REPO_ROOT = Path(__file__).resolve().parent.parent

ROOT = Path(__file__).resolve().parent.parent


def _use(monkeypatch: pytest.MonkeyPatch, sites: dict[str, Path], *names: str) -> None:
    for name in names:
        monkeypatch.syspath_prepend(str(sites[name]))


def _run_cli(*args: str, sites: list[Path] = (), env: dict[str, str] | None = None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    environment["PYTHONPATH"] = os.pathsep.join(str(s) for s in sites)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "voice_infra.cli", *args],
        capture_output=True, text=True, env=environment, cwd=cwd, timeout=120,
    )  # fmt: skip


def test_builtins_are_registered_through_entry_points() -> None:
    registry = get_registry()
    storage = {spec.name: spec for kind, spec in registry.iter_backends() if kind == "storage"}
    assert {"fs", "memory"} <= set(storage)
    assert storage["fs"].distribution == "voice-infra"
    assert storage["fs"].version == vi.__version__
    assert "presign" in storage["fs"].capabilities
    assert registry.get("storage", "local") is storage["fs"]  # alias
    assert registry.get("rate_limiter", "memory").distribution == "voice-infra"


def test_example_plugin_is_discovered_and_selectable(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-example")
    registry = get_registry()
    spec = registry.get("storage", "example")
    assert (spec.distribution, spec.version) == ("voice-infra-example", "1.2.0")
    storage = vi.create_storage(vi.Settings(storage={"backend": "example", "bucket": "b1"}))
    assert type(storage).__name__ == "ExampleStorage"
    assert storage.bucket_name == "b1"
    assert storage.capabilities == frozenset({"presign"})


def test_example_plugin_passes_the_contract_suite_as_its_author_runs_it(
    example_sites: dict[str, Path],
) -> None:
    tests = ROOT / "tests/example_plugins/voice-infra-example/tests"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    env["PYTHONPATH"] = str(example_sites["voice-infra-example"])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests),
         "-c", os.devnull, "-o", "asyncio_mode=strict", str(tests)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary


def test_broken_plugins_do_not_take_the_application_down(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-broken-import", "voice-infra-broken-hook")
    registry = get_registry()
    failures = {f.distribution: f for f in registry.failures}
    assert set(failures) == {"voice-infra-broken-import", "voice-infra-broken-hook"}
    broken = failures["voice-infra-broken-import"]
    assert broken.version == "0.0.1"
    assert (
        "ModuleNotFoundError" in broken.error and "voice_infra_missing_dependency" in broken.error
    )
    assert "the broken-hook plugin cannot start" in failures["voice-infra-broken-hook"].error
    # Every other backend still works.
    assert vi.create_storage(vi.Settings()).backend_name == "fs"
    # Selecting the broken plugin's backend raises, naming the failure.
    with pytest.raises(vi.PluginLoadError, match=r"voice-infra-broken-hook 0\.0\.1"):
        vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "broken-hook"}))


def test_strict_mode_turns_load_failures_into_errors(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-broken-import")
    monkeypatch.setenv("VOICE_INFRA_STRICT_PLUGINS", "1")
    with pytest.raises(vi.PluginLoadError, match="voice-infra-broken-import") as caught:
        get_registry()
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_duplicate_backend_names_name_both_distributions(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-example", "voice-infra-duplicate")
    with pytest.raises(vi.DuplicateBackendError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "example"}))
    message = str(caught.value)
    assert "voice-infra-example" in message and "voice-infra-duplicate" in message
    # The rest of the duplicate plugin and all other backends stay usable.
    assert vi.create_storage(vi.Settings(storage={"backend": "memory"})).backend_name == "memory"


def test_duplicate_in_strict_mode_raises_at_discovery(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-example", "voice-infra-duplicate")
    with pytest.raises(vi.DuplicateBackendError, match="voice-infra-duplicate"):
        PluginRegistry(strict=True).load_entry_points()


def test_missing_library_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path]
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-duplicate")
    with pytest.raises(vi.BackendDependencyError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "needs-lib"}))
    assert "pip install voice-infra-not-installed" in str(caught.value)
    assert "voice_infra_not_installed" in str(caught.value)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ("", set()),
        ("voice-infra-example", {"example"}),
        ("voice_infra_Example, other", {"example"}),
    ],
)
def test_voice_infra_plugins_limits_the_distributions(
    monkeypatch: pytest.MonkeyPatch, example_sites: dict[str, Path], allowed: str, expected: set
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-example", "voice-infra-broken-import")
    monkeypatch.setenv("VOICE_INFRA_PLUGINS", allowed)
    registry = get_registry()
    names = {spec.name for _, spec in registry.iter_backends()}
    assert {"fs", "memory"} <= names  # built-ins always load
    assert names - {"fs", "memory", "s3", "redis", "limits"} == expected
    assert registry.failures == []  # the broken plugin was not even imported


def test_voice_infra_plugins_entries_are_trimmed_and_unknown_ones_reported(
    monkeypatch: pytest.MonkeyPatch,
    example_sites: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _use(monkeypatch, example_sites, "voice-infra-example")
    monkeypatch.setenv("VOICE_INFRA_PLUGINS", " voice-infra-redis , voice-infra-exampel ")
    registry = get_registry()
    names = {spec.name for _, spec in registry.iter_backends()}
    assert "redis" in names  # " voice-infra-redis " matched despite the spaces
    assert "example" not in names and "s3" not in names
    assert "VOICE_INFRA_PLUGINS names 'voice-infra-exampel'" in caplog.text
    with pytest.raises(vi.BackendNotFoundError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "example"}), registry=registry)
    message = str(caught.value)
    assert "VOICE_INFRA_PLUGINS left out these installed plugins:" in message
    assert "voice-infra-example" in message.split("left out", 1)[1]


def test_unknown_backend_suggests_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(vi.BackendNotFoundError) as caught:
        vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "memroy"}))
    message = str(caught.value)
    assert "[rate_limit] backend 'memroy' is not installed" in message
    assert "did you mean 'memory'?" in message
    assert "memory" in message.split("Installed", 1)[1]
    assert isinstance(caught.value, vi.ConfigError)


def test_isolated_registry_fixture(voice_plugin_registry: PluginRegistry) -> None:
    from voice_infra import BackendSpec, hookimpl

    class TestPlugin:
        @hookimpl
        def register_storage_backends(self, register):
            register(
                BackendSpec(
                    name="t",
                    factory="voice_infra.backends.memory:MemoryStorage",
                    settings_model="voice_infra.backends.memory:MemoryStorageSettings",
                )
            )

    voice_plugin_registry.register(TestPlugin(), name="test-plugin")
    storage = vi.create_storage(
        vi.Settings(storage={"backend": "t"}), registry=voice_plugin_registry
    )
    assert storage.backend_name == "t"
    with pytest.raises(vi.BackendNotFoundError):  # the application's registry is untouched
        vi.create_storage(vi.Settings(storage={"backend": "t"}))


def test_hook_typo_is_reported_as_a_failure() -> None:
    from voice_infra import hookimpl

    class Typo:
        @hookimpl
        def register_storage_backend(self, register):  # missing 's'
            raise AssertionError("never called")

    registry = PluginRegistry()
    registry.register(Typo(), name="typo", distribution="voice-infra-typo")
    assert [f.distribution for f in registry.failures] == ["voice-infra-typo"]
    assert "register_storage_backend" in registry.failures[0].error


def test_factory_must_build_the_right_kind(voice_plugin_registry: PluginRegistry) -> None:
    from voice_infra import BackendSpec, hookimpl

    class Wrong:
        @hookimpl
        def register_rate_limiter_backends(self, register):
            register(
                BackendSpec(
                    name="wrong",
                    factory=lambda settings: object(),
                    settings_model=vi.RateLimiterSettings,
                )
            )

    voice_plugin_registry.register(Wrong(), name="wrong")
    with pytest.raises(vi.PluginLoadError, match="not a RateLimiter"):
        vi.create_rate_limiter(
            vi.Settings(rate_limit={"backend": "wrong"}), registry=voice_plugin_registry
        )


def _registry_with(registry: PluginRegistry, **spec: object) -> PluginRegistry:
    from voice_infra import BackendSpec, hookimpl

    class Plugin:
        @hookimpl
        def register_storage_backends(self, register):
            register(BackendSpec(name="faulty", **spec))  # type: ignore[arg-type]

    registry.register(Plugin(), name="faulty", distribution="voice-infra-faulty")
    return registry


def _memory_storage(settings: object) -> object:
    from voice_infra.backends.memory import MemoryStorage

    return MemoryStorage(settings)  # type: ignore[arg-type]


def _exploding_factory(settings: object) -> object:
    raise RuntimeError("socket table full")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # The plugin's own module is missing: a broken plugin, not a library to install.
        (
            {"factory": "voice_infra_faulty_gone.backend:Storage",
             "settings_model": "voice_infra.backends.memory:MemoryStorageSettings"},
            r"names the module 'voice_infra_faulty_gone.backend', which cannot be imported",
        ),
        # Importing the plugin's module raises something other than ImportError.
        (
            {"factory": "voice_infra_faulty_module:Storage",
             "settings_model": "voice_infra.backends.memory:MemoryStorageSettings"},
            r"failed to import 'voice_infra_faulty_module': ZeroDivisionError",
        ),
        # The factory raises.
        (
            {"factory": _exploding_factory,
             "settings_model": "voice_infra.backends.memory:MemoryStorageSettings"},
            r"'faulty' from voice-infra-faulty failed to build: RuntimeError: socket table full",
        ),
        # The settings model is not a StorageSettings.
        (
            {"factory": _memory_storage, "settings_model": vi.RateLimiterSettings},
            r"settings model .*RateLimiterSettings.* is not a subclass of "
            r"voice_infra\.storage\.StorageSettings;",
        ),
        ({"factory": _memory_storage, "settings_model": dict}, r"is not a subclass of"),
    ],
)  # fmt: skip
def test_faulty_plugins_raise_plugin_load_errors_naming_the_backend(
    voice_plugin_registry: PluginRegistry,
    spec: dict[str, object],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "voice_infra_faulty_module.py").write_text("Storage = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = _registry_with(voice_plugin_registry, **spec)
    with pytest.raises(vi.PluginLoadError, match=message) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "faulty"}), registry=registry)
    assert caught.value.__cause__ is not None or "subclass" in message


def test_config_errors_from_a_factory_pass_through(voice_plugin_registry: PluginRegistry) -> None:
    def refuses(settings: object) -> object:
        raise vi.ConfigError("[storage] endpoint_url: use http or https")

    registry = _registry_with(
        voice_plugin_registry, factory=refuses,
        settings_model="voice_infra.backends.memory:MemoryStorageSettings",
    )  # fmt: skip
    with pytest.raises(vi.ConfigError, match="use http or https"):
        vi.create_storage(vi.Settings(storage={"backend": "faulty"}), registry=registry)


def test_cli_plugins_reports_backends_and_failures(example_sites: dict[str, Path]) -> None:
    sites = [example_sites["voice-infra-example"], example_sites["voice-infra-broken-import"]]
    result = _run_cli("plugins", sites=sites)
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout and "voice-infra-example" in result.stdout
    assert "1.2.0" in result.stdout
    assert "failed to load" in result.stdout and "voice-infra-broken-import" in result.stdout
    data = json.loads(_run_cli("plugins", "--json", sites=sites).stdout)
    example = next(b for b in data["backends"] if b["distribution"] == "voice-infra-example")
    assert example["kind"] == "storage" and example["version"] == "1.2.0"
    assert example["names"] == ["example"] and example["capabilities"] == ["presign"]
    assert data["failures"][0]["distribution"] == "voice-infra-broken-import"


def test_discovery_imports_no_backend_library() -> None:
    code = (
        "import sys, voice_infra\n"
        "from voice_infra.plugins import get_registry\n"
        "registry = get_registry()\n"
        "specs = [spec for _, spec in registry.iter_backends()]\n"
        "assert registry.failures == [], registry.failures\n"
        "heavy = [m for m in ('aiobotocore', 'botocore', 'redis', 'limits', 'coredis') "
        "if m in sys.modules]\n"
        "print(','.join(sorted({s.distribution for s in specs})), '|', ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    distributions, heavy = (part.strip() for part in result.stdout.split("|"))
    # Every first-party plugin of this repository is installed in the test environment
    # (scripts/test.sh installs them), so the check covers their discovery too.
    first_party = {
        tomllib.loads(path.read_text())["project"]["name"]
        for path in (REPO_ROOT / "plugins").glob("*/pyproject.toml")
    }
    assert first_party, "no plugin found under plugins/"
    assert first_party | {"voice-infra"} <= set(distributions.split(","))
    assert heavy == "", f"discovery imported {heavy}"


@pytest.mark.parametrize(
    ("kind", "name", "distribution"),
    [("storage", "s3", "voice-infra-s3"), ("storage", "minio", "voice-infra-s3"),
     ("rate_limiter", "redis", "voice-infra-redis"),
     ("rate_limiter", "limits", "voice-infra-limits")],
)  # fmt: skip
def test_a_known_backend_that_is_not_installed_names_its_distribution(
    voice_plugin_registry: PluginRegistry, kind: str, name: str, distribution: str
) -> None:
    # The isolated registry holds the built-in backends only: no plugin is installed in it.
    with pytest.raises(vi.BackendNotFoundError) as caught:
        voice_plugin_registry.get(kind, name)  # type: ignore[arg-type]
    assert f"backend {name!r} is not installed; install it with: pip install {distribution}." in (
        str(caught.value)
    )


def test_did_you_mean_covers_known_backends_that_are_not_installed(
    voice_plugin_registry: PluginRegistry,
) -> None:
    with pytest.raises(vi.BackendNotFoundError) as caught:
        voice_plugin_registry.get("storage", "s4")
    message = str(caught.value)
    assert "did you mean 's3'? It is not installed either" in message
    assert "pip install voice-infra-s3" in message
    with pytest.raises(vi.BackendNotFoundError) as caught:
        voice_plugin_registry.get("rate_limiter", "memroy")  # installed names still win
    assert "did you mean 'memory'?" in str(caught.value)
    assert "pip install" not in str(caught.value)
