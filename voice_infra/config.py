"""Configuration: which backends to use and their options.

Sources, highest priority first: keyword arguments, ``VOICE_INFRA_*`` environment
variables (nested with ``__``: ``VOICE_INFRA_STORAGE__BUCKET``), the TOML file named by
``VOICE_INFRA_CONFIG`` (else ``./voice_infra.toml`` when present), then defaults (``fs``
storage in the working directory, ``memory`` rate limiter).

Each ``[storage]`` / ``[rate_limit]`` section names a ``backend``; the rest of the section
is validated by that backend's own settings model when the backend is created. When a
higher-priority source switches a section to another backend, the options that lower
sources gave for the previous backend are dropped, since they belong to it.
"""

from __future__ import annotations

import contextvars
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from voice_infra.errors import ConfigError
from voice_infra.masking import hide_secrets, mask_secret, reveal_secrets, secret_fragments
from voice_infra.plugins import BackendKind, config_error, get_registry
from voice_infra.ratelimit import Policies, RateLimiterSettings
from voice_infra.storage import StorageSettings

__all__ = [
    "RateLimitSection",
    "Settings",
    "StorageSection",
    "config_file_path",
]

CONFIG_ENV = "VOICE_INFRA_CONFIG"
DEFAULT_CONFIG_FILE = "voice_infra.toml"

# The merged source records where each value came from; Settings picks it up in the
# same synchronous __init__ call, so a context variable is enough.
_ORIGINS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("voice_infra_origins")
# Set by Settings.from_keywords: build from keyword arguments and defaults only.
_KEYWORDS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "voice_infra_keywords_only", default=False
)


class BackendSection(BaseModel):
    """A config section: ``backend`` plus that backend's own options (validated later)."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    backend: str

    @model_validator(mode="before")
    @classmethod
    def _hide_secret_options(cls, data: Any) -> Any:
        # Options are validated by the backend's model only later; until then, what the
        # masking rule masks is held in secret types (values under secret-looking names as
        # SecretStr, URLs with credentials as SecretURL) so that model_dump(),
        # model_dump_json(), repr() and tracebacks of the settings never carry it.
        # options() unwraps them.
        if isinstance(data, Mapping):
            return {key: hide_secrets(str(key), value) for key, value in data.items()}
        return data

    @field_validator("backend")
    @classmethod
    def _normalise_backend(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("backend must name an installed backend (see 'voice-infra plugins')")
        return value

    def options(self) -> dict[str, Any]:
        """The options for the selected backend's settings model."""
        values = {key: reveal_secrets(value) for key, value in (self.model_extra or {}).items()}
        for name in type(self).model_fields:
            if name != "backend" and getattr(self, name) is not None:
                values[name] = getattr(self, name)
        return values

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_secret(name, value) if name else value)


class StorageSection(BackendSection):
    """The ``[storage]`` section."""

    backend: str = "fs"


class RateLimitSection(BackendSection):
    """The ``[rate_limit]`` section; ``policies`` is checked as soon as settings load."""

    backend: str = "memory"
    policies: Policies | None = None


