"""``fs`` storage: objects in a local directory, the embedded default.

Layout under ``{path}/{bucket}/``::

    objects/<seg>/<seg>/<last>%obj    object bytes
    objects/<seg>/<seg>/<last>%meta   JSON sidecar: content type, metadata, checksum...
    tmp/                              uploads in progress (same filesystem, for rename)
    locks/                            lock files serialising writers of one key

Every key segment is percent-encoded (``urllib.parse.quote``), and ``%obj``/``%meta``
can never come out of that encoding, so the key ``a`` (file ``a%obj``) and the key
``a/b`` (directory ``a/``) coexist just as they do on S3, and no key can leave the
root. Writes go to ``tmp/`` and are renamed into place once complete, so a failed or
cancelled upload leaves no partial object. Publishing and deleting a key hold an
exclusive ``flock`` on one of ``LOCK_STRIPES`` lock files chosen by the key's hash, so
concurrent writers of one key (threads or processes) never mix one upload's data with
another's sidecar. File I/O runs in worker threads in
bounded chunks: the event loop never blocks and memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote, unquote

from pydantic import Field, field_validator

from voice_infra.errors import (
    InvalidObjectKeyError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.storage import (
    MIN_SIGNING_KEY_BYTES,
    SignedURLSettings,
    SignedURLStorage,
    UploadBody,
)

__all__ = ["FileSystemStorage", "FileSystemStorageSettings"]

DATA_SUFFIX = "%obj"
META_SUFFIX = "%meta"
SIGNING_KEY_FILE = ".signing-key"
# Lock files under locks/: enough that unrelated keys rarely wait for each other, few
# enough that the directory stays small (a lock is held only for two renames).
LOCK_STRIPES = 256
# Tries to make the folder and rename into it while deletes of neighbour keys prune it.
PUBLISH_ATTEMPTS = 20
logger = logging.getLogger(__name__)
T = TypeVar("T")


class FileSystemStorageSettings(SignedURLSettings):
    """Options of the ``fs`` storage backend."""

    path: Path = Field(
        default=Path("voice-infra-data"),
        description="Root directory (relative paths are resolved against the working dir).",
    )
    bucket: str = Field(default="voice", description="Sub-directory of path holding the objects.")
    fsync: bool = Field(default=True, description="fsync each object before publishing it.")

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not value or "/" in value or value in (".", "..") or value.startswith("."):
            raise ValueError("bucket must be a plain directory name such as 'voice'")
        return value


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _complete_despite_cancellation(task: asyncio.Future[T]) -> T:
    """Await ``task`` to its end even when the caller is cancelled meanwhile; the
    cancellation is re-raised once ``task`` is done (its own error takes precedence)."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                if task.cancelled():
                    raise
                result = task.result()
                cancelled = True
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _encode(key: str) -> list[str]:
    return [quote(segment, safe="") for segment in key.split("/")]


