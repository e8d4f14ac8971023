"""``s3`` storage: Amazon S3 or an S3-compatible server (MinIO) through aiobotocore.

One long-lived aiobotocore client per storage instance (entered once in an
``AsyncExitStack`` and closed by ``aclose``), so every operation reuses its connection
pool. Uploads stream: small bodies go as one PUT, larger ones as a multipart upload
whose parts are sent with bounded concurrency and which is aborted on any failure or
cancellation. Every upload keeps its SHA-256 (``VoiceFileInfo.checksum``): in the
metadata of a single PUT, or in an object tag written once a multipart upload completes
(S3 takes metadata only before the body is known). Downloads stream in ``chunk_size``
pieces and release their connection as soon as the consumer stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, aclosing
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import aiohttp
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from voice_infra.errors import (
    ConfigError,
    InvalidMetadataError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)
from voice_infra.models import VoiceFileInfo
from voice_infra.storage import (
    MAX_METADATA_BYTES,
    OpenedRange,
    PresignMethod,
    StorageBackend,
    UploadBody,
    metadata_size,
)
from voice_infra_s3._botocore_compat import KNOWN_DIGEST_SIGNER, register_known_digest_signer
from voice_infra_s3.settings import MIB, S3StorageSettings

__all__ = ["S3ConfigError", "S3Storage", "client_config"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
#: Tries to abort a failed multipart upload whose server answers 5xx (an abort that
#: gets no answer is not repeated).
ABORT_ATTEMPTS = 3
#: Where voice-infra keeps an object's SHA-256 (reserved): the user-metadata name of a
#: single PUT, or the object tag written after a multipart upload completes (and on a
#: single PUT whose metadata leaves no room for it).
CHECKSUM_METADATA = "vi-sha256"
#: Object tag naming the ETag of the object a post-completion checksum tag was written
#: for: a tag that landed on an object overwritten meanwhile is recognised and ignored.
CHECKSUM_ETAG_TAG = "vi-etag"
_CHECKSUM_ENTRY = len(CHECKSUM_METADATA) + 64  # bytes the checksum adds to the metadata
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PERMISSION_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "InvalidToken",
        "ExpiredToken",
        "AccountProblem",
        "403",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
        "503",
        "500",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
#: Answers of S3-compatible servers that do not implement object tagging.
_NO_TAGGING_CODES = frozenset({"NotImplemented", "501", "MethodNotAllowed", "405"})
#: Exceptions of the client libraries that _map_error turns into voice-infra errors.
_CLIENT_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, OSError)


_session: AioSession | None = None


def _shared_session() -> AioSession:
    """One aiobotocore session per process: it caches the loaded S3 service model
    (and resolved credentials), making each further client cost ~4 ms instead of ~80."""
    global _session
    if _session is None:
        _session = AioSession()
    return _session


class S3ConfigError(StorageError, ConfigError):
    """The S3 side does not match the configuration: missing bucket or credentials.

    Both a :class:`StorageError` and a :class:`ConfigError`, so either handler catches it.
    """


def client_config(settings: S3StorageSettings) -> AioConfig:
    """The aiobotocore client configuration these settings describe (also used by the
    benchmark, so that raw calls and the plugin run with the same client)."""
    return AioConfig(
        region_name=settings.region,
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_pool_connections,
        # botocore >= 1.36 sends CRC32 checksums by default, which MinIO and other
        # S3-compatible servers may reject; SHA-256 is computed by voice-infra anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3Storage(StorageBackend):
    """S3 / MinIO storage. ``async with`` (or first use) opens the client once."""

    settings: S3StorageSettings

    def __init__(self, settings: S3StorageSettings) -> None:
        super().__init__(settings, bucket_name=settings.bucket)
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._signer: Any = None  # the client presigning URLs (public endpoint when set)

    # -- lifecycle ---------------------------------------------------------------------

    def _client_kwargs(self, endpoint_url: str | None) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": s.region,
            "config": client_config(s),
            "verify": s.verify_tls,
        }
        if s.access_key is not None and s.secret_key is not None:
            kwargs["aws_access_key_id"] = s.access_key.get_secret_value()
            kwargs["aws_secret_access_key"] = s.secret_key.get_secret_value()
            if s.session_token is not None:
                kwargs["aws_session_token"] = s.session_token.get_secret_value()
        return kwargs

    async def open(self) -> None:
        """Create the client (and the presigning client), then check the bucket."""
        stack = AsyncExitStack()
        try:
            session = _shared_session()
            try:
                client = await stack.enter_async_context(
                    session.create_client("s3", **self._client_kwargs(self.settings.endpoint_url))
                )
                # Per client (botocore copies the session's handlers): attempts of an
                # upload are tracked so that a stalled body send times out (_send_body).
                client.meta.events.register("before-send.s3", _attempt_started)
                client.meta.events.register("needs-retry.s3", _attempt_ended)
                # Single PUTs are signed with the SHA-256 already computed (see
                # _botocore_compat for the botocore internals this needs).
                register_known_digest_signer()
                client.meta.events.register("choose-signer.s3.PutObject", _known_digest_signer)
                signer = client
                public = self.settings.public_endpoint_url
                if public is not None:
                    # SigV4 signs the Host header, so URLs for outside clients must be
                    # signed for the public host. Presigning needs no network: this
                    # client never opens a connection.
                    signer = await stack.enter_async_context(
                        session.create_client("s3", **self._client_kwargs(public))
                    )
            except (BotoCoreError, ValueError) as exc:
                raise S3ConfigError(f"cannot create the S3 client: {exc}") from exc
            self._client, self._signer = client, signer
            await self._check_bucket()
        except BaseException:
            self._client = self._signer = None
            await stack.aclose()
            raise
        self._stack = stack
        await super().open()

    async def aclose(self) -> None:
        """Close the client and its connection pool; the backend may be opened again."""
        stack, self._stack = self._stack, None
        self._client = self._signer = None
        await super().aclose()
        if stack is not None:
            await stack.aclose()

    def _missing_bucket(self) -> S3ConfigError:
        where = self.settings.endpoint_url or f"AWS region {self.settings.region}"
        return S3ConfigError(
            f"S3 bucket {self.bucket_name!r} does not exist at {where}; create it "
            f"(for example 'mc mb local/{self.bucket_name}' or 'aws s3 mb "
            f"s3://{self.bucket_name}'), fix [storage] bucket, or set "
            "create_bucket_if_missing = true"
        )

    async def _check_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket_name)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._map_error(exc, "check bucket", None) from exc
        except Exception as exc:
            raise self._map_error(exc, "check bucket", None) from exc
        if not self.settings.create_bucket_if_missing:
            raise self._missing_bucket()
        params: dict[str, Any] = {"Bucket": self.bucket_name}
        if self.settings.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            await self._client.create_bucket(**params)
        except ClientError as exc:
            # Another process may have created it meanwhile.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._map_error(exc, "create bucket", None) from exc
        except Exception as exc:
            raise self._map_error(exc, "create bucket", None) from exc
        logger.info("created S3 bucket %r", self.bucket_name)

    # -- errors ------------------------------------------------------------------------

    async def _call(self, action: str, key: str | None, awaitable: Awaitable[T]) -> T:
        """Await one client call; client-library exceptions become voice-infra errors."""
        try:
            return await awaitable
        except _CLIENT_ERRORS as exc:
            raise self._map_error(exc, action, key) from exc

    def _map_error(self, exc: BaseException, action: str, key: str | None) -> Exception:
        where = f"{action} {key!r}" if key is not None else action
        where += f" in bucket {self.bucket_name!r}"
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            status = _http_status(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            detail = f"{code}: {message}" if message else code
            if code == "NoSuchBucket":
                return self._missing_bucket()
            if code in _NOT_FOUND_CODES and key is not None:
                return self._not_found(key)
            if code in _PERMISSION_CODES or status == 403:
                return StoragePermissionError(
                    f"S3 refused to {where} ({detail}); check access_key/secret_key and "
                    "the bucket policy"
                )
            if code in _UNAVAILABLE_CODES or status >= 500:
                return StorageUnavailableError(f"S3 could not {where} ({detail}); retry later")
            return StorageError(f"S3 failed to {where} ({detail})")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return S3ConfigError(
                f"no usable S3 credentials to {where} ({exc}); set access_key and "
                "secret_key in [storage], or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, CredentialRetrievalError):
            return StorageUnavailableError(f"cannot fetch S3 credentials to {where}: {exc}")
        # OSError includes TimeoutError and refused connections.
        unreachable = (ConnectionError, HTTPClientError, ConnectionClosedError, aiohttp.ClientError)
        if isinstance(exc, (*unreachable, OSError)):
            return StorageUnavailableError(
                f"S3 endpoint unreachable or too slow to {where}: {exc or type(exc).__name__}"
            )
        return StorageError(f"S3 failed to {where}: {exc}")

    # -- uploads -----------------------------------------------------------------------

    async def _write(
        self, key: str, body: UploadBody, *, content_type: str, metadata: dict[str, str]
    ) -> datetime:
        if CHECKSUM_METADATA in metadata:
            raise InvalidMetadataError(
                f"metadata name {CHECKSUM_METADATA!r} is reserved by the s3 backend for the "
                "object's SHA-256 (VoiceFileInfo.checksum); choose another name"
            )
        threshold = int(self.settings.multipart_threshold)
        async with aclosing(cast(AsyncGenerator[bytes, None], aiter(body))) as chunks:
            buffered: list[bytes] = []
            if body.length is None or body.length <= threshold:
                # Buffer up to the threshold: a body that ends by then goes as one PUT.
                size = 0
                while size <= threshold:
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        return await self._put(key, buffered, body, content_type, metadata)
                    buffered.append(chunk)
                    size += len(chunk)
            return await self._multipart(key, body, buffered, chunks, content_type, metadata)

    async def _put(
        self,
        key: str,
        buffered: list[bytes],
        body: UploadBody,
        content_type: str,
        metadata: dict[str, str],
    ) -> datetime:
        # Copied once into the request body (aiohttp sends a BytesIO it owns without
        # copying it again, a BytesIO sharing a bytes object would be copied); each
        # chunk is dropped once copied, so the body is never held twice.
        sent = _WatchedBody()
        buffered.reverse()
        while buffered:
            sent.write(buffered.pop())
        sent.seek(0)
        sent.known_sha256 = body.sha256  # signs the payload without hashing it again
        # The whole body has been hashed before it is sent: the checksum goes in the
        # same request, as metadata when S3's 2 KiB metadata limit leaves room, else as
        # an object tag (set atomically with the object, so it needs no ETag tag).
        params: dict[str, Any] = {"Metadata": dict(metadata)}
        if _checksum_fits(metadata):
            params["Metadata"][CHECKSUM_METADATA] = body.sha256
        else:
            params["Tagging"] = urlencode({CHECKSUM_METADATA: body.sha256})
        await self._send_body(
            "upload",
            key,
            sent,
            lambda: self._client.put_object(
                Bucket=self.bucket_name, Key=key, Body=sent, ContentType=content_type, **params
            ),
        )
        return datetime.now(UTC)

    async def _send_body(
        self, action: str, key: str, body: _WatchedBody, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Run a client call that sends ``body``, failing it when no byte of the body
        is taken for ``read_timeout`` seconds during an attempt.

        aiohttp starts its read timeout only once the whole body is written, and
        botocore sends PUTs with ``Expect: 100-continue``: against a server that
        accepts connections but never answers (frozen, overloaded) the request would
        wait forever for the ``100 Continue`` or for a full send buffer to drain. Backoff
        sleeps between attempts do not count (``needs-retry`` pauses the watch).
        """
        limit = self.settings.read_timeout
        timeout = asyncio.timeout(None)
        watch = _StallWatch(body, limit, timeout)
        try:
            async with timeout:
                return await self._call(action, key, call())
        except TimeoutError as exc:
            if not watch.stalled:
                raise
            cause = TimeoutError(
                f"no byte of the request body was taken for {limit:g}s (read_timeout)"
            )
            cause.__cause__ = exc
            raise self._map_error(cause, action, key) from cause
        finally:
            watch.cancel()

    def _part_size(self, length: int | None) -> int:
        part_size = int(self.settings.multipart_part_size)
        if length is not None and length > part_size * MAX_PARTS:
            # Grow parts (whole MiB) so a known-length body fits in 10,000 of them.
            part_size = math.ceil(length / MAX_PARTS / MIB) * MIB
        return part_size

    async def _multipart(
        self,
        key: str,
        body: UploadBody,
        buffered: list[bytes],
        chunks: AsyncIterator[bytes],
        content_type: str,
        metadata: dict[str, str],
    ) -> datetime:
        part_size = self._part_size(body.length)
        # Awaited shielded (below): a cancel while this request is out must not lose the
        # upload the server creates anyway (invisible, billed); the cleanup waits for
        # the answer and aborts it.
        creating = asyncio.ensure_future(
            self._call(
                "start multipart upload of",
                key,
                self._client.create_multipart_upload(
                    Bucket=self.bucket_name, Key=key, ContentType=content_type, Metadata=metadata
                ),
            )
        )
        etags: dict[int, str] = {}
        tasks: list[asyncio.Task[None]] = []
        completing: asyncio.Task[Any] | None = None
        # A part is read from the source only once a slot is free: at most
        # `upload_concurrency` parts exist at once, so memory stays bounded by
        # concurrency * part_size (plus one source chunk) whatever the object's size.
        # Each part is one buffer, written once and never copied again.
        slots = asyncio.Semaphore(self.settings.upload_concurrency)
        try:
            upload_id: str = (await asyncio.shield(creating))["UploadId"]
            async with aclosing(_cut_parts(buffered, chunks, part_size)) as parts:
                while True:
                    await slots.acquire()
                    _raise_first_failure(tasks)
                    item = await anext(parts, None)
                    if item is None:
                        slots.release()
                        break
                    number, part = item
                    del item
                    if number > MAX_PARTS:
                        raise StorageError(
                            f"upload of {key!r} needs more than {MAX_PARTS} parts of "
                            f"{part_size} bytes; raise multipart_part_size"
                        )
                    tasks.append(
                        asyncio.create_task(
                            self._upload_part(key, upload_id, number, part, slots, etags)
                        )
                    )
                    del part
            await asyncio.gather(*tasks)
            completed = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            # The source is consumed: its SHA-256 is final.
            completing = asyncio.ensure_future(
                self._complete(key, upload_id, completed, body.sha256)
            )
            # Shielded: once completing starts it finishes (checksum tag included), even
            # if the caller is cancelled.
            await asyncio.shield(completing)
        except BaseException:
            cleanup = asyncio.ensure_future(self._abort_upload(key, creating, tasks, completing))
            with contextlib.suppress(asyncio.CancelledError):
                # A second cancellation leaves the cleanup running on its own.
                await asyncio.shield(cleanup)
            raise
        return datetime.now(UTC)

    async def _complete(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], sha256: str
    ) -> None:
        """Complete the upload, then tag the object with its SHA-256: S3 takes metadata
        only when a multipart upload starts, before the body (and its hash) is known."""
        done = await self._call(
            "complete multipart upload of",
            key,
            self._client.complete_multipart_upload(
                Bucket=self.bucket_name,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            ),
        )
        tags = [{"Key": CHECKSUM_METADATA, "Value": sha256}]
        etag = _etag(done)
        if etag:
            tags.append({"Key": CHECKSUM_ETAG_TAG, "Value": etag})
        params: dict[str, Any] = {"Bucket": self.bucket_name, "Key": key}
        if done.get("VersionId") not in (None, "null"):
            params["VersionId"] = done["VersionId"]  # exactly this version, if versioned
        try:
            await self._client.put_object_tagging(**params, Tagging={"TagSet": tags})
        except _CLIENT_ERRORS as exc:
            # The object is whole and correct; only the record of its checksum is missing.
            # Failing the upload now would report a stored object as not stored (and a
            # caller's retry would upload it again); deleting it would also lose what the
            # key held before. So: keep it, say so.
            logger.warning(
                "multipart upload of %r is stored, but its SHA-256 could not be written as "
                "the object tag %r (%s): get_file_info will report checksum=None for it; "
                "allow s3:PutObjectTagging to keep checksums of multipart uploads",
                key, CHECKSUM_METADATA, self._map_error(exc, "tag", key),
            )  # fmt: skip

    async def _upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        sent: _WatchedBody,
        slots: asyncio.Semaphore,
        etags: dict[int, str],
    ) -> None:
        try:
            response = await self._send_body(
                f"upload part {number} of",
                key,
                sent,
                lambda: self._client.upload_part(
                    Bucket=self.bucket_name,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=sent,
                ),
            )
            etags[number] = response["ETag"]
        finally:
            slots.release()

    async def _abort_upload(
        self,
        key: str,
        creating: asyncio.Future[Any],
        tasks: list[asyncio.Task[None]],
        completing: asyncio.Task[Any] | None,
    ) -> None:
        """Stop the parts in flight, then abort the upload so no part stays stored."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(creating, *tasks, return_exceptions=True)
        if creating.cancelled() or creating.exception() is not None:
            return  # no upload was created
        upload_id: str = creating.result()["UploadId"]
        if completing is not None:
            await asyncio.gather(completing, return_exceptions=True)
            if not completing.cancelled() and completing.exception() is None:
                return  # the object was published; nothing is left to abort
        # S3 asks for an abort to be repeated when it fails: a part still arriving at the
        # server can race it (seen as a 500 from moto). A server that answered 5xx gets a
        # few short tries more, on top of the client's own retries; a server that did not
        # answer at all (timeout, refused connection) does not, so an outage costs no extra
        # timeouts. All tries together stay within the bound of one call (docs/s3.md).
        attempts = 0
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self.settings.failure_bound()):
                while True:
                    attempts += 1
                    try:
                        await self._client.abort_multipart_upload(
                            Bucket=self.bucket_name, Key=key, UploadId=upload_id
                        )
                        return
                    except Exception as exc:
                        if isinstance(exc, ClientError) and _error_code(exc) == "NoSuchUpload":
                            return
                        error = exc
                        if attempts >= ABORT_ATTEMPTS or _http_status(exc) < 500:
                            break
                    await asyncio.sleep(0.1 * 2 ** (attempts - 1))
        except TimeoutError as exc:
            error = exc  # the tries above ran out of time: the last one was cut short
        logger.warning(
            "could not abort multipart upload %s of %r (%d attempt%s): %s; "
            "'voice-infra abort-uploads' will clean it",
            upload_id, key, attempts, "" if attempts == 1 else "s",
            error or "out of time",
        )  # fmt: skip

    async def _abort_incomplete_uploads(self, older_than: timedelta) -> list[str]:
        cutoff = datetime.now(UTC) - older_than
        aborted: list[str] = []
        params: dict[str, Any] = {"Bucket": self.bucket_name}
        while True:
            page = await self._call(
                "list multipart uploads", None, self._client.list_multipart_uploads(**params)
            )
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                try:
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket_name, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as exc:
                    if _error_code(exc) == "NoSuchUpload":
                        continue  # finished or aborted meanwhile
                    raise self._map_error(exc, "abort multipart upload of", upload["Key"]) from exc
                except Exception as exc:
                    raise self._map_error(exc, "abort multipart upload of", upload["Key"]) from exc
                aborted.append(upload["Key"])
            markers = (page.get("NextKeyMarker"), page.get("NextUploadIdMarker"))
            if not page.get("IsTruncated") or markers == (
                params.get("KeyMarker"),
                params.get("UploadIdMarker"),
            ):
                break
            params["KeyMarker"], params["UploadIdMarker"] = markers
        return aborted

    # -- downloads ---------------------------------------------------------------------

    def _read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        # The generator itself, not a wrapper: closing it early closes the response.
        return self._stream(key, chunk_size, None)

    async def _read_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """One ranged GET (the ``range_read`` capability)."""
        byte_range = f"bytes={start}-{'' if end is None else end}"
        try:
            async with aclosing(self._stream(key, chunk_size, byte_range)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) == "InvalidRange":
                return  # starts at or after the end: no bytes, as the core defines it
            raise

    async def _open_range(
        self, key: str, start: int, end: int | None, chunk_size: int
    ) -> OpenedRange:
        """HEAD, then a ranged GET of the ETag HEAD saw only (``If-Match``): the info and
        the bytes of one version (``versioned_read``). An object replaced in between
        fails the GET's precondition (412): the caller's version is gone either way."""
        head = await self._call(
            "get info of", key, self._client.head_object(Bucket=self.bucket_name, Key=key)
        )
        info = await self._info_from_head(key, head)
        byte_range = f"bytes={start}-{'' if end is None else end}"
        params: dict[str, Any] = {"Bucket": self.bucket_name, "Key": key, "Range": byte_range}
        if head.get("ETag"):
            params["IfMatch"] = head["ETag"]
        try:
            response = await self._client.get_object(**params)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "InvalidRange":  # starts at or after the end: no bytes
                return OpenedRange(info, _no_chunks())
            if code == "PreconditionFailed" or _http_status(exc) == 412:
                raise ObjectChangedError(f"{key!r} was replaced while being opened") from None
            raise self._map_error(exc, "download", key) from exc
        except _CLIENT_ERRORS as exc:
            raise self._map_error(exc, "download", key) from exc
        stream = response["Body"]

        async def close() -> None:
            stream.close()

        return OpenedRange(info, self._body_chunks(key, response, chunk_size), close)

    async def _stream(
        self, key: str, chunk_size: int, byte_range: str | None
    ) -> AsyncGenerator[bytes, None]:
        params: dict[str, Any] = {"Bucket": self.bucket_name, "Key": key}
        if byte_range is not None:
            params["Range"] = byte_range
        response = await self._call("download", key, self._client.get_object(**params))
        async with aclosing(self._body_chunks(key, response, chunk_size)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _body_chunks(
        self, key: str, response: Mapping[str, Any], chunk_size: int
    ) -> AsyncGenerator[bytes, None]:
        """The body of a GET ``response`` in ``chunk_size`` chunks; closes it when done."""
        stream = response["Body"]
        try:
            if 0 < (response.get("ContentLength") or 0) <= chunk_size:
                # Fits in one chunk: one read of the whole body (aiohttp gathers it).
                try:
                    data = await stream.read()
                except _CLIENT_ERRORS as exc:
                    raise self._map_error(exc, "download", key) from exc
                yield data
                return
            pending: list[bytes] = []
            size = 0
            while True:
                try:  # not self._call: one coroutine less per read (~64 KiB)
                    data = await stream.read(chunk_size - size)
                except _CLIENT_ERRORS as exc:
                    raise self._map_error(exc, "download", key) from exc
                if not data:
                    break
                if size == 0 and len(data) == chunk_size:
                    yield data
                    continue
                # aiohttp hands out what has arrived (often 64 KiB): gather full chunks.
                pending.append(data)
                size += len(data)
                if size >= chunk_size:
                    yield b"".join(pending)
                    pending.clear()
                    size = 0
            if pending:
                yield b"".join(pending)
        finally:
            # Releases the connection; when the consumer stopped early the unread rest
            # makes aiohttp drop the connection instead of returning it to the pool.
            stream.close()

    # -- info, delete, list --------------------------------------------------------------

    async def _info(self, key: str) -> VoiceFileInfo:
        response = await self._call(
            "get info of", key, self._client.head_object(Bucket=self.bucket_name, Key=key)
        )
        return await self._info_from_head(key, response)

    async def _info_from_head(self, key: str, response: Mapping[str, Any]) -> VoiceFileInfo:
        """The info a HEAD ``response`` of ``key`` describes."""
        metadata = dict(response.get("Metadata") or {})
        checksum = metadata.pop(CHECKSUM_METADATA, None)
        if checksum is not None and not _SHA256_HEX.match(checksum):
            checksum = None
        if checksum is None and ("-" in _etag(response) or not _checksum_fits(metadata)):
            # Uploaded in parts, or with metadata that left no room: voice-infra kept the
            # checksum in the object's tags. One more round trip, only for such objects.
            checksum = await self._tagged_checksum(key, response)
        return VoiceFileInfo(
            object_key=key,
            bucket_name=self.bucket_name,
            file_size=response.get("ContentLength", 0),
            content_type=response.get("ContentType") or "application/octet-stream",
            upload_time=response["LastModified"],
            metadata=metadata,
            checksum=checksum,
        )

    async def _tagged_checksum(self, key: str, head: Mapping[str, Any]) -> str | None:
        """The SHA-256 voice-infra tagged the object with, or None (not tagged; tagged
        for an object that has been replaced since; tags not readable)."""
        params: dict[str, Any] = {"Bucket": self.bucket_name, "Key": key}
        if head.get("VersionId") not in (None, "null"):
            params["VersionId"] = head["VersionId"]  # the version HEAD described
        try:
            response = await self._client.get_object_tagging(**params)
        except _CLIENT_ERRORS as exc:
            code = _error_code(exc) if isinstance(exc, ClientError) else ""
            if code in _PERMISSION_CODES or code in _NO_TAGGING_CODES:
                # Tags denied (no s3:GetObjectTagging) or not implemented by this server:
                # the object's info is still known, only without its checksum.
                logger.debug("cannot read the tags of %r: %s", key, exc)
                return None
            raise self._map_error(exc, "get info of", key) from exc
        tags = {tag.get("Key"): tag.get("Value") for tag in response.get("TagSet") or []}
        checksum = tags.get(CHECKSUM_METADATA)
        if not isinstance(checksum, str) or not _SHA256_HEX.match(checksum):
            return None
        written_for = tags.get(CHECKSUM_ETAG_TAG)
        if written_for is not None and written_for != _etag(head):
            return None  # tagged after completion, but the key now holds another object
        return checksum

    async def _delete(self, key: str) -> bool:
        # S3's DELETE succeeds whether or not the key exists: ask first.
        try:
            await self._call(
                "delete", key, self._client.head_object(Bucket=self.bucket_name, Key=key)
            )
        except ObjectNotFoundError:
            return False
        await self._call(
            "delete", key, self._client.delete_object(Bucket=self.bucket_name, Key=key)
        )
        return True

    async def _list(self, prefix: str) -> AsyncIterator[VoiceFileInfo]:
        params: dict[str, Any] = {
            "Bucket": self.bucket_name,
            "Prefix": prefix,
            "MaxKeys": self.settings.list_page_size,
        }
        heads = asyncio.Semaphore(max(1, self.settings.max_pool_connections // 2))
        while True:
            page = await self._call("list", prefix or None, self._client.list_objects_v2(**params))
            contents = page.get("Contents") or []
            if self.settings.list_metadata:
                infos = await asyncio.gather(
                    *(self._info_or_none(item["Key"], heads) for item in contents)
                )
            else:
                infos = [
                    VoiceFileInfo(
                        object_key=item["Key"],
                        bucket_name=self.bucket_name,
                        file_size=item.get("Size", 0),
                        content_type="application/octet-stream",
                        upload_time=item["LastModified"],
                    )
                    for item in contents
                ]
            for info in infos:
                if info is not None:
                    yield info
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            params["ContinuationToken"] = token

    async def _info_or_none(self, key: str, heads: asyncio.Semaphore) -> VoiceFileInfo | None:
        async with heads:
            try:
                return await self._info(key)
            except ObjectNotFoundError:
                return None  # deleted while listing

    # -- presigned URLs ----------------------------------------------------------------

    async def _presign(self, key: str, expires_in: int, method: PresignMethod) -> str:
        operation = "get_object" if method == "GET" else "put_object"
        url: str = await self._call(
            "presign",
            key,
            self._signer.generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket_name, "Key": key},
                ExpiresIn=expires_in,
                HttpMethod=method,
            ),
        )
        return url


async def _cut_parts(
    buffered: list[bytes], chunks: AsyncIterator[bytes], part_size: int
) -> AsyncGenerator[tuple[int, _WatchedBody], None]:
    """Re-chunk the body into numbered parts of exactly ``part_size`` (the last shorter).

    Each part is written straight into the request body that will carry it (one copy
    of each byte; no join of chunks, no slicing of a joined part).
    """
    pending = collections.deque(buffered)
    buffered.clear()
    number = 0
    part, filled = _WatchedBody.sized(part_size), 0
    while True:
        chunk = pending.popleft() if pending else await anext(chunks, None)
        if chunk is None:
            break
        view = memoryview(chunk)
        del chunk
        while view.nbytes:
            take = min(part_size - filled, view.nbytes)
            part.write(view[:take])
            filled += take
            view = view[take:]
            if filled == part_size:
                number += 1
                part.seek(0)
                yield number, part
                part, filled = _WatchedBody.sized(part_size), 0
        view.release()
    if filled:
        part.truncate(filled)
        part.seek(0)
        yield number + 1, part


class _WatchedBody(io.BytesIO):
    """A request body that records when it was last read (aiohttp reads 64 KiB at a
    time, each after the previous one drained) and whether an attempt is in flight."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.progress = time.monotonic()
        self.in_flight = False
        #: Hex SHA-256 of the whole body when voice-infra already computed it.
        self.known_sha256: str | None = None

    @classmethod
    def sized(cls, size: int) -> _WatchedBody:
        """An empty body whose buffer is allocated at ``size`` bytes at once (growing
        it chunk by chunk would realloc and fragment the heap)."""
        body = cls()
        if size:
            body.seek(size - 1)
            body.write(b"\0")
            body.seek(0)
        return body

    def attempt_started(self) -> None:
        self.progress = time.monotonic()
        self.in_flight = True

    def read(self, size: int | None = -1, /) -> bytes:
        self.progress = time.monotonic()
        return super().read(size)


