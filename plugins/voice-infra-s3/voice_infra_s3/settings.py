"""Settings of the ``s3`` storage backend (the ``[storage]`` keys users may write).

Imports only pydantic and voice_infra: validating a configuration must not pull in
aiobotocore.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator

from voice_infra.storage import StorageSettings

__all__ = ["MAX_PART_SIZE", "MIN_PART_SIZE", "S3StorageSettings"]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3: every part but the last is at least 5 MiB
MAX_PART_SIZE = 5 * 1024 * MIB  # S3: a part, and a single PUT, is at most 5 GiB
# S3's bucket naming rules (MinIO follows them): 3-63 characters, lower-case letters,
# digits, '.' and '-', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "must be an http:// or https:// URL with a host, for example "
            "'http://127.0.0.1:9000' (MinIO) or 'https://s3.eu-west-1.amazonaws.com'"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not contain credentials (they would leak into logs); "
            "set access_key and secret_key instead"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


class S3StorageSettings(StorageSettings):
    """Options of the ``s3`` (alias ``minio``) storage backend."""

    bucket: str = Field(description="Bucket holding the objects (required).")
    endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint, e.g. 'http://127.0.0.1:9000' for MinIO; "
        "AWS's regional endpoint when not set.",
    )
    region: str = Field(default="us-east-1", description="Region used for signing.")
    access_key: SecretStr | None = Field(
        default=None,
        description="Access key id; when unset the standard AWS credential chain is used "
        "(AWS_ACCESS_KEY_ID, ~/.aws/credentials, instance roles...).",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Secret access key (set together with access_key)."
    )
    session_token: SecretStr | None = Field(
        default=None, description="Session token of temporary credentials."
    )
    create_bucket_if_missing: bool = Field(
        default=False, description="Create the bucket when the backend opens if it is absent."
    )
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path",
        description="'path' (http://host/bucket/key, what MinIO expects), 'virtual' "
        "(http://bucket.host/key) or 'auto' (botocore decides).",
    )
    multipart_threshold: ByteSize = Field(
        default=ByteSize(8 * MIB),
        description="Uploads larger than this go as multipart uploads; smaller ones as "
        "one PUT (buffered in memory up to this size).",
    )
    multipart_part_size: ByteSize = Field(
        default=ByteSize(8 * MIB), description="Size of each multipart part (at least 5MiB)."
    )
    upload_concurrency: int = Field(
        default=4, ge=1, le=64, description="Parts of one multipart upload sent at once."
    )
    max_pool_connections: int = Field(
        default=50, ge=1, le=1000, description="HTTP connections kept per storage instance."
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to wait for a TCP connection."
    )
    read_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds to wait for data on a connection."
    )
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        default="standard", description="botocore retry mode."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts per request, the first one included."
    )
    public_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint that clients outside your network use; presigned URLs are "
        "signed for this host when set.",
    )
    list_page_size: int = Field(
        default=1000, ge=1, le=1000, description="Keys per ListObjectsV2 page (S3 max 1000)."
    )
    list_metadata: bool = Field(
        default=True,
        description="list_files fetches each object's content type and metadata (one HEAD "
        "per object, concurrently); false lists from ListObjectsV2 alone.",
    )
    verify_tls: bool = Field(default=True, description="Verify the endpoint's TLS certificate.")

    def failure_bound(self) -> float:
        """Longest time, in seconds, one S3 call may take to fail in botocore's
        ``standard`` retry mode (docs/s3.md, "Outages"): every attempt waits at most
        ``connect_timeout`` plus ``read_timeout``, and retry ``i`` is preceded by a
        jittered backoff below ``min(2**(i-1), 20)`` seconds."""
        backoff = sum(min(2.0 ** (i - 1), 20.0) for i in range(1, self.max_attempts))
        return self.max_attempts * (self.connect_timeout + self.read_timeout) + backoff

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not _BUCKET.match(value) or ".." in value:
            raise ValueError(
                "must be a valid S3 bucket name: 3-63 characters of lower-case "
                "letters, digits, '.' and '-', starting and ending with a letter or digit"
            )
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return value
        raise ValueError("must not look like an IP address")

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("public_endpoint_url")
    @classmethod
    def _check_public_endpoint(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9-]{1,64}$", value):
            raise ValueError("must look like 'us-east-1' (lower-case letters, digits, '-')")
        return value

    @field_validator("multipart_part_size", "multipart_threshold")
    @classmethod
    def _check_part_size(cls, value: ByteSize) -> ByteSize:
        if value < MIN_PART_SIZE:
            raise ValueError(
                f"must be at least 5MiB ({MIN_PART_SIZE} bytes): S3 rejects smaller "
                "multipart parts; write for example '8MiB'"
            )
        if value > MAX_PART_SIZE:
            raise ValueError(f"must be at most 5GiB ({MAX_PART_SIZE} bytes), S3's limit")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> S3StorageSettings:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError(
                "set both access_key and secret_key, or neither to use the standard AWS "
                "credential chain"
            )
        if self.session_token is not None and self.access_key is None:
            raise ValueError("session_token needs access_key and secret_key")
        return self
