"""The ``[web]`` settings of ``voice-infra serve``, from the same sources as the backends'
and in the same order: keyword arguments, ``VOICE_INFRA_WEB__*`` environment variables,
the same variables in the ``.env`` file and as files of the secrets directory
(``VOICE_INFRA_SECRETS_DIR``), then the ``[web]`` table of the TOML file
(``$VOICE_INFRA_CONFIG``, else ``./voice_infra.toml``)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from voice_infra.config import config_file_path, deployment_sources
from voice_infra.errors import ConfigError
from voice_infra.ratelimit import Policies, parse_policies

__all__ = ["MIN_SECRET_BYTES", "WebSettings", "load_secret"]

MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash output are guessable (RFC 7518 3.2)

DEFAULT_AUDIO_TYPES = (
    "audio/webm", "audio/ogg", "audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg",
    "audio/mp4", "audio/aac", "audio/flac", "audio/x-flac", "audio/opus",
)  # fmt: skip


class _WebTomlSource(PydanticBaseSettingsSource):
    """The ``[web]`` table of the configuration file, if any."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        path = config_file_path()
        if path is None:
            return {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:  # its text is a position, never the content
            error = ConfigError(f"{path} is not valid TOML: {exc}")
        except (OSError, UnicodeDecodeError) as exc:
            error = ConfigError(f"cannot read {path}: {type(exc).__name__}")
        else:
            web = data.get("web", {})
            if not isinstance(web, dict):
                raise ConfigError(f"[web] in {path} must be a table of options")
            return web
        raise error  # outside the except block: no chain to the file's content


class WebSettings(BaseSettings):
    """Options of the HTTP service (``[web]``)."""

    model_config = SettingsConfigDict(
        env_prefix="VOICE_INFRA_WEB__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    secret: SecretStr | None = Field(
        default=None,
        description="HS256 key of the bearer tokens; generated into secret_file when unset.",
    )
    secret_file: Path = Field(
        default=Path("voice-infra-data/web-secret"),
        description="Where the generated secret is kept (created owner-only on first run).",
    )
    token_ttl: int = Field(default=86_400, ge=1, le=366 * 86_400, description="Seconds.")
    public_base_url: str | None = Field(
        default=None,
        description="The service's URL as clients reach it (default http://HOST:PORT of "
        "serve); presigned URLs of fs and memory point under it.",
    )
    files_path: str = Field(
        default="/voice-files", description="Path under which presigned URLs are served."
    )
    max_upload_size: ByteSize = Field(default=ByteSize(25 * 1024 * 1024), gt=0)
    allowed_content_types: tuple[str, ...] = Field(default=DEFAULT_AUDIO_TYPES, min_length=1)
    rate_limit: bool = Field(default=True, description="The middleware on every request.")
    exempt_paths: tuple[str, ...] = Field(
        default=("/healthz", "/readyz", "/metrics"),
        description="Paths the middleware does not limit; a trailing '*' matches a prefix.",
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="Addresses or networks whose X-Forwarded-For is believed.",
    )
    identity: Literal["user", "client", "header"] = Field(
        default="user",
        description="What the middleware limits: the token's user (else the client "
        "address), the client address, or the value of identity_header.",
    )
    identity_header: str = "X-Api-Key"
    upload_policies: Policies = Field(
        default=parse_policies(["60/minute", "2000/day"]),
        description="Per-user upload quota, in units of upload_cost_unit bytes.",
    )
    upload_cost_unit: ByteSize = Field(default=ByteSize(1024 * 1024), gt=0)

    @field_validator("files_path")
    @classmethod
    def _check_files_path(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "" or "?" in value:
            raise ValueError("files_path must be a path such as '/voice-files'")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
        return value

    @field_validator("allowed_content_types")
    @classmethod
    def _lower_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.strip().lower() for item in value)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
            return
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'web'}: {e['msg']}" for e in exc.errors()
            )
            error = ConfigError(f"invalid [web] settings: {problems}")
        raise error  # without the ValidationError, whose text may show the secret

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
        # The core's order: keywords, environment, .env file, secrets directory, TOML file.
        return (
            init_settings, env_settings, *deployment_sources(settings_cls),
            _WebTomlSource(settings_cls),
        )  # fmt: skip


def load_secret(settings: WebSettings) -> SecretStr:
    """The token key: ``secret`` when set, else the one in ``secret_file``, created
    (owner-only, 0600) on first use. Blocking file I/O: call it in a thread from async code.

    Several processes starting together agree on one key: each writes a candidate under a
    unique name and hard-links it into place; the loser reads the winner's.
    """
    if settings.secret is not None:
        if len(settings.secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"[web] secret must be at least {MIN_SECRET_BYTES} bytes; generate one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return settings.secret
    path = settings.secret_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(candidate, path)
        finally:
            candidate.unlink(missing_ok=True)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            # As the fs backend's signing key: a key others can read lets them mint tokens.
            raise ConfigError(
                f"the web secret file {path} is readable by others (mode "
                f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        error = ConfigError(f"cannot read the web secret file {path}: {type(exc).__name__}")
    else:
        if len(text.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the web secret file {path} holds fewer than {MIN_SECRET_BYTES} bytes; "
                "delete it to have a new one generated (tokens issued so far stop working)"
            )
        return SecretStr(text)
    raise error