class _StallWatch:
    """Expires ``timeout`` when an attempt in flight has not taken a byte of ``body``
    for ``limit`` seconds. A plain object, not a closure: no reference cycle keeps the
    body (a multipart part) alive after the call."""

    __slots__ = ("_body", "_handle", "_limit", "_loop", "_timeout", "stalled")

    def __init__(self, body: _WatchedBody, limit: float, timeout: asyncio.Timeout) -> None:
        self._body = body
        self._limit = limit
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self.stalled = False
        body.attempt_started()
        self._handle = self._loop.call_later(limit, self._check)

    def _check(self) -> None:
        body, now = self._body, time.monotonic()
        if body.in_flight and now - body.progress >= self._limit:
            self.stalled = True
            self._timeout.reschedule(self._loop.time())
            return
        since = body.progress if body.in_flight else now
        self._handle = self._loop.call_later(max(since + self._limit - now, 0.001), self._check)

    def cancel(self) -> None:
        self._handle.cancel()  # drops the callback: nothing refers back to this object


def _known_digest_signer(
    signing_name: str = "", signature_version: str = "", context: Any = None, **_: Any
) -> str | None:
    """``choose-signer`` handler of PutObject: plain S3 SigV4 becomes the known-digest
    variant. Anything else (unsigned bodies, S3 Express, SigV4a, presigning) is left to
    botocore's own choice by returning None."""
    context = context if isinstance(context, dict) else {}
    # botocore names plain S3 SigV4 "s3v4" (resolved auth scheme) or "v4" (service model).
    plain = context.get("auth_type") in (None, "v4", "s3v4") and not context.get("unsigned_payload")
    if signing_name == "s3" and signature_version == "s3v4" and plain:
        return KNOWN_DIGEST_SIGNER
    return None


def _attempt_started(request: Any = None, **_: Any) -> None:
    """``before-send`` handler: an attempt of a watched upload starts (returns None, so
    botocore sends the request)."""
    body = getattr(request, "body", None)
    if isinstance(body, _WatchedBody):
        body.attempt_started()


def _attempt_ended(request_dict: Any = None, **_: Any) -> None:
    """``needs-retry`` handler: an attempt ended; a backoff sleep is not a stall."""
    body = request_dict.get("body") if isinstance(request_dict, dict) else None
    if isinstance(body, _WatchedBody):
        body.in_flight = False


def _raise_first_failure(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            raise error


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _http_status(exc: BaseException) -> int:
    """The HTTP status the server answered with, 0 when it did not answer."""
    if not isinstance(exc, ClientError):
        return 0
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


def _checksum_fits(metadata: Mapping[str, str]) -> bool:
    """Whether S3's 2 KiB user-metadata limit leaves room for the checksum."""
    return metadata_size(metadata) + _CHECKSUM_ENTRY <= MAX_METADATA_BYTES


def _etag(response: Mapping[str, Any]) -> str:
    """The object's ETag without its quotes ('' when absent); a multipart upload's ends
    in '-<number of parts>'."""
    return str(response.get("ETag") or "").strip('"')
