"""Settings validation, secrets, storage options, selection by configuration and cheap
discovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from voice_infra_limits.backend import LimitsRateLimiter
from voice_infra_limits.settings import LimitsRateLimiterSettings

import voice_infra as vi


def _create(**options: Any) -> vi.RateLimiter:
    return vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "limits", **options}))


def _options(**options: Any) -> dict[str, Any]:
    limiter = _create(**options)
    assert isinstance(limiter, LimitsRateLimiter)
    return limiter.storage_options()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"storage_uri": "http://127.0.0.1:6379"}, "no async storage for the scheme 'http'"),
        ({"storage_uri": "127.0.0.1:6379"}, "the storage URI has no scheme"),
        ({"storage_uri": "postgres://db/rl"}, "for example memory://, redis://"),
        ({"strategy": "token-bucket"}, "'moving-window', 'fixed-window' or 'sliding-window"),
        ({"strategy": "sliding_log"}, "moving-window"),
        ({"fail_mode": "maybe"}, "'open', 'closed' or 'raise'"),
        ({"storage_url": "memory://"}, "did you mean 'storage_uri'?"),
        ({"stratgy": "fixed-window"}, "did you mean 'strategy'?"),
        ({"timeout": 0}, "greater than 0"),
        ({"pool_size": 0}, "greater than or equal to 1"),
        ({"key_prefix": "a b"}, "key_prefix must be 1-64 characters"),
        ({"storage_options": "socket_timeout=1"}, "valid dictionary"),
    ],
)
def test_invalid_settings_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(vi.ConfigError, match=r"\[rate_limit\] \(backend 'limits'\)") as caught:
        _create(**options)
    text = str(caught.value)
    assert message in text
    assert f"{next(iter(options))}:" in text  # the message names the key


def test_strategy_the_storage_lacks_is_a_config_error() -> None:
    # limits' memcached storage has no moving window.
    with pytest.raises(vi.ConfigError) as caught:
        _create(storage_uri="memcached://127.0.0.1:11211", strategy="moving-window")
    text = str(caught.value)
    assert "strategy:" in text and "does not implement 'moving-window'" in text
    assert "use one of: fixed-window, sliding-window-counter" in text


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("memory://", "async+memory"),
        ("async+memory://", "async+memory"),
        ("redis://127.0.0.1:6379/0", "async+redis"),
        ("async+redis://127.0.0.1:6379/0", "async+redis"),
        ("rediss://cache:6380/0", "async+rediss"),
        ("redis+sentinel://127.0.0.1:26379/mymaster", "async+redis+sentinel"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "async+redis+cluster"),
        ("valkey://127.0.0.1:6379", "async+valkey"),
        ("memcached://127.0.0.1:11211", "async+memcached"),
        ("mongodb://127.0.0.1:27017", "async+mongodb"),
    ],
)
def test_documented_uris_are_accepted(uri: str, scheme: str) -> None:
    settings = LimitsRateLimiterSettings(storage_uri=uri)
    assert settings.scheme == scheme
    assert settings.async_uri.startswith("async+") and settings.async_uri.endswith(
        uri.removeprefix("async+")
    )


def test_defaults() -> None:
    settings = LimitsRateLimiterSettings()
    assert settings.storage_uri.get_secret_value() == "memory://"
    assert (settings.strategy, settings.key_prefix, settings.fail_mode) == (
        "moving-window", "vi", "open",
    )  # fmt: skip
    assert settings.storage_options == {} and settings.timeout == 1.0
    assert settings.pool_size == 100  # redis-py's own default pool size
    assert [str(p) for p in settings.policies] == ["10/second", "100/minute"]


def test_selected_by_configuration() -> None:
    limiter = _create(
        storage_uri="redis://127.0.0.1:6379/0", strategy="fixed-window",
        policies=["5/second"], fail_mode="closed",
    )  # fmt: skip
    assert isinstance(limiter, LimitsRateLimiter)
    assert limiter.backend_name == "limits"
    assert limiter.settings.strategy == "fixed-window" and limiter.settings.fail_mode == "closed"
    assert [str(p) for p in limiter.policies] == ["5/second"]


def test_storage_options_for_redis_uris() -> None:
    limiter = _create(storage_uri="redis://127.0.0.1:6379/0", timeout=0.4)
    assert isinstance(limiter, LimitsRateLimiter)
    options = limiter.storage_options()
    assert options["implementation"] == "redispy"
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.2
    assert options["retry"].get_retries() == 1
    assert options["max_connections"] == 100  # pool_size: as many as checks in flight
    assert _options(storage_uri="redis://h:1/0", pool_size=7)["max_connections"] == 7
    assert _options(storage_uri="redis+cluster://h:1", pool_size=7)["max_connections"] == 7
    chosen = _create(
        storage_uri="redis://127.0.0.1:6379/0",
        storage_options={"implementation": "coredis", "socket_timeout": 3},
    )
    assert isinstance(chosen, LimitsRateLimiter)
    user = chosen.storage_options()
    assert (user["implementation"], user["socket_timeout"]) == ("coredis", 3)
    assert "retry" not in user  # a redis-py object makes no sense for coredis
    memory = _create()
    assert isinstance(memory, LimitsRateLimiter)
    assert memory.storage_options() == {"wrap_exceptions": False}


@pytest.mark.asyncio
async def test_missing_driver_names_the_extra_to_install() -> None:
    pytest.importorskip("voice_infra_limits")
    try:
        import motor  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - depends on the environment
        pytest.skip("motor is installed")
    limiter = _create(storage_uri="mongodb://127.0.0.1:1")
    with pytest.raises(vi.BackendDependencyError) as caught:
        await limiter.__aenter__()
    assert "pip install 'voice-infra-limits[mongodb]'" in str(caught.value)
    assert isinstance(caught.value, vi.VoiceServiceError)


def test_password_never_shown() -> None:
    uri = "redis://app:hunter2@cache.internal:6380/1"
    limiter = _create(storage_uri=uri, storage_options={"password": "s3cret"})
    assert isinstance(limiter, LimitsRateLimiter)
    settings = limiter.settings
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "hunter2" not in repr(limiter.__dict__)
    assert vi.mask_url(settings.storage_uri) == "redis://app:**********@cache.internal:6380/1"
    assert "hunter2" not in repr(vi.Settings(rate_limit={"backend": "limits", "storage_uri": uri}))
    for bad in ("http://app:hunter2@cache.internal", "hunter2@cache.internal"):
        with pytest.raises(vi.ConfigError) as caught:
            _create(storage_uri=bad)
        assert "hunter2" not in str(caught.value)


def test_the_core_masking_rule_hides_query_passwords_and_multi_host_passwords() -> None:
    query = LimitsRateLimiterSettings(storage_uri="redis://h:1/0?password=hunter2&db=1")
    assert vi.mask_url(query.storage_uri) == "redis://h:1/0?password=**********&db=1"
    cluster = LimitsRateLimiterSettings(storage_uri="redis+cluster://:hunter2@h:1,h:2")
    assert vi.mask_url(cluster.storage_uri) == "redis+cluster://:**********@h:1,h:2"


def test_cli_config_masks_the_uri_password(tmp_path: Path) -> None:
    (tmp_path / "voice_infra.toml").write_text(
        '[rate_limit]\nbackend = "limits"\n'
        'storage_uri = "redis://app:hunter2@cache.internal:6380/1"\n'
        'storage_options = { password = "s3cret", socket_timeout = 0.5 }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "voice_infra.cli", "config", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert "hunter2" not in output and "s3cret" not in output
        assert "redis://app:**********@cache.internal:6380/1" in result.stdout


def test_discovery_and_settings_do_not_import_limits() -> None:
    code = textwrap.dedent(
        """
        import sys
        import voice_infra as vi
        from voice_infra.plugins import get_registry
        registry = get_registry()
        spec = registry.get("rate_limiter", "limits")
        assert spec.distribution == "voice-infra-limits", spec.distribution
        assert spec.capabilities == {"distributed", "persistent"}
        spec.load_settings_model()
        heavy = [m for m in ("limits", "redis", "coredis") if m in sys.modules]
        assert not heavy, f"discovery imported {heavy}"
        vi.create_rate_limiter(vi.Settings(rate_limit={"backend": "limits"}))
        assert "limits" in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
