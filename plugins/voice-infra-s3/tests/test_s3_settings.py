"""Settings validation, secrets and cheap discovery of the S3 plugin (no server needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from voice_infra_s3.settings import S3StorageSettings

import voice_infra as vi
from voice_infra.errors import ConfigError
from voice_infra.plugins import get_registry

BASE: dict[str, Any] = {
    "backend": "s3",
    "endpoint_url": "http://127.0.0.1:9000",
    "bucket": "voice",
    "access_key": "AKIAEXAMPLEKEY",
    "secret_key": "wJalrXUtnFEMI-super-secret",
}


def build(**overrides: Any) -> vi.StorageBackend:
    options = {**BASE, **overrides}
    for name in [k for k, v in options.items() if v is None]:
        del options[name]
    return vi.create_storage(vi.Settings(storage=options))


def test_failure_bound_is_the_documented_formula() -> None:
    # docs/s3.md, "Outages": 108 s with the defaults (3 x (5 + 30) + 1 + 2).
    assert S3StorageSettings(bucket="voice").failure_bound() == 108
    one = S3StorageSettings(bucket="voice", connect_timeout=1, read_timeout=2, max_attempts=1)
    assert one.failure_bound() == 3  # no retry, no backoff
    many = S3StorageSettings(bucket="voice", connect_timeout=1, read_timeout=1, max_attempts=8)
    assert many.failure_bound() == 8 * 2 + (1 + 2 + 4 + 8 + 16 + 20 + 20)  # backoff capped at 20


def test_defaults() -> None:
    settings = S3StorageSettings(bucket="voice")
    assert settings.endpoint_url is None
    assert settings.region == "us-east-1"
    assert settings.access_key is None and settings.secret_key is None
    assert settings.addressing_style == "path"
    assert settings.multipart_threshold == settings.multipart_part_size == 8 * 1024 * 1024
    assert settings.upload_concurrency == 4
    assert settings.max_pool_connections == 50
    assert (settings.connect_timeout, settings.read_timeout) == (5.0, 30.0)
    assert (settings.retry_mode, settings.max_attempts) == ("standard", 3)
    assert settings.list_page_size == 1000
    assert settings.chunk_size == 1024 * 1024  # not botocore's 1 KiB


def test_valid_minio_configuration_builds() -> None:
    storage = build(
        multipart_part_size="16MiB", multipart_threshold="32MiB",
        public_endpoint_url="https://media.example.com", addressing_style="virtual",
    )  # fmt: skip
    settings: Any = storage.settings
    assert settings.multipart_part_size == 16 * 1024 * 1024
    assert settings.public_endpoint_url == "https://media.example.com"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"multipart_part_size": "1MiB"}, r"multipart_part_size: must be at least 5MiB"),
        ({"multipart_part_size": 5 * 1024 * 1024 - 1}, r"at least 5MiB"),
        ({"multipart_threshold": "4MB"}, r"multipart_threshold: must be at least 5MiB"),
        ({"multipart_part_size": "6GiB"}, r"at most 5GiB"),
        ({"endpoint_url": "ftp://minio:9000"}, r"endpoint_url: .*http:// or https://"),
        ({"endpoint_url": "127.0.0.1:9000"}, r"endpoint_url: .*http:// or https://"),
        ({"endpoint_url": "http://"}, r"endpoint_url: .*with a host"),
        ({"endpoint_url": "http://minio:99999"}, r"endpoint_url: .*invalid port"),
        ({"endpoint_url": "http://u:p@minio:9000"}, r"must not contain credentials"),
        ({"public_endpoint_url": "media.example.com"}, r"public_endpoint_url: .*http"),
        ({"endpoint": "http://x"}, r"endpoint: unknown key; did you mean 'endpoint_url'\?"),
        ({"bucket": None}, r"bucket: required key is missing"),
        ({"bucket": "Voice_Files"}, r"bucket: must be a valid S3 bucket name"),
        ({"bucket": "ab"}, r"bucket: must be a valid S3 bucket name"),
        ({"bucket": "192.168.1.1"}, r"must not look like an IP address"),
        ({"secret_key": None}, r"set both access_key and secret_key"),
        ({"addressing_style": "dns"}, r"addressing_style"),
        ({"retry_mode": "forever"}, r"retry_mode"),
        ({"max_attempts": 0}, r"max_attempts"),
        ({"list_page_size": 5000}, r"list_page_size"),
        ({"upload_concurrency": 0}, r"upload_concurrency"),
        ({"read_timeout": 0}, r"read_timeout"),
        ({"presign_ttl": 8 * 24 * 3600}, r"presign_ttl"),
    ],
)
def test_invalid_settings_are_config_errors(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        build(**overrides)
    message = str(caught.value)
    assert "[storage] (backend 's3')" in message
    assert "wJalrXUtnFEMI" not in message


def test_secrets_never_shown() -> None:
    storage = build(session_token="FwoGZXIvYXdzE-token")
    settings = storage.settings
    for text in (repr(settings), str(settings), repr(storage.settings.model_dump())):
        assert "wJalrXUtnFEMI" not in text
        assert "FwoGZXIvYXdzE" not in text
    # A bad value of a secret key is not echoed either.
    with pytest.raises(ConfigError) as caught:
        build(secret_key=["wJalrXUtnFEMI-in-a-list"])
    assert "wJalrXUtnFEMI" not in str(caught.value)
    whole = vi.Settings(storage={**BASE})
    assert "wJalrXUtnFEMI" not in repr(whole)


def test_plugin_is_discovered_with_its_alias() -> None:
    registry = get_registry()
    spec = registry.get("storage", "s3")
    assert registry.get("storage", "minio") is spec
    assert spec.distribution == "voice-infra-s3"
    assert spec.install_hint == "pip install voice-infra-s3"
    assert set(spec.capabilities) == {
        "presign",
        "multipart",
        "range_read",
        "persistent",
        "versioned_read",
    }


def test_discovery_and_validation_do_not_import_aiobotocore() -> None:
    code = textwrap.dedent(
        """
        import sys
        from voice_infra.plugins import get_registry
        registry = get_registry()
        list(registry.iter_backends())
        spec = registry.get("storage", "s3")
        spec.load_settings_model().model_validate({"bucket": "voice"})
        heavy = sorted(m for m in ("aiobotocore", "botocore", "aiohttp") if m in sys.modules)
        assert not heavy, heavy
        import voice_infra as vi
        vi.create_storage(vi.Settings(storage={"backend": "s3", "bucket": "voice"}))
        assert "aiobotocore" in sys.modules  # imported once the backend is built
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