class FileSystemStorage(SignedURLStorage):
    """Local-directory storage; the signing key of presigned URLs persists in the root."""

    settings: FileSystemStorageSettings

    def __init__(self, settings: FileSystemStorageSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        self.root = (settings.path.expanduser().resolve()) / settings.bucket
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"

    async def open(self) -> None:
        secret = await asyncio.to_thread(self._prepare)
        self._make_signer(secret)
        await super().open()

    def _prepare(self) -> bytes:
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._locks.mkdir(parents=True, exist_ok=True)
            if self.settings.signing_key is not None:
                return self.settings.signing_key.get_secret_value().encode()
            return self._shared_signing_key()
        except PermissionError as exc:
            raise StoragePermissionError(
                f"cannot prepare storage directory {self.root}: {exc}; make it writable "
                "by this user or set [storage] path to one that is"
            ) from exc
        except OSError as exc:
            raise StorageError(
                f"cannot prepare storage directory {self.root}: {exc}; set [storage] path to "
                "a writable directory"
            ) from exc

    def _shared_signing_key(self) -> bytes:
        """The signing key kept beside the data, so URLs stay valid across restarts and
        processes. Created complete (written and fsynced under a temporary name, then
        linked into place), so a process starting at the same moment never reads a
        half-written or empty key: it either wins the link or reads the winner's key."""
        key_file = self.root / SIGNING_KEY_FILE
        if not key_file.exists():
            temp = self._tmp / f"signing-key-{uuid.uuid4().hex}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_hex(32).encode())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, key_file)  # fails if another process linked first
            except FileExistsError:
                pass
            finally:
                temp.unlink()
            _fsync_directory(self.root)
        secret = key_file.read_bytes().strip()
        if len(secret) < MIN_SIGNING_KEY_BYTES:
            raise StorageError(
                f"signing key file {key_file} holds {len(secret)} bytes, fewer than "
                f"{MIN_SIGNING_KEY_BYTES}; delete it (presigned URLs issued with it stop "
                "working) or set [storage] signing_key"
            )
        return secret

    # -- paths -----------------------------------------------------------------------

    def _paths(self, key: str) -> tuple[Path, Path]:
        *dirs, last = _encode(key)
        if len(last) + len(META_SUFFIX) > 255 or any(len(d) > 255 for d in dirs):
            raise InvalidObjectKeyError(
                f"object key {key!r} has a path segment too long for the fs backend "
                "(255 bytes once percent-encoded); use shorter segments"
            )
        folder = self._objects.joinpath(*dirs)
        return folder / (last + DATA_SUFFIX), folder / (last + META_SUFFIX)

    def _key_of(self, data_path: Path) -> str:
        relative = data_path.relative_to(self._objects).as_posix()[: -len(DATA_SUFFIX)]
        return "/".join(unquote(segment) for segment in relative.split("/"))

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Hold the exclusive lock of ``key``'s stripe (blocking: call from a worker
        thread). ``flock`` belongs to the open file description, so it excludes other
        threads of this process as well as other processes."""
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % LOCK_STRIPES
        path = self._locks / f"{stripe:03d}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # locks/ removed while open: lock files are disposable
            self._locks.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _io(self, key: str, func: Callable[..., T], *args: Any, reading: bool = True) -> T:
        """Run blocking file I/O in a worker thread; OS errors become storage errors. A
        missing file means a missing object only when ``reading`` (on a write it means
        the storage directory went away)."""
        try:
            return await asyncio.to_thread(func, *args)
        except FileNotFoundError as exc:
            if not reading:
                raise StorageError(
                    f"fs storage cannot write {key!r}: {exc}; was the storage directory "
                    f"{self.root} removed while in use?"
                ) from exc
            raise self._not_found(key) from None
        except PermissionError as exc:
            raise StoragePermissionError(f"fs storage cannot access {key!r}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidObjectKeyError(
                    f"object key {key!r} is too long for this filesystem: {exc}"
                ) from exc
            raise StorageError(f"fs storage failed on {key!r}: {exc}") from exc

    # -- operations --------------------------------------------------------------------

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        data_path, meta_path = self._paths(key)
        temp = self._tmp / f"{uuid.uuid4().hex}"
        handle: IO[bytes] = await self._io(key, open, temp, "wb", reading=False)
        try:
            try:
                async for chunk in body:
                    await self._io(key, handle.write, chunk, reading=False)
            finally:
                await asyncio.shield(asyncio.to_thread(handle.close))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        now = datetime.now(UTC)
        meta = {
            "content_type": content_type, "metadata": metadata, "checksum": body.sha256,
            "file_size": body.size, "upload_time": now.isoformat(),
        }  # fmt: skip
        # From here the publishing thread owns the temp file (it renames or removes it).
        # It cannot be interrupted half-way, so a cancelled caller waits for it: leaving
        # early would let a retry race a publish still in flight.
        publish = asyncio.ensure_future(
            self._io(key, self._publish, key, temp, data_path, meta_path, meta, reading=False)
        )
        await _complete_despite_cancellation(publish)
        return now

    def _publish(
        self, key: str, temp: Path, data_path: Path, meta_path: Path, meta: dict[str, Any]
    ) -> None:
        meta_temp = temp.with_name(temp.name + ".meta")
        try:
            if self.settings.fsync:
                with temp.open("rb") as handle:
                    os.fsync(handle.fileno())
            with meta_temp.open("w") as meta_handle:
                json.dump(meta, meta_handle)
                if self.settings.fsync:
                    meta_handle.flush()
                    os.fsync(meta_handle.fileno())
            with self._key_lock(key):
                self._rename_into_place(meta_temp, temp, data_path, meta_path)
                if self.settings.fsync:
                    # Under the lock: a delete of this key cannot prune the folder first.
                    _fsync_directory(data_path.parent)  # the renames survive a power loss
        except OSError as exc:
            meta_temp.unlink(missing_ok=True)
            temp.unlink(missing_ok=True)
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidObjectKeyError(
                    f"object path too long for this filesystem: {exc}"
                ) from exc
            raise StorageError(f"cannot store object at {data_path}: {exc}") from exc

    def _rename_into_place(
        self, meta_temp: Path, temp: Path, data_path: Path, meta_path: Path
    ) -> None:
        # Metadata first: a data file is only ever visible with its sidecar beside it.
        # (Overwriting a key has a window where the new sidecar sits beside the old data;
        # readers take the size from the data file, never from the sidecar.)
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                data_path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(meta_temp, meta_path)
                os.replace(temp, data_path)
                return
            except (FileNotFoundError, FileExistsError):
                # A delete of another key in the same folder (another lock stripe) pruned
                # a folder between our mkdir and rename, or while mkdir checked it (which
                # then reports the folder as existing but not a directory); again.
                if attempt == PUBLISH_ATTEMPTS - 1 or not temp.exists():
                    raise

    async def _abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        return await self._io("tmp/", self._remove_stale_temporaries, older_than)

    def _remove_stale_temporaries(self, older_than: timedelta) -> list[str]:
        """Temporary files of uploads that a killed process never finished. Their keys are
        unknown (temporary names are random), so their paths under the root are returned."""
        cutoff = time.time() - older_than.total_seconds()
        removed: list[str] = []
        if not self._tmp.is_dir():
            return removed
        for entry in sorted(self._tmp.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed.append(entry.relative_to(self.root).as_posix())
        return removed

    def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        return self._read_range(key, 0, None, chunk_size)

    async def _read_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """Seek to ``start``, read to ``end`` (the ``range_read`` capability)."""
        data_path, _ = self._paths(key)
        handle: IO[bytes] = await self._io(key, open, data_path, "rb")
        try:
            if start:
                handle.seek(start)  # no I/O: only moves the file offset
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                want = chunk_size if left is None else min(chunk_size, left)
                chunk = await self._io(key, handle.read, want)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    def _load_info(
        self, key: str, data_path: Path, meta_path: Path, *, listing: bool = False
    ) -> VoiceFileInfo:
        """The object's info from its data file and sidecar. A missing or corrupt sidecar
        raises ``StorageError``, except in a listing, which must go on past one bad entry:
        there it is logged and the object listed with what the data file tells."""
        stat = data_path.stat()  # first: no data file means no object
        try:
            meta = json.loads(meta_path.read_text())
            return VoiceFileInfo(
                object_key=key, bucket_name=self.bucket_name, file_size=stat.st_size,
                content_type=meta["content_type"], upload_time=meta["upload_time"],
                metadata=meta["metadata"], checksum=meta.get("checksum"),
            )  # fmt: skip
        except FileNotFoundError as exc:
            if not data_path.exists():
                raise  # deleted meanwhile: not found, not corrupt
            problem: Exception = exc
        except (ValueError, KeyError, TypeError) as exc:  # JSON or model errors
            problem = exc
        message = (
            f"metadata of {key!r} ({meta_path}) is missing or corrupt ({problem!r}); "
            "delete the object and upload it again"
        )
        if not listing:
            raise StorageError(message) from problem
        logger.warning("%s; listed with content type application/octet-stream", message)
        return VoiceFileInfo(
            object_key=key, bucket_name=self.bucket_name, file_size=stat.st_size,
            content_type="application/octet-stream",
            upload_time=datetime.fromtimestamp(stat.st_mtime, UTC),
        )  # fmt: skip

    async def _info(self, key: str) -> VoiceFileInfo:
        data_path, meta_path = self._paths(key)
        return await self._io(key, self._load_info, key, data_path, meta_path)

    async def _delete(self, key: str) -> bool:
        data_path, meta_path = self._paths(key)
        return await self._io(key, self._remove, key, data_path, meta_path)

    def _remove(self, key: str, data_path: Path, meta_path: Path) -> bool:
        with self._key_lock(key):
            try:
                data_path.unlink()
            except FileNotFoundError:
                return False
            meta_path.unlink(missing_ok=True)
        # Prune empty directories up to the objects root, as S3 has no directories.
        folder = data_path.parent
        while folder != self._objects:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
        return True

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        keys = await self._io(prefix, self._keys_under, prefix)
        for key in keys:
            data_path, meta_path = self._paths(key)
            try:
                yield await self._io(
                    key, functools.partial(self._load_info, listing=True), key, data_path, meta_path
                )
            except ObjectNotFoundError:
                continue  # deleted while listing

    def _keys_under(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix fully names.
        folders = _encode(prefix)[:-1]
        if any(segment in ("", ".", "..") for segment in folders):
            return []  # no valid key has such a segment (and the walk must stay inside)
        folder = self._objects.joinpath(*folders)
        keys = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if name.endswith(DATA_SUFFIX):
                    key = self._key_of(Path(dirpath) / name)
                    if key.startswith(prefix):
                        keys.append(key)
        # Key order as S3 gives it: by UTF-8 bytes.
        return sorted(keys, key=lambda k: k.encode())
