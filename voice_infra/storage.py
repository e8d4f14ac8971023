"""Storage: the interface every storage backend implements, and what they share.

A backend subclasses :class:`StorageBackend` and implements ``_write``, ``_read``,
``_info``, ``_delete``, ``_list`` and (with the ``presign`` capability) ``_presign``.
Object-key validation, upload sources, checksums, size limits and TTL checks live
here once, for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Literal
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, field_validator

from voice_infra.base import Backend
from voice_infra.errors import (
    InvalidByteRangeError,
    InvalidMetadataError,
    InvalidObjectKeyError,
    InvalidPresignedURLError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.text import first_unsafe_character, refuse_unsafe_characters

__all__ = [
    "MAX_OBJECT_KEY_BYTES",
    "MAX_PRESIGN_TTL",
    "MIN_SIGNING_KEY_BYTES",
    "PresignMethod",
    "SignedURLSettings",
    "SignedURLStorage",
    "StorageBackend",
    "StorageSettings",
    "URLSigner",
    "UploadBody",
    "UploadSource",
    "extension_for",
    "user_key_segment",
    "validate_content_type",
    "validate_object_key",
    "validate_presign_ttl",
]

MAX_OBJECT_KEY_BYTES = 1024  # S3's limit, applied to every backend
MAX_PRESIGN_TTL = 7 * 24 * 3600  # SigV4's limit, applied to every backend
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_SIGNING_KEY_BYTES = 32  # HMAC-SHA256: shorter keys are guessable

PresignMethod = Literal["GET", "PUT"]
UploadSource = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes]
)

_AUDIO_EXTENSIONS = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "audio/opus": "opus",
    "audio/webm": "webm", "audio/flac": "flac", "audio/x-flac": "flac", "audio/aac": "aac",
    "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/amr": "amr", "audio/3gpp": "3gp",
    "application/octet-stream": "bin",
}  # fmt: skip
# Characters a user id keeps in its key segment; the rest are percent-encoded.
_USER_SEGMENT_SAFE = "@._-"
# Printable ASCII a user id keeps in the ``user-id`` metadata value ('%' is encoded).
_METADATA_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%" and not chr(c).isalnum())
_MAX_USER_SEGMENT = 128


def user_key_segment(user_id: str | None) -> str:
    """The key segment of ``user_id``: percent-encoded (RFC 3986, UTF-8) except letters,
    digits and ``@._-``, so distinct ids never share a segment (``a b`` -> ``a%20b``,
    ``a/b`` -> ``a%2Fb``). Ids whose segment would pass 128 characters are cut and end
    with ``~`` and 16 hex digits of their SHA-256, keeping them distinct."""
    if user_id is None:
        return "anonymous"
    if str(user_id) == "":
        raise InvalidObjectKeyError("user_id is empty; pass None for anonymous uploads")
    segment = quote(str(user_id), safe=_USER_SEGMENT_SAFE)
    if segment.strip(".") == "":  # '.' and '..' are not valid key segments
        segment = segment.replace(".", "%2E")
    if len(segment) > _MAX_USER_SEGMENT:
        digest = hashlib.sha256(str(user_id).encode()).hexdigest()[:16]
        segment = f"{segment[: _MAX_USER_SEGMENT - 17]}~{digest}"
    return segment


class StorageSettings(BaseModel):
    """Options every storage backend accepts; backends subclass it for their own."""

    # Errors keep pydantic's ValidationError as __cause__; its text must not echo secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

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


def validate_object_key(key: object, *, writing: bool = True) -> str:
    """Return ``key`` if every backend can store it, else raise ``InvalidObjectKeyError``.

    Rules: a non-empty string of at most 1024 UTF-8 bytes; no leading or trailing ``/``;
    no empty, ``.`` or ``..`` segments; no control, separator or format characters
    (see :func:`voice_infra.text.first_unsafe_character`). With ``writing=False`` (reads,
    info, deletes) only C0 controls and DEL are refused among the characters, so objects
    stored under keys an earlier, looser rule (or another tool) allowed stay reachable.
    """
    if not isinstance(key, str) or not key:
        raise InvalidObjectKeyError(f"object key must be a non-empty string, got {key!r}")
    size = _utf8_length(key, "object key")
    if size > MAX_OBJECT_KEY_BYTES:
        raise InvalidObjectKeyError(
            f"object key is {size} bytes long; S3 allows at most {MAX_OBJECT_KEY_BYTES}"
        )
    if key.startswith("/"):
        raise InvalidObjectKeyError(f"object key {key!r} must not start with '/'")
    if key.endswith("/"):
        raise InvalidObjectKeyError(f"object key {key!r} must not end with '/'")
    refuse_unsafe_characters(key, "object key", InvalidObjectKeyError, strict=writing)
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidObjectKeyError(
                f"object key {key!r} has an empty, '.' or '..' path segment; "
                "use plain names separated by single '/'"
            )
    return key


def _utf8_length(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidObjectKeyError(f"{what} {text!r} is not valid Unicode text") from None


def validate_list_prefix(prefix: object) -> str:
    """A listing prefix: any text of at most 1024 UTF-8 bytes without C0 controls or
    DEL (the reading rule of keys). Prefixes such as ``a/.`` (of ``a/.hidden``) are fine;
    one that no valid key can start with (``/x``, ``a/../``) simply lists nothing."""
    if not isinstance(prefix, str):
        raise InvalidObjectKeyError(f"prefix must be a string, got {prefix!r}")
    size = _utf8_length(prefix, "prefix")
    if size > MAX_OBJECT_KEY_BYTES:
        raise InvalidObjectKeyError(
            f"prefix is {size} bytes long; no key is longer than {MAX_OBJECT_KEY_BYTES}"
        )
    refuse_unsafe_characters(prefix, "prefix", InvalidObjectKeyError, strict=False)
    return prefix


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


# RFC 9110 media type: token "/" token, optional ";"-parameters in printable ASCII.
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
# fullmatch and [ \t] rather than $ and \s: a trailing or embedded CR/LF must not pass.
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}([ \t]*;[\x20-\x7e\t]*)?", re.ASCII)
MAX_CONTENT_TYPE_LENGTH = 255


def validate_content_type(content_type: object) -> str:
    """Return ``content_type`` if every backend can store it as the object's media type
    (``type/subtype`` with optional parameters, printable ASCII, at most 255 characters),
    else raise ``InvalidMetadataError``."""
    if (
        not isinstance(content_type, str)
        or len(content_type) > MAX_CONTENT_TYPE_LENGTH
        or not _CONTENT_TYPE.fullmatch(content_type)
    ):
        raise InvalidMetadataError(
            f"content_type {content_type!r} is not a media type: use 'type/subtype' in "
            "printable ASCII, for example 'audio/wav' or 'audio/ogg; codecs=opus' "
            f"(at most {MAX_CONTENT_TYPE_LENGTH} characters)"
        )
    return content_type


def extension_for(content_type: str | None) -> str:
    """File extension for an audio content type (``audio/wav`` -> ``wav``), else ``bin``."""
    if not content_type:
        return "bin"
    base = content_type.split(";", 1)[0].strip().lower()
    return _AUDIO_EXTENSIONS.get(base, "bin")


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


# Query fields of voice-infra's presigned URLs; each must appear exactly once.
_PRESIGN_FIELDS = ("X-VI-Method", "X-VI-Expires", "X-VI-Signature")
# Canonical decimal seconds since the epoch: no sign, no leading zero, ASCII digits only
# (int() would also take '+5', ' 5', '5_0' and full-width digits), at most 12 digits.
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # lower-case hex SHA-256, as sign() writes it
# Room for the query and an application's own parameters beyond base URL and key.
_PRESIGN_QUERY_ALLOWANCE = 2048


class URLSigner:
    """HMAC-SHA256 presigned URLs for backends without a server-side signer."""

    def __init__(self, secret: bytes, base_url: str) -> None:
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        base = urlsplit(self._base_url)
        self._origin = _origin(base)
        self._path_prefix = base.path + "/"
        # Every key percent-encoded (3 characters a byte) fits, with the query.
        self._max_url_length = (
            len(self._base_url) + 1 + 3 * MAX_OBJECT_KEY_BYTES + _PRESIGN_QUERY_ALLOWANCE
        )

    def _signature(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, *, expires_in: int, method: str, now: float | None = None) -> str:
        """A URL under the base URL granting ``method`` on ``key`` for ``expires_in`` s."""
        expires = int((time.time() if now is None else now) + expires_in)
        query = urlencode(
            {"X-VI-Method": method, "X-VI-Expires": expires,
             "X-VI-Signature": self._signature(method, key, expires)}
        )  # fmt: skip
        return f"{self._base_url}/{quote(key)}?{query}"

    def verify(self, url: object, *, method: object = "GET", now: float | None = None) -> str:
        """Return the object key ``url`` grants ``method`` on, or raise
        :class:`InvalidPresignedURLError` saying what is wrong: never another exception,
        whatever ``url`` and ``method`` are (applications answer it with 403)."""
        wanted = _presign_method(method)
        key, fields = self._parse(url)
        signed_method = fields["X-VI-Method"]
        if signed_method not in ("GET", "PUT"):
            raise InvalidPresignedURLError(
                f"presigned URL has X-VI-Method={signed_method!r}; it must be GET or PUT"
            )
        if not _EXPIRES.fullmatch(fields["X-VI-Expires"]):
            raise InvalidPresignedURLError(
                f"presigned URL has X-VI-Expires={fields['X-VI-Expires']!r}; it must be whole "
                "seconds since the epoch in ASCII digits"
            )
        expires = int(fields["X-VI-Expires"])
        signature = fields["X-VI-Signature"]
        if not _SIGNATURE.fullmatch(signature):
            raise InvalidPresignedURLError(
                "presigned URL signature is not 64 lower-case hex digits (tampered?)"
            )
        # Both sides ASCII bytes: compare_digest refuses non-ASCII str with TypeError.
        expected = self._signature(signed_method, key, expires).encode("ascii")
        if not hmac.compare_digest(expected, signature.encode("ascii")):
            raise InvalidPresignedURLError("presigned URL signature does not match (tampered?)")
        if signed_method != wanted:
            raise InvalidPresignedURLError(f"presigned URL allows {signed_method}, not {wanted}")
        if (time.time() if now is None else now) >= expires:
            raise InvalidPresignedURLError("presigned URL has expired")
        return key

    def _parse(self, url: object) -> tuple[str, dict[str, str]]:
        """The object key and the signature fields of ``url``, checked for shape only."""
        if not isinstance(url, str):
            raise InvalidPresignedURLError(
                f"presigned URL must be a str, got {type(url).__name__}; decode bytes first"
            )
        if len(url) > self._max_url_length:
            raise InvalidPresignedURLError(
                f"presigned URL is {len(url)} characters long; none issued here is longer "
                f"than {self._max_url_length}"
            )
        # urlsplit silently drops tabs and newlines: refuse them (and other controls)
        # rather than verify a URL other than the one given.
        if unsafe := first_unsafe_character(url, strict=False):
            raise InvalidPresignedURLError(f"presigned URL contains {unsafe}")
        try:
            parts = urlsplit(url)
            origin = _origin(parts)
        except ValueError as exc:  # bad IPv6 brackets, port out of range, ...
            raise InvalidPresignedURLError(f"presigned URL is not a valid URL: {exc}") from None
        if origin != self._origin or not parts.path.startswith(self._path_prefix):
            raise InvalidPresignedURLError(
                f"presigned URL was not issued by this storage: it must start with "
                f"{self._base_url}/"
            )
        if "#" in url:
            raise InvalidPresignedURLError("presigned URL must not have a #fragment")
        try:
            key = unquote(parts.path[len(self._path_prefix) :], errors="strict")
        except UnicodeDecodeError:
            raise InvalidPresignedURLError(
                "presigned URL path is not percent-encoded UTF-8"
            ) from None
        try:
            # The reading rule: the signature proves the stricter one held for a PUT.
            validate_object_key(key, writing=False)
        except InvalidObjectKeyError as exc:
            raise InvalidPresignedURLError(f"presigned URL names no valid object: {exc}") from None
        return key, _presign_fields(parts.query)


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None, str | None]:
    """Scheme, host, port (defaults filled in) and user info: equal for equivalent URLs.
    Raises ``ValueError`` for a port that is not a number from 0 to 65535."""
    scheme = parts.scheme.lower()
    port = parts.port
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None
    return scheme, parts.hostname, port, userinfo


def _presign_method(method: object) -> str:
    if isinstance(method, str) and method.upper() in ("GET", "PUT"):
        return method.upper()
    raise InvalidPresignedURLError(f"method must be 'GET' or 'PUT', got {method!r}")


def _presign_fields(query: str) -> dict[str, str]:
    """The three signature fields of ``query``, each present exactly once; other
    parameters (an application's own) are ignored, as the signature does not cover them."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidPresignedURLError("presigned URL query is not percent-encoded UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in _PRESIGN_FIELDS:
            if name in fields:
                raise InvalidPresignedURLError(f"presigned URL repeats {name}")
            fields[name] = value
    if missing := [name for name in _PRESIGN_FIELDS if name not in fields]:
        raise InvalidPresignedURLError(
            f"presigned URL lacks {', '.join(missing)}; pass the URL exactly as issued"
        )
    return fields


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

        ``user`` is :func:`user_key_segment` of the user id (``anonymous`` when absent);
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
        clean_metadata = _validate_metadata(metadata or {}, user_id)
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
        self, object_key: str, start: int, end: int | None = None, *, chunk_size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield bytes ``start`` to ``end`` of the object, both inclusive as in HTTP's
        ``Range: bytes=start-end`` (``end=None``: to the end). A range running past the
        end stops at the end; one starting at or after it yields nothing.

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
        async with _closing(self._read_range(object_key, start, end, size)) as chunks:
            async for chunk in chunks:
                yield chunk

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


class SignedURLSettings(StorageSettings):
    """Settings of backends whose presigned URLs are HMAC-signed by voice-infra itself."""

    signing_key: SecretStr | None = Field(
        default=None, description="HMAC key for presigned URLs; random when not set."
    )
    presign_base_url: str = Field(
        default="http://localhost:8000/voice-files",
        description="Where the application serves presigned URLs (it verifies them with "
        "verify_presigned_url).",
    )

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes; generate one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return value

    @field_validator("presign_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or "#" in value  # a fragment would swallow the signed path and query
        ):
            raise ValueError(
                "presign_base_url must be an http(s) URL without a query or fragment, "
                "for example 'https://voice.example.com/files'"
            )
        return value.rstrip("/")


class SignedURLStorage(StorageBackend):
    """Presigning for backends without a server of their own: HMAC-signed URLs.

    The application serving ``presign_base_url`` calls :meth:`verify_presigned_url` to
    learn which object a request may read (GET) or write (PUT).
    """

    settings: SignedURLSettings

    def _make_signer(self, secret: bytes) -> None:
        self._signer = URLSigner(secret, self.settings.presign_base_url)

    async def _presign(self, key: str, expires_in: int, method: PresignMethod) -> str:
        return self._signer.sign(key, expires_in=expires_in, method=method)

    def verify_presigned_url(self, url: str, method: PresignMethod = "GET") -> str:
        """The object key ``url`` grants ``method`` on; raises
        :class:`InvalidPresignedURLError` (and nothing else) when ``url`` is expired,
        tampered with, foreign or malformed, or ``method`` is not GET or PUT."""
        signer: URLSigner | None = getattr(self, "_signer", None)
        if signer is None:  # fs reads its signing key when opened
            raise StorageError(
                f"{self.backend_name or type(self).__name__} storage is not open yet: "
                "open it (async with, or any awaited call) before verifying presigned URLs"
            )
        return signer.verify(url, method=method)


_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


def _validate_metadata(metadata: Mapping[str, str], user_id: str | None) -> dict[str, str]:
    """User metadata that survives every backend (S3 lower-cases names, ASCII values)."""
    clean: dict[str, str] = {}
    items = dict(metadata)
    if user_id is not None:
        # Percent-encoded so any user id fits S3's ASCII metadata (``unquote`` reverses it).
        items.setdefault("user-id", quote(str(user_id), safe=_METADATA_SAFE))
    for name, value in items.items():
        if not isinstance(name, str) or not _METADATA_KEY.match(name):
            raise InvalidMetadataError(
                f"metadata name {name!r} is invalid: use lower-case letters, digits and '-'"
            )
        if not isinstance(value, str) or not value.isascii() or any(ord(c) < 32 for c in value):
            raise InvalidMetadataError(
                f"metadata value for {name!r} must be printable ASCII text, got {value!r}"
            )
        clean[name] = value
    size = sum(len(k) + len(v) for k, v in clean.items())
    if size > 2048:
        raise InvalidMetadataError(
            f"metadata is {size} bytes; S3 allows at most 2 KiB of user metadata"
        )
    return clean
