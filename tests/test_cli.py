"""The voice-infra command line, run as users run it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "voice_infra.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=300,
    )  # fmt: skip


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    result = run("demo", "--users", "2", "--messages", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "storage: fs   rate limiter: memory" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    sent, denied, size, verified, cleaned = map(int, total.split()[1:])
    assert (sent, denied, verified, cleaned) == (20, 4, 20, 20)  # 10/second default policy
    assert size > 20 * 4000
    for operation in ("rate check", "upload", "presign", "download", "list", "delete"):
        assert operation in out
    assert "result: OK" in out
    objects = tmp_path / "voice-infra-data" / "voice" / "objects"
    assert [p for p in objects.rglob("*") if p.is_file()] == []  # cleaned up


SIGNING_KEY = "topsecret-" * 4


def test_config_shows_sources_and_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / "voice_infra.toml").write_text('[storage]\nbackend = "memory"\nbucket = "b"\n')
    result = run("config", cwd=tmp_path, env={"VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY})
    assert result.returncode == 0, result.stderr
    assert SIGNING_KEY not in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "**********" in lines["storage.signing_key"]
    assert lines["storage.signing_key"].rstrip().endswith("environment")
    assert "file voice_infra.toml" in lines["storage.bucket"]
    assert "default" in lines["rate_limit.backend"]
    secret_env = {"VOICE_INFRA_STORAGE__SIGNING_KEY": SIGNING_KEY}
    data = json.loads(run("config", "--json", cwd=tmp_path, env=secret_env).stdout)
    assert {"key": "storage.signing_key", "value": "**********", "origin": "environment"} in data


def test_doctor_passes_on_working_backends(tmp_path: Path) -> None:
    result = run("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("ok ") >= 5


def test_doctor_fails_on_a_broken_backend(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    result = run("doctor", cwd=tmp_path, env={"VOICE_INFRA_STORAGE__PATH": "not-a-dir"})
    assert result.returncode == 1
    assert "FAIL  connect" in result.stdout
    assert "writable directory" in result.stdout


def test_config_errors_exit_2_with_the_message(tmp_path: Path) -> None:
    result = run("demo", cwd=tmp_path, env={"VOICE_INFRA_STORAGE__BACKEND": "minoi"})
    assert result.returncode == 2
    assert "backend 'minoi' is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_operator_commands_round_trip(tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    result = run("upload", str(big), "--key", "ops/big.wav", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file_size"] == 9 * 1024 * 1024
    assert "%" not in result.stderr  # no progress bar when stderr is not a terminal
    listing = run("ls", "ops/", "-l", cwd=tmp_path)
    assert "ops/big.wav" in listing.stdout and "audio/x-wav" in listing.stdout
    url = run("url", "ops/big.wav", "--expires-in", "60", cwd=tmp_path)
    assert url.returncode == 0 and "X-VI-Signature=" in url.stdout
    bad_url = run("url", "ops/big.wav", "--expires-in", "0", cwd=tmp_path)
    assert bad_url.returncode == 2 and "expires_in" in bad_url.stderr
    download = run("download", "ops/big.wav", "copy.wav", "--quiet", cwd=tmp_path)
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "copy.wav").read_bytes() == big.read_bytes()
    assert run("rm", "ops/big.wav", cwd=tmp_path).returncode == 0
    missing = run("rm", "ops/big.wav", cwd=tmp_path)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert run("ls", cwd=tmp_path).stdout == ""


def test_abort_uploads_on_a_backend_without_multipart(tmp_path: Path) -> None:
    result = run("abort-uploads", "--older-than", "1h", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 incomplete upload(s) aborted" in result.stdout


@pytest.mark.parametrize("text", ["1x", "abc", ""])
def test_bad_duration(tmp_path: Path, text: str) -> None:
    result = run("abort-uploads", "--older-than", text, cwd=tmp_path)
    assert result.returncode == 2 and "invalid duration" in result.stderr


def test_download_into_a_directory_uses_the_key_name(tmp_path: Path) -> None:
    (tmp_path / "in.wav").write_bytes(b"RIFF-dir")
    assert run("upload", "in.wav", "--key", "calls/a b.wav", cwd=tmp_path).returncode == 0
    (tmp_path / "out").mkdir()
    into_dir = run("download", "calls/a b.wav", "out", "--quiet", cwd=tmp_path)
    assert into_dir.returncode == 0, into_dir.stderr
    assert (tmp_path / "out" / "a b.wav").read_bytes() == b"RIFF-dir"
    # A trailing '/' names a directory even before it exists... which it must.
    missing_dir = run("download", "calls/a b.wav", "nowhere/", "--quiet", cwd=tmp_path)
    assert missing_dir.returncode == 1
    assert "voice-infra: error:" in missing_dir.stderr and "nowhere" in missing_dir.stderr
    assert "Traceback" not in missing_dir.stderr


def test_local_file_errors_exit_1_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "in.wav").write_bytes(b"RIFF")
    assert run("upload", "in.wav", "--key", "k.wav", cwd=tmp_path).returncode == 0
    # A destination below a regular file: NotADirectoryError, even for root.
    result = run("download", "k.wav", "in.wav/copy.wav", "--quiet", cwd=tmp_path)
    assert result.returncode == 1
    assert "voice-infra: error:" in result.stderr and "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "in.wav").read_bytes() == b"RIFF"


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    import asyncio

    import voice_infra as vi

    async def fill() -> None:  # more listing output than a pipe buffer holds
        settings = vi.Settings.from_keywords(storage={"path": str(tmp_path / "voice-infra-data")})
        async with vi.create_storage(settings) as storage:
            for i in range(3000):
                await storage.upload_file(b"x", object_key=f"k/{i:04}-{'x' * 40}.wav")

    asyncio.run(fill())
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m voice_infra.cli ls k/ | head -1"],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300,
    )  # fmt: skip
    assert result.stdout.strip() == f"k/0000-{'x' * 40}.wav"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.returncode == 141  # the ls ended as a process ended by SIGPIPE does


def test_config_prints_sources_before_a_backend_refuses_its_section(tmp_path: Path) -> None:
    (tmp_path / "voice_infra.toml").write_text('[storage]\nbackend = "fs"\nchunk_size = 1\n')
    result = run("config", cwd=tmp_path)
    assert result.returncode == 2
    assert "storage.chunk_size" in result.stdout and "file voice_infra.toml" in result.stdout
    assert "chunk_size must be at least 1KiB" in result.stderr


def test_demo_users_zero_is_an_error(tmp_path: Path) -> None:
    result = run("demo", "--users", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "--users: '0' is not a whole number of at least 1" in result.stderr


def test_ctrl_c_stops_the_demo_and_says_what_was_cleaned_up(tmp_path: Path) -> None:
    import signal

    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    environment["VOICE_INFRA_RATE_LIMIT__POLICIES"] = '["1000000/second"]'
    child = subprocess.Popen(
        [sys.executable, "-m", "voice_infra.cli", "demo", "--users", "1", "--messages", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=environment,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        first = child.stderr.readline()  # a progress line within PROGRESS_INTERVAL
        assert first.startswith("demo: "), first
        child.send_signal(signal.SIGINT)
        _, rest = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130
    assert "demo stopped early: deleted" in rest
    assert "Traceback" not in rest
    objects = tmp_path / "voice-infra-data" / "voice" / "objects"
    assert [p for p in objects.rglob("*") if p.is_file()] == []


def run_on_terminal(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The CLI with stderr on a pseudo-terminal (as a user at a shell has it); returns the
    exit status and everything written to the terminal."""
    import pty

    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_INFRA_")}
    environment.update(env or {})
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "voice_infra.cli", *args],
        stdout=subprocess.DEVNULL, stderr=follower, cwd=cwd, env=environment,
    )  # fmt: skip
    os.close(follower)
    output = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(leader)
    return child.wait(timeout=120), output.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    env = {"VOICE_INFRA_STORAGE__CHUNK_SIZE": "64KiB"}
    status, terminal = run_on_terminal("upload", "big.wav", "--key", "b.wav", cwd=tmp_path, env=env)
    assert status == 0, terminal
    assert "100%" in terminal and "big.wav" in terminal
    quiet_status, quiet = run_on_terminal(
        "upload", "big.wav", "--key", "c.wav", "--quiet", cwd=tmp_path
    )
    assert quiet_status == 0 and "%" not in quiet
    status, terminal = run_on_terminal("download", "b.wav", "copy.wav", cwd=tmp_path, env=env)
    assert status == 0 and "100%" in terminal
    assert (tmp_path / "copy.wav").read_bytes() == big.read_bytes()


