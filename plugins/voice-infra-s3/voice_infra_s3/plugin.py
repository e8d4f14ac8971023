"""Entry point of the plugin: declares the ``s3`` storage backend (alias ``minio``).

Must import nothing heavier than voice_infra: discovery runs in every process.
"""

from __future__ import annotations

from collections.abc import Callable

from voice_infra.hookspecs import hookimpl
from voice_infra.plugins import BackendSpec


@hookimpl
def register_storage_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="s3",
            aliases=("minio",),
            factory="voice_infra_s3.backend:S3Storage",
            settings_model="voice_infra_s3.settings:S3StorageSettings",
            capabilities={"presign", "multipart", "range_read", "persistent", "versioned_read"},
            install_hint="pip install voice-infra-s3",
            description="Amazon S3 or an S3-compatible server (MinIO) through aiobotocore.",
        )
    )
