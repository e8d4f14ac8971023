"""``[web]``: read from the same TOML file as the backends and from VOICE_INFRA_WEB__*
variables; the token secret generated owner-only on first use."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from voice_infra import ConfigError, Settings
from voice_infra.web.settings import WebSettings, load_secret

CONFIG = """
[storage]
backend = "memory"

[web]
max_upload_size = "1MiB"
trusted_proxies = ["10.0.0.0/8"]
"""


def test_the_web_section_shares_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "voice_infra.toml").write_text(CONFIG)
    assert Settings().storage.backend == "memory"  # the core leaves [web] alone
    web = WebSettings()
    assert web.max_upload_size == 1024 * 1024
    assert web.trusted_proxies == ("10.0.0.0/8",)
    monkeypatch.setenv("VOICE_INFRA_WEB__MAX_UPLOAD_SIZE", "2MiB")
    assert WebSettings().max_upload_size == 2 * 1024 * 1024  # the environment wins


def test_bad_web_settings_are_config_errors_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        WebSettings(trusted_proxies=["not-an-address"])
    with pytest.raises(ConfigError, match="at least 32 bytes") as caught:
        load_secret(WebSettings(secret="short-secret-value"))
    assert "short-secret-value" not in str(caught.value)


def test_the_secret_is_generated_once_owner_only(tmp_path: Path) -> None:
    settings = WebSettings(secret_file=tmp_path / "state" / "web-secret")
    first = load_secret(settings)
    assert load_secret(settings).get_secret_value() == first.get_secret_value()
    mode = stat.S_IMODE((tmp_path / "state" / "web-secret").stat().st_mode)
    assert mode == 0o600
    assert len(first.get_secret_value()) >= 32
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / "web-secret"]


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web-secret"
    path.write_text("k" * 64)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); run: chmod 600"):
        load_secret(WebSettings(secret_file=path))
    path.chmod(0o600)
    assert load_secret(WebSettings(secret_file=path)).get_secret_value() == "k" * 64


SECRET = "web-secret-from-a-deployment-source-0123456789"


def test_the_secret_comes_from_the_secrets_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the backends' secrets do: a file named like the variable, newline stripped."""
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "VOICE_INFRA_WEB__SECRET").write_text(SECRET + "\n")
    (secrets / "voice_infra_web__token_ttl").write_text("120")
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    web = WebSettings()
    assert web.secret is not None and web.secret.get_secret_value() == SECRET
    assert web.token_ttl == 120
    assert load_secret(web).get_secret_value() == SECRET
    assert SECRET not in repr(web)


def test_web_sources_keep_the_core_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment over .env file over secrets directory over TOML file, as for Settings."""
    (tmp_path / "voice_infra.toml").write_text("[web]\ntoken_ttl = 10\nfiles_path = '/toml'\n")
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "VOICE_INFRA_WEB__TOKEN_TTL").write_text("20")
    (secrets / "VOICE_INFRA_WEB__FILES_PATH").write_text("/secrets")
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    assert (WebSettings().token_ttl, WebSettings().files_path) == (20, "/secrets")
    env_file = tmp_path / "deploy.env"
    env_file.write_text("VOICE_INFRA_WEB__TOKEN_TTL=30\nOTHER_PROGRAM=1\n")
    monkeypatch.setenv("VOICE_INFRA_ENV_FILE", str(env_file))
    assert (WebSettings().token_ttl, WebSettings().files_path) == (30, "/secrets")
    monkeypatch.setenv("VOICE_INFRA_WEB__TOKEN_TTL", "40")
    assert WebSettings().token_ttl == 40
    assert WebSettings(token_ttl=50).token_ttl == 50
    monkeypatch.setenv("VOICE_INFRA_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError, match="VOICE_INFRA_ENV_FILE"):
        WebSettings()
