"""Configuration: sources and their priority, validation errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

import voice_infra as vi
from voice_infra.backends.fs import FileSystemStorage


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_zero_configuration_defaults(tmp_path: Path) -> None:
    settings = vi.Settings()
    assert (settings.storage.backend, settings.rate_limit.backend) == ("fs", "memory")
    storage = vi.create_storage(settings)
    assert isinstance(storage, FileSystemStorage)
    assert storage.root == tmp_path / "voice-infra-data" / "voice"  # the working directory
    limiter = vi.create_rate_limiter(settings)
    assert [str(p) for p in limiter.policies] == ["10/second", "100/minute"]
    assert settings.origin("storage.backend") == "default"


def test_toml_file_in_working_directory(tmp_path: Path) -> None:
    _write(
        tmp_path / "voice_infra.toml",
        """
[storage]
backend = "memory"
bucket = "from-toml"

[rate_limit]
backend = "memory"
policies = ["5/second", "100/minute"]
algorithm = "sliding_window_counter"
""",
    )
    settings = vi.Settings()
    storage = vi.create_storage(settings)
    assert storage.bucket_name == "from-toml"
    limiter = vi.create_rate_limiter(settings)
    assert [(p.limit, p.window) for p in limiter.policies] == [(5, 1), (100, 60)]
    assert limiter.settings.algorithm == "sliding_window_counter"
    assert settings.origin("storage.bucket").startswith("file ")


def test_priority_keywords_over_environment_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(
        tmp_path / "elsewhere.toml",
        """
[storage]
backend = "memory"
bucket = "file"
presign_ttl = 60
key_prefix = "file-prefix"
""",
    )
    monkeypatch.setenv("VOICE_INFRA_CONFIG", str(config))
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BUCKET", "env")
    monkeypatch.setenv("VOICE_INFRA_STORAGE__PRESIGN_TTL", "120")
    settings = vi.Settings(storage={"backend": "memory", "bucket": "kwarg"})
    storage = vi.create_storage(settings)
    assert storage.bucket_name == "kwarg"
    assert storage.settings.presign_ttl == 120
    assert storage.settings.key_prefix == "file-prefix"
    assert settings.origin("storage.bucket") == "keyword argument"
    assert settings.origin("storage.presign_ttl") == "environment"
    assert settings.origin("storage.key_prefix") == f"file {config}"


def test_environment_selects_backend_and_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", "memory")
    monkeypatch.setenv("VOICE_INFRA_RATE_LIMIT__POLICIES", "3/second; 50 per hour")
    settings = vi.Settings()
    assert settings.storage.backend == "memory"
    assert [str(p) for p in settings.rate_limit.policies or ()] == ["3/second", "50/hour"]
    monkeypatch.setenv("VOICE_INFRA_RATE_LIMIT__POLICIES", '["7/minute"]')
    assert [str(p) for p in vi.Settings().rate_limit.policies or ()] == ["7/minute"]


def test_switching_backend_drops_the_previous_backends_options(tmp_path: Path) -> None:
    _write(
        tmp_path / "voice_infra.toml",
        """
