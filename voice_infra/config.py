"""Configuration: which backends to use and their options.

Sources, highest priority first: keyword arguments, ``VOICE_INFRA_*`` environment
variables (nested with ``__``: ``VOICE_INFRA_STORAGE__BUCKET``), the same variables in a
``.env`` file (``VOICE_INFRA_ENV_FILE``, else ``./.env`` when present), files named like
those variables in the secrets directory ``VOICE_INFRA_SECRETS_DIR`` (as Docker and
Kubernetes mount secrets), the TOML file named by ``VOICE_INFRA_CONFIG`` (else
``./voice_infra.toml`` when present), then defaults (``fs`` storage in the working
directory, ``memory`` rate limiter, ``memory`` cache).

Each ``[storage]`` / ``[rate_limit]`` / ``[cache]`` section names a ``backend``; the rest
of the section is validated by that backend's own settings model when the backend is
created. When a higher-priority source switches a section to another backend, the options
that lower sources gave for the previous backend are dropped, since they belong to it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from voice_infra.errors import ConfigError
from voice_infra.kinds import (
    CACHE,
    RATE_LIMITER,
    STORAGE,
    KindSpec,
    declared_kinds,
    get_kind,
    kind_for_section,
)
from voice_infra.layers import LayerConfig, parse_layer_list
from voice_infra.masking import hide_secrets, mask_secret, reveal_secrets, secret_fragments
from voice_infra.plugins import config_error, get_registry
from voice_infra.ratelimit import Policies

__all__ = [
    "CacheSection",
    "RateLimitSection",
    "Settings",
    "StorageSection",
    "config_file_path",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "VOICE_INFRA_"
CONFIG_ENV = "VOICE_INFRA_CONFIG"
DEFAULT_CONFIG_FILE = "voice_infra.toml"
ENV_FILE_ENV = "VOICE_INFRA_ENV_FILE"
DEFAULT_ENV_FILE = ".env"
SECRETS_DIR_ENV = "VOICE_INFRA_SECRETS_DIR"
# Variables that choose files or plugins: read from the process environment only.
_CONTROL_VARIABLES = (CONFIG_ENV, ENV_FILE_ENV, SECRETS_DIR_ENV, "VOICE_INFRA_PLUGINS",
                      "VOICE_INFRA_STRICT_PLUGINS")  # fmt: skip
# Sections of the same file read by optional parts of voice-infra with settings models of
# their own (``[web]``: voice_infra.web.settings); Settings leaves them to those parts.
APPLICATION_SECTIONS = frozenset({"web"})


class BackendSection(BaseModel):
    """A config section: ``backend`` plus that backend's own options (validated later)."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    backend: str
    #: The section's layers, outermost first (see :mod:`voice_infra.layers`); only their
    #: shape is checked here, their names and options when the backend is created.
    layers: tuple[LayerConfig, ...] | None = None

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

    @field_validator("layers", mode="before")
    @classmethod
    def _parse_layers(cls, value: Any) -> Any:
        return None if value is None else parse_layer_list(reveal_secrets(value))

    @model_serializer(mode="wrap")
    def _without_unset_layers(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A section without layers dumps as it did before layers existed.
        data = handler(self)
        if isinstance(data, dict) and data.get("layers", 0) is None:
            del data["layers"]
        return data

    def options(self) -> dict[str, Any]:
        """The options for the selected backend's settings model (``layers`` left out)."""
        values = {key: reveal_secrets(value) for key, value in (self.model_extra or {}).items()}
        for name in type(self).model_fields:
            if name not in ("backend", "layers") and getattr(self, name) is not None:
                values[name] = getattr(self, name)
        return values

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_secret(name, value) if name else value)


class StorageSection(BackendSection):
    """The ``[storage]`` section."""

    backend: str = STORAGE.default_backend


class RateLimitSection(BackendSection):
    """The ``[rate_limit]`` section; ``policies`` is checked as soon as settings load."""

    backend: str = RATE_LIMITER.default_backend
    policies: Policies | None = None


class CacheSection(BackendSection):
    """The ``[cache]`` section."""

    backend: str = CACHE.default_backend


# -- where the values come from -------------------------------------------------------


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


