"""The storage kind's layered backend: a :class:`StorageBackend` that sends every public
method of the backend it wraps through one :class:`~voice_infra.layers.Layer`."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from voice_infra.errors import StorageUnavailableError
from voice_infra.layers import Layer, LayeredBackend, closing_stream
from voice_infra.models import VoiceFileInfo
from voice_infra.storage import PresignMethod, StorageBackend, UploadBody, UploadSource

__all__ = ["LayeredStorage", "replayable_source"]

T = TypeVar("T")

# (name, repeatable, streaming) of every public operation.
_OPERATIONS = (
    ("upload_file", True, False),  # with a source that can be replayed
    ("upload_file_once", False, False),  # with one that cannot (async iterable, pipe)
    ("download_file", True, False),
    ("stream_file", True, True),
    ("stream_range", True, True),
    ("get_file_info", True, False),
    ("file_exists", True, False),
    ("delete_file", True, False),
    ("list_files", True, True),
    ("generate_presigned_url", True, False),
    ("abort_incomplete_uploads", False, False),
)


def replayable_source(source: object) -> Callable[[], None] | None:
    """How to replay an upload source: a callable that rewinds it (a no-op for bytes and
    paths, a seek back for a seekable file), or ``None`` when it cannot be replayed (an
    async iterable, a pipe: what was consumed is gone)."""
    if isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
        return _nothing
    seekable = getattr(source, "seekable", None)
    if isinstance(source, io.IOBase | io.BufferedIOBase) or callable(seekable):
        try:
            if callable(seekable) and seekable():
                stream: Any = source
                position = stream.tell()
                return lambda: stream.seek(position)
        except (OSError, ValueError):
            return None
    return None


def _nothing() -> None:
    return None


class LayeredStorage(LayeredBackend, StorageBackend):
    """A storage backend inside one layer; built by :func:`voice_infra.layers.wrap`.

    Capabilities, settings, bucket name and lifecycle are the wrapped backend's: opening
    the layered backend opens the wrapped one (once), closing closes it.
    """

    unavailable_error = StorageUnavailableError

    def __init__(self, inner: StorageBackend, layer: Layer) -> None:
        StorageBackend.__init__(self, inner.settings, bucket_name=inner.bucket_name)
        self.backend_name = inner.backend_name
        self._bind_layer(inner, layer)
        self._ops = self._operations(_OPERATIONS)
        # Both upload variants are ``upload_file`` to a layer (and in metrics' labels).
        self._ops["upload_file_once"] = replace(self._ops["upload_file"], repeatable=False)

    # -- what passes through ----------------------------------------------------------

    def generate_object_key(
        self, user_id: str | None = None, content_type: str | None = None, *,
        now: datetime | None = None,
    ) -> str:  # fmt: skip
        """The wrapped backend's key (no I/O: no layer runs)."""
        return str(self.inner.generate_object_key(user_id, content_type, now=now))

    # -- through the layer ---------------------------------------------------------------

    def _call(
        self, name: str, args: tuple[Any, ...], call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        return self.layer.call(self._ops[name], args, call)

    async def _stream(
        self, name: str, args: tuple[Any, ...], open_stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncGenerator[T, None]:
        async with closing_stream(self.layer.stream(self._ops[name], args, open_stream)) as items:
            async for item in items:
                yield item

    async def upload_file(
        self,
        source: UploadSource,
        *,
        object_key: str | None = None,
        user_id: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> VoiceFileInfo:
        """Store ``source`` through the layer. The key is chosen here once, so a layer that
        repeats the upload (retry) writes the same object, never a second one."""
        if object_key is None:
            object_key = self.generate_object_key(user_id, content_type)
        rewind = replayable_source(source)
        key = object_key

        async def upload() -> VoiceFileInfo:
            if rewind is not None:
                rewind()
            return await self.inner.upload_file(  # type: ignore[no-any-return]
                source, object_key=key, user_id=user_id, content_type=content_type,
                metadata=metadata,
            )  # fmt: skip

        name = "upload_file" if rewind is not None else "upload_file_once"
        return await self._call(name, (key,), upload)

    async def download_file(self, object_key: str) -> bytes:
        """The whole object, through the layer."""
        return await self._call(
            "download_file", (object_key,), lambda: self.inner.download_file(object_key)
        )

    async def stream_file(
        self, object_key: str, *, chunk_size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The object's chunks, through the layer."""
        async for chunk in self._stream(
            "stream_file", (object_key,),
            lambda: self.inner.stream_file(object_key, chunk_size=chunk_size),
        ):  # fmt: skip
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
        """Part of the object, through the layer."""
        async for chunk in self._stream(
            "stream_range", (object_key, start, end),
            lambda: self.inner.stream_range(
                object_key, start, end, chunk_size=chunk_size, expected=expected
            ),
        ):  # fmt: skip
            yield chunk

    async def get_file_info(self, object_key: str) -> VoiceFileInfo:
        """The object's info, through the layer."""
        return await self._call(
            "get_file_info", (object_key,), lambda: self.inner.get_file_info(object_key)
        )

    async def file_exists(self, object_key: str) -> bool:
        """Whether the object exists, through the layer."""
        return await self._call(
            "file_exists", (object_key,), lambda: self.inner.file_exists(object_key)
        )

    async def delete_file(self, object_key: str) -> bool:
        """Delete, through the layer."""
        return await self._call(
            "delete_file", (object_key,), lambda: self.inner.delete_file(object_key)
        )

    async def list_files(self, prefix: str = "") -> AsyncGenerator[VoiceFileInfo, None]:
        """The objects under ``prefix``, through the layer."""
        async for info in self._stream(
            "list_files", (prefix,), lambda: self.inner.list_files(prefix)
        ):
            yield info

    async def generate_presigned_url(
        self,
        key: str | None = None,
        expires_in: int | None = None,
        method: PresignMethod = "GET",
        *,
        object_key: str | None = None,
    ) -> str:
        """A presigned URL, through the layer; its ``args`` are ``(object_key, expires_in,
        method)`` as given (``object_key`` ``None`` unless exactly one of ``key`` and
        ``object_key`` was given: the wrapped backend refuses the call then)."""
        given = key if object_key is None else object_key if key is None else None
        return await self._call(
            "generate_presigned_url", (given, expires_in, method),
            lambda: self.inner.generate_presigned_url(
                key, expires_in, method, object_key=object_key
            ),
        )  # fmt: skip

    async def abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        """Abort stale multipart uploads, through the layer."""
        return await self._call(
            "abort_incomplete_uploads", (),
            lambda: self.inner.abort_incomplete_uploads(older_than),
        )  # fmt: skip

    # -- never called: every public method above goes to the wrapped backend -----------

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        _not_used()

    def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        _not_used()

    async def _info(self, key: str) -> VoiceFileInfo:
        _not_used()

    async def _delete(self, key: str) -> bool:
        _not_used()

    def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        _not_used()


def _not_used() -> NoReturn:
    raise AssertionError("a layered backend sends every operation to the backend it wraps")
