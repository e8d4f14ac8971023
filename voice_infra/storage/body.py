"""Upload sources (bytes, paths, binary files, async iterables) read as one counted,
hashed, size-limited stream: :class:`UploadBody`, which backends consume in ``_write``."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any

from voice_infra.errors import ObjectTooLargeError, StorageError

__all__ = ["UploadBody", "UploadSource"]

UploadSource = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes]
)


class UploadBody:
    """An upload source read as chunks, counting bytes and hashing as it goes.

    Backends iterate it exactly once; afterwards :attr:`size` and :attr:`sha256` are
    final. ``length`` is the size when known up front (bytes, paths, seekable files).
    """

    def __init__(
        self,
        source: UploadSource,
        *,
        chunk_size: int,
        max_size: int | None = None,
        length: int | None = None,
    ) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self.size = 0
        self.length: int | None = length if length is not None else _known_length(source)
        if max_size is not None and self.length is not None and self.length > max_size:
            raise ObjectTooLargeError(f"upload is {self.length} bytes; max_file_size is {max_size}")

    @classmethod
    async def create(
        cls, source: UploadSource, *, chunk_size: int, max_size: int | None = None
    ) -> UploadBody:
        """Like the constructor, but a path's size is read in a worker thread (a stat on
        a network filesystem must not stall the event loop)."""
        length = None
        if isinstance(source, str | os.PathLike):
            length = await asyncio.to_thread(_path_length, source)
        return cls(source, chunk_size=chunk_size, max_size=max_size, length=length)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes read so far (of the whole body once iterated)."""
        return self._hash.hexdigest()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in _iter_source(self._source, self._chunk_size):
            if not chunk:
                continue
            self.size += len(chunk)
            if self._max_size is not None and self.size > self._max_size:
                raise ObjectTooLargeError(
                    f"upload exceeds max_file_size ({self._max_size} bytes); nothing was stored"
                )
            self._hash.update(chunk)
            yield bytes(chunk)

    async def read_all(self) -> bytes:
        """Collect the whole body (for backends that need it in one piece)."""
        return b"".join([chunk async for chunk in self])


def _known_length(source: UploadSource) -> int | None:
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source).nbytes
    if isinstance(source, str | os.PathLike):
        return _path_length(source)
    seekable = getattr(source, "seekable", None)
    if callable(seekable) and seekable():
        stream: Any = source
        position = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(position)
        return int(end - position)
    return None


def _path_length(path: str | os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise _source_error(path, exc) from exc


def _source_error(path: str | os.PathLike[str], exc: OSError) -> StorageError:
    """An unreadable upload source file: the caller's problem, named with the path."""
    problem = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc}"
    return StorageError(f"upload source file {os.fspath(path)!r} {problem}")


async def _iter_source(source: UploadSource, chunk_size: int) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, view.nbytes, chunk_size):
            yield bytes(view[start : start + chunk_size])
    elif isinstance(source, str | os.PathLike):
        try:
            handle = await asyncio.to_thread(open, source, "rb")
        except OSError as exc:
            raise _source_error(source, exc) from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, chunk_size)
                except OSError as exc:
                    raise _source_error(source, exc) from exc
                if not chunk:
                    break
                yield chunk
        finally:
            handle.close()  # a local file: closing does not wait on I/O
    elif hasattr(source, "__aiter__"):
        async for chunk in source:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"async iterable upload sources must yield bytes, got {chunk!r}")
            yield bytes(chunk)
    elif hasattr(source, "read"):
        read = source.read
        if asyncio.iscoroutinefunction(read):
            while chunk := await read(chunk_size):
                yield chunk
        else:
            # Local files only: reading in a worker thread keeps the event loop free.
            while chunk := await asyncio.to_thread(read, chunk_size):
                yield chunk
    else:
        raise TypeError(
            "upload_file accepts bytes, a path, a binary file object or an async iterable "
            f"of bytes, got {type(source).__name__}"
        )