def _env_file() -> tuple[Path, str] | None:
    """The ``.env`` file in use and how to show it: ``$VOICE_INFRA_ENV_FILE``, else
    ``./.env`` if present."""
    explicit = os.environ.get(ENV_FILE_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{ENV_FILE_ENV}={explicit!r} does not name a file; fix the path or unset it"
            )
        return path, explicit
    default = Path(DEFAULT_ENV_FILE)
    return (default, f"./{DEFAULT_ENV_FILE}") if default.is_file() else None


def _secrets_dir() -> tuple[Path, str] | None:
    """The secrets directory named by ``$VOICE_INFRA_SECRETS_DIR``, if any."""
    explicit = os.environ.get(SECRETS_DIR_ENV)
    if not explicit:
        return None
    path = Path(explicit).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{SECRETS_DIR_ENV}={explicit!r} does not name a directory; give the directory "
            "where the secrets are mounted (for example /run/secrets) or unset it"
        )
    return path, explicit


def _unreadable(what: Path, exc: OSError | UnicodeDecodeError) -> ConfigError:
    """The error for a file we cannot take: without ``exc`` as cause, since a
    ``UnicodeDecodeError`` carries the file's bytes (a secret) in its ``args``."""
    if isinstance(exc, UnicodeDecodeError):
        return ConfigError(f"{what} is not UTF-8 text (byte {exc.start}); save it as UTF-8")
    return ConfigError(f"cannot read {what}: {exc.strerror or type(exc).__name__}")


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as exc:  # its text is a position, never the content
        error = ConfigError(f"{path} is not valid TOML: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        error = _unreadable(path, exc)
    raise error  # outside the except block: no chain to the file's content


class _DotEnvSource(DotEnvSettingsSource):
    """The ``.env`` file, parsed by pydantic-settings (python-dotenv), but read as the
    environment is: only ``VOICE_INFRA_*`` variables that name a setting count, since the
    file's other keys belong to other programs (pydantic-settings would reject them as
    extra keys; its ``dotenv_filtering="only_existing"`` does this on recent versions)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path
        super().__init__(settings_cls, env_file=path, env_file_encoding="utf-8")

    def _load_env_vars(self) -> Mapping[str, str | None]:
        try:
            variables = super()._load_env_vars()
        except (OSError, UnicodeDecodeError) as exc:
            error = _unreadable(self.path, exc)
        else:
            ignored = [name for name in _CONTROL_VARIABLES
                       if self._apply_case_sensitive(name) in variables]  # fmt: skip
            if ignored:
                logger.warning(
                    "%s in %s is ignored: variables that choose files and plugins are read "
                    "from the environment only", ", ".join(ignored), self.path,
                )  # fmt: skip
            return variables
        raise error

    def __call__(self) -> dict[str, Any]:
        return EnvSettingsSource.__call__(self)


class _SecretsDirSource(EnvSettingsSource):
    """A secrets directory read as environment variables: each file named like a
    ``VOICE_INFRA_*`` variable (any case) holds its value, surrounding whitespace stripped
    as pydantic-settings' secrets sources do. Files with other names (other programs'
    secrets) are never opened, and a link leading out of the directory is refused.

    pydantic-settings' ``NestedSecretsSettingsSource`` does the same mapping but needs a
    newer pydantic-settings than we require and reads every file of the directory."""

    def __init__(self, settings_cls: type[BaseSettings], directory: Path, shown: str) -> None:
        self.directory, self.shown = directory, shown
        self.file_names: dict[str, str] = {}  # variable name as looked up -> file name
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        values: dict[str, str | None] = {}
        try:
            root = self.directory.resolve()
            entries = sorted(self.directory.iterdir())
        except OSError as exc:
            error = _unreadable(self.directory, exc)
        else:
            for entry in entries:
                if entry.name.upper().startswith(ENV_PREFIX):
                    text = self._read(root, entry)
                    if text is not None:
                        name = self._apply_case_sensitive(entry.name)
                        values[name] = text.strip()
                        self.file_names[name] = entry.name
            return values
        raise error  # outside the except block, as every error about a file here

    def _read(self, root: Path, entry: Path) -> str | None:
        """The text of the secret file ``entry``; ``None`` if it is not a file."""
        try:
            resolved = entry.resolve()
            if root not in resolved.parents:
                error = ConfigError(
                    f"{entry} leads out of {SECRETS_DIR_ENV} ({self.shown}); "
                    "put the secret itself in the directory"
                )
            elif not resolved.is_file():
                return None
            else:
                return resolved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            error = _unreadable(entry, exc)
        except RuntimeError:  # a link loop, before Python 3.13
            error = ConfigError(f"{entry} is a symbolic link loop")
        raise error

    def origin(self, section: str, key: str | None) -> str:
        """``secrets dir DIR (FILE)``: the file(s) that gave ``section.key``."""
        head = self._apply_case_sensitive(f"{self.env_prefix}{section}")
        delimiter = self.env_nested_delimiter or "__"
        whole = {head} if key is None else {head, f"{head}{delimiter}{key}"}
        files = sorted(
            file
            for name, file in self.file_names.items()
            if name in whole or (key is not None and name.startswith(f"{head}{delimiter}{key}"
                                                                      f"{delimiter}"))
        )  # fmt: skip
        return f"secrets dir {self.shown} ({', '.join(files)})"


def _deployment_layers(settings_cls: type[BaseSettings]) -> list[_Layer]:
    """The ``.env`` file and the secrets directory in use, as layers of ``settings_cls``."""
    layers = []
    env_file = _env_file()
    if env_file is not None:
        path, shown = env_file
        layers.append(_Layer(f".env file {shown}", _DotEnvSource(settings_cls, path)))
    secrets_dir = _secrets_dir()
    if secrets_dir is not None:
        secrets = _SecretsDirSource(settings_cls, *secrets_dir)
        layers.append(_Layer(secrets.origin, secrets, selects_backend=False))
    return layers


def deployment_sources(settings_cls: type[BaseSettings]) -> list[PydanticBaseSettingsSource]:
    """The ``.env`` file (``VOICE_INFRA_ENV_FILE``, else ``./.env``) and the secrets
    directory (``VOICE_INFRA_SECRETS_DIR``) as pydantic-settings sources of
    ``settings_cls``, in that order: how an application section's own model (``[web]``)
    reads the same deployment sources as :class:`Settings`, between the environment and
    the TOML file."""
    return [layer.source for layer in _deployment_layers(settings_cls)]


Origin = str | Callable[[str, "str | None"], str]  # a source's label, or its label per key


@dataclass(frozen=True)
class _Origins:
    """Where each value came from, handed by the merging source to ``Settings`` inside
    the values (and taken out before validation)."""

    by_key: dict[str, str]


_ORIGINS_KEY = "__voice_infra_origins__"


@dataclass(frozen=True)
class _Layer:
    """One source, how its values' origin is shown, and whether it selects backends."""

    origin: Origin
    source: PydanticBaseSettingsSource
    # A source that holds values, not choices (the secrets directory): options it gives
    # without a `backend` belong neither to the default backend nor to the one a lower
    # source named, but to whichever backend the sources select in the end.
    selects_backend: bool = True

    def label(self, section: str, key: str | None) -> str:
        return self.origin(section, key) if callable(self.origin) else self.origin


