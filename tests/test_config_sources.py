"""The configuration sources: keywords, environment, .env file, secrets directory, TOML.

Each source is used as users use it (files on disk, variables in the environment, the
`voice-infra config` command run as a subprocess), and the priority between all of them is
checked for every combination.
"""

from __future__ import annotations

import json
import logging
import os
import string
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voice_infra as vi

SIGNING_KEY = "Kx81secretsDirSigningKeyOf32Bytes"  # >= 32 bytes, as signing_key requires


def _secrets(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# -- .env file ------------------------------------------------------------------------


def test_dotenv_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# comments and other programs' keys are ignored\n"
        "DATABASE_URL=postgres://other:program@db/x\n"
        "VOICE_INFRA_STORAGE__BACKEND=fs\n"
        "VOICE_INFRA_STORAGE__PATH='from dotenv'\n"
        "voice_infra_storage__fsync=false\n"
        'VOICE_INFRA_RATE_LIMIT__POLICIES="3/second; 9/minute"\n'
    )
    settings = vi.Settings()
    storage = vi.create_storage(settings)
    assert storage.settings.path == Path("from dotenv") and storage.settings.fsync is False
    assert [str(p) for p in settings.rate_limit.policies or ()] == ["3/second", "9/minute"]
    for key in ("storage.backend", "storage.path", "storage.fsync", "rate_limit.policies"):
        assert settings.origin(key) == ".env file ./.env"


def test_env_file_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("VOICE_INFRA_STORAGE__BUCKET=default-file\n")
    elsewhere = tmp_path / "conf" / "voice.env"
    elsewhere.parent.mkdir()
    elsewhere.write_text("VOICE_INFRA_STORAGE__BUCKET=named-file\n")
    monkeypatch.setenv("VOICE_INFRA_ENV_FILE", str(elsewhere))
    settings = vi.Settings()
    assert settings.storage.options() == {"bucket": "named-file"}
    assert settings.origin("storage.bucket") == f".env file {elsewhere}"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_env_file_variable_naming_no_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = tmp_path / "nowhere.env"
    if kind == "directory":
        target.mkdir()
    monkeypatch.setenv("VOICE_INFRA_ENV_FILE", str(target))
    with pytest.raises(vi.ConfigError, match=r"VOICE_INFRA_ENV_FILE=.* does not name a file"):
        vi.Settings()


def test_variables_choosing_files_are_not_read_from_dotenv(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "other.toml").write_text('[storage]\nbucket = "from-other-toml"\n')
    (tmp_path / ".env").write_text(
        f"VOICE_INFRA_CONFIG={tmp_path / 'other.toml'}\nVOICE_INFRA_SECRETS_DIR=/nonexistent\n"
    )
    with caplog.at_level(logging.WARNING, logger="voice_infra.config"):
        settings = vi.Settings()
    assert settings.storage.options() == {}
    assert "VOICE_INFRA_CONFIG, VOICE_INFRA_SECRETS_DIR in .env is ignored" in caplog.text


# -- secrets directory ----------------------------------------------------------------


def test_secrets_directory_sets_nested_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = _secrets(
        tmp_path / "run-secrets",
        {
            "VOICE_INFRA_STORAGE__BACKEND": "memory\n",
            "VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY + "\n",  # as `echo` writes it
            "voice_infra_storage__presign_ttl": "120",  # the lower-case spelling too
            "db_password": "another program's secret",
            "cert.der": "",
        },
    )
    (secrets / "cert.der").write_bytes(b"\x30\x82\xff\xfe")  # not text: never opened
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    settings = vi.Settings()
    storage = vi.create_storage(settings)
    assert storage.backend_name == "memory"
    assert storage.settings.signing_key.get_secret_value() == SIGNING_KEY  # type: ignore[attr-defined]
    assert storage.settings.presign_ttl == 120
    assert settings.origin("storage.signing_key") == (
        f"secrets dir {secrets} (VOICE_INFRA_STORAGE__SIGNING_KEY)"
    )
    assert settings.origin("storage.presign_ttl") == (
        f"secrets dir {secrets} (voice_infra_storage__presign_ttl)"
    )
    assert "db_password" not in json.dumps(settings.describe())


