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