class _LayeredSource(PydanticBaseSettingsSource):
    """Merges the sources per section, honouring backend switches, and records origins."""

    def __init__(self, settings_cls: type[BaseSettings], layers: list[_Layer]) -> None:
        super().__init__(settings_cls)
        self.layers = layers

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        origins: dict[str, str] = {}
        unattached: dict[str, set[str]] = {}  # per section: options tied to no backend yet
        for layer in reversed(self.layers):  # lowest priority first
            for name, value in _with_declared_sections(layer.source).items():
                if not isinstance(value, Mapping):
                    merged[name] = value
                    origins[name] = layer.label(name, None)
                    continue
                previous = merged.get(name)
                if previous is not None and not isinstance(previous, Mapping):
                    # A lower source's section that is no table (`storage = "s3"` in the
                    # file): kept, so that validation names it, rather than silently
                    # replaced by what a higher source adds to the section.
                    continue
                section = dict(previous) if isinstance(previous, Mapping) else {}
                free = unattached.setdefault(name, set())
                if "backend" in value and not _same_backend(
                    name, section.get("backend"), value["backend"]
                ):
                    # Another backend: the previous one's own options do not apply; those
                    # every backend of the kind accepts (key_prefix, policies...) still do.
                    common = _common_options(name)
                    dropped = {key for key in section if key not in common | free}
                    section = {k: v for k, v in section.items() if k not in dropped}
                    gone = {f"{name}.{key}" for key in dropped}
                    origins = {k: v for k, v in origins.items() if k not in gone}
                if layer.selects_backend or "backend" in value:
                    free -= set(value)
                else:
                    free |= set(value)
                for key, item in value.items():
                    section[key] = item
                    origins[f"{name}.{key}"] = layer.label(name, str(key))
                merged[name] = section
        # Secrets held in secret types from here on: pydantic-settings logs what a source
        # returns when PYDANTIC_SETTINGS_DEBUG is set.
        values = {name: hide_secrets(name, value) for name, value in merged.items()}
        return {**values, _ORIGINS_KEY: _Origins(origins)}