[storage]
backend = "fs"
path = "/srv/voice"
fsync = false
""",
    )
    # A keyword switch to memory must not hand fs options to the memory backend.
    storage = vi.create_storage(vi.Settings(storage={"backend": "memory"}))
    assert storage.backend_name == "memory"
    # The same backend merges options across sources.
    storage = vi.create_storage(vi.Settings(storage={"bucket": "b"}))
    assert storage.settings.path == Path("/srv/voice") and storage.settings.fsync is False


def test_backend_implied_by_default_is_switched_too(tmp_path: Path) -> None:
    # The file configures the default backend (fs) without naming it.
    _write(tmp_path / "voice_infra.toml", '[storage]\npath = "/srv/voice"\n')
    storage = vi.create_storage(vi.Settings(storage={"backend": "memory"}))
    assert storage.backend_name == "memory"


@pytest.mark.parametrize("spelling", ["fs", " FS ", "local"])
def test_same_backend_under_another_spelling_keeps_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    _write(tmp_path / "voice_infra.toml", '[storage]\nbackend = "fs"\npath = "/srv/voice"\n')
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", spelling)
    settings = vi.Settings()
    assert settings.origin("storage.path") == f"file {Path('voice_infra.toml')}"
    storage = vi.create_storage(settings)
    assert storage.backend_name == "fs" and storage.settings.path == Path("/srv/voice")


def test_unknown_key_is_rejected_with_a_suggestion() -> None:
    settings = vi.Settings(storage={"backend": "fs", "buckt": "x"})
    with pytest.raises(vi.ConfigError) as caught:
        vi.create_storage(settings)
    message = str(caught.value)
    assert "[storage] (backend 'fs')" in message
    assert "buckt: unknown key; did you mean 'bucket'?" in message
    # pydantic's findings are kept without their inputs; its ValidationError is not.
    assert [e["type"] for e in caught.value.errors] == ["extra_forbidden"]
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_invalid_value_names_section_key_and_value() -> None:
    with pytest.raises(vi.ConfigError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "memory", "presign_ttl": 10**9}))
    message = str(caught.value)
    assert "presign_ttl" in message and "7 days" in message and "1000000000" in message


@pytest.mark.parametrize(
    "policy",
    ["5/fortnight", "five/second", "0/second", "5/0 seconds", "", "5", "-1/minute",
     "5\n/second", "5/second\n", "5/\rsecond"],  # a line break is a mistake, not a blank
)  # fmt: skip
def test_bad_policies_raise_config_error_when_settings_load(policy: str) -> None:
    with pytest.raises(vi.ConfigError) as caught:
        vi.Settings(rate_limit={"backend": "memory", "policies": [policy]})
    message = str(caught.value)
    assert "[rate_limit]" in message and "policies" in message
    assert caught.value.errors and caught.value.errors[0]["loc"][:2] == ("rate_limit", "policies")
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_bad_toml_file(tmp_path: Path) -> None:
    _write(tmp_path / "voice_infra.toml", "[storage\nbackend = ")
    with pytest.raises(vi.ConfigError, match=r"voice_infra.toml is not valid TOML"):
        vi.Settings()


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_INFRA_CONFIG", "/nonexistent/voice.toml")
    with pytest.raises(vi.ConfigError, match=r"VOICE_INFRA_CONFIG.*does not name a file"):
        vi.Settings()


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(vi.ConfigError, match="storge"):
        vi.Settings(storge={"backend": "fs"})


def test_empty_backend_name_is_rejected() -> None:
    with pytest.raises(vi.ConfigError, match="backend"):
        vi.Settings(storage={"backend": "  "})


SIGNING_KEY = "hunter2-secret-of-at-least-32-bytes"


def test_secrets_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    settings = vi.Settings(storage={"backend": "memory", "signing_key": SIGNING_KEY})
    assert SIGNING_KEY not in repr(settings)
    assert SIGNING_KEY not in str(settings)
    storage = vi.create_storage(settings)
    assert SIGNING_KEY not in repr(storage.settings)
    assert storage.settings.signing_key is not None
    assert storage.settings.signing_key.get_secret_value() == SIGNING_KEY
    assert all(SIGNING_KEY not in str(value) for _, value, _ in settings.describe())


def test_secret_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(vi.ConfigError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "memory", "signing_key": 12345}))
    assert "12345" not in str(caught.value)
    assert "signing_key" in str(caught.value)


def test_create_validates_before_any_io(tmp_path: Path) -> None:
    storage = vi.create_storage(vi.Settings(storage={"backend": "fs", "path": "data"}))
    assert not (tmp_path / "data").exists()  # nothing touched until opened
    assert isinstance(storage, vi.StorageBackend)


def test_policies_parse() -> None:
    parse = vi.RateLimitPolicy.parse
    assert (parse("20/minute").limit, parse("20/minute").window) == (20, 60)
    assert parse("5 per second").window == 1
    assert parse("10 per 30 seconds").window == 30
    assert parse("1000/day").window == 86400
    assert parse("3/2 hours").window == 7200
    assert str(parse("10 per 30 seconds")) == "10/30 seconds"
    assert str(parse("100 per 60 s")) == "100/minute"
    assert [str(p) for p in vi.parse_policies("5/second,100/minute")] == ["5/second", "100/minute"]
    with pytest.raises(vi.ConfigError, match=r"'5 a second'.*for example"):
        parse("5 a second")
    # Leading zeros say nothing: not 'out of bounds' for their length.
    assert (parse("00000000000005/second").limit, parse("5 per 0000000000030 s").window) == (5, 30)


@pytest.mark.parametrize(
    "policy",
    ["99999999999999999999/second", "5 per 99999999999999999999 days", "5 per 367 days",
     "2147483648/second", "\uff15/second", {"limit": 5, "window": 10**20},
     "1" * 5000 + "/second", "5 per " + "9" * 5000 + " seconds"],
)  # fmt: skip
def test_out_of_range_policies_are_config_errors(policy: object) -> None:
    with pytest.raises(vi.ConfigError, match="invalid rate-limit policy"):
        vi.parse_policies([policy])
    with pytest.raises(vi.ConfigError, match="policies"):
        vi.Settings(rate_limit={"backend": "memory", "policies": [policy]})


def test_largest_policies_are_accepted() -> None:
    largest = vi.parse_policies(["2147483647/second", "1 per 366 days"])
    assert [(p.limit, p.window) for p in largest] == [(2147483647, 1), (1, 366 * 86400)]


def test_secret_options_never_appear_in_dumps_but_reach_the_backend() -> None:
    settings = vi.Settings(
        storage={"backend": "memory", "signing_key": "k" * 40, "mirror": {"token": "t0k3n"},
                 "replicas": [{"password": "hunter2"}], "api_tokens": ["tok1", "tok2"]},
        rate_limit={"backend": "memory", "policies": ["5/second"]},
    )  # fmt: skip
    for dumped in (str(settings.model_dump()), settings.model_dump_json(), repr(settings)):
        for secret in ("k" * 40, "t0k3n", "hunter2", "tok1", "tok2"):
            assert secret not in dumped
    options = settings.storage.options()
    assert options["signing_key"] == "k" * 40
    assert options["mirror"] == {"token": "t0k3n"}
    assert options["replicas"] == [{"password": "hunter2"}]
    assert options["api_tokens"] == ["tok1", "tok2"]
    storage = vi.create_storage(settings.model_copy(update={"storage": vi.StorageSection(
        backend="memory", signing_key="k" * 40)}))  # fmt: skip
    assert storage.settings.signing_key.get_secret_value() == "k" * 40  # type: ignore[attr-defined]


def test_url_passwords_are_masked_wherever_settings_are_shown() -> None:
    settings = vi.Settings(
        storage={"backend": "memory", "mirror": {"dsn": "postgres://app:hunter2@db/x"}},
        rate_limit={"backend": "memory", "url": "redis://app:hunter2@cache:6380/1"},
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    shown = dict((key, value) for key, value, _ in settings.describe())
    assert shown["rate_limit.url"] == "redis://app:**********@cache:6380/1"
    assert shown["storage.mirror"] == {"dsn": "postgres://app:**********@db/x"}


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("url", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("url", "rediss://:pw@[::1]:6380/0", "rediss://:**********@[::1]:6380/0"),
        ("url", "unix://:pw@/run/redis.sock?db=2", "unix://:**********@/run/redis.sock?db=2"),
        ("endpoints", ["http://u:pw@a:1", "http://b:2"], ["http://u:**********@a:1", "http://b:2"]),
        ("secret_key", "abc", "**********"),
        ("options", {"password": "pw", "host": "h"}, {"password": "**********", "host": "h"}),
        ("note", "mail me at a@b://c", "mail me at a@b://c"),  # not a URL with a password
        ("timeout", 3, 3),
        ("password", None, None),
    ],
)
def test_mask_secret(name: str, value: object, shown: object) -> None:
    assert vi.mask_secret(name, value) == shown


def test_validation_error_cause_does_not_echo_secrets() -> None:
    with pytest.raises(vi.ConfigError) as caught:
        vi.create_storage(vi.Settings(storage={"backend": "memory", "signing_key": 12345}))
    assert "12345" not in str(caught.value.__cause__)


def test_from_keywords_reads_neither_environment_nor_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "voice_infra.toml", '[storage]\nbackend = "fs"\nbucket = "from-file"\n')
    monkeypatch.setenv("VOICE_INFRA_RATE_LIMIT__POLICIES", '["1/hour"]')
    settings = vi.Settings.from_keywords(storage={"backend": "memory"})
    assert settings.storage.backend == "memory" and settings.storage.options() == {}
    assert settings.rate_limit.policies is None
    assert settings.origin("storage.backend") == "keyword argument"
    assert vi.Settings().storage.options() == {"bucket": "from-file"}  # the sources are there
    assert vi.Settings.from_keywords().storage.backend == "fs"  # defaults still apply


def test_options_common_to_every_backend_survive_a_switch(tmp_path: Path) -> None:
    _write(
        tmp_path / "voice_infra.toml",
        '[storage]\nbackend = "fs"\npath = "/srv"\nkey_prefix = "rec"\n'
        '[rate_limit]\nbackend = "memory"\npolicies = ["2/second"]\n',
    )
    settings = vi.Settings(storage={"backend": "memory"}, rate_limit={"backend": "memory"})
    assert settings.storage.options() == {"key_prefix": "rec"}
    assert settings.origin("storage.key_prefix") == f"file {Path('voice_infra.toml')}"
    assert settings.origin("storage.path") == "default"
    assert [str(p) for p in vi.create_rate_limiter(settings).policies] == ["2/second"]
