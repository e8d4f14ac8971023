"""Fixtures of the S3 plugin's tests: moto's S3 server over real HTTP on loopback.

``mock_aws`` does not intercept aiobotocore, so the tests talk to moto's standalone
server (``ThreadedMotoServer``) started once per session on a free loopback port; its
state is reset before each test that asks for ``s3_options``.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

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
    from moto.server import ThreadedMotoServer

    # One log line per request would drown the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


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
