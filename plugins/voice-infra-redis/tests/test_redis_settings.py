"""Settings validation, secrets, URL parsing and cheap discovery."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from voice_infra_redis._resp import RespEndpoint
from voice_infra_redis.settings import RedisRateLimiterSettings, mask_url

import voice_infra as vi


def _create(**options: Any) -> vi.RateLimiter:
    return vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "redis", **options}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://127.0.0.1:6379"}, "unsupported Redis URL scheme 'http'"),
        ({"url": "127.0.0.1:6379"}, "unsupported Redis URL scheme"),
        ({"url": "redis://127.0.0.1:6379/abc"}, "database number"),
        ({"url": "redis://127.0.0.1:99999/0"}, "not a valid URL"),
        ({"url": "redis:///0"}, "names no host"),
        ({"url": "unix://"}, "socket path"),
        ({"fail_mode": "maybe"}, "'open', 'closed' or 'raise'"),
        ({"algorithm": "token_bucket"}, "sliding_log"),
        ({"pool_sise": 10}, "did you mean 'pool_size'?"),
        ({"socket_timeout": 0}, "greater than 0"),
        ({"pool_timeout": 0}, "greater than 0"),
        ({"key_prefix": "a{b}"}, "hash tag"),
        ({"cluster": True, "url": "unix:///tmp/redis.sock"}, "cluster = true needs"),
        ({"cluster": True, "url": "redis://127.0.0.1:7000/3"}, "only database 0"),
    ],
)
def test_invalid_settings_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(vi.ConfigError, match="rate_limit") as caught:
        _create(**options)
    assert message in str(caught.value)


def test_password_never_shown() -> None:
    url = "redis://app:hunter2@cache.internal:6380/1"
    limiter = _create(url=url)
    settings = limiter.settings
    assert isinstance(settings, RedisRateLimiterSettings)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "hunter2" not in repr(limiter.__dict__)
    assert mask_url(settings.url) == "redis://app:**********@cache.internal:6380/1"
    with pytest.raises(vi.ConfigError) as caught:
        _create(url="redis://app:hunter2@cache.internal:6380/oops")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(vi.ConfigError) as caught:
        _create(url="http://app:hunter2@cache.internal")
    assert "hunter2" not in str(caught.value)


def test_password_not_in_core_settings_repr() -> None:
    settings = vi.Settings(rate_limit={"backend": "redis", "url": "redis://:hunter2@h:1/0"})
    assert "hunter2" not in repr(settings)


def test_mask_url() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("rediss://:pw@[::1]:6380/0") == "rediss://:**********@[::1]:6380/0"
    assert mask_url("unix://:pw@/run/redis.sock?db=2") == "unix://:**********@/run/redis.sock?db=2"


def test_defaults() -> None:
    settings = RedisRateLimiterSettings()
    assert settings.url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert (settings.fail_mode, settings.algorithm, settings.key_prefix) == (
        "open", "sliding_log", "vi",
    )  # fmt: skip
    assert settings.socket_timeout < 1 and settings.breaker_failure_threshold >= 1


def test_endpoint_parsing() -> None:
    plain = RespEndpoint.from_url("redis://u%40x:p%3Aw@cache:6380/3")
    assert (plain.host, plain.port, plain.db, plain.username, plain.password) == (
        "cache", 6380, 3, "u@x", "p:w",
    )  # fmt: skip
    assert plain.ssl_context is None
    unix = RespEndpoint.from_url("unix:///run/redis.sock?db=4")
    assert (unix.path, unix.db, unix.host) == ("/run/redis.sock", 4, None)
    tls = RespEndpoint.from_url("rediss://cache")
    assert tls.ssl_context is not None and tls.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert tls.port == 6379 and tls.db == 0
    lax = RespEndpoint.from_url("rediss://cache/0?ssl_cert_reqs=none")
    assert lax.ssl_context is not None and lax.ssl_context.verify_mode == ssl.CERT_NONE


def test_discovery_and_settings_do_not_import_redis() -> None:
    code = textwrap.dedent(
        """
        import sys
        import voice_infra as vi
        from voice_infra.plugins import get_registry
        registry = get_registry()
        names = [spec.name for kind, spec in registry.iter_backends() if kind == "rate_limiter"]
        assert "redis" in names, names
        spec = registry.get("rate_limiter", "redis")
        assert spec.capabilities == {"exact", "distributed", "persistent"}
        spec.load_settings_model().model_validate({"url": "redis://h:1/0"})
        assert "redis" not in sys.modules, "discovery imported redis"
        limiter = vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "redis"}))
        assert "redis" in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_config_masks_the_url_password(tmp_path: Path) -> None:
    (tmp_path / "voice_infra.toml").write_text(
        '[rate_limit]\nbackend = "redis"\nurl = "redis://app:hunter2@cache.internal:6380/1"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "voice_infra.cli", "config", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout + result.stderr
        assert "redis://app:**********@cache.internal:6380/1" in result.stdout
