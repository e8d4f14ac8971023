"""``fs`` storage: objects in a local directory, the embedded default.

Layout under ``{path}/{bucket}/``::

    objects/<seg>/<seg>/<last>%blob   one file per object: its bytes, then its metadata
    tmp/                              uploads in progress (same filesystem, for rename)
    .signing-key                      HMAC key of presigned URLs (unless configured)

An object file holds the object's bytes followed by a trailer: the metadata as JSON
(content type, user metadata, SHA-256, size, upload time), its length (8 bytes, big
endian) and the magic ``VIOBJv1\\n``. The size and checksum are known only once an upload
has streamed through, so they follow the bytes rather than precede them. An upload writes
the whole file under ``tmp/`` and publishes it with one ``rename``: readers open the file
once and take bytes and metadata from that one open file, so they always see one whole
upload, and a process killed at any moment leaves the old object or the new one, never a
mix. No lock is needed: every change to a key is one atomic rename or unlink.

Objects of the previous layout (``<last>%obj`` bytes beside a ``<last>%meta`` JSON
sidecar) stay readable, listable and deletable; overwriting or deleting such a key
removes both old files. When both layouts exist for a key, the ``%blob`` file wins.

Every key segment is percent-encoded (``urllib.parse.quote``); ``%blob``, ``%obj`` and
``%meta`` can never come out of that encoding, so the key ``a`` (file ``a%blob``) and the
key ``a/b`` (directory ``a/``) coexist just as they do on S3, and no key can leave the
root. Below ``path`` nothing is followed if it is a symbolic link: folders are walked one
``openat(O_DIRECTORY | O_NOFOLLOW)`` at a time and files opened with ``O_NOFOLLOW``, so a
link planted under the root is refused (:class:`SymlinkNotFollowedError`) without a race
between a check and its use. Nothing is created until the first write; files and folders
are created with ``file_mode``/``dir_mode`` (owner-only by default). File I/O runs in
worker threads in bounded chunks: the event loop never blocks and memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from pydantic import Field, ValidationInfo, field_serializer, field_validator

from voice_infra.errors import (
    InvalidObjectKeyError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    VoiceServiceError,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.storage import (
    MIN_SIGNING_KEY_BYTES,
    OpenedRange,
    PresignMethod,
    SignedURLSettings,
    SignedURLStorage,
    UploadBody,
    URLSigner,
)

__all__ = ["FileSystemStorage", "FileSystemStorageSettings", "SymlinkNotFollowedError"]

OBJECT_SUFFIX = "%blob"
LEGACY_DATA_SUFFIX = "%obj"  # the previous layout: bytes ...
LEGACY_META_SUFFIX = "%meta"  # ... beside a JSON sidecar
SIGNING_KEY_FILE = ".signing-key"
OBJECTS = "objects"
STAGING = "tmp"
TRAILER_MAGIC = b"VIOBJv1\n"
_TAIL = struct.Struct(">Q8s")  # metadata length, magic: the last 16 bytes of an object file
MAX_METADATA_BYTES = 64 * 1024  # far above what validated metadata needs (about 5 KiB)
# Tries to make the folder and rename into it while deletes of neighbour keys prune it.
PUBLISH_ATTEMPTS = 20
# Tries to read a key of the previous layout while a writer converts it.
READ_ATTEMPTS = 3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under the root must not hang the open (no effect on files).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
logger = logging.getLogger(__name__)
T = TypeVar("T")


class SymlinkNotFollowedError(StoragePermissionError):
    """A symbolic link under the ``fs`` root, where the backend never follows one."""


class _NotAFileError(StorageError):
    """Something other than a regular file (a FIFO, a device) where an object belongs."""


class _CorruptObjectError(StorageError):
    """An object whose metadata cannot be read; ``fallback`` is what a listing shows."""

    def __init__(self, message: str, fallback: VoiceFileInfo) -> None:
        super().__init__(message)
        self.fallback = fallback


class FileSystemStorageSettings(SignedURLSettings):
    """Options of the ``fs`` storage backend."""

    path: Path = Field(
        default=Path("voice-infra-data"),
        description="Root directory (relative paths are resolved against the working dir).",
    )
    bucket: str = Field(default="voice", description="Sub-directory of path holding the objects.")
    fsync: bool = Field(default=True, description="fsync each object before publishing it.")
    file_mode: int = Field(
        default=0o600,
        description="Permission bits of new object files, applied exactly (the umask does "
        "not narrow them); octal such as 0o640 or '640'.",
    )
    dir_mode: int = Field(
        default=0o700,
        description="Permission bits of new folders, applied exactly; octal such as 0o750.",
    )

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not value or "/" in value or value in (".", "..") or value.startswith("."):
            raise ValueError("bucket must be a plain directory name such as 'voice'")
        return value

    @field_validator("file_mode", "dir_mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: object, info: ValidationInfo) -> object:
        # Strings (environment variables, '640' in TOML) are octal, as chmod reads them.
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("0o")
            try:
                return int(text, 8)
            except ValueError:
                raise ValueError(
                    f"{info.field_name} {value!r} is not an octal mode; write it like '0o640'"
                ) from None
        if isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be an octal mode such as 0o600")
        return value

    @field_validator("file_mode", "dir_mode")
    @classmethod
    def _check_mode(cls, value: int, info: ValidationInfo) -> int:
        name = info.field_name
        if not 0 <= value <= 0o777:
            hint = ""
            if set(str(value)) <= set("01234567"):
                hint = f"; {value} looks decimal: write it in octal, 0o{value} in TOML or '{value}'"
            raise ValueError(
                f"{name} must be permission bits between 0o000 and 0o777, got {value}{hint}"
            )
        bits, what = (
            (0o600, "read and write") if name == "file_mode" else (0o700, "read, write and search")
        )
        if value & bits != bits:
            raise ValueError(
                f"{name} {oct(value)} must give the owner {what} ({oct(bits)}): "
                "the backend itself needs them"
            )
        return value

    @field_serializer("file_mode", "dir_mode", when_used="json")
    def _show_mode(self, value: int) -> str:
        return oct(value)


def _encode(key: str) -> list[str]:
    return [quote(segment, safe="") for segment in key.split("/")]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise ValueError("file ends early")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _read_small(fd: int, limit: int) -> bytes:
    """The whole (small) file; ValueError past ``limit`` bytes."""
    data = b""
    while chunk := os.pread(fd, limit + 1 - len(data), len(data)):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"larger than {limit} bytes")
    return data


def _trailer(meta: dict[str, Any]) -> bytes:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return raw + _TAIL.pack(len(raw), TRAILER_MAGIC)


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


class _Staged:
    """An upload's temporary file in ``tmp/``: the folder's fd, the name, the open file."""

    def __init__(self, dir_fd: int, name: str, fd: int) -> None:
        self.dir_fd, self.name, self.fd = dir_fd, name, fd
        self.published = False

    def close_file(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def exists(self) -> bool:
        try:
            os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def finish(self) -> None:
        """Close the temporary file and release the folder; remove the file unless it
        was published."""
        try:
            self.close_file()
            if not self.published:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name, dir_fd=self.dir_fd)
        finally:
            if self.dir_fd >= 0:
                fd, self.dir_fd = self.dir_fd, -1
                os.close(fd)


class FileSystemStorage(SignedURLStorage):
    """Local-directory storage; the signing key of presigned URLs persists in the root."""

    capabilities = frozenset({"presign", "range_read", "persistent", "versioned_read"})

    settings: FileSystemStorageSettings

    def __init__(self, settings: FileSystemStorageSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        # ``path`` is the operator's choice and may be (or pass through) a link; below it
        # nothing is followed.
        self._base = settings.path.expanduser().resolve()
        self.root = self._base / settings.bucket
        self._loaded_signer: URLSigner | None = None
        self._prepared = False

    async def open(self) -> None:
        """Check what exists of the root and load the signing key if there is one.
        Nothing is created: folders and the key appear with the first write."""
        secret = await asyncio.to_thread(self._opening, self._existing_secret)
        if secret is not None:
            self._make_signer(secret)
        await super().open()

    @property
    def _signer(self) -> URLSigner:
        """The signer of presigned URLs, from the configured or stored key. A store opened
        before any key existed looks again when a URL comes to be verified: another process
        (or this one's first write) may have created it since. Verification is synchronous
        by interface; this is one small local read, and a key found is kept. With no key
        yet, no URL can be this store's: a signer with a throwaway key refuses them all
        (signature does not match) without creating anything."""
        if self._loaded_signer is None:
            if not self._opened:
                raise AttributeError("_signer")  # the shared verifier says: not open yet
            secret = self._opening(self._existing_secret)
            if secret is None:
                return URLSigner(secrets.token_bytes(32), self.settings.presign_base_url)
            self._make_signer(secret)
            assert self._loaded_signer is not None
        return self._loaded_signer

    @_signer.setter
    def _signer(self, signer: URLSigner) -> None:
        self._loaded_signer = signer

    def _opening(self, func: Callable[[], T]) -> T:
        try:
            return func()
        except VoiceServiceError:
            raise
        except OSError as exc:
            raise self._os_error(
                exc, f"cannot prepare storage directory {self.root}",
                hint="; set [storage] path to a writable directory",
            ) from exc  # fmt: skip

    async def _presign(self, key: str, expires_in: int, method: PresignMethod) -> str:
        if self._loaded_signer is None:
            # A URL is a promise: the key that signs it must persist, so presigning
            # creates it (and the root) when no write has yet.
            await self._ensure_prepared(key)
        return await super()._presign(key, expires_in, method)

    async def _ensure_prepared(self, key: str) -> None:
        if self._prepared:
            return
        secret = await self._io(key, self._prepare, reading=False)
        if self._loaded_signer is None:
            self._make_signer(secret)
        self._prepared = True

    def _prepare(self) -> bytes:
        """Create the folders writes need and the signing key (unless one is configured,
        or exists); return the key."""
        with self._folders([], create=True) as fds:
            bucket = fds[-1]
            for name in (OBJECTS, STAGING):
                os.close(self._subfolder(bucket, name, self.root / name, create=True))
            configured = self.settings.signing_key
            if configured is not None:
                return configured.get_secret_value().encode()
            secret = self._read_signing_key(bucket)
            if secret is None:
                self._create_signing_key(bucket)
                secret = self._read_signing_key(bucket)
            if secret is None:
                raise StorageError(f"signing key file {self.root / SIGNING_KEY_FILE} vanished")
            return secret

    def _existing_secret(self) -> bytes | None:
        """The configured or stored signing key, or None; reads, creates nothing."""
        configured = self.settings.signing_key
        try:
            with self._folders([], create=False) as fds:
                if configured is not None:
                    return configured.get_secret_value().encode()
                return self._read_signing_key(fds[-1])
        except FileNotFoundError:  # no root yet
            return None if configured is None else configured.get_secret_value().encode()

    def _read_signing_key(self, bucket: int) -> bytes | None:
        path = self.root / SIGNING_KEY_FILE
        try:
            fd, info = self._open_file(bucket, SIGNING_KEY_FILE, path)
        except FileNotFoundError:
            return None
        try:
            secret = _read_small(fd, 4096).strip()
        except ValueError as exc:
            raise StorageError(f"signing key file {path} is not a key: {exc}") from exc
        finally:
            os.close(fd)
        if len(secret) < MIN_SIGNING_KEY_BYTES:
            raise StorageError(
                f"signing key file {path} holds {len(secret)} bytes, fewer than "
                f"{MIN_SIGNING_KEY_BYTES}; delete it (presigned URLs issued with it stop "
                "working) or set [storage] signing_key"
            )
        if info.st_mode & 0o077:
            raise StoragePermissionError(
                f"signing key file {path} is open to group or others (mode "
                f"{oct(stat.S_IMODE(info.st_mode))}): whoever reads it can forge presigned "
                f"URLs; run chmod 600 {path}"
            )
        return secret

    def _create_signing_key(self, bucket: int) -> None:
        """Created complete (written and fsynced under a temporary name, then linked into
        place), so a process starting at the same moment never reads a half-written or
        empty key: it either wins the link or reads the winner's key."""
        staging = self._subfolder(bucket, STAGING, self.root / STAGING, create=True)
        try:
            name = f"signing-key-{uuid.uuid4().hex}"
            fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=staging)
            try:
                os.fchmod(fd, 0o600)  # whatever file_mode says: the key is the owner's
                _write_all(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(name, SIGNING_KEY_FILE, src_dir_fd=staging, dst_dir_fd=bucket,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError:
                pass  # another process linked first: its key wins
            finally:
                os.unlink(name, dir_fd=staging)
            os.fsync(bucket)
        finally:
            os.close(staging)

    # -- walking without following links -------------------------------------------------

    @contextlib.contextmanager
    def _folders(self, names: Sequence[str], *, create: bool) -> Iterator[list[int]]:
        """Open ``path``, the bucket and then ``names`` below it one level at a time,
        never following a link; yield the open folders (the last is the deepest).
        ``create`` makes missing ones with ``dir_mode``; else a missing one raises
        ``FileNotFoundError``."""
        fds: list[int] = []
        try:
            if create:
                os.makedirs(self._base, mode=self.settings.dir_mode, exist_ok=True)
            fds.append(os.open(self._base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            path = self._base
            for name in (self.settings.bucket, *names):
                path = path / name
                fds.append(self._subfolder(fds[-1], name, path, create=create))
            yield fds
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _subfolder(self, parent: int, name: str, path: Path, *, create: bool) -> int:
        try:
            return self._open_folder(parent, name, path)
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(name, self.settings.dir_mode, dir_fd=parent)
        except FileExistsError:
            return self._open_folder(parent, name, path)  # made meanwhile by another writer
        fd = self._open_folder(parent, name, path)
        try:
            os.fchmod(fd, self.settings.dir_mode)  # exactly dir_mode, whatever the umask
            if self.settings.fsync:
                os.fsync(parent)  # the new folder's entry survives a power loss
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_folder(self, parent: int, name: str, path: Path) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._refuse_link(parent, name, path)
            raise

    def _open_file(self, parent: int, name: str, path: Path) -> tuple[int, os.stat_result]:
        """Open a regular file for reading, never through a link; return it and its stat."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse_link(parent, name, path)
            raise
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            if not stat.S_ISREG(info.st_mode):
                raise _NotAFileError(f"{path} is not a regular file; remove it")
        except BaseException:
            os.close(fd)
            raise
        return fd, info

    def _refuse_link(self, parent: int, name: str, path: Path) -> None:
        """Raise ``SymlinkNotFollowedError`` if ``name`` is a link (this stat only words
        the error: the open that failed never followed it)."""
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise SymlinkNotFollowedError(
                f"{path} is a symbolic link; the fs backend never follows links under its "
                f"root {self.root}: replace the link with the folder or file itself, or "
                "remove it"
            )

    # -- errors ---------------------------------------------------------------------------

    def _os_error(self, exc: OSError, what: str, *, hint: str = "") -> StorageError:
        if exc.errno in _PERMISSION_ERRNOS:
            return StoragePermissionError(
                f"{what}: {exc}; give this user access to {self.root} or set [storage] "
                "path to a directory it may write"
            )
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidObjectKeyError(f"{what}: too long for this filesystem: {exc}")
        return StorageError(f"{what}: {exc}{hint}")

    async def _io(self, key: str, func: Callable[..., T], *args: Any, reading: bool = True) -> T:
        """Run blocking file I/O in a worker thread; OS errors become storage errors. A
        missing file means a missing object only when ``reading`` (on a write it means
        the storage directory went away)."""
        try:
            return await asyncio.to_thread(func, *args)
        except VoiceServiceError:
            raise
        except FileNotFoundError as exc:
            if not reading:
                raise StorageError(
                    f"fs storage cannot write {key!r}: {exc}; was the storage directory "
                    f"{self.root} removed while in use?"
                ) from exc
            raise self._not_found(key) from None
        except OSError as exc:
            raise self._os_error(exc, f"fs storage failed on {key!r}") from exc

    # -- paths ------------------------------------------------------------------------------

    def _segments(self, key: str) -> tuple[list[str], str]:
        """The folders (from the bucket) and the encoded last segment of ``key``."""
        *dirs, last = _encode(key)
        if len(last) + len(LEGACY_META_SUFFIX) > 255 or any(len(d) > 255 for d in dirs):
            raise InvalidObjectKeyError(
                f"object key {key!r} has a path segment too long for the fs backend "
                "(250 bytes once percent-encoded); use shorter segments"
            )
        return [OBJECTS, *dirs], last

    # -- writing ------------------------------------------------------------------------------

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        folders, last = self._segments(key)
        await self._ensure_prepared(key)
        # Each worker-thread step is awaited to its end even when the caller is cancelled
        # (a timeout layer, a client gone): the staged file's descriptor is closed only
        # once no thread writes to it, and a file staged meanwhile is not lost.
        stage = asyncio.ensure_future(self._io(key, self._stage, reading=False))
        try:
            staged = await _complete_despite_cancellation(stage)
        except asyncio.CancelledError:
            if not stage.cancelled() and stage.exception() is None:
                await asyncio.shield(asyncio.to_thread(stage.result().finish))
            raise
        try:
            async for chunk in body:
                await _complete_despite_cancellation(asyncio.ensure_future(
                    self._io(key, _write_all, staged.fd, chunk, reading=False)
                ))  # fmt: skip
            now = datetime.now(UTC)
            trailer = _trailer({
                "content_type": content_type, "metadata": metadata, "checksum": body.sha256,
                "file_size": body.size, "upload_time": now.isoformat(),
            })  # fmt: skip
            await _complete_despite_cancellation(
                asyncio.ensure_future(self._io(key, self._seal, staged, trailer, reading=False))
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(staged.finish))
            raise
        # From here the publishing thread owns the temporary file (it renames or removes
        # it). It cannot be interrupted half-way, so a cancelled caller waits for it:
        # leaving early would let a retry race a publish still in flight.
        publish = asyncio.ensure_future(
            self._io(key, self._publish, staged, folders, last, reading=False)
        )
        await _complete_despite_cancellation(publish)
        return now

    def _stage(self) -> _Staged:
        """A new temporary file in ``tmp/``, created with exactly ``file_mode``."""
        with self._folders([STAGING], create=True) as fds:
            dir_fd = os.dup(fds[-1])
        name = uuid.uuid4().hex
        try:
            fd = os.open(name, _CREATE_FLAGS, self.settings.file_mode, dir_fd=dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        staged = _Staged(dir_fd, name, fd)
        try:
            os.fchmod(fd, self.settings.file_mode)
        except BaseException:
            staged.finish()
            raise
        return staged

    def _seal(self, staged: _Staged, trailer: bytes) -> None:
        _write_all(staged.fd, trailer)
        if self.settings.fsync:
            os.fsync(staged.fd)
        staged.close_file()

    def _publish(self, staged: _Staged, folders: list[str], last: str) -> None:
        """Rename the complete file into place: the one step that makes the new bytes
        and metadata visible together; then remove the key's files of the previous
        layout, which the new file already hides from readers."""
        try:
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    with self._folders(folders, create=True) as fds:
                        folder = fds[-1]
                        os.replace(staged.name, last + OBJECT_SUFFIX,
                                   src_dir_fd=staged.dir_fd, dst_dir_fd=folder)  # fmt: skip
                        staged.published = True
                        self._remove_legacy(folder, last)
                        if self.settings.fsync:
                            os.fsync(folder)  # the rename survives a power loss
                    return
                except FileNotFoundError:
                    # A delete of another key in the same folder pruned a folder between
                    # our mkdir and rename; again.
                    if staged.published or attempt == PUBLISH_ATTEMPTS - 1 or not staged.exists():
                        raise
        finally:
            staged.finish()

    def _remove_legacy(self, folder: int, last: str) -> None:
        for suffix in (LEGACY_DATA_SUFFIX, LEGACY_META_SUFFIX):  # data first: see _open_legacy
            try:
                os.unlink(last + suffix, dir_fd=folder)
            except FileNotFoundError:
                pass
            except OSError as exc:  # hidden by the new file anyway
                logger.warning("cannot remove %s of the previous layout: %s", last + suffix, exc)

    async def _abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        return await self._io("tmp/", self._remove_stale_temporaries, older_than)

    def _remove_stale_temporaries(self, older_than: timedelta) -> list[str]:
        """Temporary files of uploads that a killed process never finished. Their keys are
        unknown (temporary names are random), so their paths under the root are returned."""
        cutoff = time.time() - older_than.total_seconds()
        removed: list[str] = []
        try:
            with self._folders([STAGING], create=False) as fds:
                with os.scandir(fds[-1]) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                        if entry.is_dir(follow_symlinks=False):
                            continue
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.name, dir_fd=fds[-1])
                            removed.append(f"{STAGING}/{entry.name}")
        except FileNotFoundError:
            pass  # no root or no tmp/: nothing was ever staged
        return removed

    # -- reading ------------------------------------------------------------------------------

    def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        return self._read_range(key, 0, None, chunk_size)

    async def _read_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """Bytes ``start``..``end`` of the one open file (the ``range_read`` capability)."""
        opened = await self._open_file_range(key, start, end, chunk_size)
        try:
            async for chunk in opened.chunks:
                yield chunk
        finally:
            await opened.aclose()

    async def _open_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> OpenedRange:
        """The info and the bytes of one open file (``versioned_read``): a replacement
        renames another file into place, this one reads on unchanged."""
        return await self._open_file_range(key, start, end, chunk_size)

    async def _open_file_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> OpenedRange:
        # _read_range's too: a subclass that puts the core's _open_range back (which
        # reads through _read_range) must not loop.
        opening = asyncio.ensure_future(self._io(key, self._open_object, key))
        try:
            # The worker thread opens the file whatever happens to the caller: wait for
            # it, so that a cancelled caller (a timeout) closes the fd instead of leaking.
            fd, info = await _complete_despite_cancellation(opening)
        except asyncio.CancelledError:
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                os.close(opening.result()[0])
            raise

        async def close() -> None:
            os.close(fd)

        return OpenedRange(info, self._pread(key, fd, info, start, end, chunk_size), close)

    async def _pread(
        self, key: str, fd: int, info: VoiceFileInfo, start: int, end: int | None,
        chunk_size: int,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        stop = info.file_size if end is None else min(end + 1, info.file_size)
        position = start
        while position < stop:
            chunk = await self._io(key, os.pread, fd, min(chunk_size, stop - position),
                                   position)  # fmt: skip
            if not chunk:
                break
            position += len(chunk)
            yield chunk

    def _open_object(self, key: str) -> tuple[int, VoiceFileInfo]:
        """Open ``key``'s object file and read its metadata from that same open file
        (previous layout: its data file, then its sidecar); the caller closes the fd."""
        folders, last = self._segments(key)
        path = self.root.joinpath(*folders, last)
        for _attempt in range(READ_ATTEMPTS):
            with self._folders(folders, create=False) as fds:
                folder = fds[-1]
                name = last + OBJECT_SUFFIX
                try:
                    fd, stat_ = self._open_file(folder, name, path.with_name(name))
                except FileNotFoundError:
                    pass
                else:
                    try:
                        return fd, self._parse_trailer(key, fd, stat_, path.with_name(name))
                    except BaseException:
                        os.close(fd)
                        raise
                found = self._open_legacy(key, folder, last, path)
                if found is not None:
                    return found
                # The key was converted to the current layout meanwhile: look again.
                if not self._exists(folder, name):
                    break
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    def _parse_trailer(self, key: str, fd: int, info: os.stat_result, path: Path) -> VoiceFileInfo:
        size = info.st_size
        try:
            if size < _TAIL.size:
                raise ValueError("shorter than its metadata trailer")
            length, magic = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
            if magic != TRAILER_MAGIC or length > min(MAX_METADATA_BYTES, size - _TAIL.size):
                raise ValueError("no metadata trailer at its end")
            payload = size - _TAIL.size - length
            meta = json.loads(_pread_exactly(fd, length, payload))
            if meta["file_size"] != payload:
                raise ValueError(f"metadata says {meta['file_size']} bytes, file holds {payload}")
            return self._info_from(key, meta, payload)
        except (ValueError, KeyError, TypeError) as exc:  # JSON, model and layout errors
            raise self._corrupt(key, path, exc, info) from exc

    def _open_legacy(
        self, key: str, folder: int, last: str, path: Path
    ) -> tuple[int, VoiceFileInfo] | None:
        """A key of the previous layout: the data file, then its sidecar. None when the
        data file is missing, or the sidecar is while a new-layout file exists (a writer
        converting the key removes data, then sidecar)."""
        data_name, meta_name = last + LEGACY_DATA_SUFFIX, last + LEGACY_META_SUFFIX
        try:
            fd, info = self._open_file(folder, data_name, path.with_name(data_name))
        except FileNotFoundError:
            return None
        try:
            try:
                meta_fd, _ = self._open_file(folder, meta_name, path.with_name(meta_name))
            except FileNotFoundError as exc:
                if self._exists(folder, last + OBJECT_SUFFIX):
                    os.close(fd)
                    return None
                raise self._corrupt(key, path.with_name(meta_name), exc, info) from exc
            try:
                meta = json.loads(_read_small(meta_fd, MAX_METADATA_BYTES))
                return fd, self._info_from(key, meta, info.st_size)
            except (ValueError, KeyError, TypeError) as exc:
                raise self._corrupt(key, path.with_name(meta_name), exc, info) from exc
            finally:
                os.close(meta_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _exists(self, folder: int, name: str) -> bool:
        try:
            os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _info_from(self, key: str, meta: dict[str, Any], size: int) -> VoiceFileInfo:
        return VoiceFileInfo(
            object_key=key, bucket_name=self.bucket_name, file_size=size,
            content_type=meta["content_type"], upload_time=meta["upload_time"],
            metadata=meta["metadata"], checksum=meta.get("checksum"),
        )  # fmt: skip

    def _corrupt(
        self, key: str, path: Path, problem: Exception, info: os.stat_result
    ) -> _CorruptObjectError:
        fallback = VoiceFileInfo(
            object_key=key, bucket_name=self.bucket_name, file_size=info.st_size,
            content_type="application/octet-stream",
            upload_time=datetime.fromtimestamp(info.st_mtime, UTC),
        )  # fmt: skip
        return _CorruptObjectError(
            f"metadata of {key!r} ({path}) is missing or corrupt ({problem!r}); "
            "delete the object and upload it again",
            fallback,
        )

    def _load_info(self, key: str) -> VoiceFileInfo:
        fd, info = self._open_object(key)
        os.close(fd)
        return info

    async def _info(self, key: str) -> VoiceFileInfo:
        return await self._io(key, self._load_info, key)

    # -- deleting -------------------------------------------------------------------------------

    async def _delete(self, key: str) -> bool:
        return await self._io(key, self._remove, key)

    def _remove(self, key: str) -> bool:
        """Unlink the key's files (a link among them is removed, never followed): the
        previous layout's first, the current file last, so a reader never sees an old
        version come back; then prune empty folders, as S3 has none."""
        folders, last = self._segments(key)
        try:
            with self._folders(folders, create=False) as fds:
                existed = False
                for suffix in (LEGACY_DATA_SUFFIX, LEGACY_META_SUFFIX, OBJECT_SUFFIX):
                    try:
                        os.unlink(last + suffix, dir_fd=fds[-1])
                    except FileNotFoundError:
                        continue
                    existed = existed or suffix != LEGACY_META_SUFFIX
                if existed:
                    # fds: path, bucket, objects, folder 1, ...; objects itself stays.
                    for depth in range(len(folders) - 1, 0, -1):
                        try:
                            os.rmdir(folders[depth], dir_fd=fds[depth + 1])
                        except OSError:
                            break  # not empty (or replaced meanwhile)
                return existed
        except FileNotFoundError:
            return False

    # -- listing --------------------------------------------------------------------------------

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        keys = await self._io(prefix, self._keys_under, prefix)
        for key in keys:
            try:
                info = await self._io(key, self._load_info, key)
            except ObjectNotFoundError:
                continue  # deleted while listing
            except (SymlinkNotFollowedError, _NotAFileError) as exc:  # planted after the scan
                logger.warning("%s; not listed", exc)
                continue
            except _CorruptObjectError as exc:  # a listing goes on past one bad entry
                logger.warning("%s; listed with content type application/octet-stream", exc)
                info = exc.fallback
            yield info

    def _keys_under(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix fully names.
        folders = _encode(prefix)[:-1]
        if any(segment in ("", ".", "..") or len(segment) > 255 for segment in folders):
            return []  # no valid key has such a segment (and the walk must stay inside)
        keys: set[str] = set()
        try:
            with self._folders([OBJECTS, *folders], create=False) as fds:
                self._scan(fds[-1], self.root.joinpath(OBJECTS, *folders), folders, prefix, keys)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except SymlinkNotFollowedError as exc:
            logger.warning("%s; nothing listed under it", exc)
            return []
        # Key order as S3 gives it: by UTF-8 bytes.
        return sorted(keys, key=lambda k: k.encode())

    def _scan(self, fd: int, path: Path, folders: list[str], prefix: str, keys: set[str]) -> None:
        with os.scandir(fd) as scan:
            entries = list(scan)
        for entry in entries:
            name = entry.name
            if entry.is_symlink():
                logger.warning(
                    "%s is a symbolic link; the fs backend never follows links under its "
                    "root: not listed", path / name,
                )  # fmt: skip
            elif not entry.is_dir(follow_symlinks=False) and not entry.is_file(
                follow_symlinks=False
            ):
                logger.warning("%s is not a regular file: not listed", path / name)
            elif entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # removed or replaced since the scan
                try:
                    self._scan(child, path / name, [*folders, name], prefix, keys)
                finally:
                    os.close(child)
            else:
                for suffix in (OBJECT_SUFFIX, LEGACY_DATA_SUFFIX):
                    if name.endswith(suffix):
                        segments = [*folders, name[: -len(suffix)]]
                        key = "/".join(unquote(segment) for segment in segments)
                        if key.startswith(prefix):
                            keys.add(key)