def test_secrets_directory_in_kubernetes_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Kubernetes secret volume: each key a link into ..data, itself a link to the
    # current timestamped directory.
    volume = tmp_path / "secret-volume"
    _secrets(
        volume / "..2026_12_01_10_00_00.123", {"VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY}
    )
    (volume / "..data").symlink_to("..2026_12_01_10_00_00.123")
    link = volume / "VOICE_INFRA_STORAGE__SIGNING_KEY"
    link.symlink_to("..data/VOICE_INFRA_STORAGE__SIGNING_KEY")
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(volume))
    settings = vi.Settings()
    assert settings.storage.options() == {"signing_key": SIGNING_KEY}


def test_secrets_join_the_backend_the_environment_selects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual container setup: the backend by variable, its secret by file. The secrets
    # directory names no backend, and that does not mean the default one (fs).
    secrets = _secrets(tmp_path / "s", {"VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY})
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", "memory")
    storage = vi.create_storage(vi.Settings())
    assert storage.backend_name == "memory"
    assert storage.settings.signing_key.get_secret_value() == SIGNING_KEY  # type: ignore[attr-defined]
    # Nor is it tied to the backend a lower source names: the file's fs options go.
    (tmp_path / "voice_infra.toml").write_text('[storage]\nbackend = "fs"\npath = "/srv"\n')
    settings = vi.Settings()
    assert settings.storage.options() == {"signing_key": SIGNING_KEY}
    assert settings.origin("storage.path") == "default"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_secrets_dir_variable_naming_no_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = tmp_path / "secrets"
    if kind == "file":
        target.write_text("VOICE_INFRA_STORAGE__SIGNING_KEY=x")
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(target))
    with pytest.raises(vi.ConfigError, match=r"VOICE_INFRA_SECRETS_DIR=.* does not name a dir"):
        vi.Settings()


def test_secret_file_leading_out_of_the_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.write_text("not meant for us")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "VOICE_INFRA_STORAGE__BUCKET").symlink_to(outside)
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    with pytest.raises(vi.ConfigError, match="leads out of VOICE_INFRA_SECRETS_DIR") as caught:
        vi.Settings()
    assert "not meant for us" not in "".join(traceback.format_exception(caught.value))


SECRET_BYTES = b"Wq3NotUtf8SecretPart" + b"\xff\xfe"


def _undecodable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    if source == "secrets dir":
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "VOICE_INFRA_STORAGE__SIGNING_KEY").write_bytes(SECRET_BYTES)
        monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
        return str(secrets / "VOICE_INFRA_STORAGE__SIGNING_KEY")
    if source == ".env":
        (tmp_path / ".env").write_bytes(b"VOICE_INFRA_STORAGE__SIGNING_KEY=" + SECRET_BYTES)
        return ".env"
    (tmp_path / "voice_infra.toml").write_bytes(b'[storage]\nsigning_key = "' + SECRET_BYTES)
    return "voice_infra.toml"


@pytest.mark.parametrize("source", ["secrets dir", ".env", "toml"])
def test_undecodable_files_are_config_errors_that_quote_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    name = _undecodable(tmp_path, monkeypatch, source)
    with pytest.raises(vi.ConfigError, match="is not UTF-8 text") as caught:
        vi.Settings()
    assert name in str(caught.value)
    # A UnicodeDecodeError holds the file's bytes in its args: it is not chained.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value.args)
    assert "Wq3NotUtf8" not in shown


def test_from_keywords_reads_neither_dotenv_nor_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("VOICE_INFRA_STORAGE__BUCKET=dotenv\n")
    secrets = _secrets(tmp_path / "s", {"VOICE_INFRA_RATE_LIMIT__POLICIES": "1/hour"})
    monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets))
    settings = vi.Settings.from_keywords(storage={"backend": "memory"})
    assert settings.storage.options() == {} and settings.rate_limit.policies is None
    assert settings.origin("storage.backend") == "keyword argument"
    loaded = vi.Settings()  # the sources are there
    assert loaded.storage.options() == {"bucket": "dotenv"}
    assert [str(p) for p in loaded.rate_limit.policies or ()] == ["1/hour"]


