"""The 'example' storage backend: a dict of objects, written from scratch."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from voice_infra import SignedURLSettings, SignedURLStorage, UploadBody, VoiceFileInfo


class ExampleSettings(SignedURLSettings):
    """Keys users may write in [storage] when backend = "example"."""

    bucket: str = "example"


class ExampleStorage(SignedURLStorage):
    settings: ExampleSettings

    def __init__(self, settings: ExampleSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        self._data: dict[str, bytes] = {}
        self._infos: dict[str, VoiceFileInfo] = {}
        self._make_signer(secrets.token_bytes(32))

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        data = await body.read_all()
        now = datetime.now(UTC)
        self._data[key] = data
        self._infos[key] = VoiceFileInfo(
            object_key=key,
            bucket_name=self.bucket_name,
            file_size=len(data),
            content_type=content_type,
            upload_time=now,
            metadata=metadata,
            checksum=body.sha256,
        )
        return now

    async def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        if key not in self._data:
            raise self._not_found(key)
        data = self._data[key]
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def _info(self, key: str) -> VoiceFileInfo:
        if key not in self._infos:
            raise self._not_found(key)
        return self._infos[key]

    async def _delete(self, key: str) -> bool:
        self._infos.pop(key, None)
        return self._data.pop(key, None) is not None

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        for key in sorted(k for k in self._infos if k.startswith(prefix)):
            yield self._infos[key]
