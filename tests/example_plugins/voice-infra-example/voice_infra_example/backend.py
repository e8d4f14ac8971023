"""The 'example' storage backend: objects in one SQLite file (standard library only)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from voice_infra import (
    SignedURLSettings,
    SignedURLStorage,
    StorageError,
    StorageUnavailableError,
    UploadBody,
    VoiceFileInfo,
    translate_errors,
)

SCHEMA = """CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB,
    content_type TEXT, metadata TEXT, checksum TEXT, uploaded TEXT)"""
INFO = "SELECT key, length(data), content_type, metadata, checksum, uploaded FROM objects"
# The specific driver error first: the first match wins.
DRIVER_ERRORS = {sqlite3.OperationalError: StorageUnavailableError, sqlite3.Error: StorageError}


class ExampleSettings(SignedURLSettings):
    """Keys users may write in [storage] when backend = "example"."""

    bucket: str = "example"
    path: str = "voice-example.sqlite3"


class ExampleStorage(SignedURLStorage):
    settings: ExampleSettings

    def __init__(self, settings: ExampleSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        self._make_signer(secrets.token_bytes(32))
        self._lock = threading.Lock()  # one statement at a time on the shared connection

    async def open(self) -> None:
        # Runs once, on `async with` or first use; after a failure the core calls aclose().
        # Autocommit (isolation_level=None): each statement is its own transaction.
        options = {"check_same_thread": False, "isolation_level": None}
        self._db = await self._run(sqlite3.connect, self.settings.path, **options)
        self.push_async_callback(asyncio.to_thread, self._db.close)  # closed by aclose()
        await self._sql(SCHEMA)
        await super().open()

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with translate_errors(DRIVER_ERRORS, f"SQLite database {self.settings.path!r}"):
            return await asyncio.to_thread(function, *args, **kwargs)

    async def _sql(self, query: str, *params: Any) -> list[Any]:
        def execute() -> list[Any]:
            with self._lock:
                return self._db.execute(query, params).fetchall()

        return await self._run(execute)

    def _to_info(self, row: Any) -> VoiceFileInfo:
        key, size, content_type, metadata, checksum, uploaded = row
        return VoiceFileInfo(
            object_key=key, bucket_name=self.bucket_name, file_size=size,
            content_type=content_type, upload_time=datetime.fromisoformat(uploaded),
            metadata=json.loads(metadata), checksum=checksum,
        )  # fmt: skip

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        data = await body.read_all()  # one statement stores it: all or nothing
        now = datetime.now(UTC)
        row = (key, data, content_type, json.dumps(metadata), body.sha256, now.isoformat())
        await self._sql("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)", *row)
        return now

    async def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        rows = await self._sql("SELECT data FROM objects WHERE key = ?", key)
        if not rows:
            raise self._not_found(key)
        for start in range(0, len(rows[0][0]), chunk_size):
            yield rows[0][0][start : start + chunk_size]

    async def _info(self, key: str) -> VoiceFileInfo:
        rows = await self._sql(f"{INFO} WHERE key = ?", key)
        if not rows:
            raise self._not_found(key)
        return self._to_info(rows[0])

    async def _delete(self, key: str) -> bool:
        return bool(await self._sql("DELETE FROM objects WHERE key = ? RETURNING key", key))

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        # Not LIKE: its '_' and '%' are wildcards and it ignores ASCII case. The key's
        # first characters must equal the prefix; ORDER BY compares UTF-8 bytes.
        query = f"{INFO} WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key"
        for row in await self._sql(query, prefix):
            yield self._to_info(row)