def test_a_file_over_the_size_limit_is_refused_before_the_upload_starts(tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    env = {"VOICE_INFRA_STORAGE__MAX_FILE_SIZE": "1MiB"}
    status, terminal = run_on_terminal("upload", "big.wav", cwd=tmp_path, env=env)
    assert status == 2
    # Refused from the file's size before a byte was sent: no bar was drawn, and the
    # error starts its own line.
    assert "%" not in terminal
    assert terminal.lstrip().startswith("voice-infra: error: upload is 9437184 bytes")
    assert not list((tmp_path / "voice-infra-data").rglob("*%blob"))


def test_a_missing_upload_file_exits_1(tmp_path: Path) -> None:
    result = run("upload", "nosuch.wav", cwd=tmp_path)
    assert result.returncode == 1
    assert "nosuch.wav" in result.stderr and "does not exist" in result.stderr


def test_config_option_names_itself_when_the_file_is_missing(tmp_path: Path) -> None:
    result = run("--config", "nosuch.toml", "config", cwd=tmp_path)
    assert result.returncode == 2
    assert "--config 'nosuch.toml' does not name a file" in result.stderr
    assert "VOICE_INFRA_CONFIG" not in result.stderr


def test_download_into_a_missing_folder_names_the_destination(tmp_path: Path) -> None:
    (tmp_path / "in.wav").write_bytes(b"RIFF")
    assert run("upload", "in.wav", "--key", "k.wav", cwd=tmp_path).returncode == 0
    result = run("download", "k.wav", "nowhere/deeper/copy.wav", cwd=tmp_path)
    assert result.returncode == 1
    assert "'nowhere/deeper'" in result.stderr and "does not exist" in result.stderr
    assert ".part" not in result.stderr


def test_url_on_fs_says_the_app_must_serve_it(tmp_path: Path) -> None:
    (tmp_path / "in.wav").write_bytes(b"RIFF")
    assert run("upload", "in.wav", "--key", "k.wav", cwd=tmp_path).returncode == 0
    result = run("url", "k.wav", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1 and "X-VI-Signature=" in result.stdout
    assert "verify_presigned_url" in result.stderr and "your app must answer" in result.stderr


def test_plugins_shows_descriptions_and_json_lists(tmp_path: Path) -> None:
    table = run("plugins", cwd=tmp_path)
    assert "description" in table.stdout.splitlines()[0]
    listed = json.loads(run("plugins", "--json", cwd=tmp_path).stdout)["backends"]
    memory = next(b for b in listed if b["kind"] == "storage" and "memory" in b["names"])
    assert isinstance(memory["names"], list) and isinstance(memory["capabilities"], list)
    assert "presign" in memory["capabilities"]
    assert memory["description"] and memory["description"] in table.stdout


class _RawErrorStorage:
    """A plugin's storage whose open() lets its driver's exception escape."""


def _register_storage(name: str, storage_class: type) -> None:
    from voice_infra import BackendSpec, hookimpl
    from voice_infra.backends.memory import MemoryStorageSettings
    from voice_infra.plugins import get_registry

    class Plugin:
        @hookimpl
        def register_storage_backends(self, register):
            register(BackendSpec(name=name, factory=storage_class,
                                 settings_model=MemoryStorageSettings))  # fmt: skip

    get_registry().register(Plugin(), name=name)


def test_doctor_reports_a_raw_exception_from_a_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    from voice_infra.backends.memory import MemoryStorage
    from voice_infra.cli import main

    class SqliteLike(MemoryStorage):
        async def open(self) -> None:
            raise sqlite3.OperationalError("unable to open database file")

    _register_storage("sqlite-like", SqliteLike)
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", "sqlite-like")
    assert main(["doctor", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  connect: storage backend 'sqlite-like' raised OperationalError: unable to open "
        "database file" in out
    )
    assert "doctor: 1 check(s) failed" in out  # the rate-limiter checks still ran


def test_doctor_fail_lines_carry_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import voice_infra as vi
    from voice_infra.backends.memory import MemoryStorage
    from voice_infra.cli import main

    class Unreachable(MemoryStorage):
        async def open(self) -> None:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as exc:
                raise vi.StorageUnavailableError("storage server unreachable") from exc

    _register_storage("unreachable", Unreachable)
    monkeypatch.setenv("VOICE_INFRA_STORAGE__BACKEND", "unreachable")
    assert main(["doctor", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  connect: StorageUnavailableError: storage server unreachable "
        "(caused by ConnectionRefusedError: [Errno 111] Connection refused)" in out
    )


def test_config_prints_the_effective_settings_as_valid_toml(tmp_path: Path) -> None:
    import tomllib

    (tmp_path / "voice_infra.toml").write_text(
        '[storage]\nbackend = "fs"\n[rate_limit]\npolicies = ["3/second"]\n'
    )
    result = run("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    effective = result.stdout.split("# effective backend settings", 1)[1]
    parsed = tomllib.loads("#" + effective)
    assert parsed["storage"]["backend"] == "fs"
    assert parsed["rate_limit"]["policies"] == ["3/second"]
    assert "null" not in effective
    assert "# signing_key is unset" in effective  # unset options are comments


def test_config_shows_one_masked_url_in_sources_and_effective_settings(tmp_path: Path) -> None:
    (tmp_path / "voice_infra.toml").write_text(
        '[rate_limit]\nbackend = "redis"\n'
        'url = "redis://app:hunter2@127.0.0.1:6379/0?password=hunter3"\n'
    )
    result = run("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    masked = "redis://app:**********@127.0.0.1:6379/0?password=**********"
    sources, effective = result.stdout.split("# effective backend settings", 1)
    assert masked in sources and f'url = "{masked}"' in effective
    assert "hunter" not in result.stdout + result.stderr


def test_config_shows_the_web_section_with_its_secret_masked(tmp_path: Path) -> None:
    import tomllib

    canary = "canary-web-secret-6f1d2c8e0b9a47d3a5e4c1b2d3f4a5b6"
    (tmp_path / "voice_infra.toml").write_text('[web]\nmax_upload_size = "2MiB"\n')
    result = run("config", cwd=tmp_path, env={"VOICE_INFRA_WEB__SECRET": canary})
    assert result.returncode == 0, result.stderr
    assert canary not in result.stdout + result.stderr
    effective = tomllib.loads("#" + result.stdout.split("# effective backend settings", 1)[1])
    assert effective["web"]["max_upload_size"] == 2 * 1024 * 1024
    assert effective["web"]["secret"] == "**********"
    bad = run("config", cwd=tmp_path, env={"VOICE_INFRA_WEB__TOKEN_TTL": "0"})
    assert bad.returncode == 2 and "invalid [web] settings: token_ttl" in bad.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "alice", "--ttl", "99999999999999999999d"], "too long"),
        (["token", "alice", "--ttl", "0"], "too short"),
        (["abort-uploads", "--older-than", "99999999999999999999d"], "too long"),
        (["doctor", "--timeout", "-1"], "above 0"),
        (["doctor", "--timeout", "nan"], "above 0"),
        (["serve", "--port", "99999"], "port must be 0 to 65535"),
        (["serve", "--port", "-1"], "port must be 0 to 65535"),
        (["upload", "audio.wav", "--user", "\udcff"], "not valid Unicode text"),
    ],
)
def test_out_of_range_arguments_are_usage_errors(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    """Values too large for a timedelta, ports out of range, a user id that is not text:
    a one-line error and exit 2, never a traceback."""
    (tmp_path / "audio.wav").write_bytes(b"RIFF")
    result = run(*argv, cwd=tmp_path, env={"PYTHONUTF8": "1"})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
