"""The storage interface: :class:`StorageSettings` and :class:`StorageBackend`.

A backend subclasses :class:`StorageBackend` and implements ``_write``, ``_read``,
``_info``, ``_delete``, ``_list`` and (with the ``presign`` capability) ``_presign``.
The public methods validate what callers pass (:mod:`voice_infra.storage.keys`) and
read upload sources (:mod:`voice_infra.storage.body`) once, for every backend.
"""

from __future__ import annotations

import contextlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ByteSize, Field, field_validator

from voice_infra.base import Backend, BackendSettings
from voice_infra.errors import (
    InvalidByteRangeError,
    InvalidObjectKeyError,
    InvalidPresignedURLError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.storage.body import UploadBody, UploadSource
from voice_infra.storage.keys import (
    extension_for,
    user_key_segment,
    validate_content_type,
    validate_list_prefix,
    validate_metadata,
    validate_object_key,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_PRESIGN_TTL",
    "OpenedRange",
    "PresignMethod",
    "StorageBackend",
    "StorageSettings",
    "same_version",
    "validate_presign_ttl",
]

MAX_PRESIGN_TTL = 7 * 24 * 3600  # SigV4's limit, applied to every backend
DEFAULT_CHUNK_SIZE = 1024 * 1024

PresignMethod = Literal["GET", "PUT"]


class StorageSettings(BackendSettings):
    """Options every storage backend accepts; backends subclass it for their own."""

    key_prefix: str = Field(default="voice", description="First segment of generated object keys.")
    max_file_size: ByteSize | None = Field(
        default=None, description="Largest accepted upload ('25MiB', or bytes); none by default."
    )
    presign_ttl: int = Field(
        default=3600, description="Default lifetime of presigned URLs in seconds (max 7 days)."
    )
    chunk_size: ByteSize = Field(
        default=ByteSize(DEFAULT_CHUNK_SIZE), description="Chunk size of streamed reads."
    )

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value:
            validate_object_key(value)
        return value

    @field_validator("presign_ttl")
    @classmethod
    def _check_ttl(cls, value: int) -> int:
        validate_presign_ttl(value, error=ValueError)
        return value

    @field_validator("chunk_size")
    @classmethod
    def _check_chunk(cls, value: ByteSize) -> ByteSize:
        if value < 1024:
            raise ValueError("chunk_size must be at least 1KiB")
        return value


def validate_presign_ttl(
    expires_in: object, *, error: type[Exception] = InvalidPresignedURLError
) -> int:
    """A presigned URL's lifetime: whole seconds, positive, at most 7 days."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise error(f"expires_in must be whole seconds (int), got {expires_in!r}")
    if not 0 < expires_in <= MAX_PRESIGN_TTL:
        raise error(
            f"expires_in={expires_in} is out of range: a presigned URL lives between 1 "
            f"second and 7 days ({MAX_PRESIGN_TTL} seconds)"
        )
    return expires_in


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close ``chunks`` on the way out: a consumer that stops early releases the backend's
    file or connection now, not whenever the generator is garbage-collected."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class OpenedRange:
    """What a backend's ``_open_range`` gives: one version's info and (a range of) its
    bytes; ``close`` releases what was opened (a file, a response) even when ``chunks``
    is never iterated."""

    info: VoiceFileInfo
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        """Close ``chunks`` and what was opened."""
        aclose = getattr(self.chunks, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            if self.close is not None:
                await self.close()


def _deleted_since(object_key: str) -> ObjectChangedError:
    return ObjectChangedError(f"{object_key!r} was deleted after its info was read")


def same_version(found: VoiceFileInfo, expected: VoiceFileInfo) -> bool:
    """Whether ``found`` describes the version ``expected`` does: same size, upload
    time and checksum (an upload in the same second with the same bytes is the same)."""
    return (found.file_size, found.upload_time, found.checksum) == (
        expected.file_size,
        expected.upload_time,
        expected.checksum,
    )


class StorageBackend(Backend, ABC):
    """Interface of every storage backend; use it as an async context manager."""

    kind = "storage"

    def __init__(self, settings: StorageSettings, *, bucket_name: str) -> None:
        super().__init__()
        self.settings = settings
        self.bucket_name = bucket_name

    # -- public API ------------------------------------------------------------------

    def generate_object_key(
        self,
        user_id: str | None = None,
        content_type: str | None = None,
        *,
        now: datetime | None = None,
    ) -> str:
        """A new collision-free key: ``{prefix}/{user}/{yyyy}/{mm}/{dd}/{uuid4}.{ext}``.

        ``user`` is :func:`user_key_segment` of the user id (``~anonymous`` when absent);
        the date is the UTC upload date; ``ext`` follows the content type
        (``audio/wav`` -> ``wav``, unknown -> ``bin``).
        """
        when = (now or datetime.now(UTC)).astimezone(UTC)
        parts = [
            self.settings.key_prefix,
            user_key_segment(user_id),
            f"{when:%Y}",
            f"{when:%m}",
            f"{when:%d}",
            f"{uuid.uuid4().hex}.{extension_for(content_type)}",
        ]
        return validate_object_key("/".join(part for part in parts if part))

    async def upload_file(
        self,
        source: UploadSource,
        *,
        object_key: str | None = None,
        user_id: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> VoiceFileInfo:
        """Store ``source`` (bytes, a path, a binary file or an async iterable of bytes).

        Without ``object_key`` a key is generated from ``user_id`` and ``content_type``.
        The write is all-or-nothing: after a failure or cancellation no partial object
        is visible. Returns the stored object's info with its SHA-256 ``checksum``.
        """
        validate_content_type(content_type)
        if object_key is None:
            key = self.generate_object_key(user_id, content_type)
        else:
            key = validate_object_key(object_key)
        clean_metadata = validate_metadata(metadata or {}, user_id)
        body = await UploadBody.create(source, chunk_size=self._chunk_size, max_size=self._max_size)
        await self._ensure_open()
        upload_time = await self._write(
            key, body, content_type=content_type, metadata=clean_metadata
        )
        return VoiceFileInfo(
            object_key=key,
            bucket_name=self.bucket_name,
            file_size=body.size,
            content_type=content_type,
            upload_time=upload_time,
            metadata=clean_metadata,
            checksum=body.sha256,
        )

    async def download_file(self, object_key: str) -> bytes:
        """The whole object's bytes; use :meth:`stream_file` for large objects."""
        return b"".join([chunk async for chunk in self.stream_file(object_key)])

    async def stream_file(
        self, object_key: str, *, chunk_size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes in chunks; resources are held only while iterating."""
        validate_object_key(object_key, writing=False)
        await self._ensure_open()
        async with _closing(self._read(object_key, chunk_size or self._chunk_size)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def stream_range(
        self,
        object_key: str,
        start: int,
        end: int | None = None,
        *,
        chunk_size: int | None = None,
        expected: VoiceFileInfo | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield bytes ``start`` to ``end`` of the object, both inclusive as in HTTP's
        ``Range: bytes=start-end`` (``end=None``: to the end). A range running past the
        end stops at the end; one starting at or after it yields nothing.

        ``expected``: the info the caller read before (``get_file_info``), whose size it
        may have promised (a ``Content-Length``, an ``ETag``): the bytes are that
        version's, or :class:`ObjectChangedError` is raised before the first one (the
        object was replaced or deleted meanwhile; read its info again). Backends with the
        ``versioned_read`` capability take the info and the bytes from one opening (no
        window for a writer); the others compare the info read just before the bytes.

        Backends with the ``range_read`` capability read only the range (a ranged GET, a
        seek); the others read from the start and skip.
        """
        validate_object_key(object_key, writing=False)
        for name, value, optional in (("start", start, False), ("end", end, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidByteRangeError(f"{name} must be a whole number, got {value!r}")
        if start < 0 or (end is not None and end < start):
            raise InvalidByteRangeError(
                f"invalid byte range {start}-{'' if end is None else end}: start must be >= 0 "
                "and end (inclusive) >= start"
            )
        await self._ensure_open()
        size = chunk_size or self._chunk_size
        if expected is None:
            async with _closing(self._read_range(object_key, start, end, size)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        try:
            opened = await self._open_range(object_key, start, end, size)
        except ObjectNotFoundError:
            raise _deleted_since(object_key) from None
        try:
            if not same_version(opened.info, expected):
                raise ObjectChangedError(
                    f"{object_key!r} was replaced after its info was read "
                    f"({expected.file_size} bytes then, {opened.info.file_size} now)"
                )
            chunks = aiter(opened.chunks)
            try:
                # A backend whose bytes are read lazily (the default _open_range) finds a
                # deletion only now: before the first byte, that is a changed object too.
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except ObjectNotFoundError:
                raise _deleted_since(object_key) from None
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await opened.aclose()

    async def get_file_info(self, object_key: str) -> VoiceFileInfo:
        """The stored object's info; raises ``ObjectNotFoundError`` when absent."""
        validate_object_key(object_key, writing=False)
        await self._ensure_open()
        return await self._info(object_key)

    async def file_exists(self, object_key: str) -> bool:
        """True when ``object_key`` is stored."""
        try:
            await self.get_file_info(object_key)
        except ObjectNotFoundError:
            return False
        return True

    async def delete_file(self, object_key: str) -> bool:
        """Delete the object; True when it existed."""
        validate_object_key(object_key, writing=False)
        await self._ensure_open()
        return await self._delete(object_key)

    async def list_files(self, prefix: str = "") -> AsyncGenerator[VoiceFileInfo, None]:
        """Every object whose key starts with ``prefix``, in key order (paging is hidden)."""
        validate_list_prefix(prefix)
        await self._ensure_open()
        async for info in self._list(prefix):
            yield info

    async def generate_presigned_url(
        self,
        key: str | None = None,
        expires_in: int | None = None,
        method: PresignMethod = "GET",
        *,
        object_key: str | None = None,
    ) -> str:
        """A URL granting ``method`` (GET or PUT) on the object ``key`` for ``expires_in``
        seconds.

        ``expires_in`` defaults to the ``presign_ttl`` setting (1 hour) and must be between
        1 second and 7 days. ``object_key=`` is accepted in place of ``key``, as the other
        methods name it.
        """
        if (key is None) == (object_key is None):
            raise InvalidObjectKeyError(
                "generate_presigned_url takes the object key once: as key (first argument) "
                "or as object_key="
            )
        object_key = validate_object_key(
            key if key is not None else object_key, writing=method == "PUT"
        )
        ttl = validate_presign_ttl(self.settings.presign_ttl if expires_in is None else expires_in)
        if method not in ("GET", "PUT"):
            raise InvalidPresignedURLError(f"method must be 'GET' or 'PUT', got {method!r}")
        await self._ensure_open()
        return await self._presign(object_key, ttl, method)

    async def abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        """Abort multipart uploads started more than ``older_than`` ago that never
        completed (they cost space and are invisible); return their object keys.

        Backends with the ``multipart`` capability abort their server's multipart
        uploads; ``fs`` removes temporary files of uploads a killed process left in
        ``tmp/`` (returning their paths, as their keys are unknown); ``memory`` has
        nothing to clean and returns an empty list.
        """
        if older_than.total_seconds() < 0:
            raise StorageError(f"older_than must not be negative, got {older_than}")
        await self._ensure_open()
        return await self._abort_incomplete_uploads(older_than)

    async def _abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        return []

    # -- helpers for subclasses -----------------------------------------------------------

    @property
    def _chunk_size(self) -> int:
        return int(self.settings.chunk_size)

    @property
    def _max_size(self) -> int | None:
        size = self.settings.max_file_size
        return None if size is None else int(size)

    def _not_found(self, object_key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"object {object_key!r} not found in bucket {self.bucket_name!r} "
            f"({self.backend_name or type(self).__name__} storage)"
        )

    # -- what a backend implements -----------------------------------------------------------

    @abstractmethod
    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        """Consume ``body`` and store it atomically; return the upload time (UTC)."""

    @abstractmethod
    def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """An async generator of the object's chunks; raise ``ObjectNotFoundError``."""

    async def _read_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """Bytes ``start``..``end`` (inclusive; validated). This default reads from the
        start and skips; a backend with ``range_read`` overrides it."""
        position = 0
        async with _closing(self._read(key, chunk_size)) as chunks:
            async for chunk in chunks:
                chunk_end = position + len(chunk)
                if chunk_end > start:
                    piece = chunk[max(0, start - position) :]
                    if end is not None and chunk_end > end + 1:
                        piece = piece[: len(piece) - (chunk_end - end - 1)]
                    if piece:
                        yield piece
                position = chunk_end
                if end is not None and position > end:
                    return

    async def _open_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> OpenedRange:
        """The object's info and bytes ``start``..``end`` of the same version (raise
        ``ObjectNotFoundError``). This default reads the info, then the bytes: a writer
        can slip in between. A backend that can take both from one opening (an open
        file, one response) overrides it and declares ``versioned_read``."""
        info = await self._info(key)
        return OpenedRange(info, self._read_range(key, start, end, chunk_size))

    @abstractmethod
    async def _info(self, key: str) -> VoiceFileInfo:
        """The object's info; raise ``ObjectNotFoundError``."""

    @abstractmethod
    async def _delete(self, key: str) -> bool:
        """Delete; return whether the object existed."""

    @abstractmethod
    def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        """An async generator of infos under ``prefix`` in key order."""

    async def _presign(self, key: str, expires_in: int, method: PresignMethod) -> str:
        """A presigned URL; only backends with the ``presign`` capability implement it."""
        raise StorageError(f"{self.backend_name or type(self).__name__} cannot presign URLs")