def config_file_path() -> Path | None:
    """The TOML file in use: ``$VOICE_INFRA_CONFIG``, else ``./voice_infra.toml`` if present."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV}={explicit!r} does not name a file; fix the path or unset it"
            )
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    return data


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        return _read_toml(self.path) if self.path else {}


class _LayeredSource(PydanticBaseSettingsSource):
    """Merges the sources per section, honouring backend switches, and records origins."""

    def __init__(
        self, settings_cls: type[BaseSettings], layers: list[tuple[str, PydanticBaseSettingsSource]]
    ) -> None:
        super().__init__(settings_cls)
        self.layers = layers

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for origin, source in reversed(self.layers):  # lowest priority first
            for name, value in source().items():
                if not isinstance(value, Mapping):
                    merged[name] = value
                    origins[name] = origin
                    continue
                section = dict(merged.get(name) or {})
                if "backend" in value and not _same_backend(
                    name, section.get("backend"), value["backend"]
                ):
                    # Another backend: the previous one's own options do not apply; those
                    # every backend of the kind accepts (key_prefix, policies...) still do.
                    common = _COMMON_OPTIONS.get(name, frozenset())
                    dropped = {key for key in section if key not in common}
                    section = {k: v for k, v in section.items() if k not in dropped}
                    gone = {f"{name}.{key}" for key in dropped}
                    origins = {k: v for k, v in origins.items() if k not in gone}
                for key, item in value.items():
                    section[key] = item
                    origins[f"{name}.{key}"] = origin
                merged[name] = section
        _ORIGINS.set(origins)
        return merged


_SECTION_DEFAULTS = {"storage": "fs", "rate_limit": "memory"}
_COMMON_OPTIONS = {
    "storage": frozenset(StorageSettings.model_fields),
    "rate_limit": frozenset(RateLimiterSettings.model_fields),
}
_SECTION_KINDS: dict[str, BackendKind] = {"storage": "storage", "rate_limit": "rate_limiter"}


def _same_backend(section: str, lower: Any, higher: Any) -> bool:
    """Whether a higher source's ``backend`` keeps a lower source's options: the same
    backend once names are normalised, the section default filled in (a file that gives
    only ``path`` configures ``fs``) and aliases folded (``minio`` is ``s3``)."""
    if section not in _SECTION_DEFAULTS:
        return True
    names = [
        str(_SECTION_DEFAULTS[section] if value is None else value).strip().lower()
        for value in (lower, higher)
    ]
    if names[0] == names[1]:
        return True
    table = get_registry().backends[_SECTION_KINDS[section]]  # discovered on first need
    specs = [table.get(name) for name in names]
    return specs[0] is not None and specs[0] is specs[1]


class Settings(BaseSettings):
    """voice-infra's configuration; ``Settings()`` reads every source (see module doc).

    Invalid configuration raises :class:`ConfigError`; its message and ``errors`` never
    carry a rejected value that may be secret (see :mod:`voice_infra.masking`).
    """

    model_config = SettingsConfigDict(
        env_prefix="VOICE_INFRA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    storage: StorageSection = Field(default_factory=StorageSection)
    rate_limit: RateLimitSection = Field(default_factory=RateLimitSection)

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
            return
        except ValidationError as exc:
            errors = exc.errors()
            section = str(errors[0]["loc"][0]) if errors[0]["loc"] else "settings"
            secrets = secret_fragments("", [error.get("input") for error in errors])
            error = config_error(exc, section=section, backend=None, model=type(self),
                                 secrets=secrets)  # fmt: skip
        # Raised here, outside the except block: pydantic's ValidationError shows the
        # rejected input (a section holding a secret_key...), so it must be neither the
        # ConfigError's __cause__ nor its __context__.
        raise error

    def model_post_init(self, context: Any) -> None:
        self._origins = _ORIGINS.get({})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        assert isinstance(env_settings, EnvSettingsSource)
        layers: list[tuple[str, PydanticBaseSettingsSource]] = [("keyword argument", init_settings)]
        if not _KEYWORDS_ONLY.get():
            path = config_file_path()
            layers += [
                ("environment", env_settings),
                (f"file {path}", _TomlSource(settings_cls, path)),
            ]
        return (_LayeredSource(settings_cls, layers),)

    @classmethod
    def from_keywords(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults only: no ``VOICE_INFRA_*`` variable
        and no TOML file is read. For tests and for applications that own their config."""
        token = _KEYWORDS_ONLY.set(True)
        try:
            return cls(**values)
        finally:
            _KEYWORDS_ONLY.reset(token)

    def origin(self, dotted_key: str) -> str:
        """Where a value came from: ``keyword argument``, ``environment``, ``file ...``,
        or ``default``."""
        return self._origins.get(dotted_key, "default")

    def describe(self) -> list[tuple[str, Any, str]]:
        """``(key, value, origin)`` rows for every set option, secrets masked."""
        rows: list[tuple[str, Any, str]] = []
        for section_name in ("storage", "rate_limit"):
            section: BackendSection = getattr(self, section_name)
            rows.append((f"{section_name}.backend", section.backend,
                         self.origin(f"{section_name}.backend")))  # fmt: skip
            for key, value in sorted(section.options().items()):
                shown = _plain(mask_secret(key, value))  # masked before made text
                rows.append((f"{section_name}.{key}", shown, self.origin(f"{section_name}.{key}")))
        return rows


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [str(item) for item in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def dump_json(rows: list[tuple[str, Any, str]]) -> str:
    """``describe()`` rows as JSON (for ``voice-infra config --json``)."""
    return json.dumps([{"key": k, "value": v, "origin": o} for k, v, o in rows], indent=2,
                      default=str)  # fmt: skip
