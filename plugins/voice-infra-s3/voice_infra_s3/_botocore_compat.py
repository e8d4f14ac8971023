"""Every use of botocore names that are not public API, in one place.

botocore has no public way to hand its SigV4 signer a payload hash computed elsewhere:
``S3SigV4Auth`` always sets ``x-amz-content-sha256`` itself, from its ``payload()``
method, which reads and hashes the whole body. voice-infra already computed the body's
SHA-256 (for ``VoiceFileInfo.checksum``), so single PUTs are signed by a subclass that
returns that digest whenever botocore would have hashed the body. Two things here lean
on botocore internals; each is checked by ``tests/test_s3_botocore_compat.py``, which
fails with a clear message when a release changes them, and the plugin's
``pyproject.toml`` caps botocore / aiobotocore at the minor versions those tests passed
on (botocore 1.43, aiobotocore 3.10):

- :func:`signs_payload_hash` calls the private predicates
  ``SigV4Auth._is_streaming_checksum_payload`` and
  ``S3SigV4Auth._should_sha256_sign_payload``: whether ``payload()`` would hash the body
  (or answer ``UNSIGNED-PAYLOAD`` / ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``).
- :func:`register_known_digest_signer` adds one entry to ``botocore.auth.AUTH_TYPE_MAPS``,
  the table botocore's request signer looks signature versions up in: a
  ``choose-signer`` handler can only name a signature version, and this table is the
  only place a name gets its class. The entry is added when an S3 storage opens a client
  (not at import), under a name of our own, and never replaces an entry: clients that do
  not register our ``choose-signer`` handler never use it.
"""

from __future__ import annotations

from typing import Any

from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth  # type: ignore[import-untyped]

__all__ = [
    "KNOWN_DIGEST_SIGNER",
    "KnownDigestS3SigV4Auth",
    "register_known_digest_signer",
    "signs_payload_hash",
]

#: The signature version name of :class:`KnownDigestS3SigV4Auth`.
KNOWN_DIGEST_SIGNER = "voice-infra-s3v4"


def signs_payload_hash(auth: S3SigV4Auth, request: Any) -> bool:
    """True when botocore's S3 SigV4 ``auth`` signs ``request`` with the SHA-256 of its
    body (http, or https without a checksum header, unless payload signing is configured
    off); False when it signs ``UNSIGNED-PAYLOAD`` or a streaming-trailer constant.

    Relies on the private ``_is_streaming_checksum_payload`` and
    ``_should_sha256_sign_payload`` of ``botocore.auth.S3SigV4Auth`` (the two tests
    ``S3SigV4Auth.payload`` makes before hashing).
    """
    if auth._is_streaming_checksum_payload(request):
        return False
    return bool(auth._should_sha256_sign_payload(request))


class KnownDigestS3SigV4Auth(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4, except that a body whose SHA-256 voice-infra computed (its
    ``known_sha256`` attribute) is signed with that digest instead of being read and
    hashed a second time. The request on the wire is byte for byte what ``s3v4`` sends."""

    def payload(self, request: Any) -> str:
        digest = getattr(request.body, "known_sha256", None)
        if digest is None or not signs_payload_hash(self, request):
            return str(super().payload(request))
        return str(digest)


def register_known_digest_signer() -> str:
    """Make :data:`KNOWN_DIGEST_SIGNER` a signature version botocore can sign with (one
    added entry of ``botocore.auth.AUTH_TYPE_MAPS``; idempotent) and return the name."""
    registered = AUTH_TYPE_MAPS.setdefault(KNOWN_DIGEST_SIGNER, KnownDigestS3SigV4Auth)
    if registered is not KnownDigestS3SigV4Auth:
        raise RuntimeError(
            f"botocore already knows a signature version {KNOWN_DIGEST_SIGNER!r}: "
            f"{registered!r}; voice-infra-s3 will not replace it"
        )
    return KNOWN_DIGEST_SIGNER