def test_a_section_given_as_a_list_below_a_table_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [[storage]] (a mistake) in the file; a variable above it gives a table. The file's
    # section is named, not silently replaced by the variable's (no crash either).
    (tmp_path / "voice_infra.toml").write_text('[[storage]]\nbackend = "fs"\npath = "/srv"\n')
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BUCKET", "b")
    with pytest.raises(vi.ConfigError, match=r"(?s)\[storage\].*valid dictionary"):
        vi.Settings()


# -- priority between all sources -----------------------------------------------------

SOURCES = ["keyword", "environment", ".env", "secrets dir", "toml"]  # highest first
KEYS = ["bucket", "key_prefix", "presign_ttl"]


def _value(source: str, key: str) -> str | int:
    return 100 + SOURCES.index(source) if key == "presign_ttl" else f"{key}-{SOURCES.index(source)}"


@settings(max_examples=60, deadline=None)
@given(given_by=st.fixed_dictionaries({key: st.sets(st.sampled_from(SOURCES)) for key in KEYS}))
def test_priority_between_all_sources(given_by: dict[str, set[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ):
        root = Path(tmp)
        env_file, secrets, toml = root / "voice.env", root / "secrets", root / "voice.toml"
        secrets.mkdir()
        keywords: dict[str, str | int] = {}
        lines = {"toml": ['[storage]\nbackend = "memory"'], ".env": []}
        for key, sources in given_by.items():
            variable = f"VOICE_INFRA_STORAGE__{key.upper()}"
            for source in sources:
                value = _value(source, key)
                if source == "keyword":
                    keywords[key] = value
                elif source == "environment":
                    os.environ[variable] = str(value)
                elif source == ".env":
                    lines[".env"].append(f"{variable}={value}")
                elif source == "secrets dir":
                    (secrets / variable).write_text(f"{value}\n")
                else:
                    lines["toml"].append(f"{key} = {json.dumps(value)}")
        env_file.write_text("\n".join(lines[".env"]) + "\n")
        toml.write_text("\n".join(lines["toml"]) + "\n")
        os.environ.update(VOICE_INFRA_ENV_FILE=str(env_file), VOICE_INFRA_SECRETS_DIR=str(secrets),
                          VOICE_INFRA_CONFIG=str(toml))  # fmt: skip
        loaded = vi.Settings(storage=keywords) if keywords else vi.Settings()
        options = vi.create_storage(loaded).settings
        origins = {
            "keyword": "keyword argument",
            "environment": "environment",
            ".env": f".env file {env_file}",
            "toml": f"file {toml}",
        }
        for key, sources in given_by.items():
            winner = min(sources, key=SOURCES.index, default=None)
            if winner is None:
                assert loaded.origin(f"storage.{key}") == "default"
                continue
            assert getattr(options, key) == _value(winner, key), (key, sources)
            expected = origins.get(winner) or (
                f"secrets dir {secrets} (VOICE_INFRA_STORAGE__{key.upper()})"
            )
            assert loaded.origin(f"storage.{key}") == expected


# -- arbitrary backend options through every variable-like source --------------------

_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}(_[a-z0-9]{1,6}){0,2}", fullmatch=True).filter(
    lambda name: name != "backend"
)
_VALUES = st.text(string.ascii_letters + string.digits + "-_.:/@%+=,;~ ", min_size=1).filter(
    lambda text: text == text.strip()
)


