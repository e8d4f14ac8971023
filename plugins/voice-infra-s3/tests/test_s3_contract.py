"""The shared storage contract, against moto over HTTP and (opt-in) a real S3/MinIO."""

from __future__ import annotations

import os
from typing import Any

import pytest

import voice_infra as vi
from voice_infra.storage import StorageBackend
from voice_infra.testing import StorageContract

REAL_S3_VARIABLES = {
    "endpoint_url": "VOICE_INFRA_TEST_S3_ENDPOINT",
    "bucket": "VOICE_INFRA_TEST_S3_BUCKET",
    "access_key": "VOICE_INFRA_TEST_S3_ACCESS_KEY",
    "secret_key": "VOICE_INFRA_TEST_S3_SECRET_KEY",
    "region": "VOICE_INFRA_TEST_S3_REGION",
}


class TestS3Contract(StorageContract):
    """Every contract test against moto's S3 server."""

    @pytest.fixture
    def storage_backend(self, s3_options: dict[str, Any]) -> StorageBackend:
        return vi.create_storage(vi.Settings(storage=s3_options))


class TestS3ContractListingWithoutMetadata(StorageContract):
    """The contract holds with small list pages and HEAD-less listing too."""

    @pytest.fixture
    def storage_backend(self, s3_options: dict[str, Any]) -> StorageBackend:
        options = {**s3_options, "list_page_size": 3, "list_metadata": False}
        return vi.create_storage(vi.Settings(storage=options))


def _real_s3_options() -> dict[str, Any]:
    missing = [name for name in REAL_S3_VARIABLES.values() if not os.environ.get(name)]
    if missing:
        pytest.skip(
            "real_s3 tests need a real S3/MinIO endpoint: set " + ", ".join(missing)
            + " (see docs/s3.md)"
        )  # fmt: skip
    options: dict[str, Any] = {"backend": "s3"}
    options.update({key: os.environ[name] for key, name in REAL_S3_VARIABLES.items()})
    return options


@pytest.mark.real_s3
class TestRealS3Contract(StorageContract):
    """The contract against the endpoint in VOICE_INFRA_TEST_S3_*; skipped when unset."""

    @pytest.fixture
    def storage_backend(self) -> StorageBackend:
        return vi.create_storage(vi.Settings(storage=_real_s3_options()))
