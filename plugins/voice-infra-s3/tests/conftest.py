"""Fixtures of the S3 plugin's tests: moto's S3 server over real HTTP on loopback.

``mock_aws`` does not intercept aiobotocore, so the tests talk to moto's standalone
server (``ThreadedMotoServer``) started once per session on a free loopback port; its
state is reset before each test that asks for ``s3_options``.

Tests that must freeze, kill or restart the server, or keep its memory out of the test
process (the RSS test), use :class:`MotoProcess`: ``python -m moto.server`` in a child
process (fixtures ``moto_process`` and ``moto_child``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from voice_infra_s3.testing import moto_server

import voice_infra as vi
from voice_infra.plugins import reset_registry
from voice_infra.storage import StorageBackend

BUCKET = "voice-test"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-do-not-print"


@pytest.fixture(autouse=True)
def _s3_isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No VOICE_INFRA_* setting (other than the real_s3 test variables) or AWS
    profile of the developer leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("VOICE_INFRA_") and not name.startswith("VOICE_INFRA_TEST_"):
            monkeypatch.delenv(name)
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole session; its endpoint URL."""
    with moto_server() as endpoint:
        yield endpoint


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """A plain blocking HTTP request (for fixtures; never credentials)."""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def reset_moto(endpoint: str, *, bucket: str | None = BUCKET) -> None:
    """Forget every bucket and object, then (re)create ``bucket``."""
    status, _ = http("POST", f"{endpoint}/moto-api/reset")
    assert status == 200
    if bucket is not None:
        status, body = http("PUT", f"{endpoint}/{bucket}")
        assert status == 200, body


def s3_storage_options(endpoint: str, **overrides: Any) -> dict[str, Any]:
    """``[storage]`` options for the moto server; retries off (a retried create would
    report 'already exists' and hide the first failure)."""
    options: dict[str, Any] = {
        "backend": "s3",
        "endpoint_url": endpoint,
        "bucket": BUCKET,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "region": "us-east-1",
        "max_attempts": 1,
        "connect_timeout": 2,
        "read_timeout": 10,
    }
    options.update(overrides)
    return options


@pytest.fixture
def s3_options(s3_server: str) -> dict[str, Any]:
    """Options for a freshly reset moto holding the empty bucket ``voice-test``."""
    reset_moto(s3_server)
    return s3_storage_options(s3_server)


@pytest.fixture
def make_s3_storage(s3_options: dict[str, Any]) -> Callable[..., StorageBackend]:
    """Build an (unopened) S3 storage through the public factory, with overrides."""

    def build(**overrides: Any) -> StorageBackend:
        return vi.create_storage(vi.Settings(storage={**s3_options, **overrides}))

    return build


def free_port() -> int:
    """A loopback port free right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# moto's server in a child process whose bucket exists before its port accepts a
# connection: a client retrying through a restart (as S3 or MinIO keep their buckets
# across one) must never find the server up without it, as it could between the server
# answering and a bucket created over HTTP afterwards.
_MOTO_WITH_BUCKET = """
import sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main

host, port, bucket = sys.argv[1:4]
s3_backends[DEFAULT_ACCOUNT_ID]["aws"].create_bucket(bucket, "us-east-1")
main(["-H", host, "-p", port])
"""


class MotoProcess:
    """``python -m moto.server`` in a child process on a fixed loopback port: it can be
    frozen (SIGSTOP), resumed, killed and started again on the same port.

    The child's output goes to /dev/null: a pipe nobody reads would fill up and block
    the server. :meth:`stop` always resumes a frozen child before killing it.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server (again) with the bucket, and wait until it answers."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_WITH_BUCKET, "127.0.0.1", str(self.port), BUCKET],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.frozen = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"moto server on port {self.port} exited at start "
                        f"(code {self.process.returncode}; port taken?)"
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer within {timeout}s") from None
                time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections and data, nothing answers."""
        assert self.process is not None and self.process.poll() is None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Kill the server (resuming it first if frozen) and reap it; idempotent."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.resume()
            process.kill()
        process.wait(10)
        self.frozen = False


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    """A moto child process of this test only (free to freeze, kill and restart)."""
    server = MotoProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto_child() -> Iterator[MotoProcess]:
    """A moto child process shared by a module's tests (reset it before use)."""
    server = MotoProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()
