"""The documentation's examples run as written.

- Every TOML block of README.md and docs/*.md that selects a backend is written to a
  ``voice_infra.toml`` and checked with ``voice-infra doctor`` (a subprocess, as a user runs
  it). Only the addresses change: S3 endpoints point at a moto server of the test's own and
  Redis URLs at a redis-server started for the block, with the block's own password.
- Every Python block of docs/getting-started.md runs as written in an empty directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from voice_infra.kinds import declared_kinds

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(toml|python)\n(.*?)^```", re.S | re.M)
# Every declared kind's section: a documented [cache] block is checked like the others.
SECTIONS = tuple(kind.section for kind in declared_kinds())
REDIS_URL = re.compile(r'^((?:url|storage_uri)\s*=\s*)"(redis://[^"]*)"', re.M)
ENDPOINT = re.compile(r'^(endpoint_url\s*=\s*)"[^"]*"', re.M)


def _blocks(language: str, documents: list[Path]) -> Iterator[tuple[str, str]]:
    for document in documents:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            if match[1] == language:
                line = text.count("\n", 0, match.start()) + 1
                yield f"{document.relative_to(ROOT)}:{line}", match[2]


def _selects_a_backend(block: str) -> bool:
    data = tomllib.loads(block)  # every documented TOML block must at least parse
    return any(isinstance(data.get(s), dict) and "backend" in data[s] for s in SECTIONS)


CONFIG_BLOCKS = [(where, b) for where, b in _blocks("toml", DOCUMENTS) if _selects_a_backend(b)]
PYTHON_BLOCKS = list(_blocks("python", [ROOT / "docs" / "getting-started.md"]))


def _environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOICE_INFRA_", "AWS_")) and k != "PYTHONPATH"
    }
    env.update(extra)
    return env


def test_the_docs_have_configuration_and_program_examples() -> None:
    # The parametrized tests below would pass vacuously if the extraction found nothing.
    assert len(CONFIG_BLOCKS) >= 5
    assert any("README.md" in where for where, _ in CONFIG_BLOCKS)
    assert PYTHON_BLOCKS


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from voice_infra_s3.testing import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.mark.parametrize(
    "block", [b for _, b in CONFIG_BLOCKS], ids=[where for where, _ in CONFIG_BLOCKS]
)
def test_documented_configuration_passes_doctor(
    block: str, tmp_path: Path, moto_endpoint: str, example_sites: dict[str, Path]
) -> None:
    from voice_infra_redis.testing import RedisServer

    # A fresh S3 server state: the block itself must create its bucket.
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10
    ).close()
    config = ENDPOINT.sub(lambda m: f'{m[1]}"{moto_endpoint}"', block)
    servers: list[RedisServer] = []

    def local_redis(match: re.Match[str]) -> str:
        documented = urlsplit(match[2])
        extra = ["--requirepass", documented.password] if documented.password else []
        server = RedisServer(tmp_path / f"redis{len(servers)}", extra_args=extra).start()
        servers.append(server)
        netloc = f"127.0.0.1:{server.port}"
        if documented.password is not None:
            netloc = f"{documented.username or ''}:{documented.password}@{netloc}"
        return f'{match[1]}"{documented._replace(netloc=netloc).geturl()}"'

    config = REDIS_URL.sub(local_redis, config)
    (tmp_path / "voice_infra.toml").write_text(config)
    # Third-party examples (the docs' 'example' plugin) are installed as the docs say.
    env = _environment(HOME=str(tmp_path), PYTHONPATH=str(example_sites["voice-infra-example"]))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "voice_infra.cli", "doctor", "--timeout", "20"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for server in servers:
            server.stop()
    assert result.returncode == 0, f"{config}\n{result.stdout}\n{result.stderr}"
    assert "doctor: all checks passed" in result.stdout


@pytest.mark.parametrize(
    "block", [b for _, b in PYTHON_BLOCKS], ids=[where for where, _ in PYTHON_BLOCKS]
)
def test_getting_started_programs_run_as_written(block: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=_environment(HOME=str(tmp_path)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