def _with_declared_sections(source: PydanticBaseSettingsSource) -> dict[str, Any]:
    """``source``'s values, plus, for a variable-like source, the sections of kinds that
    :class:`Settings` has no field for (kinds declared by plugins or tests):
    pydantic-settings reads variables only for declared fields."""
    values = source()
    if not isinstance(source, EnvSettingsSource):
        return values
    fields = Settings.model_fields
    delimiter = source.env_nested_delimiter or "__"
    for kind in declared_kinds():
        if kind.section in fields:
            continue
        head = f"{source.env_prefix}{kind.section}{delimiter}"
        head = head if source.case_sensitive else head.lower()
        section: dict[str, Any] = {}
        for name, value in source.env_vars.items():
            if value is not None and name.startswith(head):
                *path, last = name[len(head) :].split(delimiter)
                target = section
                for part in path:
                    target = target.setdefault(part, {})
                target[last] = value
        if section:
            values[kind.section] = {**section, **(values.get(kind.section) or {})}
    return values


def _common_options(section: str) -> frozenset[str]:
    """Options every backend of the section's kind accepts (``key_prefix``, ``policies``...)."""
    kind = kind_for_section(section)
    if kind is None:
        return frozenset()
    # The layers belong to the section, whichever backend it selects.
    return frozenset(cast(type[BaseModel], kind.settings_base_class()).model_fields) | {"layers"}


def _same_backend(section: str, lower: Any, higher: Any) -> bool:
    """Whether a higher source's ``backend`` keeps a lower source's options: the same
    backend once names are normalised, the section default filled in (a file that gives
    only ``path`` configures ``fs``) and aliases folded (``minio`` is ``s3``)."""
    kind = kind_for_section(section)
    if kind is None:
        return True
    names = [
        str(kind.default_backend if value is None else value).strip().lower()
        for value in (lower, higher)
    ]
    if names[0] == names[1]:
        return True
    table = get_registry().backends[kind.name]  # discovered on first need
    specs = [table.get(name) for name in names]
    return specs[0] is not None and specs[0] is specs[1]


