"""The botocore internals ``voice_infra_s3/_botocore_compat.py`` relies on, checked.

If one of these fails after a botocore or aiobotocore upgrade, botocore changed a private
name the S3 plugin uses: adapt ``_botocore_compat.py`` (nothing else in the plugin
touches botocore internals) before raising the version caps in the plugin's
``pyproject.toml``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from botocore.auth import (  # type: ignore[import-untyped]
    AUTH_TYPE_MAPS,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    S3SigV4Auth,
)
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from voice_infra_s3._botocore_compat import (
    KNOWN_DIGEST_SIGNER,
    KnownDigestS3SigV4Auth,
    register_known_digest_signer,
    signs_payload_hash,
)

CHANGED = "botocore changed a private name voice_infra_s3/_botocore_compat.py relies on"
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
DATA = b"voice-infra body " * 100
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (S3SigV4Auth, "_should_sha256_sign_payload"),
        (S3SigV4Auth, "_is_streaming_checksum_payload"),
        (S3SigV4Auth, "payload"),
    ],
)
def test_the_private_methods_exist_with_the_expected_signature(owner: type, name: str) -> None:
    method = getattr(owner, name, None)
    assert callable(method), f"{CHANGED}: {owner.__name__}.{name} is gone"
    parameters = list(inspect.signature(method).parameters)
    assert parameters == ["self", "request"], f"{CHANGED}: {name}{parameters}"


class _Body(io.BytesIO):
    """A request body like the plugin's: a BytesIO carrying its precomputed SHA-256,
    counting the reads the signer makes."""

    def __init__(self, data: bytes, known_sha256: str | None) -> None:
        super().__init__(data)
        self.known_sha256 = known_sha256
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def _request(
    scheme: str = "http",
    *,
    signing: bool | None = None,
    checksum_header: bool = False,
    streaming: bool = False,
    trailer: bool = False,
    body: Any = None,
) -> AWSRequest:
    headers = {"Content-MD5": "x"} if checksum_header else {}
    request = AWSRequest(
        method="PUT", url=f"{scheme}://bucket.s3.example.test/key", data=body, headers=headers
    )
    request.context = {"client_config": Config(s3={"payload_signing_enabled": signing})}
    if streaming:
        request.context["has_streaming_input"] = True
    if trailer:
        request.context["checksum"] = {
            "request_algorithm": {"in": "trailer", "name": "x-amz-checksum-crc32"}
        }
    return request


CASES = [
    {"scheme": scheme, "signing": signing, "checksum_header": header, "streaming": streaming,
     "trailer": trailer}
    for scheme in ("http", "https")
    for signing in (None, True, False)
    for header in (False, True)
    for streaming in (False, True)
    for trailer in (False, True)
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_signs_payload_hash_agrees_with_botocore(case: dict[str, Any]) -> None:
    """The predicate answers True exactly when botocore's own S3 SigV4 would hash the
    body, and then the known-digest signer signs the same hash without reading it."""
    auth = S3SigV4Auth(CREDENTIALS, "s3", "us-east-1")
    plain = auth.payload(_request(**case, body=_Body(DATA, None)))
    assert signs_payload_hash(auth, _request(**case)) == (
        plain not in (UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_PAYLOAD_TRAILER)
    ), f"{CHANGED}: the payload decision moved ({case}, botocore gave {plain!r})"
    body = _Body(DATA, SHA)
    known = KnownDigestS3SigV4Auth(CREDENTIALS, "s3", "us-east-1").payload(
        _request(**case, body=body)
    )
    assert known == plain  # what goes on the wire is what s3v4 sends
    assert body.reads == 0


def test_the_signed_request_carries_the_given_digest() -> None:
    """A full signing: the x-amz-content-sha256 header is the digest the body carries
    (a made-up one here, so a hash of the body could not produce it), the body unread."""
    made_up = "ab" * 32
    body = _Body(DATA, made_up)
    request = _request("http", body=body)
    KnownDigestS3SigV4Auth(CREDENTIALS, "s3", "us-east-1").add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == made_up
    assert "x-amz-content-sha256" in request.headers["Authorization"]
    assert body.reads == 0
    plain = _request("http", body=_Body(DATA, None))
    S3SigV4Auth(CREDENTIALS, "s3", "us-east-1").add_auth(plain)
    assert plain.headers["X-Amz-Content-SHA256"] == SHA


def test_registration_adds_one_name_and_replaces_nothing() -> None:
    before = {name: cls for name, cls in AUTH_TYPE_MAPS.items() if name != KNOWN_DIGEST_SIGNER}
    assert register_known_digest_signer() == KNOWN_DIGEST_SIGNER
    assert register_known_digest_signer() == KNOWN_DIGEST_SIGNER  # idempotent
    assert AUTH_TYPE_MAPS[KNOWN_DIGEST_SIGNER] is KnownDigestS3SigV4Auth
    after = {name: cls for name, cls in AUTH_TYPE_MAPS.items() if name != KNOWN_DIGEST_SIGNER}
    assert after == before


def test_importing_the_plugin_leaves_botocore_untouched() -> None:
    """No global change at import: the signer is registered when a storage opens."""
    code = textwrap.dedent(
        """
        import voice_infra_s3.backend
        from botocore.auth import AUTH_TYPE_MAPS
        from voice_infra_s3._botocore_compat import KNOWN_DIGEST_SIGNER
        assert KNOWN_DIGEST_SIGNER not in AUTH_TYPE_MAPS, "registered at import"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_botocore_internals_are_used_in_compat_only() -> None:
    """The private names (and the global signer table) appear in _botocore_compat.py
    and nowhere else in the plugin."""
    import ast
    from pathlib import Path

    import voice_infra_s3

    watched = {"_should_sha256_sign_payload", "_is_streaming_checksum_payload", "AUTH_TYPE_MAPS"}
    found = []
    for path in Path(voice_infra_s3.__file__).parent.glob("*.py"):
        if path.name == "_botocore_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = {getattr(node, "attr", None), getattr(node, "id", None)}
            if isinstance(node, ast.ImportFrom):
                names |= {alias.name for alias in node.names}
            if names & watched:
                found.append(f"{path.name}:{getattr(node, 'lineno', '?')}")
    assert not found, found
