"""A secret never leaves the process in clear, by any path.

A canary secret is put in every secret-bearing option of every first-party backend, by
environment variable, TOML file, .env file and secrets directory (with pydantic-settings'
PYDANTIC_SETTINGS_DEBUG on, which logs what each source gives); then the settings are
dumped, every CLI command and
every failure we can provoke is run (bad sections, unknown keys, wrong types, dead servers
on closed loopback ports) with logging at DEBUG for every logger. The canary must appear in
no output, no log record, no formatted traceback of a raised error (causes included) and no
settings dump. A piece of 8 characters of it counts as the canary: pydantic, for one, shows
long inputs cut in the middle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import voice_infra as vi
from voice_infra.cli import main
from voice_infra.config import dump_json
from voice_infra.masking import MASK, hide_secrets, reveal_secrets

CANARY = "Zq7CanaryXv93Lw4Pp8Rt2Yk6Hs5Jd1M"  # 32 bytes: long enough for a signing_key
WINDOW = 8


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DEAD = _closed_port()  # nothing listens there: every connection is refused


@dataclass(frozen=True)
class Placement:
    """The canary in one secret-bearing option of one backend."""

    name: str
    section: str  # "storage" or "rate_limit"
    options: dict[str, Any]

    @property
    def kind(self) -> str:
        return "storage" if self.section == "storage" else "rate_limiter"


_S3 = {
    "backend": "s3", "bucket": "canary", "endpoint_url": f"http://127.0.0.1:{DEAD}",
    "max_attempts": 1, "connect_timeout": 0.5, "read_timeout": 0.5,
}  # fmt: skip
_SERVER = {"fail_mode": "raise", "breaker_failure_threshold": 1000}
PLACEMENTS = [
    Placement("fs-signing_key", "storage", {"backend": "fs", "signing_key": CANARY}),
    Placement("memory-signing_key", "storage", {"backend": "memory", "signing_key": CANARY}),
    Placement("s3-access_key", "storage",
              {**_S3, "access_key": CANARY, "secret_key": "not-the-canary-secret"}),
    Placement("s3-secret_key", "storage",
              {**_S3, "access_key": "AKIAEXAMPLE", "secret_key": CANARY}),
    Placement("s3-session_token", "storage",
              {**_S3, "access_key": "AKIAEXAMPLE", "secret_key": "x" * 20,
               "session_token": CANARY}),
    Placement("redis-url-password", "rate_limit",
              {"backend": "redis", "url": f"redis://app:{CANARY}@127.0.0.1:{DEAD}/0", **_SERVER}),
    Placement("redis-url-password-only", "rate_limit",
              {"backend": "redis", "url": f"redis://:{CANARY}@127.0.0.1:{DEAD}/0", **_SERVER}),
    # Digits first, then a character that ends the host part: parsers read a port.
    Placement("redis-url-digit-password", "rate_limit",
              {"backend": "redis", "url": f"redis://app:12#{CANARY}@127.0.0.1:{DEAD}/0",
               **_SERVER}),
    Placement("redis-url-token-with-slash", "rate_limit",
              {"backend": "redis", "url": f"redis://to/{CANARY}@127.0.0.1:{DEAD}/0",
               **_SERVER}),
    Placement("redis-url-is-the-password", "rate_limit",  # pasted into the wrong option
              {"backend": "redis", "url": CANARY, **_SERVER}),
    Placement("redis-unix-query-password", "rate_limit",
              {"backend": "redis", "url": f"unix:///nonexistent/redis.sock?password={CANARY}",
               **_SERVER}),
    Placement("limits-uri-password", "rate_limit",
              {"backend": "limits", "storage_uri": f"redis://app:{CANARY}@127.0.0.1:{DEAD}/0",
               "timeout": 0.5, **_SERVER}),
    Placement("limits-uri-query-password", "rate_limit",
              {"backend": "limits",
               "storage_uri": f"redis://127.0.0.1:{DEAD}/0?password={CANARY}",
               "timeout": 0.5, **_SERVER}),
    Placement("limits-storage_options-malformed-json", "rate_limit",
              {"backend": "limits", "storage_uri": f"redis://127.0.0.1:{DEAD}/0",
               "storage_options": f'{{"password": "{CANARY}", "x":', "timeout": 0.5,
               **_SERVER}),
    Placement("limits-storage_options-password", "rate_limit",
              {"backend": "limits", "storage_uri": f"redis://127.0.0.1:{DEAD}/0",
               "storage_options": {"password": CANARY}, "timeout": 0.5, **_SERVER}),
]  # fmt: skip


SOURCES = ["env", "toml", "dotenv", "secrets"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _configure(
    source: str, section: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    *, array_of_tables: bool = False,
) -> None:  # fmt: skip
    """Put ``options`` into the ``[section]`` by TOML file, environment variables, .env
    file or secrets directory (files named like the variables)."""
    monkeypatch.setenv("PYDANTIC_SETTINGS_DEBUG", "1")
    if source == "toml":
        header = f"[[{section}]]" if array_of_tables else f"[{section}]"
        body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in options.items())
        Path("voice_infra.toml").write_text(f"{header}\n{body}")
        return
    if array_of_tables:  # the same mistake by variable: the section as a JSON list
        variables = {f"VOICE_INFRA_{section.upper()}": json.dumps([options])}
    else:
        variables = {
            f"VOICE_INFRA_{section.upper()}__{key.upper()}": (
                value if isinstance(value, str) else json.dumps(value)
            )
            for key, value in options.items()
        }
    if source == "env":
        for name, text in variables.items():
            monkeypatch.setenv(name, text)
    elif source == "dotenv":
        Path(".env").write_text("".join(f"{name}='{text}'\n" for name, text in variables.items()))
    else:
        secrets = Path("run-secrets")
        secrets.mkdir()
        for name, text in variables.items():
            (secrets / name).write_text(f"{text}\n")
        monkeypatch.setenv("VOICE_INFRA_SECRETS_DIR", str(secrets.resolve()))


class Witness:
    """Everything that left the process, gathered for the check."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self.capsys, self.caplog = capsys, caplog
        self.texts: list[tuple[str, str]] = []

    def error(self, where: str, exc: BaseException) -> None:
        self.texts.append((where, "".join(traceback.format_exception(exc))))
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:  # every link, str and repr
            seen.add(id(current))
            self.texts.append((where, f"{current!s} {current!r} {current.args!r}"))
            current = current.__cause__ or (
                None if current.__suppress_context__ else current.__context__
            )

    def run(self, where: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as exc:
            self.error(where, exc)
            return None

    def cli(self, *argv: str) -> None:
        self.run(f"voice-infra {' '.join(argv)}", lambda: main(list(argv)))
        captured = self.capsys.readouterr()
        self.texts.append((f"output of voice-infra {' '.join(argv)}", captured.out + captured.err))

    def check(self) -> None:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in self.caplog.records:
            self.texts.append((f"log record of {record.name}", formatter.format(record)))
        pieces = {CANARY[i : i + WINDOW] for i in range(len(CANARY) - WINDOW + 1)}
        leaks = [(where, text) for where, text in self.texts if any(p in text for p in pieces)]
        assert not leaks, "\n\n".join(f"--- {where}:\n{text}" for where, text in leaks[:3])


@pytest.fixture
def witness(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[Witness]:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's DEBUG lines too
    yield Witness(capsys, caplog)


def _dumps(witness: Witness, where: str) -> None:
    settings = witness.run(f"Settings() {where}", vi.Settings)
    if settings is None:
        return
    for name, dump in [
        ("repr", lambda: repr(settings)),
        ("str", lambda: str(settings)),
        ("model_dump", lambda: str(settings.model_dump())),
        ("model_dump json", lambda: str(settings.model_dump(mode="json"))),
        ("model_dump_json", settings.model_dump_json),
        ("describe", lambda: str(settings.describe())),
        ("dump_json", lambda: dump_json(settings.describe())),
    ]:
        witness.texts.append((f"{name} {where}", witness.run(name, dump) or ""))


async def _use_backend(witness: Witness, placement: Placement) -> None:
    """Open the backend and use it against its dead server; every error is witnessed."""
    if placement.kind == "storage":
        storage = witness.run("create_storage", vi.create_storage)
        if storage is None:
            return
        witness.texts.append(("repr(storage)", f"{storage!r} {vars(storage)!r}"))
        witness.texts.append(("storage.settings", storage.settings.model_dump_json()))
        for name, call in [
            ("open", storage.open),
            ("upload", lambda: storage.upload_file(b"x", object_key="canary/x")),
            ("download", lambda: storage.download_file("canary/x")),
            ("info", lambda: storage.get_file_info("canary/x")),
            ("presign", lambda: storage.generate_presigned_url("canary/x")),
            ("delete", lambda: storage.delete_file("canary/x")),
        ]:
            try:
                result = await asyncio.wait_for(call(), 10)
            except Exception as exc:
                witness.error(name, exc)
            else:
                if not (name == "presign" and placement.name == "s3-access_key"):
                    # (a presigned S3 URL carries the access key id by design)
                    witness.texts.append((name, repr(result)))
        await storage.aclose()
        return
    limiter = witness.run("create_rate_limiter", vi.create_rate_limiter)
    if limiter is None:
        return
    witness.texts.append(("repr(limiter)", f"{limiter!r} {vars(limiter)!r}"))
    witness.texts.append(("limiter.settings", limiter.settings.model_dump_json()))
    witness.texts.append(("limiter.settings repr", repr(limiter.settings)))
    for name, call in [
        ("open", limiter.open),
        ("check", lambda: limiter.check_rate_limit("canary")),
        ("clear", lambda: limiter.clear_user_limit("canary")),
    ]:
        try:
            await asyncio.wait_for(call(), 10)
        except Exception as exc:
            witness.error(name, exc)
    await limiter.aclose()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: p.name)
def test_the_canary_never_leaves_the_process(
    placement: Placement, source: str, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1. The configuration as given: dumps, every CLI command, the backend on a dead server.
    _configure(source, placement.section, placement.options, monkeypatch)
    section = getattr(vi.Settings(), placement.section)  # the canary did arrive
    assert CANARY in json.dumps(section.options(), default=str)
    _dumps(witness, "as configured")
    witness.cli("config")
    witness.cli("config", "--json")
    witness.cli("plugins")
    witness.cli("plugins", "--json")
    witness.cli("doctor", "--timeout", "5")
    Path("probe.txt").write_bytes(b"probe")
    for argv in (["ls"], ["upload", "probe.txt", "--key", "k/p.txt", "--quiet"],
                 ["download", "k/p.txt", "out.txt", "--quiet"], ["rm", "k/p.txt"],
                 ["abort-uploads"], ["demo", "--users", "1", "--messages", "1"]):  # fmt: skip
        witness.cli(*argv)
    if placement.name != "s3-access_key":  # a presigned S3 URL carries the access key id
        witness.cli("url", "k/p.txt")
    asyncio.run(_use_backend(witness, placement))
    witness.check()


BROKEN: dict[str, Callable[[Placement], dict[str, Any]]] = {
    "unknown key": lambda p: {**p.options, "bogus_option": 1},
    "wrong type next to the secret": lambda p: {
        **p.options,
        ("chunk_size" if p.section == "storage" else "fail_mode"): "not-a-valid-value",
    },
    "wrong type of the secret": lambda p: {
        key: ([value] if CANARY in json.dumps(value) else value) for key, value in p.options.items()
    },
    "bad policy next to the secret": lambda p: (
        {**p.options, "policies": ["5/fortnight"]}
        if p.section == "rate_limit"
        else {**p.options, "presign_ttl": 10**9}
    ),
    "unknown backend": lambda p: {**p.options, "backend": "nonesuch"},
    "secret without its partner": lambda p: {
        k: v
        for k, v in p.options.items()
        if k not in ("secret_key", "access_key") or CANARY in str(v)
    },
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mistake", [*BROKEN, "array of tables"])
@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: p.name)
def test_the_canary_never_shows_in_configuration_errors(
    placement: Placement, mistake: str, source: str, witness: Witness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if mistake == "array of tables":  # [[storage]] written for [storage]
        _configure(source, placement.section, placement.options, monkeypatch,
                   array_of_tables=True)  # fmt: skip
    else:
        _configure(source, placement.section, BROKEN[mistake](placement), monkeypatch)
    _dumps(witness, mistake)
    witness.run("create_storage", vi.create_storage)
    witness.run("create_rate_limiter", vi.create_rate_limiter)
    witness.cli("config")
    witness.cli("config", "--json")
    witness.cli("doctor", "--timeout", "5")
    witness.cli("ls")
    witness.check()


# -- the masking rule itself ----------------------------------------------------------

_SECRET_TEXT = st.text(min_size=1, max_size=30).map(lambda text: "\u00a7" + text)
_QUERY_NAMES = st.sampled_from(
    ["password", "passwd", "pwd", "token", "access_token", "api_key", "api-key", "apikey",
     "secret", "client_secret", "sig", "signature", "X-Amz-Signature", "X-Amz-Credential",
     "X-Amz-Security-Token", "auth", "key", "ssl_password", "sentinel_password"]
)  # fmt: skip


@given(
    scheme=st.sampled_from(["redis", "rediss", "unix", "redis+cluster", "mongodb", "https"]),
    user=st.sampled_from(["", "app", "default"]),
    password=_SECRET_TEXT,
    name=_QUERY_NAMES,
    value=_SECRET_TEXT,
    hosts=st.sampled_from(["cache:6379", "[::1]:6380", "a:7000,b:7001", ""]),
)
def test_mask_url_hides_every_password_and_secret_parameter(
    scheme: str, user: str, password: str, name: str, value: str, hosts: str
) -> None:
    # The '§' prefix (percent-encoded %C2%A7) occurs nowhere else in the URL.
    encoded_password, encoded_value = quote(password, safe=""), quote(value, safe="")
    url = f"{scheme}://{user}:{encoded_password}@{hosts}/0?db=1&{name}={encoded_value}#top"
    shown = vi.mask_url(url)
    assert "%C2%A7" not in shown and "\u00a7" not in shown
    assert shown == f"{scheme}://{user}:{MASK}@{hosts}/0?db=1&{name}={MASK}#top"
    raw = f"{scheme}://{user}:{password}@{hosts}/0"  # a password left unencoded
    assert "\u00a7" not in vi.mask_url(raw)


@given(
    scheme=st.sampled_from(["redis", "rediss", "unix", "redis+cluster", "mongodb", "https"]),
    user=st.sampled_from(["", "app", "default"]),
    head=st.text("0123456789", max_size=5),
    breaker=st.sampled_from(["", "/", "?", "#", ":", "@", "%"]),
    tail=st.text(min_size=0, max_size=20),
    hosts=st.sampled_from(["cache:6379", "[::1]:6380", "a:7000,b:7001", "127.0.0.1:16398"]),
    with_user=st.booleans(),
)
def test_mask_url_hides_a_raw_password_of_any_shape(
    scheme: str, user: str, head: str, breaker: str, tail: str, hosts: str, with_user: bool
) -> None:
    """A password (or a token alone as user information) written unencoded, digits
    first and holding a character that ends the host part (``12#pw``, ``2024/pw``,
    ``77?pw``), never shows: parsers read its digits as a port."""
    password = f"{head}{breaker}\u00a7{tail}"
    # A token alone: without ':' (what comes before a ':' is a user name, shown).
    userinfo = f"{user}:{password}" if with_user else password.replace(":", "")
    shown = vi.mask_url(f"{scheme}://{userinfo}@{hosts}/0")
    assert "\u00a7" not in shown
    assert shown.endswith(f"@{hosts}/0")


_OPTION_NAMES = st.sampled_from(
    ["url", "path", "password", "secret_key", "token", "bucket", "options", "api_tokens"]
)
_OPTIONS = st.recursive(
    st.none() | st.integers() | st.booleans() | _SECRET_TEXT
    | st.builds(lambda pw: f"redis://app:{quote(pw, safe='')}@h:1/0", _SECRET_TEXT),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_OPTION_NAMES, children, max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(options=st.dictionaries(_OPTION_NAMES, _OPTIONS, max_size=4))
def test_settings_dumps_show_exactly_what_the_masking_rule_shows(options: dict[str, Any]) -> None:
    section = vi.StorageSection(backend="memory", **options)
    assert section.options() == options  # the backend gets the real values
    assert reveal_secrets(hide_secrets("x", options)) == options
    shown = json.loads(json.dumps(vi.mask_secret("", options)))
    dumped = json.loads(section.model_dump_json())
    assert dumped.pop("backend") == "memory"
    assert dumped == shown
    for text in (str(section.model_dump()), repr(section)):
        assert text.count("\u00a7") == json.dumps(shown, ensure_ascii=False).count("\u00a7")