@settings(max_examples=40, deadline=None)
@given(options=st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=4))
def test_any_option_reaches_the_section_alike_from_env_dotenv_and_secrets_dir(
    options: dict[str, str],
) -> None:
    # Backend options are the section's extra keys, validated by the backend later: every
    # name must come through each source the same way (secret-looking ones included).
    seen = []
    for source in ("environment", ".env", "secrets dir"):
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ):
            root = Path(tmp)
            variables = {f"VOICE_INFRA_STORAGE__{k.upper()}": v for k, v in options.items()}
            if source == "environment":
                os.environ.update(variables)
            elif source == ".env":
                body = "".join(f"{name}='{value}'\n" for name, value in variables.items())
                (root / "voice.env").write_text(body)
                os.environ["VOICE_INFRA_ENV_FILE"] = str(root / "voice.env")
            else:
                _secrets(root / "s", {name: value + "\n" for name, value in variables.items()})
                os.environ["VOICE_INFRA_SECRETS_DIR"] = str(root / "s")
            loaded = vi.Settings()
            seen.append(loaded.storage.options())
    assert seen[0] == options
    assert seen[1] == options and seen[2] == options


# -- voice-infra config ---------------------------------------------------------------


def _run_config(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "voice_infra.cli", "config", *args],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=300,
    )  # fmt: skip


def test_voice_infra_config_shows_dotenv_and_secrets_dir_origins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "VOICE_INFRA_STORAGE__BACKEND=memory\nVOICE_INFRA_STORAGE__BUCKET=from-dotenv\n"
        'VOICE_INFRA_RATE_LIMIT__STORAGE_OPTIONS={"password": "Dp9dotenvSecretXy"}\n'
    )
    secrets = _secrets(tmp_path / "run-secrets", {"VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY})
    env = {"VOICE_INFRA_SECRETS_DIR": str(secrets)}
    result = _run_config(cwd=tmp_path, env=env)
    assert result.returncode != 0  # memory rate limiter has no storage_options: refused
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:] if line.strip()}
    assert rows["storage.backend"].rstrip().endswith(".env file ./.env")
    assert rows["storage.bucket"].rstrip().endswith(".env file ./.env")
    assert rows["storage.signing_key"].split()[1] == "**********"
    shown = f"secrets dir {secrets} (VOICE_INFRA_STORAGE__SIGNING_KEY)"
    assert rows["storage.signing_key"].rstrip().endswith(shown)
    assert rows["rate_limit.storage_options"].split()[1] == "**********"
    (tmp_path / ".env").write_text(
        "VOICE_INFRA_STORAGE__BACKEND=memory\nVOICE_INFRA_STORAGE__BUCKET=from-dotenv\n"
    )
    result = _run_config(cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(_run_config("--json", cwd=tmp_path, env=env).stdout)
    origin = f"secrets dir {secrets} (VOICE_INFRA_STORAGE__SIGNING_KEY)"
    assert {"key": "storage.signing_key", "value": "**********", "origin": origin} in data
    assert {"key": "storage.bucket", "value": "from-dotenv", "origin": ".env file ./.env"} in data
    for output in (result, _run_config("--json", cwd=tmp_path, env=env)):
        for secret in (SIGNING_KEY, "Dp9dotenvSecretXy"):
            assert secret[:12] not in output.stdout + output.stderr


def test_voice_infra_config_names_a_missing_secrets_dir(tmp_path: Path) -> None:
    result = _run_config(cwd=tmp_path, env={"VOICE_INFRA_SECRETS_DIR": "/nonexistent/secrets"})
    assert result.returncode == 2
    assert "VOICE_INFRA_SECRETS_DIR='/nonexistent/secrets' does not name a directory" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("higher", ["env", "dotenv"])
def test_a_section_that_is_no_table_stays_an_error_whatever_else_adds_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, higher: str
) -> None:
    """``storage = "s3"`` in the file (a section written as a value) is named by the
    error even when a higher source sets options of the section: it was silently replaced
    by them, and the service ran on ``fs``."""
    (tmp_path / "voice_infra.toml").write_text('storage = "s3"\n')
    if higher == "env":
        monkeypatch.setenv("VOICE_INFRA_STORAGE__PATH", str(tmp_path / "data"))
    else:
        (tmp_path / ".env").write_text(f"VOICE_INFRA_STORAGE__PATH={tmp_path / 'data'}\n")
    with pytest.raises(vi.ConfigError, match=r"(?s)\[storage\].*got 's3'"):
        vi.create_storage(vi.Settings())
