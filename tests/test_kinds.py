"""Backend kinds as data: a kind declared by a test (not one of the core's) gets its
config section, factory, CLI rows and test-kit fixture with no other change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import voice_infra as vi
from voice_infra import BackendSpec, hookimpl
from voice_infra.base import Backend
from voice_infra.kinds import (
    CACHE,
    RATE_LIMITER,
    STORAGE,
    KindSpec,
    declared_kinds,
    get_kind,
    temporary_kind,
)
from voice_infra.plugins import PluginRegistry, get_registry


class GreeterSettings(BaseModel):
    """Settings base of the test kind."""

    greeting: str = "hello"


class Greeter(Backend):
    """Base class of the test kind."""

    kind = "greeter"

    def __init__(self, settings: GreeterSettings) -> None:
        super().__init__()
        self.settings = settings

    async def greet(self, name: str) -> str:
        await self._ensure_open()
        return f"{self.settings.greeting}, {name}"


class LoudSettings(GreeterSettings):
    volume: int = 1


class LoudGreeter(Greeter):
    capabilities = frozenset({"shouting"})

    async def greet(self, name: str) -> str:
        return (await super().greet(name)).upper() + "!" * self.settings.volume  # type: ignore[attr-defined]


GREETER = KindSpec(
    name="greeter",
    section="greeter",
    hook="register_greeter_backends",
    base=f"{__name__}:Greeter",
    settings_base=f"{__name__}:GreeterSettings",
    default_backend="loud",
    capabilities={"shouting": "answers in capitals"},
)


class GreeterPlugin:
    @hookimpl
    def register_greeter_backends(self, register: Any) -> None:
        register(BackendSpec(name="loud", factory=LoudGreeter, settings_model=LoudSettings,
                             capabilities={"shouting"}, description="Greets loudly."))  # fmt: skip


@pytest.fixture
def greeter_kind() -> Iterator[KindSpec]:
    with temporary_kind(GREETER) as kind:
        yield kind


def _registry() -> PluginRegistry:
    registry = PluginRegistry(strict=True)
    registry.register(GreeterPlugin(), name="greeter-plugin")
    return registry


def test_builtin_kinds_are_declared() -> None:
    assert declared_kinds()[:3] == (STORAGE, RATE_LIMITER, CACHE)
    assert get_kind("rate_limiter").section == "rate_limit"
    assert get_kind("cache").section == "cache" and CACHE.default_backend == "memory"
    with pytest.raises(KeyError, match="declared kinds: storage, rate_limiter, cache"):
        get_kind("speech")


def test_a_declared_kind_gets_section_factory_and_registry(greeter_kind: KindSpec) -> None:
    registry = _registry()
    settings = vi.Settings.from_keywords(greeter={"volume": 3})
    assert settings.section("greeter").backend == "loud"  # the kind's default backend
    greeter = vi.create_backend("greeter", settings, registry=registry)
    assert isinstance(greeter, LoudGreeter)
    assert greeter.settings.volume == 3 and greeter.capabilities == {"shouting"}
    assert [(kind, spec.name) for kind, spec in registry.iter_backends()] == [("greeter", "loud")]
    with pytest.raises(vi.BackendNotFoundError, match=r"\[greeter\] backend 'quiet'"):
        vi.create_backend("greeter", vi.Settings.from_keywords(greeter={"backend": "quiet"}),
                          registry=registry)  # fmt: skip


def test_a_declared_kinds_section_comes_from_the_environment_and_toml(
    greeter_kind: KindSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    (tmp_path / "voice_infra.toml").write_text('[greeter]\ngreeting = "hi"\nvolume = 1\n')
    monkeypatch.setenv("VOICE_INFRA_GREETER__VOLUME", "2")
    settings = vi.Settings()
    section = settings.section("greeter")
    assert section.options() == {"greeting": "hi", "volume": "2"}
    assert settings.origin("greeter.volume") == "environment"
    assert settings.origin("greeter.greeting") == "file voice_infra.toml"


def test_an_undeclared_section_is_refused() -> None:
    with pytest.raises(vi.ConfigError, match=r"unknown configuration section \[greter\]"):
        vi.Settings.from_keywords(greter={"backend": "loud"})


@pytest.mark.asyncio
async def test_the_kit_fixture_builds_any_kind(greeter_kind: KindSpec, voice_backends: Any) -> None:
    greeter = await voice_backends("greeter", registry=_registry())
    assert await greeter.greet("Ada") == "HELLO, ADA!"
    assert greeter._opened


def test_the_cli_lists_and_configures_a_declared_kind(
    greeter_kind: KindSpec, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from voice_infra.cli import main

    get_registry().register(GreeterPlugin(), name="greeter-plugin")
    monkeypatch.setenv("VOICE_INFRA_GREETER__VOLUME", "2")
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["backends"]
    assert {"kind": "greeter", "names": ["loud"], "distribution": "(registered directly)",
            "version": "", "capabilities": ["shouting"],
            "description": "Greets loudly."} in listed  # fmt: skip
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "greeter.volume" in out and "[greeter]" in out and "volume = 2" in out
    assert main(["doctor"]) == 0
    assert "greeter: loud" in capsys.readouterr().out


def test_unknown_capabilities_are_plugin_errors(greeter_kind: KindSpec) -> None:
    class Typo:
        @hookimpl
        def register_greeter_backends(self, register: Any) -> None:
            register(BackendSpec(name="typo", factory=LoudGreeter, settings_model=LoudSettings,
                                 capabilities={"shoutin"}))  # fmt: skip

    registry = PluginRegistry(strict=False)
    registry.register(Typo(), name="typo")
    [failure] = registry.failures
    assert "unknown greeter capabilities ['shoutin']" in failure.error
    assert "did you mean 'shouting'" in failure.error
    with pytest.raises(vi.PluginError, match="valid storage capabilities: presign, multipart"):

        class Presgin(vi.StorageBackend):
            capabilities = frozenset({"presgin"})


def test_directly_built_backends_keep_their_declared_capabilities() -> None:
    from voice_infra.backends.memory import MemoryStorage, MemoryStorageSettings

    storage = MemoryStorage(MemoryStorageSettings())
    assert storage.capabilities_declared
    assert "presign" in storage.capabilities