class Settings(BaseSettings):
    """voice-infra's configuration; ``Settings()`` reads every source (see module doc).

    Invalid configuration raises :class:`ConfigError`; its message and ``errors`` never
    carry a rejected value that may be secret (see :mod:`voice_infra.masking`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        # Sections of kinds declared besides the built-in ones are extras, checked by
        # _check_sections; anything else is refused there.
        extra="allow",
        frozen=True,
        hide_input_in_errors=True,
    )

    storage: StorageSection = Field(default_factory=StorageSection)
    rate_limit: RateLimitSection = Field(default_factory=RateLimitSection)
    cache: CacheSection = Field(default_factory=CacheSection)

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
            return
        except ValidationError as exc:
            error = _settings_error(type(self), exc)
        # Raised here, outside the except block: pydantic's ValidationError shows the
        # rejected input (a section holding a secret_key...), so it must be neither the
        # ConfigError's __cause__ nor its __context__.
        raise error

    @model_validator(mode="wrap")
    @classmethod
    def _take_origins(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        origins: _Origins | None = None
        if isinstance(data, Mapping) and isinstance(data.get(_ORIGINS_KEY), _Origins):
            data = dict(data)
            origins = data.pop(_ORIGINS_KEY)
        settings = handler(data)
        if origins is not None:
            settings._origins = origins.by_key
        return settings

    @model_validator(mode="before")
    @classmethod
    def _check_sections(cls, data: Any) -> Any:
        """Sections of declared kinds without a field become :class:`BackendSection`
        (their kind's default backend filled in); any other unknown key is an error."""
        if not isinstance(data, Mapping):
            return data
        checked = dict(data)
        for name, value in data.items():
            if name in cls.model_fields or name == _ORIGINS_KEY:
                continue
            if name in APPLICATION_SECTIONS:
                del checked[name]  # not a backend section: its own model reads it
                continue
            kind = kind_for_section(name)
            if kind is None:
                known = [k.section for k in declared_kinds()]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise ValueError(
                    f"unknown configuration section [{name}]{hint} Sections: "
                    + ", ".join(f"[{k}]" for k in known)
                )
            if isinstance(value, BackendSection):
                continue
            if not isinstance(value, Mapping):
                raise ValueError(f"[{name}] must be a table of options, such as backend = ...")
            checked[name] = BackendSection.model_validate(
                {"backend": kind.default_backend, **value}
            )
        return checked

    def section(self, kind: str | KindSpec) -> BackendSection:
        """The config section of ``kind`` (a kind name such as ``"storage"``, or its
        declaration); a kind the configuration does not mention gets its default backend."""
        spec = get_kind(kind)
        if spec.section in type(self).model_fields:
            return cast(BackendSection, getattr(self, spec.section))
        extra = (self.model_extra or {}).get(spec.section)
        if isinstance(extra, BackendSection):
            return extra
        return BackendSection(backend=spec.default_backend)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings' order (keywords, environment, .env, secrets), then the TOML
        # file: a file kept with the code is overridden by what a deployment gives. The
        # .env file and the secrets directory are found through our own variables, at
        # each call, rather than through model_config.
        assert isinstance(init_settings, InitSettingsSource)
        assert isinstance(env_settings, EnvSettingsSource)
        layers = [_Layer("keyword argument", init_settings), _Layer("environment", env_settings)]
        layers += _deployment_layers(settings_cls)
        config_file = config_file_path()
        if config_file is not None:
            layers.append(_Layer(f"file {config_file}", _toml_source(settings_cls, config_file)))
        return (_LayeredSource(settings_cls, layers),)

    @classmethod
    def from_keywords(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults only: no ``VOICE_INFRA_*`` variable,
        no ``.env`` file, no secrets directory and no TOML file is read. For tests and for
        applications that own their config."""
        keywords = InitSettingsSource(cls, init_kwargs=values)
        data = _LayeredSource(cls, [_Layer("keyword argument", keywords)])()
        settings = cls.__new__(cls)
        try:
            # pydantic's own validation: BaseSettings.__init__, which consults the
            # sources (and which model_validate calls too), is left out.
            BaseModel.__init__(settings, **data)
            return settings
        except ValidationError as exc:
            error = _settings_error(cls, exc)
        raise error  # outside the except block, as in __init__

    def origin(self, dotted_key: str) -> str:
        """Where a value came from: ``keyword argument``, ``environment``,
        ``.env file PATH``, ``secrets dir DIR (FILE)``, ``file PATH`` or ``default``."""
        return self._origins.get(dotted_key, "default")

    def describe(self) -> list[tuple[str, Any, str]]:
        """``(key, value, origin)`` rows for every set option, secrets masked."""
        rows: list[tuple[str, Any, str]] = []
        for kind in declared_kinds():
            section_name = kind.section
            section = self.section(kind)
            rows.append((f"{section_name}.backend", section.backend,
                         self.origin(f"{section_name}.backend")))  # fmt: skip
            if section.layers is not None:
                stack = [entry.as_config() for entry in section.layers]
                rows.append((f"{section_name}.layers", stack,
                             self.origin(f"{section_name}.layers")))  # fmt: skip
            for key, value in sorted(section.options().items()):
                shown = _plain(mask_secret(key, value))  # masked before made text
                rows.append((f"{section_name}.{key}", shown, self.origin(f"{section_name}.{key}")))
        return rows


def _settings_error(model: type[Settings], exc: ValidationError) -> ConfigError:
    """The :class:`ConfigError` for settings that failed validation (see ``config_error``)."""
    errors = exc.errors()
    section = str(errors[0]["loc"][0]) if errors[0]["loc"] else "settings"
    secrets = secret_fragments("", [error.get("input") for error in errors])
    return config_error(exc, section=section, backend=None, model=model, secrets=secrets)


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
